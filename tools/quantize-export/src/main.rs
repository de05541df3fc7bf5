//! quantize-export: a training checkpoint folder → `model.gguf` (ternary weights) + `model.mhc`;
//! or a ternary model made elsewhere (`--hf DIR`, `--gguf FILE`: libs/import) → `model.gguf`.
//!
//! `quantize-export --checkpoint DIR --out model.gguf [--mhc-out model.mhc]
//! [--embedding f32|f16|q8_0] [--name NAME] [--json] [--allow-full-precision]`, or
//! `quantize-export --hf DIR | --gguf FILE --out model.gguf [--embedding f32|f16|q8_0] [--name NAME]
//! [--json]`. Exit codes: 0 written; 1 writing the outputs
//! failed; 2 bad usage or an inconsistent checkpoint (one line on stderr naming the file and the
//! tensor). Outputs appear whole, as a pair, or not at all.
//!
//! This file parses flags, prints the summary and maps errors to exit codes; checkpoint.rs reads
//! and checks the folder; `model::export` quantizes and writes (the same writer as the random test
//! models, and the quantization function training uses).

mod checkpoint;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use checkpoint::{Checkpoint, Weights};
use clap::Parser;
use model::export::{write_model, EmbeddingType, ExportError, ExportInput, ExportSummary};
use model::ModelConfig;

const EXAMPLES: &str = "\
Examples:
  quantize-export --checkpoint runs/tiny/checkpoint --out models/tiny.gguf
  quantize-export --checkpoint ckpt --out m.gguf --mhc-out m.mhc --embedding f16 --name tiny-v1
  quantize-export --checkpoint ckpt --out m.gguf --json | jq .bits_per_ternary_weight
  quantize-export --checkpoint ckpt --out m.gguf --embedding q8_0

