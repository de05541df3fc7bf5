//! train: ternary quantization-aware training of a nanochat model on llm.c token files.
//!
//! ```text
//! train --config tiny --train train.bin --val val.bin --tokenizer tokenizer.json --out ckpt/ --steps 2000
//! train --resume --train train.bin --val val.bin --out ckpt/          (continues exactly)
//! train --sft pairs.jsonl --init ckpt/ --out sft/ --steps 300       (supervised fine-tuning)
//! ```
//! Exit codes: 0 done (or stopped by --stop-after / --max-minutes with a checkpoint); 1 the run
//! failed (NaN/Inf loss: the last good checkpoint is kept); 2 bad usage or bad input.
//!
//! This file parses flags into a validated `RunSpec`, prints progress on stderr, writes the JSONL
//! log and the loss-curve PNG; libs/train does the work.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use candle_core::Device;
use clap::Parser;
use model::ModelConfig;
use tokens::TokenFile;
use train::checkpoint::{self, WeightMode};
use train::optim::OptimConfig;
use train::plot::{draw_loss_curve, LossCurve};
use train::schedule::Wsd;
use train::sft::read_pairs;
use train::trainer::{RunSpec, SftSpec, TrainData, TrainError, Trainer};

// Training allocates and frees tensors of megabytes every op; glibc's malloc hands such blocks
// back to the kernel each time, and the page faults of re-mapping them cost a third of a step.
// mimalloc keeps them for reuse (for how long: `keep_freed_memory`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc hands freed memory back to the kernel (a purge: `madvise(MADV_DONTNEED)`) a second
/// after it was freed, and earlier when it collects; a training step frees its activations and
/// gradients and allocates them again in the next step, so every step faulted that memory back
/// in, the kernel zeroing the pages (`clear_page_erms`: 13-20 % of `train --bench`'s CPU time in
/// `perf record`, about 500 page faults a step). Any positive purge delay, even 10 s, still let
/// most of them through; -1 (never purge) leaves only the first touch of each page. The process
/// then keeps its peak working set until it exits. An explicit `MIMALLOC_PURGE_DELAY` wins.
fn keep_freed_memory() {
    // `mi_option_purge_delay` of mimalloc.h: 15 in both its v2 and v3 (the enum keeps deprecated
    // entries so that the numbers stay); libmimalloc-sys 0.1.49 does not export the constant.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set stores a value in mimalloc's option table (which it reads on each
        // purge decision); any enumerator below `_mi_option_last` is valid, and 15 is one.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
    }
}

const EXAMPLES: &str = "\
Examples:
  train --config tiny --train data/generated/train.bin --val data/generated/val.bin \\
        --tokenizer data/generated/tokenizer.json --out runs/tiny/ckpt --steps 2000
  train --config tiny --streams 4 --full-precision ...      (ablations: N=4 mHC, no ternary)
  train --resume --train data/generated/train.bin --val data/generated/val.bin --out runs/tiny/ckpt
  train --bench                                              (training tokens/s of the 5M model)
  train --sft runs/tiny/functions/pairs.jsonl --init runs/tiny/ckpt --out runs/tiny/sft \\
        --steps 300 --sft-chat-share 0.3                     (supervised fine-tuning)

The checkpoint folder (--out) holds model.safetensors, optimizer.safetensors, config.json,
tokenizer.json and trainer_state.json; it is replaced atomically every --checkpoint-every steps
and at the end. Metrics go to <out>/metrics.jsonl (one record per step and per evaluation) and
the loss curve to <out>/loss.png. --resume takes every run setting from the checkpoint and
continues bit-identically to an uninterrupted run (same machine, same --threads).

