//! `tokenize encode`: every `.rs` file under the inputs into two llm.c token files, train and
//! validation (split by the hash of each file's relative path, see libs/tokens `corpus`). Each
//! document is `<|endoftext|>` followed by the file's tokens. Files are read and encoded in
//! parallel (rayon, batches in walk order) and written in walk order, so the output does not
//! depend on the number of threads.

use crate::train::walk_corpus;
use crate::{check_output, mb, print_json, Failure};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokens::corpus::{is_validation, read_source, SourceFile};
use tokens::{Encoder, TokenFileWriter};

/// Encode the .rs files under the inputs into train and validation token files.
#[derive(Debug, clap::Args)]
pub struct EncodeArgs {
    /// The tokenizer.json to encode with (from `tokenize train`; at most 65536 tokens).
    ///
    /// Example: --tokenizer data/generated/tokenizer.json
    #[arg(long, value_name = "FILE")]
    tokenizer: PathBuf,

    /// Folders (or single files) whose .rs files are encoded.
    ///
    /// Example: --input data/vendor
    #[arg(long, value_name = "DIR", num_args = 1.., required = true)]
    input: Vec<PathBuf>,

    /// The training token file to write.
    ///
    /// Example: --out data/generated/train.bin
    #[arg(long, value_name = "FILE")]
    out: PathBuf,

    /// The validation token file to write (needed unless --val-fraction is 0).
    ///
    /// Example: --val-out data/generated/val.bin
    #[arg(long, value_name = "FILE")]
    val_out: Option<PathBuf>,

    /// Share of files (by path hash, stable when files are added) that go to validation, 0 to 1.
    ///
    /// Example: --val-fraction 0.01
    #[arg(long, value_name = "F", default_value_t = 0.01)]
    val_fraction: f64,

    /// Leave out files whose path contains this text, or matches it as a glob when it has * or ?
    /// (* also matches /). Repeatable. Keep benchmark prompts out of training data with it.
    ///
    /// Example: --exclude benchmarks
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,

    /// Worker threads (default: one per core).
    ///
    /// Example: --threads 2
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// Also print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// What `encode` reports.
#[derive(Debug, Default, serde::Serialize)]
struct EncodeSummary {
    train_out: String,
    val_out: Option<String>,
    vocab_size: usize,
    end_of_text: u32,
    files: usize,
    train_files: usize,
    val_files: usize,
    skipped: usize,
    unreadable_dirs: usize,
    excluded: usize,
    bytes: u64,
    tokens: u64,
    train_tokens: u64,
    val_tokens: u64,
    bytes_per_token: f64,
    seconds: f64,
    mb_per_s: f64,
    threads: usize,
    fast_path: bool,
}

/// Loads the tokenizer: any problem is bad input naming the file.
pub fn load_encoder(path: &Path) -> Result<Encoder, Failure> {
    let name = path.display();
    let json = std::fs::read_to_string(path)
        .map_err(|e| Failure::Input(format!("{name}: cannot read the tokenizer: {e}")))?;
    let encoder = Encoder::from_json(&json).map_err(|e| Failure::Input(format!("{name}: {e}")))?;
    let max = tokens::train::MAX_VOCAB;
    if encoder.vocab_size() > max {
        return Err(Failure::Input(format!(
            "{name}: {} tokens do not fit u16 token files (at most {max})",
            encoder.vocab_size()
        )));
    }
    Ok(encoder)
}

/// Batches of consecutive files of about 8 MB (or 1024 files): encoded in parallel, written in order.
fn batches(files: &[SourceFile]) -> Vec<&[SourceFile]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, f) in files.iter().enumerate() {
        bytes += f.len;
        if bytes >= 8 << 20 || i + 1 - start >= 1024 {
            out.push(&files[start..=i]);
            start = i + 1;
            bytes = 0;
        }
    }
    if start < files.len() {
        out.push(&files[start..]);
    }
    out
}

