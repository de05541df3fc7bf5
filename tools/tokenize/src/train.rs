//! `tokenize train`: a byte-level BPE tokenizer trained by the tokenizers crate on every `.rs` file
//! under the inputs (or a deterministic sample of them, `--max-bytes`), with the special tokens of
//! `model::tokenizer::SPECIAL_TOKENS` as ids 0.. in that order. Checks that `model::Tokenizer` loads
//! the result before writing it atomically.

use crate::{check_output, mb, parse_bytes, print_json, Failure};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokens::corpus::{read_source, sample, walk, Corpus, Exclude};
use tokens::train::{check_vocab_size, train_bpe};

/// Train a byte-level BPE tokenizer on the .rs files under the inputs.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Folders (or single files) whose .rs files are the training text.
    ///
    /// Example: --input data/vendor --input ../my-crates
    #[arg(long, value_name = "DIR", num_args = 1.., required = true)]
    input: Vec<PathBuf>,

    /// Size of the vocabulary, special tokens and the 256 byte tokens included (at least 261, at
    /// most 65536 so ids fit u16 token files).
    ///
    /// Example: --vocab-size 4096
    #[arg(long, value_name = "N")]
    vocab_size: usize,

    /// Where to write tokenizer.json (atomically).
    ///
    /// Example: --out data/generated/tokenizer.json
    #[arg(long, value_name = "FILE")]
    out: PathBuf,

    /// Train on a deterministic sample of about this many bytes (K, M, G = powers of 1024) instead
    /// of the whole corpus: training time and memory grow with the corpus (the 100 MB vendored
    /// corpus takes about 45 s and 600 MB for 4096 tokens on 2 cores).
    ///
    /// Example: --max-bytes 32M
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    max_bytes: Option<u64>,

    /// Seed of the --max-bytes sample (training itself is deterministic).
    ///
    /// Example: --seed 7
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Leave out files whose path contains this text, or matches it as a glob when it has * or ?
    /// (* also matches /). Repeatable. Keep benchmark prompts out of training data with it.
    ///
    /// Example: --exclude benchmarks --exclude '*/tests/*'
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,

    /// Also print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// What `train` reports.
#[derive(Debug, serde::Serialize)]
struct TrainSummary {
    out: String,
    vocab_size: usize,
    merges: usize,
    files: usize,
    skipped: u64,
    excluded: usize,
    bytes: u64,
    corpus_files: usize,
    corpus_bytes: u64,
    seconds: f64,
    peak_rss_mb: Option<f64>,
}

/// The peak resident memory of this process (Linux `VmHWM`), in MB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0 / 1e6)
}

