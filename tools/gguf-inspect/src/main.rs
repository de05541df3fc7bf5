//! gguf-inspect: lists a GGUF file (header, metadata, tensor table, totals) or one tensor's
//! statistics, as text or JSON.
//!
//! `gguf-inspect [model.gguf] [--tensor NAME] [--mhc model.mhc] [--json]` (at least one of the
//! GGUF file and `--mhc`). Exit codes: 0 listed, 2 bad usage or a file that is not valid GGUF or
//! `.mhc` (one line on stderr naming the file and the problem, with the byte offset). A closed
//! stdout (`| head`) is not an error.
//!
//! This file only parses flags, runs one mode and maps the result to an exit code: report.rs
//! gathers what is shown of a GGUF file, stats.rs computes tensor statistics, mhc_report.rs gathers
//! what is shown of a `.mhc` file, render.rs prints text. Both files are read and checked before
//! anything is printed; with both, the GGUF listing comes first, then the `.mhc` one (in JSON, the
//! latter under the `"mhc"` key of the same object).

mod mhc_report;
mod render;
mod report;
mod stats;

use clap::Parser;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const EXAMPLES: &str = "\
Examples:
  gguf-inspect model.gguf                               header, metadata, tensors, totals
  gguf-inspect model.gguf --tensor blk.0.attn_q.weight  code shares and scale range of one weight
  gguf-inspect model.gguf --json | jq .totals           the same listing as JSON
  gguf-inspect --mhc model.mhc                          mHC matrices, checks, composite gain
  gguf-inspect model.gguf --mhc model.mhc --json        both files, the .mhc under key mhc

Shapes are printed outermost first ([rows, cols]); GGUF stores them reversed (ne[0] = cols).
A ternary weight NAME is the pair NAME (I8, 4 packed 2-bit codes a byte) + NAME.scale (F32, one
scale per 128 weights); it counts as rows x cols parameters.

A .mhc file holds 2 mHC modules per layer (attention, then FFN). For each, --mhc prints H_res
(n x n), h_pre, h_post and whether H_res is doubly stochastic (entries >= 0, every row and column
summing to 1 within 1e-6), then the product of all H_res (first module applied first) and its
composite gain max(row sums, column sums), which is 1 up to rounding.

Exit status: 0 ok, 2 bad usage or a malformed file (one line on stderr).";

/// List a GGUF file (header, metadata, tensors and totals, or one tensor's statistics) and/or a
/// .mhc file (mHC matrices, doubly-stochastic checks, composite gain).
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXAMPLES)]
#[command(group(clap::ArgGroup::new("input").args(["file", "mhc"]).required(true).multiple(true)))]
struct Cli {
    /// The GGUF file to list (may be left out when --mhc is given).
    ///
    /// Example: gguf-inspect model.gguf
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,

    /// Also (or only) list the .mhc file MHC: n_layers, n_streams, every module's H_res, h_pre,
    /// h_post and doubly-stochastic check (tolerance 1e-6), and the composite gain across depth.
    ///
    /// Example: gguf-inspect --mhc model.mhc
    #[arg(long, value_name = "MHC")]
    mhc: Option<PathBuf>,

    /// Print statistics of tensor NAME instead of the listing: for a ternary weight (I8 codes with
    /// a NAME.scale partner) the share of -1/0/+1 and invalid codes and the scales' min/mean/max;
    /// for float and integer tensors min/max/mean/std and the NaN/Inf count.
    ///
    /// Example: gguf-inspect model.gguf --tensor token_embd.weight
    #[arg(long, value_name = "NAME", requires = "file")]
    tensor: Option<String>,

    /// Print the same content as one JSON object on stdout (long values summarized the same way;
    /// the .mhc listing under the "mhc" key).
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

fn to_json(value: &impl serde::Serialize) -> Result<serde_json::Value, Failure> {
    serde_json::to_value(value).map_err(|e| Failure::Output(std::io::Error::from(e)))
}

/// What the GGUF file shows: the listing or one tensor's statistics.
enum GgufOutput {
    Listing(report::Report),
    Tensor(stats::TensorReport),
}

fn gguf_output(path: &Path, tensor: Option<&str>) -> Result<GgufOutput, Failure> {
    let name = path.display().to_string();
    let file = gguf::GgufFile::open(path).map_err(|e| Failure::Input(format!("{name}: {e}")))?;
    let report = report::Report::new(&name, &file);
    let Some(tensor) = tensor else {
        return Ok(GgufOutput::Listing(report));
    };
    let row = report.tensors.into_iter().find(|r| r.name == *tensor);
    let (Some(t), Some(row)) = (file.tensor(tensor), row) else {
        return Err(Failure::Input(format!(
            "{name}: no tensor named {tensor:?} (run without --tensor to list them)"
        )));
    };
    Ok(GgufOutput::Tensor(stats::TensorReport {
        file: name,
        tensor: row,
        stats: stats::tensor_stats(&file, &t),
    }))
}

fn mhc_output(path: &Path) -> Result<mhc_report::MhcReport, Failure> {
    // The error names the file: "FILE: problem".
    let file = mhc::MhcFile::read(path).map_err(|e| Failure::Input(e.to_string()))?;
    Ok(mhc_report::MhcReport::new(
        &path.display().to_string(),
        &file,
    ))
}

fn run(cli: &Cli) -> Result<(), Failure> {
    // Read and check both inputs before printing anything.
    let gguf = match &cli.file {
        Some(path) => Some(gguf_output(path, cli.tensor.as_deref())?),
        None => None,
    };
    let mhc = match &cli.mhc {
        Some(path) => Some(mhc_output(path)?),
        None => None,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if cli.json {
        let mut value = match &gguf {
            Some(GgufOutput::Listing(r)) => to_json(r)?,
            Some(GgufOutput::Tensor(r)) => to_json(r)?,
            None => serde_json::Value::Object(serde_json::Map::new()),
        };
        if let (Some(m), serde_json::Value::Object(map)) = (&mhc, &mut value) {
            map.insert("mhc".to_string(), to_json(m)?);
        }
        print_json(&mut out, &value)?;
    } else {
        match &gguf {
            Some(GgufOutput::Listing(r)) => render::report(&mut out, r)?,
            Some(GgufOutput::Tensor(r)) => render::tensor_report(&mut out, r)?,
            None => {}
        }
        if let Some(m) = &mhc {
            if gguf.is_some() {
                writeln!(out)?;
            }
            render::mhc_report(&mut out, m)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn main() -> ExitCode {
    let cli: Cli = match cli::parse("gguf-inspect") {
        Ok(cli) => cli,
        Err(code) => return code,
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
