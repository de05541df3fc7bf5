//! `tokenize decode`: a token file (or a range of it) back to text on stdout. For a byte-level
//! tokenizer the output is the exact bytes the tokens stand for, `<|endoftext|>` separators
//! included, so decoding a whole file gives back every document it was encoded from.

use crate::encode::load_encoder;
use crate::Failure;
use std::io::Write;
use std::path::PathBuf;
use tokens::TokenFile;

/// Print the text of a token file (or of --count tokens from --start).
#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// The tokenizer.json the file was encoded with.
    ///
    /// Example: --tokenizer data/generated/tokenizer.json
    #[arg(long, value_name = "FILE")]
    tokenizer: PathBuf,

    /// The token file to decode.
    ///
    /// Example: --input data/generated/val.bin
    #[arg(long, value_name = "FILE")]
    input: PathBuf,

    /// Index of the first token to decode.
    ///
    /// Example: --start 1000
    #[arg(long, value_name = "N", default_value_t = 0)]
    start: usize,

    /// Number of tokens to decode (default: to the end; a count past the end stops there).
    ///
    /// Example: --count 200
    #[arg(long, value_name = "M")]
    count: Option<usize>,
}

pub fn run(args: &DecodeArgs) -> Result<(), Failure> {
    let encoder = load_encoder(&args.tokenizer)?;
    let file = TokenFile::open(&args.input).map_err(|e| Failure::Input(e.to_string()))?;
    let all = file.tokens();
    if args.start > all.len() {
        return Err(Failure::Input(format!(
            "{}: --start {} is past the end ({} tokens)",
            args.input.display(),
            args.start,
            all.len()
        )));
    }
    let end = match args.count {
        Some(n) => args.start.saturating_add(n).min(all.len()),
        None => all.len(),
    };
    let tokens = &all[args.start..end];
    let vocab = encoder.vocab_size();
    if let Some(i) = tokens.iter().position(|&t| usize::from(t) >= vocab) {
        return Err(Failure::Input(format!(
            "{}: token {} at index {} is outside the tokenizer's {vocab} tokens (another tokenizer?)",
            args.input.display(),
            tokens[i],
            args.start + i
        )));
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut ids = Vec::new();
    let mut bytes = Vec::new();
    for chunk in tokens.chunks(1 << 16) {
        ids.clear();
        ids.extend(chunk.iter().map(|&t| u32::from(t)));
        bytes.clear();
        encoder
            .decode_bytes(&ids, &mut bytes)
            .map_err(|e| Failure::Input(format!("{}: {e}", args.input.display())))?;
        out.write_all(&bytes)?;
    }
    out.flush()?;
    Ok(())
}