Supervised fine-tuning (--sft PAIRS --init DIR) trains a pretrained checkpoint on JSONL records
{\"name\", \"prompt\", \"completion\"}: the prompt a doc comment, signature and opening brace,
the completion the body through the closing brace. It keeps the checkpoint's model and weights
but starts a fresh optimizer state and its own schedule: --steps (default 300), a linear warmup
over a tenth of them, then a linear decay to 0. The peak learning rates default to 0.3 of the
--init run's: the weights already sit where pretraining left them, and full-size steps on
examples seen many times over overwrite what the corpus taught and fit the pairs by heart (the
tiny model, 300 steps on the 250 training pairs of tokenize functions: held-out loss 3.99 ->
3.15 at 0.1 of the rates, 2.98 at 0.3, 3.10 then 3.12 at 1; on 47 pairs a small file wants fewer
steps: 150 steps give 2.63 at 0.1, 2.64 after 50 then 2.92 at 0.3). A batch is --batch whole
examples padded to the longest one (causal attention keeps the padding from the real tokens); an
example longer than --seq-len + 1 tokens (default: the model's context) is skipped and counted.
The loss covers the completion and the <|endoftext|> after it, never the prompt or the padding.
--sft-chat-share draws that share of the examples as chat turns in the model's chat template
(what serve's /v1/chat/completions feeds it): the user asks for the function in the doc
comment's words, the assistant answers with the whole function in a ```rust block; loss on the
answer only. Validation is the completion loss of the held-out pairs (--sft-val-share, by name
hash; with chat turns also their chat loss), before the first step and every --eval-every steps.
The checkpoint, metrics.jsonl and progress lines are those of pretraining: quantize-export reads
the folder and --resume --sft PAIRS --out DIR continues it.

Exit status: 0 ok, 1 the run failed (non-finite loss; the last checkpoint is kept), 2 bad usage
or bad input (one line on stderr).";

/// Train a ternary nanochat model (BitNet b1.58 straight-through estimators, mHC-lite residual
/// streams, Muon + Lion, Warmup-Stable-Decay) on llm.c token files.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXAMPLES)]
struct Args {
    /// Training token file (from `tokenize encode`).
    ///
    /// Example: --train data/generated/train.bin
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present_any = ["bench", "sft"],
        conflicts_with = "sft"
    )]
    train: Option<PathBuf>,

    /// Validation token file: loss and bits per byte every --eval-every steps.
    ///
    /// Example: --val data/generated/val.bin
    #[arg(long, value_name = "FILE", conflicts_with = "sft")]
    val: Option<PathBuf>,

    /// Supervised fine-tuning on (prompt → completion) pairs, JSONL, instead of pretraining
    /// (see below); a bad record is refused with its line number.
    ///
    /// Example: --sft runs/tiny/functions/pairs.jsonl
    #[arg(long, value_name = "PAIRS")]
    sft: Option<PathBuf>,
    /// The pretrained checkpoint folder --sft starts from (its weights; not its optimizer state).
    ///
    /// Example: --init runs/tiny/ckpt
    #[arg(long, value_name = "DIR", requires = "sft")]
    init: Option<PathBuf>,
    /// --sft: share of the examples drawn as chat turns instead of plain completions (default 0).
    ///
    /// Example: --sft-chat-share 0.3
    #[arg(long, value_name = "F", requires = "sft")]
    sft_chat_share: Option<f64>,
    /// --sft: share of the pairs held out for validation, by name hash (default 0.1).
    ///
    /// Example: --sft-val-share 0.05
    #[arg(long, value_name = "F", requires = "sft")]
    sft_val_share: Option<f64>,

    /// Checkpoint folder to write (and, with --resume, to continue from).
    ///
    /// Example: --out runs/tiny/ckpt
    #[arg(long, value_name = "DIR", required_unless_present = "bench")]
    out: Option<PathBuf>,

    /// Continue the run saved in --out (all run settings come from the checkpoint).
    #[arg(long)]
    resume: bool,

    /// The tokenizer.json the token files were encoded with (copied into the checkpoint). The
    /// model's vocabulary is the tokenizer's size.
    ///
    /// Example: --tokenizer data/generated/tokenizer.json
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,

    /// Model preset (tiny, nano-125m, d20, 7b); the flags below override its fields.
    ///
    /// Example: --config tiny
    #[arg(long, value_name = "PRESET")]
    config: Option<String>,
    /// Hidden size. Example: --dim 256
    #[arg(long, value_name = "N")]
    dim: Option<usize>,
    /// Transformer blocks. Example: --layers 4
    #[arg(long, value_name = "N")]
    layers: Option<usize>,
    /// Query heads. Example: --heads 4
    #[arg(long, value_name = "N")]
    heads: Option<usize>,
    /// Key/value heads (grouped-query attention). Example: --kv-heads 2
    #[arg(long, value_name = "N")]
    kv_heads: Option<usize>,
    /// SwiGLU hidden size. Example: --ffn-dim 768
    #[arg(long, value_name = "N")]
    ffn_dim: Option<usize>,
    /// Longest sequence the model is built for. Example: --context 512
    #[arg(long, value_name = "N")]
    context: Option<usize>,
    /// Residual streams: 1 = plain residual (ablation), 2 or 4 = mHC-lite. Example: --streams 4
    #[arg(long, value_name = "N")]
    streams: Option<usize>,
    /// LM head tied to the embedding (true) or its own ternary weight (false).
    ///
    /// Example: --tied true
    #[arg(long, value_name = "BOOL")]
    tied: Option<bool>,
    /// Ablation: train full-precision weights and activations (no straight-through quantizers).
    #[arg(long)]
    full_precision: bool,
    /// Multi-token prediction: extra heads predicting tokens t+2.. (0 = off). Example: --mtp 2
    #[arg(long, value_name = "N")]
    mtp: Option<usize>,
    /// Loss weight of each MTP head. Example: --mtp-weight 0.3
    #[arg(long, value_name = "W")]
    mtp_weight: Option<f64>,
    /// Entropy regularization λ: minimise loss − λ·mean entropy (0 = off). Example: --entropy-reg 0.01
    #[arg(long, value_name = "L")]
    entropy_reg: Option<f64>,

    /// Optimizer steps of the whole run (default 1000; --sft: 300). Example: --steps 2000
    #[arg(long, value_name = "N")]
    steps: Option<u64>,
    /// Sequences (--sft: examples) per micro-batch. Example: --batch 8
    #[arg(long, value_name = "N")]
    batch: Option<usize>,
    /// Tokens per sequence (default 256; --sft: the longest example kept, default the context).
    ///
    /// Example: --seq-len 256
    #[arg(long, value_name = "N")]
    seq_len: Option<usize>,
    /// Micro-batches accumulated per optimizer step. Example: --grad-accum 4
    #[arg(long, value_name = "N")]
    grad_accum: Option<usize>,
    /// Peak learning rate of Muon (2-D hidden weights; --sft: default 0.3 of --init's).
    ///
    /// Example: --muon-lr 0.02
    #[arg(long, value_name = "LR")]
    muon_lr: Option<f64>,
    /// Peak learning rate of Lion (embedding, head, norms, mHC; --sft: default 0.3 of --init's).
    ///
    /// Example: --lion-lr 3e-4
    #[arg(long, value_name = "LR")]
    lion_lr: Option<f64>,
    /// Decoupled weight decay of both optimizers. Example: --weight-decay 0.01
    #[arg(long, value_name = "WD")]
    weight_decay: Option<f64>,
    /// Global gradient-norm clip (0 = off). Example: --grad-clip 1.0
    #[arg(long, value_name = "NORM")]
    grad_clip: Option<f64>,
    /// Warmup steps of the WSD schedule (--sft: default a tenth of the steps). Example: --warmup 100
    #[arg(long, value_name = "N")]
    warmup: Option<u64>,
    /// Share of the steps in the final linear decay (--sft: default all after the warmup).
    ///
    /// Example: --decay-fraction 0.2
    #[arg(long, value_name = "F")]
    decay_fraction: Option<f64>,
    /// Learning rate at the end, as a fraction of the peak (default 0.1; --sft: 0).
    ///
    /// Example: --final-lr-fraction 0.1
    #[arg(long, value_name = "F")]
    final_lr_fraction: Option<f64>,
    /// Seed of the initialisation and of the data windows. Example: --seed 1
    #[arg(long, value_name = "N")]
    seed: Option<u64>,

    /// Evaluate every N steps (and at the end). Example: --eval-every 100
    #[arg(long, value_name = "N", default_value_t = 100)]
    eval_every: u64,
    /// Validation windows of --seq-len tokens (--sft: held-out examples) per evaluation.
    ///
    /// Example: --eval-windows 64
    #[arg(long, value_name = "N", default_value_t = 64)]
    eval_windows: usize,
    /// Write the checkpoint every N steps (and at the end). Example: --checkpoint-every 500
    #[arg(long, value_name = "N", default_value_t = 500)]
    checkpoint_every: u64,
    /// Print a progress line every N steps. Example: --log-every 10
    #[arg(long, value_name = "N", default_value_t = 10)]
    log_every: u64,
    /// Stop (with a checkpoint) after this many steps of this invocation; --resume continues.
    ///
    /// Example: --stop-after 500
    #[arg(long, value_name = "N")]
    stop_after: Option<u64>,
    /// Stop (with a checkpoint and an evaluation) once this much wall time has passed.
    ///
    /// Example: --max-minutes 20
    #[arg(long, value_name = "M")]
    max_minutes: Option<f64>,
    /// Worker threads (default: one per core). Exact resume needs the same count.
    ///
    /// Example: --threads 2
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Measure training tokens/s of the 5M-parameter model (dim 256, 4 layers, 4 heads, seq 256,
    /// batch 8, vocab 4096) on random tokens, and exit.
    #[arg(long)]
    bench: bool,
    /// Optimizer steps timed by --bench (after two warm-up steps). Example: --bench-steps 10
    #[arg(long, value_name = "N", default_value_t = 8)]
    bench_steps: u64,
}

/// Why a run stopped early.
enum Failure {
    Input(String),
    Job(String),
}

impl From<TrainError> for Failure {
    fn from(e: TrainError) -> Self {
        match e {
            TrainError::Input(m) => Failure::Input(m),
            TrainError::Checkpoint(e) => Failure::Input(e.to_string()),
            other => Failure::Job(other.to_string()),
        }
    }
}

/// The spin count of candle's barrier pool (read when candle first uses the pool).
const SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// The thread count of candle's barrier pool, its element-wise ops (read on first use).
const CANDLE_THREADS_VAR: &str = "CANDLE_NUM_THREADS";

fn main() -> ExitCode {
    let args: Args = match cli::parse("train") {
        Ok(a) => a,
        Err(code) => return code,
    };
    keep_freed_memory();
    // candle's element-wise pool spins 25,000 times before parking its workers; training
    // alternates those ops with rayon work (matmuls, the fused kernels) on the same cores, so the
    // spinning steals them: a short spin gives 2,450 instead of 2,100 tokens/s on 2 cores.
    if std::env::var_os(SPIN_LIMIT_VAR).is_none() {
        std::env::set_var(SPIN_LIMIT_VAR, "100");
    }
    // The products and the fused kernels run on rayon; what is left to candle's own pool are
    // small element-wise ops (mHC's mixing constants, the stream copies, gradient sums), where
    // waking a second pool worker, and waiting for it when it is descheduled, costs more than
    // the work: on the calling thread alone, 8-16 % more tokens/s on a shared 2-core machine.
    if std::env::var_os(CANDLE_THREADS_VAR).is_none() {
        std::env::set_var(CANDLE_THREADS_VAR, "1");
    }
    if let Some(threads) = args.threads {
        // candle sizes its own pools from this variable (read on first use, below).
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
        {
            eprintln!("train: --threads {threads}: {e}");
            return ExitCode::from(2);
        }
    }
    let result = if args.bench { bench(&args) } else { run(&args) };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input(m)) => {
            eprintln!("train: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Job(m)) => {
            eprintln!("train: {m}");
            ExitCode::from(1)
        }
    }
}

/// The names of the flags given, of `flags`.
fn given(flags: &[(&'static str, bool)]) -> Vec<&'static str> {
    flags.iter().filter(|(_, g)| *g).map(|(n, _)| *n).collect()
}

/// The flags that define the model: refused with --sft (the model comes from --init).
fn model_flags(a: &Args) -> Vec<&'static str> {
    given(&[
        ("--tokenizer", a.tokenizer.is_some()),
        ("--config", a.config.is_some()),
        ("--dim", a.dim.is_some()),
        ("--layers", a.layers.is_some()),
        ("--heads", a.heads.is_some()),
        ("--kv-heads", a.kv_heads.is_some()),
        ("--ffn-dim", a.ffn_dim.is_some()),
        ("--context", a.context.is_some()),
        ("--streams", a.streams.is_some()),
        ("--tied", a.tied.is_some()),
        ("--full-precision", a.full_precision),
        ("--mtp", a.mtp.is_some()),
        ("--mtp-weight", a.mtp_weight.is_some()),
        ("--entropy-reg", a.entropy_reg.is_some()),
    ])
}

/// The flags that define a run: refused with --resume (the checkpoint has them).
fn run_setting_flags(a: &Args) -> Vec<&'static str> {
    let mut flags = model_flags(a);
    flags.extend(given(&[
        ("--init", a.init.is_some()),
        ("--sft-chat-share", a.sft_chat_share.is_some()),
        ("--sft-val-share", a.sft_val_share.is_some()),
        ("--steps", a.steps.is_some()),
        ("--batch", a.batch.is_some()),
        ("--seq-len", a.seq_len.is_some()),
        ("--grad-accum", a.grad_accum.is_some()),
        ("--muon-lr", a.muon_lr.is_some()),
        ("--lion-lr", a.lion_lr.is_some()),
        ("--weight-decay", a.weight_decay.is_some()),
        ("--grad-clip", a.grad_clip.is_some()),
        ("--warmup", a.warmup.is_some()),
        ("--decay-fraction", a.decay_fraction.is_some()),
        ("--final-lr-fraction", a.final_lr_fraction.is_some()),
        ("--seed", a.seed.is_some()),
    ]));
    flags
}

/// The model config: the preset with the flags' overrides, vocabulary from the tokenizer.
fn model_config(a: &Args, vocab_size: usize) -> Result<ModelConfig, Failure> {
    let preset = a.config.as_deref().unwrap_or("tiny");
    let mut c = ModelConfig::preset(preset).map_err(|e| Failure::Input(e.to_string()))?;
    c.vocab_size = vocab_size;
    let set = |field: &mut usize, v: Option<usize>| {
        if let Some(v) = v {
            *field = v;
        }
    };
    set(&mut c.dim, a.dim);
    set(&mut c.n_layers, a.layers);
    set(&mut c.n_heads, a.heads);
    set(&mut c.n_kv_heads, a.kv_heads);
    set(&mut c.ffn_dim, a.ffn_dim);
    set(&mut c.context_length, a.context);
    set(&mut c.mhc_streams, a.streams);
    if let Some(t) = a.tied {
        c.tied_embeddings = t;
    }
    if c.moe.is_some() {
        return Err(Failure::Input(format!(
            "preset {preset} is a mixture-of-experts model: training MoE is not supported"
        )));
    }
    c.validate()
        .map_err(|e| Failure::Input(format!("model config: {e}")))?;
    Ok(c)
}

/// `defaults` with the flags' overrides.
fn optim_config(a: &Args, defaults: OptimConfig) -> OptimConfig {
    OptimConfig {
        muon_lr: a.muon_lr.unwrap_or(defaults.muon_lr),
        lion_lr: a.lion_lr.unwrap_or(defaults.lion_lr),
        muon_weight_decay: a.weight_decay.unwrap_or(defaults.muon_weight_decay),
        lion_weight_decay: a.weight_decay.unwrap_or(defaults.lion_weight_decay),
        grad_clip: match a.grad_clip {
            Some(c) if c <= 0.0 => None,
            Some(c) => Some(c),
            None => defaults.grad_clip,
        },
        ..defaults
    }
}

/// The validated run settings of a fresh run.
fn run_spec(a: &Args, config: ModelConfig) -> Result<RunSpec, Failure> {
    let steps = a.steps.unwrap_or(1000);
    let optim = optim_config(a, OptimConfig::default());
    let seq_len = a.seq_len.unwrap_or(256.min(config.context_length));
    let spec = RunSpec {
        weights: if a.full_precision {
            WeightMode::FullPrecision
        } else {
            WeightMode::Ternary
        },
        mtp_heads: a.mtp.unwrap_or(0),
        mtp_weight: a.mtp_weight.unwrap_or(0.3),
        entropy_bonus: a.entropy_reg.unwrap_or(0.0),
        batch: a.batch.unwrap_or(8),
        seq_len,
        grad_accum: a.grad_accum.unwrap_or(1),
        steps,
        schedule: Wsd {
            warmup_steps: a.warmup.unwrap_or((steps / 20).min(200)),
            total_steps: steps,
            decay_fraction: a.decay_fraction.unwrap_or(0.2),
            final_lr_fraction: a.final_lr_fraction.unwrap_or(0.1),
        },
        optim,
        seed: a.seed.unwrap_or(0),
        // Recorded by the trainer from the data.
        train_tokens: 0,
        config,
        sft: None,
    };
    spec.validate().map_err(Failure::Input)?;
    Ok(spec)
}

/// Fine-tuning's peak learning rates as a share of the pretraining run's (see the help).
const SFT_LR_SCALE: f64 = 0.3;
/// Fine-tuning's default length.
const SFT_STEPS: u64 = 300;

/// The validated settings of a fine-tuning run from the checkpoint `base` (in `init`, at
/// `init_step`): its model, the flags' schedule and optimizer, fine-tuning's defaults.
fn sft_spec(a: &Args, base: RunSpec, init: &Path, init_step: u64) -> Result<RunSpec, Failure> {
    let steps = a.steps.unwrap_or(SFT_STEPS);
    let warmup = a.warmup.unwrap_or((steps / 10).max(1));
    let scaled = OptimConfig {
        muon_lr: base.optim.muon_lr * SFT_LR_SCALE,
        lion_lr: base.optim.lion_lr * SFT_LR_SCALE,
        ..base.optim.clone()
    };
    let spec = RunSpec {
        optim: optim_config(a, scaled),
        // Pretraining's regulariser; fine-tuning fits the answers' likelihood alone.
        entropy_bonus: 0.0,
        batch: a.batch.unwrap_or(8),
        seq_len: a.seq_len.unwrap_or(base.config.context_length),
        grad_accum: a.grad_accum.unwrap_or(1),
        steps,
        schedule: Wsd {
            warmup_steps: warmup,
            total_steps: steps,
            decay_fraction: a
                .decay_fraction
                .unwrap_or(steps.saturating_sub(warmup) as f64 / steps as f64),
            final_lr_fraction: a.final_lr_fraction.unwrap_or(0.0),
        },
        seed: a.seed.unwrap_or(base.seed),
        sft: Some(SftSpec {
            init: init.display().to_string(),
            init_step,
            chat_share: a.sft_chat_share.unwrap_or(0.0),
            val_share: a.sft_val_share.unwrap_or(0.1),
        }),
        ..base
    };
    spec.validate().map_err(Failure::Input)?;
    Ok(spec)
}

/// A fresh fine-tuning run: the --init checkpoint's model and weights, fine-tuning's settings.
fn fine_tuning(a: &Args, data: TrainData) -> Result<Trainer, Failure> {
    let init = a.init.as_deref().ok_or_else(|| {
        Failure::Input("--sft needs --init DIR, the pretrained checkpoint (or --resume)".into())
    })?;
    let refused = model_flags(a);
    if !refused.is_empty() {
        return Err(Failure::Input(format!(
            "--sft takes the model from --init: drop {}",
            refused.join(", ")
        )));
    }
    let ckpt = checkpoint::load(init, &Device::Cpu).map_err(|e| Failure::Input(e.to_string()))?;
    let base = RunSpec::of_checkpoint(&ckpt, init)?;
    let spec = sft_spec(a, base, init, ckpt.state.step)?;
    Ok(Trainer::from_weights(
        spec,
        ckpt.model,
        data,
        ckpt.tokenizer_json,
        a.eval_windows,
    )?)
}

fn open_tokens(path: &Path) -> Result<TokenFile, Failure> {
    TokenFile::open(path).map_err(|e| Failure::Input(e.to_string()))
}

fn run(a: &Args) -> Result<(), Failure> {
    let out = a.out.as_deref().expect("clap requires --out");
    let data = match &a.sft {
        Some(path) => TrainData::Pairs {
            path: path.clone(),
            pairs: read_pairs(path).map_err(|e| Failure::Input(e.to_string()))?,
        },
        None => TrainData::Tokens {
            train: open_tokens(
                a.train
                    .as_deref()
                    .expect("clap requires --train without --sft"),
            )?,
            val: a.val.as_deref().map(open_tokens).transpose()?,
        },
    };
    let mut trainer = if a.resume {
        let flags = run_setting_flags(a);
        if !flags.is_empty() {
            return Err(Failure::Input(format!(
                "--resume takes the run settings from the checkpoint: drop {}",
                flags.join(", ")
            )));
        }
        let t = Trainer::resume(out, data, a.eval_windows)?;
        eprintln!(
            "train: resuming {} at step {} of {}",
            out.display(),
            t.step_count(),
            t.spec().steps
        );
        t
    } else if out.join("trainer_state.json").exists() {
        return Err(Failure::Input(format!(
            "{} already holds a checkpoint: pass --resume to continue it, or choose another --out",
            out.display()
        )));
    } else if a.sft.is_some() {
        fine_tuning(a, data)?
    } else {
        let tokenizer_path = a
            .tokenizer
            .as_deref()
            .ok_or_else(|| Failure::Input("a fresh run needs --tokenizer (or --resume)".into()))?;
        let tokenizer_json = std::fs::read_to_string(tokenizer_path)
            .map_err(|e| Failure::Input(format!("{}: {e}", tokenizer_path.display())))?;
        let vocab = model::Tokenizer::from_json(&tokenizer_json)
            .map_err(|e| Failure::Input(format!("{}: {e}", tokenizer_path.display())))?
            .vocab_size();
        let config = model_config(a, vocab)?;
        let spec = run_spec(a, config)?;
        Trainer::new(spec, data, tokenizer_json, a.eval_windows)?
    };
    print_plan(&trainer);
    std::fs::create_dir_all(out).map_err(|e| Failure::Input(format!("{}: {e}", out.display())))?;
    let log_path = out.join("metrics.jsonl");
    let mut log = MetricsLog::open(&log_path, trainer.step_count())?;

    let started = Instant::now();
    if trainer.spec().sft.is_some() && trainer.step_count() == 0 {
        // The pretrained model on the held-out pairs: what fine-tuning is measured against.
        log_evaluation(&trainer, &mut log, 0.0)?;
    }
    let first_step = trainer.step_count();
    let total = trainer.spec().steps;
    let time_limit = a.max_minutes.map(|m| m * 60.0);
    let mut last_saved = first_step;
    while !trainer.is_done() {
        let record = match trainer.step() {
            Ok(r) => r,
            Err(e @ TrainError::NonFinite { .. }) => {
                log.flush();
                return Err(Failure::Job(format!(
                    "{e}; checkpoint in {} is from step {last_saved}",
                    out.display()
                )));
            }
            Err(e) => return Err(e.into()),
        };
        log.write(serde_json::json!({"kind": "step", "elapsed_s": started.elapsed().as_secs_f64(), "record": record}));
        let step = record.step;
        let done_here = step - first_step;
        let elapsed = started.elapsed().as_secs_f64();
        if step % a.log_every.max(1) == 0 || step == total || step == first_step + 1 {
            let eta = elapsed / done_here as f64 * (total - step) as f64;
            eprintln!(
                "step {step:>6}/{total}  loss {:.4}  lr x{:.3}  grad {:.3}  {:.0} tok/s  eta {}",
                record.loss,
                record.lr_factor,
                record.grad_norm,
                record.tokens_per_s,
                format_duration(eta)
            );
        }
        let out_of_time = time_limit.is_some_and(|limit| elapsed >= limit);
        let stop = a.stop_after.is_some_and(|n| done_here >= n) || out_of_time;
        let last = trainer.is_done() || stop;
        if step % a.eval_every.max(1) == 0 || last {
            log_evaluation(&trainer, &mut log, elapsed)?;
        }
        if step % a.checkpoint_every.max(1) == 0 || last {
            log.flush();
            trainer.save(out)?;
            last_saved = step;
        }
        if stop {
            eprintln!(
                "train: stopped at step {step} of {total} ({}); continue with --resume",
                if out_of_time {
                    "--max-minutes"
                } else {
                    "--stop-after"
                }
            );
            break;
        }
    }
    log.flush();
    let png = out.join("loss.png");
    match draw_loss_curve(&read_curve(&log_path)?, &png, 900, 500) {
        Ok(()) => eprintln!("train: loss curve {}", png.display()),
        Err(e) => eprintln!("train: no loss curve: {e}"),
    }
    eprintln!(
        "train: {} steps in {}, checkpoint {}",
        trainer.step_count() - first_step,
        format_duration(started.elapsed().as_secs_f64()),
        out.display()
    );
    Ok(())
}

/// Evaluates, prints the figures and logs them (nothing without validation data).
fn log_evaluation(trainer: &Trainer, log: &mut MetricsLog, elapsed_s: f64) -> Result<(), Failure> {
    if let Some(eval) = trainer.evaluate()? {
        let chat = eval
            .val_chat_loss
            .map(|l| format!("  chat loss {l:.4}"))
            .unwrap_or_default();
        eprintln!(
            "eval  step {}: val loss {:.4}  bpb {:.4}{chat}  mHC gain {:.4}",
            eval.step, eval.val_loss, eval.val_bpb, eval.mhc_gain
        );
        log.write(serde_json::json!({"kind": "eval", "elapsed_s": elapsed_s, "record": eval}));
    }
    Ok(())
}

fn print_plan(t: &Trainer) {
    let spec = t.spec();
    let c = &spec.config;
    let params: u64 = t
        .model()
        .parameters()
        .iter()
        .map(|(_, v)| v.elem_count() as u64)
        .sum();
    // FP32 weights, their gradients, one optimizer moment each, plus activations of one batch.
    let state_bytes = params * 4 * 3;
    eprintln!(
        "train: dim {} layers {} heads {}/{} ffn {} vocab {} streams {} {} head, {} weights{}",
        c.dim,
        c.n_layers,
        c.n_heads,
        c.n_kv_heads,
        c.ffn_dim,
        c.vocab_size,
        c.mhc_streams,
        if c.tied_embeddings { "tied" } else { "ternary" },
        match spec.weights {
            WeightMode::Ternary => "ternary",
            WeightMode::FullPrecision => "full-precision",
        },
        if spec.mtp_heads > 0 {
            format!(", {} MTP heads", spec.mtp_heads)
        } else {
            String::new()
        }
    );
    let per_step = match spec.sft {
        None => format!(
            "{} tokens/step ({} x {} x {})",
            spec.tokens_per_step(),
            spec.batch,
            spec.seq_len,
            spec.grad_accum
        ),
        Some(_) => format!(
            "{} examples/step ({} x {}) of at most {} tokens",
            spec.batch * spec.grad_accum,
            spec.batch,
            spec.grad_accum,
            spec.seq_len + 1
        ),
    };
    eprintln!(
        "train: {:.2}M parameters; weights + gradients + optimizer state {:.1} MB; {per_step}, {} steps",
        params as f64 / 1e6,
        state_bytes as f64 / 1e6,
        spec.steps
    );
    if let (Some(sft), Some(summary)) = (&spec.sft, t.sft_summary()) {
        eprintln!(
            "train: fine-tuning {} (step {}): {} pairs, {} to train on, {} held out (by name hash); \
             skipped as longer than {} tokens: {} completions, {} chat turns; chat share {}; \
             peak lr muon {:.3e} lion {:.3e}",
            sft.init,
            sft.init_step,
            summary.pairs,
            summary.train_pairs,
            summary.val_pairs,
            spec.seq_len + 1,
            summary.too_long_completions,
            summary.too_long_chats,
            sft.chat_share,
            spec.optim.muon_lr,
            spec.optim.lion_lr
        );
    }
}

/// The JSONL metrics log: appended to, after dropping records past the checkpoint's step (a
/// resumed run repeats those steps).
struct MetricsLog {
    file: std::io::BufWriter<File>,
}

impl MetricsLog {
    fn open(path: &Path, resume_step: u64) -> Result<Self, Failure> {
        let fail = |e: std::io::Error| Failure::Input(format!("{}: {e}", path.display()));
        let kept: Vec<String> = if resume_step > 0 && path.exists() {
            BufReader::new(File::open(path).map_err(fail)?)
                .lines()
                .map_while(Result::ok)
                .filter(|line| {
                    serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .and_then(|v| v["record"]["step"].as_u64())
                        .is_some_and(|s| s <= resume_step)
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .map_err(fail)?;
        for line in kept {
            writeln!(file, "{line}").map_err(fail)?;
        }
        Ok(MetricsLog {
            file: std::io::BufWriter::new(file),
        })
    }

    fn write(&mut self, record: serde_json::Value) {
        // Metrics are best effort: a full disk must not kill a training run.
        let _ = writeln!(self.file, "{record}");
    }

    fn flush(&mut self) {
        let _ = self.file.flush();
    }
}

/// The training and validation loss points of a metrics log.
fn read_curve(path: &Path) -> Result<LossCurve, Failure> {
    let file = File::open(path).map_err(|e| Failure::Job(format!("{}: {e}", path.display())))?;
    let mut curve = LossCurve {
        title: "training loss (nats/token)".into(),
        ..LossCurve::default()
    };
    for line in BufReader::new(file).lines().map_while(Result::ok) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let r = &v["record"];
        let step = r["step"].as_f64().unwrap_or(f64::NAN);
        match v["kind"].as_str() {
            Some("step") => curve
                .train
                .push((step, r["loss"].as_f64().unwrap_or(f64::NAN))),
            Some("eval") => curve
                .val
                .push((step, r["val_loss"].as_f64().unwrap_or(f64::NAN))),
            _ => {}
        }
    }
    Ok(curve)
}

fn format_duration(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "?".into();
    }
    let s = seconds.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// `--bench`: tokens/s of full optimizer steps of the 5M model on random tokens.
fn bench(a: &Args) -> Result<(), Failure> {
    let dir = std::env::temp_dir().join(format!("nanochat-train-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Failure::Job(e.to_string()))?;
    let result = bench_in(a, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench_in(a: &Args, dir: &Path) -> Result<(), Failure> {
    let vocab = 4096;
    let mut config = ModelConfig::preset("tiny").map_err(|e| Failure::Job(e.to_string()))?;
    config.vocab_size = vocab;
    if let Some(s) = a.streams {
        config.mhc_streams = s;
    }
    let path = dir.join("bench.bin");
    let mut writer =
        tokens::TokenFileWriter::create(&path).map_err(|e| Failure::Job(e.to_string()))?;
    let mut x = 0x9E37_79B9u64;
    let random: Vec<u16> = (0..200_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % vocab as u64) as u16
        })
        .collect();
    writer
        .write(&random)
        .and_then(|_| writer.finish().map(|_| ()))
        .map_err(|e| Failure::Job(e.to_string()))?;
    let file = open_tokens(&path)?;
    let steps = a.bench_steps.max(1) + 2;
    let mut spec = run_spec(a, config)?;
    spec.steps = steps;
    spec.schedule.total_steps = steps;
    spec.schedule.warmup_steps = 1;
    let tokenizer = model::tokenizer::byte_level_json(vocab);
    let data = TrainData::Tokens {
        train: file,
        val: None,
    };
    let mut trainer = Trainer::new(spec, data, tokenizer, 0)?;
    print_plan(&trainer);
    let mut rates = Vec::new();
    for i in 0..steps {
        let r = trainer.step()?;
        if i >= 2 {
            rates.push(r.tokens_per_s);
        }
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!(
        "train --bench: {} timed steps of {} tokens, {} threads: median {:.0} tokens/s (min {:.0}, max {:.0})",
        rates.len(),
        trainer.spec().tokens_per_step(),
        rayon::current_num_threads(),
        median,
        rates[0],
        rates[rates.len() - 1]
    );
    Ok(())
}