pub fn run(args: &EncodeArgs) -> Result<(), Failure> {
    if !(0.0..=1.0).contains(&args.val_fraction) {
        return Err(Failure::Input(format!(
            "--val-fraction {} is not between 0 and 1",
            args.val_fraction
        )));
    }
    if args.val_fraction > 0.0 && args.val_out.is_none() {
        return Err(Failure::Input(format!(
            "--val-fraction {} needs --val-out FILE (or --val-fraction 0)",
            args.val_fraction
        )));
    }
    if args.val_out.as_ref() == Some(&args.out) {
        return Err(Failure::Input(format!(
            "{}: --out and --val-out are the same file",
            args.out.display()
        )));
    }
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| Failure::Input(format!("--threads {n}: {e}")))?;
    }
    let encoder = load_encoder(&args.tokenizer)?;
    let eot = encoder
        .token_to_id(model::tokenizer::END_OF_TEXT)
        .ok_or_else(|| {
            Failure::Input(format!(
                "{}: no {} token (train the tokenizer with `tokenize train`)",
                args.tokenizer.display(),
                model::tokenizer::END_OF_TEXT
            ))
        })?;
    let eot16 = u16::try_from(eot).expect("vocabulary checked to fit u16");
    check_output(&args.out, "the training tokens")?;
    if let Some(v) = &args.val_out {
        check_output(v, "the validation tokens")?;
    }
    let start = Instant::now();
    let corpus = walk_corpus(&args.input, &args.exclude)?;
    let create = |p: &Path| TokenFileWriter::create(p).map_err(|e| Failure::Input(e.to_string()));
    let mut train = create(&args.out)?;
    let mut val = args.val_out.as_deref().map(create).transpose()?;

    let total = corpus.bytes();
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let mut s = EncodeSummary {
        train_out: args.out.display().to_string(),
        val_out: args.val_out.as_ref().map(|p| p.display().to_string()),
        vocab_size: encoder.vocab_size(),
        end_of_text: eot,
        excluded: corpus.excluded,
        unreadable_dirs: corpus.unreadable_dirs.len(),
        threads: rayon::current_num_threads(),
        fast_path: encoder.is_fast(),
        ..EncodeSummary::default()
    };
    let job = |e: tokens::TokenFileError| Failure::Job(e.to_string());
    for batch in batches(&corpus.files) {
        let encoded: Vec<Result<(Vec<u16>, u64), String>> = batch
            .par_iter()
            .map(|f| {
                let text = read_source(&f.path).map_err(|skip| skip.to_string())?;
                let mut ids = Vec::with_capacity(text.len() / 3 + 1);
                encoder
                    .encode(&text, &mut ids)
                    .map_err(|e| format!("{}: {e}", f.path.display()))?;
                let mut doc = Vec::with_capacity(ids.len() + 1);
                doc.push(eot16);
                doc.extend(ids.iter().map(|&id| id as u16));
                bar.inc(f.len);
                Ok((doc, text.len() as u64))
            })
            .collect();
        for (f, result) in batch.iter().zip(encoded) {
            let Ok((doc, bytes)) = result else {
                s.skipped += 1;
                continue;
            };
            s.files += 1;
            s.bytes += bytes;
            match val.as_mut() {
                Some(v) if is_validation(&f.rel, args.val_fraction) => {
                    s.val_files += 1;
                    v.write(&doc).map_err(job)?;
                }
                _ => {
                    s.train_files += 1;
                    train.write(&doc).map_err(job)?;
                }
            }
        }
    }
    s.train_tokens = train.finish().map_err(job)?;
    if let Some(v) = val {
        s.val_tokens = v.finish().map_err(job)?;
    }
    bar.finish_and_clear();
    s.tokens = s.train_tokens + s.val_tokens;
    // Bytes per token of text, the <|endoftext|> separators left out.
    let text_tokens = s.tokens.saturating_sub(s.files as u64).max(1);
    s.bytes_per_token = s.bytes as f64 / text_tokens as f64;
    s.seconds = start.elapsed().as_secs_f64();
    s.mb_per_s = s.bytes as f64 / 1e6 / s.seconds.max(1e-9);
    eprintln!(
        "tokenize encode: {} files ({} train, {} val), {} skipped, {} excluded, {} -> {} tokens ({} train, {} val), {:.2} bytes/token, {:.1} s, {:.1} MB/s, threads: {}",
        s.files,
        s.train_files,
        s.val_files,
        s.skipped,
        s.excluded,
        mb(s.bytes),
        s.tokens,
        s.train_tokens,
        s.val_tokens,
        s.bytes_per_token,
        s.seconds,
        s.mb_per_s,
        s.threads
    );
    if args.json {
        print_json(&s)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_file_in_order() {
        let files: Vec<SourceFile> = (0..3000)
            .map(|i| SourceFile {
                path: PathBuf::from(format!("f{i}.rs")),
                input: 0,
                rel: format!("f{i}.rs"),
                len: if i == 5 { 20 << 20 } else { 100 },
            })
            .collect();
        let b = batches(&files);
        assert_eq!(b.iter().map(|b| b.len()).sum::<usize>(), 3000);
        assert_eq!(b[0].len(), 6, "a big file closes its batch");
        assert!(b.iter().all(|b| b.len() <= 1024));
        let flat: Vec<&SourceFile> = b.iter().flat_map(|b| b.iter()).collect();
        assert!(flat.iter().zip(&files).all(|(a, b)| *a == b));
        assert!(batches(&[]).is_empty());
    }
}