The checkpoint folder (written by train) holds config.json (the model configuration),
tokenizer.json, trainer_state.json (\"step\", \"weights\": \"ternary\" or \"full_precision\") and
model.safetensors (F32 shadow weights named as in the GGUF, plus blk.N.attn_mhc / blk.N.ffn_mhc
for 2 or 4 residual streams). Tensors named mtp.* (multi-token-prediction heads) are training-only
and dropped; optimizer.safetensors, metrics.jsonl and loss.png are ignored.

Importing a ternary model made elsewhere (the rest of the pipeline then runs it unchanged):
  quantize-export --hf bitnet-b1.58-2B-4T/ --out models/bitnet-2b.gguf
  quantize-export --gguf TriLM_3.9B.TQ2_0.gguf --out models/trilm.gguf
  quantize-export --hf bitnet-b1.58-2B-4T/ --out models/bitnet-2b-q8.gguf --embedding q8_0
--hf reads a Hugging Face folder (config.json, *.safetensors, tokenizer.json,
tokenizer_config.json): model_type bitnet with packed 2-bit weights (BitLinear or AutoBitLinear)
or bf16/f32 master weights (quantized with BitNet's rule, absmean per tensor), or model_type llama
whose weights are ternary already. --gguf reads a llama.cpp file of architecture llama or bitnet
(sub-layer norms, output from the embedding) with TQ1_0 or TQ2_0 matrices, every trit and block
scale kept, its tokenizer.ggml.* vocabulary (gpt2 BPE or SentencePiece) rebuilt into
tokenizer.json. Both keep the source's chat template and BOS/EOS tokens, and by default its
embedding and head type (F32, F16, BF16, or Q8_0 with every block kept; F32 when the two differ).

--embedding q8_0 stores the token embedding and a tied or dense LM head as ggml's Q8_0 blocks
(32 values share one f16 scale d = max|x| / 127, q = round(x · (1 / d)): llama.cpp's rule, 8.5
bits a value instead of 16): decoding reads half the head's bytes, at the cost of each value
moving by up to half a step (max|x| / 254 of its block): on a random test model the logits move
by 0.3 % of their range from the head alone, 3 % with the embedding too. A ternary LM head is
unaffected.

Each weight matrix of a checkpoint is quantized per group of 128 weights along its rows (s = mean |w|,
q = clamp(round(w / s), -1, 1)), the quantization training's straight-through estimator applies,
and stored as 2-bit codes plus one f32 scale per group: 2.25 bits per weight when rows are a
multiple of 128 long.

Exit status: 0 ok, 1 writing failed, 2 bad usage or bad input (one line on stderr).";

/// Quantize a training checkpoint into a nanochat model: model.gguf (ternary weights, norms,
/// embedding, hyper-parameters, tokenizer) and, for 2 or 4 residual streams, model.mhc.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXAMPLES)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["checkpoint", "hf", "gguf"])))]
struct Cli {
    /// The checkpoint folder train wrote.
    ///
    /// Example: --checkpoint runs/tiny/checkpoint
    #[arg(long, value_name = "DIR")]
    checkpoint: Option<PathBuf>,

    /// Import a Hugging Face model folder (BitNet b1.58, or a Llama with ternary weights).
    ///
    /// Example: --hf models/bitnet-b1.58-2B-4T
    #[arg(long, value_name = "DIR", conflicts_with_all = ["mhc_out", "allow_full_precision"])]
    hf: Option<PathBuf>,

    /// Import a llama.cpp GGUF file whose weight matrices are TQ1_0 or TQ2_0.
    ///
    /// Example: --gguf models/TriLM_99M.TQ2_0.gguf
    #[arg(long, value_name = "FILE", conflicts_with_all = ["mhc_out", "allow_full_precision"])]
    gguf: Option<PathBuf>,

    /// The GGUF file to write (replaced if it exists).
    ///
    /// Example: --out models/tiny.gguf
    #[arg(long, value_name = "FILE")]
    out: PathBuf,

    /// The .mhc file to write, for a model with 2 or 4 residual streams (default: beside --out,
    /// extension .mhc, where serve and the loader look for it). An error for plain residuals.
    ///
    /// Example: --mhc-out models/tiny.mhc
    #[arg(long, value_name = "FILE")]
    mhc_out: Option<PathBuf>,

    /// Storage type of the token embedding and of a tied or dense LM head: f32 keeps the
    /// values exactly, f16 halves their size, q8_0 (llama.cpp's 8-bit blocks) halves it again
    /// and the bytes decoding reads with it. Default: f32 for a checkpoint, the source's type
    /// for an import.
    ///
    /// Example: --embedding q8_0
    #[arg(long, value_name = "TYPE", value_parser = ["f32", "f16", "q8_0"])]
    embedding: Option<String>,

    /// general.name of the model (default: the file name of --out without its extension).
    ///
    /// Example: --name tiny-v1
    #[arg(long, value_name = "NAME")]
    name: Option<String>,

    /// Print the summary as one JSON object on stdout instead of text.
    ///
    /// Example: --json
    #[arg(long)]
    json: bool,

    /// Export a checkpoint trained without the ternary straight-through estimator (an ablation):
    /// quantizing it gives a different model from the one training evaluated, so it is refused
    /// unless asked for (then with a warning on stderr).
    ///
    /// Example: --allow-full-precision
    #[arg(long)]
    allow_full_precision: bool,
}

/// Why a run stopped.
enum Failure {
    /// Bad usage or input: one line, exit 2.
    Input(String),
    /// Writing the outputs failed: one line, exit 1.
    Job(String),
    /// Writing stdout failed (a broken pipe is success).
    Stdout(std::io::Error),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Stdout(e)
    }
}

/// The `--json` summary.
#[derive(serde::Serialize)]
struct Report<'a> {
    checkpoint: &'a Path,
    step: u64,
    weights: Weights,
    config: &'a ModelConfig,
    embedding: EmbeddingType,
    #[serde(flatten)]
    export: &'a ExportSummary,
    dropped_training_only_tensors: usize,
}

/// An output path must name a file in an existing folder: checked before the long part.
fn check_output(path: &Path, flag: &str) -> Result<(), Failure> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if path.is_dir() {
        return Err(Failure::Input(format!(
            "{}: {flag} is a folder, expected a file path",
            path.display()
        )));
    }
    if !parent.is_dir() {
        return Err(Failure::Input(format!(
            "{}: cannot write {flag}: folder {} does not exist",
            path.display(),
            parent.display()
        )));
    }
    Ok(())
}

