//! tokenize: turns Rust sources into token files, the first step of the pipeline.
//!
//! ```text
//! tokenize train  --input DIR... --vocab-size N --out tokenizer.json [--max-bytes B] [--seed S]
//! tokenize encode --tokenizer tokenizer.json --input DIR... --out train.bin --val-out val.bin
//! tokenize decode --tokenizer tokenizer.json --input train.bin [--start N] [--count M]
//! tokenize functions --input DIR... --prompts SET.jsonl... --out DIR
//! ```
//! Exit codes: 0 done; 1 the job failed (an output could not be written, or a trained tokenizer
//! does not load back); 2 bad usage or bad input (one line on stderr naming the file and the
//! problem). A closed stdout (`| head`) is not an error. Outputs appear whole or not at all.
//!
//! This file parses flags and maps results to exit codes; train.rs, encode.rs, decode.rs and
//! functions.rs run the subcommands (progress and summaries on stderr, `--json` summaries on
//! stdout); libs/tokens does the work (corpus walk and split, token files, the fast exact encoder,
//! BPE training), libs/eval's harvest that of `functions`.

mod decode;
mod encode;
mod functions;
mod train;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

const EXAMPLES: &str = "\
Examples:
  tokenize train --input data/vendor --vocab-size 4096 --out data/generated/tokenizer.json
  tokenize train --input data/vendor --vocab-size 4096 --max-bytes 32M --seed 1 --out tok.json
  tokenize encode --tokenizer tok.json --input data/vendor --out train.bin --val-out val.bin
  tokenize decode --tokenizer tok.json --input val.bin --start 0 --count 200
  tokenize functions --input runs/tiny/corpus --prompts data/prompts/rust_tasks.jsonl \
      data/prompts/rl_train.jsonl --out runs/tiny/functions

The corpus is every .rs file under the inputs (sorted, symbolic links not followed); unreadable and
non-UTF-8 files are skipped and counted. A file goes to validation when the FNV-1a 64 hash (with
the splitmix64 finalizer) of its path relative to its input, as a fraction of 2^64, is below
--val-fraction: the split of a file never changes when others are added.

Token files follow llm.c: a header of 256 little-endian i32 ([0] = 20240520, [1] = 1 for u16
tokens, [2] = token count), then the u16 tokens; every document starts with <|endoftext|>.

`functions` makes function-level pairs and tests from a corpus: see `tokenize functions --help`.

Exit status: 0 ok, 1 the job failed, 2 bad usage or bad input (one line on stderr).";

/// Train a byte-level BPE tokenizer on Rust sources, encode a corpus into llm.c token files, decode
/// token files back to text, extract function-level pairs and tests from a corpus.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Train(train::TrainArgs),
    Encode(encode::EncodeArgs),
    Decode(decode::DecodeArgs),
    Functions(functions::FunctionsArgs),
}

/// Why a run stopped.
#[derive(Debug)]
pub enum Failure {
    /// Bad input or usage: one line, exit 2.
    Input(String),
    /// The job failed: one line, exit 1.
    Job(String),
    /// Writing stdout failed (a broken pipe is success).
    Stdout(std::io::Error),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Stdout(e)
    }
}

/// `12345`, `64K`, `32M`, `2G` (powers of 1024) as bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count (examples: 1000000, 64K, 32M, 2G)"))?;
    let scale: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K, M or G)")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Megabytes (10^6 bytes) with one decimal.
pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The parent folder of an output path must exist: checked before a long job starts.
pub fn check_output(path: &std::path::Path, what: &str) -> Result<(), Failure> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    if path.is_dir() {
        return Err(Failure::Input(format!(
            "{}: {what} is a folder, expected a file path",
            path.display()
        )));
    }
    if !parent.is_dir() {
        return Err(Failure::Input(format!(
            "{}: cannot write {what}: folder {} does not exist",
            path.display(),
            parent.display()
        )));
    }
    Ok(())
}

/// Prints `value` as one JSON document on stdout.
pub fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

fn main() -> ExitCode {
    let cli: Cli = match cli::parse("tokenize") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match &cli.command {
        Command::Train(args) => train::run(args),
        Command::Encode(args) => encode::run(args),
        Command::Decode(args) => decode::run(args),
        Command::Functions(args) => functions::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Stdout(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(Failure::Stdout(e)) => {
            eprintln!("tokenize: cannot write to stdout: {e}");
            ExitCode::from(1)
        }
        Err(Failure::Input(message)) => {
            eprintln!("tokenize: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Job(message)) => {
            eprintln!("tokenize: {message}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_bytes("32m"), Ok(32 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert!(parse_bytes("12X").is_err());
        assert!(parse_bytes("M").is_err());
        assert!(parse_bytes("99999999999999G").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
