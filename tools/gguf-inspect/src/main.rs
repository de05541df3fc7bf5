//! gguf-inspect: lists a GGUF file (header, metadata, tensor table, totals) or one tensor's
//! statistics, as text or JSON.
//!
//! `gguf-inspect model.gguf [--tensor NAME] [--json]`. Exit codes: 0 listed, 2 bad usage or a
//! file that is not valid GGUF (one line on stderr naming the file and the problem, with the byte
//! offset). A closed stdout (`| head`) is not an error.
//!
//! This file only parses flags, runs one mode and maps the result to an exit code: report.rs
//! gathers what is shown, stats.rs computes tensor statistics, render.rs prints text. Another input
//! (the planned `--mhc FILE`, once libs/mhc lands) is one more flag in [`Cli`], one more optional
//! section in `report::Report`, and its lines in `render::report`.

mod render;
mod report;
mod stats;

use clap::Parser;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

const EXAMPLES: &str = "\
Examples:
  gguf-inspect model.gguf                               header, metadata, tensors, totals
  gguf-inspect model.gguf --tensor blk.0.attn_q.weight  code shares and scale range of one weight
  gguf-inspect model.gguf --json | jq .totals           the same listing as JSON

Shapes are printed outermost first ([rows, cols]); GGUF stores them reversed (ne[0] = cols).
A ternary weight NAME is the pair NAME (I8, 4 packed 2-bit codes a byte) + NAME.scale (F32, one
scale per 128 weights); it counts as rows x cols parameters.

Exit status: 0 ok, 2 bad usage or a malformed file (one line on stderr).";

/// List a GGUF file: header, metadata, tensors and totals, or one tensor's statistics.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXAMPLES)]
struct Cli {
    /// The GGUF file to list.
    ///
    /// Example: gguf-inspect model.gguf
    #[arg(value_name = "FILE")]
    file: PathBuf,

    /// Print statistics of tensor NAME instead of the listing: for a ternary weight (I8 codes with
    /// a NAME.scale partner) the share of -1/0/+1 and invalid codes and the scales' min/mean/max;
    /// for float and integer tensors min/max/mean/std and the NaN/Inf count.
    ///
    /// Example: gguf-inspect model.gguf --tensor token_embd.weight
    #[arg(long, value_name = "NAME")]
    tensor: Option<String>,

    /// Print the same content as one JSON object on stdout (long values summarized the same way).
    ///
    /// Example: gguf-inspect model.gguf --json | jq '.tensors[].name'
    #[arg(long)]
    json: bool,
}

/// Why a run stopped.
enum Failure {
    /// Bad input or usage: one line, exit 2.
    Input(String),
    /// Writing the output failed.
    Output(std::io::Error),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Output(e)
    }
}

fn print_json(out: &mut impl Write, value: &impl serde::Serialize) -> Result<(), Failure> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

fn run(cli: &Cli) -> Result<(), Failure> {
    let name = cli.file.display().to_string();
    let file =
        gguf::GgufFile::open(&cli.file).map_err(|e| Failure::Input(format!("{name}: {e}")))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match &cli.tensor {
        None => {
            let report = report::Report::new(&name, &file);
            if cli.json {
                print_json(&mut out, &report)?;
            } else {
                render::report(&mut out, &report)?;
            }
        }
        Some(tensor) => {
            let row = report::Report::new(&name, &file)
                .tensors
                .into_iter()
                .find(|r| r.name == *tensor);
            let (Some(t), Some(row)) = (file.tensor(tensor), row) else {
                return Err(Failure::Input(format!(
                    "{name}: no tensor named {tensor:?} (run without --tensor to list them)"
                )));
            };
            let result = stats::TensorReport {
                file: name,
                tensor: row,
                stats: stats::tensor_stats(&file, &t),
            };
            if cli.json {
                print_json(&mut out, &result)?;
            } else {
                render::tensor_report(&mut out, &result)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: printed on stdout, success.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's message up to its usage block, joined into one line.
            let rendered = e.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .take_while(|line| !line.is_empty())
                .collect();
            let message = message.join(" ");
            let message = message.trim_start_matches("error: ");
            eprintln!("gguf-inspect: {message} (see gguf-inspect --help)");
            return ExitCode::from(2);
        }
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(Failure::Output(e)) => {
            eprintln!("gguf-inspect: cannot write the output: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Input(message)) => {
            eprintln!("gguf-inspect: {message}");
            ExitCode::from(2)
        }
    }
}