/// The one line for an export error: input problems name the checkpoint file they come from.
fn export_failure(ckpt: &Checkpoint, e: ExportError) -> Failure {
    let file = match &e {
        ExportError::Write(_) => return Failure::Job(e.to_string()),
        ExportError::Output { .. } => return Failure::Input(e.to_string()),
        ExportError::Config(_) => "config.json",
        ExportError::Tokenizer(_) => "tokenizer.json",
        ExportError::Missing(_)
        | ExportError::Shape { .. }
        | ExportError::Length { .. }
        | ExportError::NonFinite { .. }
        | ExportError::F16Range { .. }
        | ExportError::Q8_0 { .. }
        | ExportError::Mhc { .. } => "model.safetensors",
    };
    Failure::Input(format!("{}: {e}", ckpt.path(file).display()))
}

/// The `--json` summary of an import.
#[derive(serde::Serialize)]
struct ImportReport<'a> {
    source: &'a Path,
    source_kind: &'a str,
    config: &'a ModelConfig,
    embedding: EmbeddingType,
    #[serde(flatten)]
    export: &'a ExportSummary,
}

/// `--hf` / `--gguf`: read the model, then write it as the checkpoint path does.
fn import(cli: &Cli, source: &Path) -> Result<(), Failure> {
    check_output(&cli.out, "--out")?;
    let mut imported = match (&cli.hf, &cli.gguf) {
        (Some(dir), _) => import::hf::import(dir),
        _ => import::llamacpp::import(source),
    }
    // Every import error is about the input: a file that is missing, malformed or unsupported.
    .map_err(|e| Failure::Input(e.to_string()))?;
    if let Some(name) = &cli.name {
        imported.name = name.clone();
    }
    if let Some(embedding) = embedding_type(cli) {
        imported.embedding = embedding;
    }
    let summary = imported.write(&cli.out).map_err(|e| match e {
        ExportError::Write(_) => Failure::Job(e.to_string()),
        _ => Failure::Input(format!("{}: {e}", source.display())),
    })?;
    let mut out = std::io::stdout().lock();
    if cli.json {
        let report = ImportReport {
            source,
            source_kind: &imported.source_kind,
            config: &imported.config,
            embedding: imported.embedding,
            export: &summary,
        };
        serde_json::to_writer_pretty(&mut out, &report).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        let c = &imported.config;
        writeln!(out, "{}: {}", source.display(), imported.source_kind)?;
        writeln!(
            out,
            "config: dim {}, {} layers, {} heads ({} kv), ffn {} ({}{}), vocab {}, {} LM head, \
             scales per {}, {} embedding",
            c.dim,
            c.n_layers,
            c.n_heads,
            c.n_kv_heads,
            c.ffn_dim,
            c.variant.ffn_activation.name(),
            if c.variant.sub_norms {
                ", sub-layer norms"
            } else {
                ""
            },
            c.vocab_size,
            if c.tied_embeddings {
                "tied"
            } else if c.variant.dense_head {
                "dense"
            } else {
                "ternary"
            },
            c.variant.weight_scales.name(),
            imported.embedding.ggml_type(),
        )?;
        writeln!(
            out,
            "wrote {}: {} bytes, {} parameters, {:.4} bits per ternary weight as stored",
            summary.gguf_path.display(),
            summary.gguf_bytes,
            summary.parameters,
            summary.bits_per_ternary_weight
        )?;
    }
    out.flush()?;
    Ok(())
}

/// `--embedding`, if given.
fn embedding_type(cli: &Cli) -> Option<EmbeddingType> {
    cli.embedding.as_deref().map(|name| match name {
        "f16" => EmbeddingType::F16,
        "q8_0" => EmbeddingType::Q8_0,
        _ => EmbeddingType::F32,
    })
}

