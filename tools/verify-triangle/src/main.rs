//! verify-triangle: every kernel path against the Rust reference, bit for bit. This file only
//! parses the flags, runs (the generated cases, or `--model`), prints and returns the exit code
//! (0 ok, 1 mismatch, 2 bad usage or an unreadable model file); the
//! work is in the library (src/lib.rs).

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;
use verify_triangle::{cli::Args, report, Config, EXIT_USAGE};

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::from_args(&args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("verify-triangle: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let outcome = match &config.model {
        None => verify_triangle::run(&config),
        Some(path) => match verify_triangle::model::run(&config, path) {
            Ok(outcome) => outcome,
            Err(error) => {
                eprintln!("verify-triangle: {error}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    let text = if config.json {
        report::json(&outcome)
    } else {
        report::text(&outcome)
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => {}
        // A closed pipe (`| head`) is the reader's choice, not an error.
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(error) => {
            eprintln!("verify-triangle: writing the report to stdout: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    ExitCode::from(outcome.exit_code())
}