pub fn run(args: &TrainArgs) -> Result<(), Failure> {
    let special = model::tokenizer::SPECIAL_TOKENS;
    check_vocab_size(args.vocab_size, special.len())
        .map_err(|e| Failure::Input(format!("--vocab-size: {e}")))?;
    check_output(&args.out, "the tokenizer")?;
    let start = Instant::now();
    let corpus = walk_corpus(&args.input, &args.exclude)?;
    let files = match args.max_bytes {
        Some(max) => sample(&corpus.files, max, args.seed),
        None => corpus.files.clone(),
    };
    eprintln!(
        "tokenize train: {} files, {} of {} files, {} (vocabulary {})",
        files.len(),
        mb(files.iter().map(|f| f.len).sum()),
        corpus.files.len(),
        mb(corpus.bytes()),
        args.vocab_size
    );
    let skipped = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let texts = files.iter().filter_map(|f| match read_source(&f.path) {
        Ok(text) => {
            bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
            Some(text)
        }
        Err(_) => {
            skipped.fetch_add(1, Ordering::Relaxed);
            None
        }
    });
    let tokenizer = train_bpe(
        texts,
        args.vocab_size,
        &special,
        std::io::stderr().is_terminal(),
    )
    .map_err(|e| Failure::Job(e.to_string()))?;
    let json = tokenizer
        .to_string(true)
        .map_err(|e| Failure::Job(format!("cannot serialize the tokenizer: {e}")))?;
    // The model crate must load what we write, with the special tokens at 0, 1, ...
    let loaded = model::Tokenizer::from_json(&json)
        .map_err(|e| Failure::Job(format!("the trained tokenizer does not load back: {e}")))?;
    for (i, token) in special.iter().enumerate() {
        if loaded.inner().token_to_id(token) != Some(i as u32) {
            return Err(Failure::Job(format!(
                "the trained tokenizer gives {token} the id {:?}, expected {i}",
                loaded.inner().token_to_id(token)
            )));
        }
    }
    tokens::write_atomic(&args.out, json.as_bytes())
        .map_err(|e| Failure::Job(format!("{}: cannot write: {e}", args.out.display())))?;
    let summary = TrainSummary {
        out: args.out.display().to_string(),
        vocab_size: loaded.vocab_size(),
        merges: loaded.vocab_size() - special.len() - 256,
        files: files.len() - skipped.load(Ordering::Relaxed) as usize,
        skipped: skipped.load(Ordering::Relaxed),
        excluded: corpus.excluded,
        bytes: bytes.load(Ordering::Relaxed),
        corpus_files: corpus.files.len(),
        corpus_bytes: corpus.bytes(),
        seconds: start.elapsed().as_secs_f64(),
        peak_rss_mb: peak_rss_mb(),
    };
    eprintln!(
        "tokenize train: {} tokens ({} merges) from {} files ({} skipped, {} excluded), {}, {:.1} s, peak memory {} -> {}",
        summary.vocab_size,
        summary.merges,
        summary.files,
        summary.skipped,
        summary.excluded,
        mb(summary.bytes),
        summary.seconds,
        summary
            .peak_rss_mb
            .map_or("unknown".to_string(), |m| format!("{m:.0} MB")),
        summary.out
    );
    if args.json {
        print_json(&summary)?;
    }
    Ok(())
}

/// Every .rs file under `inputs` but the excluded ones; none at all is a usage error.
pub fn walk_corpus(inputs: &[PathBuf], exclude: &[String]) -> Result<Corpus, Failure> {
    let corpus = walk(inputs, &Exclude::new(exclude.iter().cloned()))
        .map_err(|e| Failure::Input(e.to_string()))?;
    if corpus.files.is_empty() {
        return Err(Failure::Input(format!(
            "no .rs files under {}",
            list(inputs)
        )));
    }
    Ok(corpus)
}

/// `a, b and c` of some paths.
pub fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tool's own output loads in the model crate with the special tokens at 0..4.
    #[test]
    fn trained_tokenizer_loads_in_the_model_crate() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        for (name, text) in [
            ("a.rs", "fn main() { let x = 1; println!(\"{x}\"); }\n"),
            (
                "b.rs",
                "pub struct Point { x: f32, y: f32 }\nimpl Point {}\n",
            ),
        ] {
            std::fs::write(src.join(name), text).unwrap();
        }
        let out = dir.path().join("tokenizer.json");
        let args = TrainArgs {
            input: vec![src],
            vocab_size: 300,
            out: out.clone(),
            max_bytes: None,
            seed: 0,
            exclude: Vec::new(),
            json: false,
        };
        run(&args).unwrap();
        let json = std::fs::read_to_string(&out).unwrap();
        let t = model::Tokenizer::from_json(&json).unwrap();
        for (i, s) in model::tokenizer::SPECIAL_TOKENS.iter().enumerate() {
            assert_eq!(t.inner().token_to_id(s), Some(i as u32), "{s}");
        }
        assert_eq!(t.end_of_text(), 0);
        let ids = t.encode("let x = 1;").unwrap();
        assert_eq!(t.decode(&ids).unwrap(), "let x = 1;");
        let too_small = TrainArgs {
            vocab_size: 260,
            ..args
        };
        assert!(matches!(run(&too_small), Err(Failure::Input(_))));
    }
}