fn run(cli: &Cli) -> Result<(), Failure> {
    if let Some(source) = cli.hf.as_ref().or(cli.gguf.as_ref()) {
        return import(cli, source);
    }
    let dir = cli.checkpoint.as_ref().expect("clap requires one source");
    let ckpt = Checkpoint::open(dir).map_err(Failure::Input)?;
    if ckpt.weights == Weights::FullPrecision {
        let what = format!(
            "{}: the weights were trained in full precision (no ternary straight-through \
             estimator): the ternary export is a different model from the one trained",
            ckpt.path("trainer_state.json").display()
        );
        if !cli.allow_full_precision {
            return Err(Failure::Input(format!(
                "{what}; pass --allow-full-precision to export it anyway"
            )));
        }
        eprintln!("quantize-export: warning: {what}");
    }
    check_output(&cli.out, "--out")?;
    if let Some(path) = &cli.mhc_out {
        check_output(path, "--mhc-out")?;
    }
    let embedding = embedding_type(cli).unwrap_or(EmbeddingType::F32);
    let name = cli.name.clone().unwrap_or_else(|| {
        cli.out
            .file_stem()
            .map_or("nanochat".into(), |s| s.to_string_lossy().into_owned())
    });
    let lookup = |tensor: &str| ckpt.tensor(tensor);
    let input = ExportInput {
        config: &ckpt.config,
        name: &name,
        tokenizer_json: &ckpt.tokenizer_json,
        embedding,
        tensors: &lookup,
        ternary: None,
        chat: None,
    };
    let summary = write_model(&cli.out, cli.mhc_out.as_deref(), &input)
        .map_err(|e| export_failure(&ckpt, e))?;

    let mut out = std::io::stdout().lock();
    if cli.json {
        let report = Report {
            checkpoint: &ckpt.dir,
            step: ckpt.step,
            weights: ckpt.weights,
            config: &ckpt.config,
            embedding,
            export: &summary,
            dropped_training_only_tensors: ckpt.dropped,
        };
        serde_json::to_writer_pretty(&mut out, &report).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        print_text(&mut out, &ckpt, embedding, &summary)?;
    }
    out.flush()?;
    Ok(())
}

fn print_text(
    out: &mut impl Write,
    ckpt: &Checkpoint,
    embedding: EmbeddingType,
    s: &ExportSummary,
) -> std::io::Result<()> {
    let c = &ckpt.config;
    writeln!(
        out,
        "{}: step {}, {} weights",
        ckpt.dir.display(),
        ckpt.step,
        match ckpt.weights {
            Weights::Ternary => "ternary-trained",
            Weights::FullPrecision => "full-precision",
        }
    )?;
    writeln!(
        out,
        "config: dim {}, {} layers, {} heads ({} kv), ffn {}, {} residual stream{}, vocab {}, \
         {} LM head, {} embedding",
        c.dim,
        c.n_layers,
        c.n_heads,
        c.n_kv_heads,
        c.ffn_dim,
        c.mhc_streams,
        if c.mhc_streams == 1 { "" } else { "s" },
        c.vocab_size,
        if c.tied_embeddings { "tied" } else { "ternary" },
        embedding.ggml_type(),
    )?;
    writeln!(
        out,
        "parameters: {} ({:.2}M), ternary weights {}",
        s.parameters,
        s.parameters as f64 / 1e6,
        s.ternary_weights
    )?;
    writeln!(
        out,
        "wrote {}: {} bytes",
        s.gguf_path.display(),
        s.gguf_bytes
    )?;
    if let Some(mhc) = &s.mhc_path {
        writeln!(out, "wrote {}: {} bytes", mhc.display(), s.mhc_bytes)?;
    }
    writeln!(
        out,
        "bits per ternary weight: {:.4} (2-bit codes + one f32 scale per group of 128)",
        s.bits_per_ternary_weight
    )?;
    writeln!(
        out,
        "bits per parameter: {:.4} (both files, over all parameters)",
        s.bits_per_parameter
    )?;
    writeln!(
        out,
        "dropped training-only tensors ({}*): {}",
        checkpoint::TRAINING_ONLY_PREFIX,
        ckpt.dropped
    )
}

fn main() -> ExitCode {
    let cli: Cli = match cli::parse("quantize-export") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Stdout(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(Failure::Stdout(e)) => {
            eprintln!("quantize-export: cannot write to stdout: {e}");
            ExitCode::from(1)
        }
        Err(Failure::Input(message)) => {
            eprintln!("quantize-export: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Job(message)) => {
            eprintln!("quantize-export: {message}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
