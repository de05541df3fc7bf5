//! Cross-tool tests of `train` (and `quantize-export` after it), on a generated Rust corpus
//! (fixed by its seed: `cross_tool_tests::corpus`) tokenized by the real `tokenize` binary.
//!
//! - Resume: a run stopped at step 3 and resumed ends at step 8 with byte-identical
//!   model.safetensors and optimizer.safetensors, and the same logged losses, as an uninterrupted
//!   run.
//! - Train/inference parity: a trained small model's candle logits (quantized forward) and
//!   libs/model's logits on the exported GGUF + .mhc agree to float rounding at three quarters of
//!   the positions or more and within 2 % of the logit range at all (an int8 code one step apart
//!   explains the rest), and greedy generation picks candle's best token or a tie within the
//!   rows' difference.
//! - Bad inputs exit 2 with one line; a non-finite loss exits 1 and keeps the last checkpoint.
//! - Supervised fine-tuning (`--sft`) of a pretrained checkpoint on pairs made from the RL warm-up
//!   set: the completion tokens' likelihood (measured here from the logits, not by the trainer's
//!   mask) rises far more than the prompt tokens'; the checkpoint exports and serves; a resumed
//!   fine-tuning run matches an uninterrupted one bit for bit; bad pairs files and flags exit 2.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use assert_cmd::Command;
use candle_core::{Device, Tensor};
use cross_tool_tests::read_jsonl;
use model::{KvCache, KvPrecision, Logits, Model, SeqInput};
use serde_json::Value as Json;

fn bin(name: &str) -> Command {
    Command::cargo_bin(name).expect("the binaries are built (make test builds them first)")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// Runs `tool` with `args`; returns (exit code, stdout, stderr).
fn run(tool: &str, args: &[&str]) -> (i32, String, String) {
    let out = bin(tool).args(args).output().expect("the tool runs");
    (
        out.status.code().expect("exit code, not a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_ok(tool: &str, args: &[&str]) -> String {
    let (code, stdout, stderr) = run(tool, args);
    assert_eq!(code, 0, "{tool} {args:?}: {stderr}");
    stdout
}

/// Tokenizer and token files of the project's library sources, made once per test binary.
struct Data {
    _dir: tempfile::TempDir,
    tokenizer: PathBuf,
    train: PathBuf,
    val: PathBuf,
}

fn data() -> &'static Data {
    static DATA: OnceLock<Data> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        // A generated corpus, not libs/: the parity test below must see the same trained model
        // whatever the project's source says.
        let corpus = dir.path().join("corpus");
        cross_tool_tests::corpus::write_rust_corpus(&corpus, 60, 400, 11);
        let tokenizer = dir.path().join("tokenizer.json");
        let (train, val) = (dir.path().join("train.bin"), dir.path().join("val.bin"));
        run_ok(
            "tokenize",
            &[
                "train",
                "--input",
                s(&corpus),
                "--vocab-size",
                "384",
                "--out",
                s(&tokenizer),
            ],
        );
        run_ok(
            "tokenize",
            &[
                "encode",
                "--tokenizer",
                s(&tokenizer),
                "--input",
                s(&corpus),
                "--out",
                s(&train),
                "--val-out",
                s(&val),
                "--val-fraction",
                "0.1",
            ],
        );
        Data {
            _dir: dir,
            tokenizer,
            train,
            val,
        }
    })
}

/// The flags a fresh run and its `--resume` share: data, output folder, threads, evaluation.
fn data_flags(out: &Path) -> Vec<String> {
    let d = data();
    #[rustfmt::skip]
    let flags = [
        "--train", s(&d.train), "--val", s(&d.val), "--out", s(out),
        "--threads", "2", "--eval-every", "4", "--eval-windows", "4",
    ];
    flags.map(String::from).to_vec()
}

/// The flags of a small, fast run (the tiny preset narrowed) writing into `out`.
fn small_run(out: &Path, streams: &str, steps: &str) -> Vec<String> {
    #[rustfmt::skip]
    let settings = [
        "--tokenizer", s(&data().tokenizer), "--config", "tiny", "--dim", "64", "--layers", "2",
        "--heads", "4", "--kv-heads", "2", "--ffn-dim", "128", "--context", "64",
        "--seq-len", "32", "--batch", "4", "--streams", streams, "--steps", steps,
        "--log-every", "1", "--seed", "3",
    ];
    let mut flags = data_flags(out);
    flags.extend(settings.map(String::from));
    flags
}

/// `args` with `flag` set to `value` (replaced when present, else appended).
fn with(mut args: Vec<String>, flag: &str, value: &str) -> Vec<String> {
    match args.iter().position(|a| a == flag) {
        Some(i) => args[i + 1] = value.to_string(),
        None => args.extend([flag.to_string(), value.to_string()]),
    }
    args
}

fn train_ok(args: &[String]) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, stderr) = run("train", &args);
    assert_eq!(code, 0, "train {args:?}: {stderr}");
    stderr
}

fn records(out: &Path, kind: &str) -> Vec<Json> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Json>(l).unwrap())
        .filter(|v| v["kind"] == kind)
        .map(|v| v["record"].clone())
        .collect()
}

#[test]
fn a_resumed_run_matches_an_uninterrupted_one_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, split) = (dir.path().join("whole"), dir.path().join("split"));
    let stderr = train_ok(&small_run(&whole, "2", "8"));
    assert!(stderr.contains("parameters"), "{stderr}");
    let mut first = small_run(&split, "2", "8");
    first.extend(["--stop-after".into(), "3".into()]);
    let stderr = train_ok(&first);
    assert!(stderr.contains("stopped at step 3"), "{stderr}");
    let state: Json =
        serde_json::from_str(&std::fs::read_to_string(split.join("trainer_state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"], 3);
    let mut resume = vec!["--resume".to_string()];
    resume.extend(data_flags(&split));
    train_ok(&resume);
    for file in [
        "model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
    ] {
        let a = std::fs::read(whole.join(file)).unwrap();
        let b = std::fs::read(split.join(file)).unwrap();
        assert!(
            a == b,
            "{file} differs between the whole and the resumed run"
        );
    }
    let (a, b) = (records(&whole, "step"), records(&split, "step"));
    assert_eq!(a.len(), 8);
    assert_eq!(b.len(), 8, "the resumed log has each step once");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["step"], y["step"]);
        assert_eq!(x["loss"], y["loss"], "step {}", x["step"]);
    }
    let evals = records(&whole, "eval");
    assert_eq!(evals.len(), 2, "steps 4 and 8");
    for e in &evals {
        let bpb = e["val_bpb"].as_f64().unwrap();
        assert!(bpb.is_finite() && bpb > 0.0, "{e}");
        assert!(e["mhc_gain"].as_f64().unwrap() >= 0.99, "{e}");
    }
    assert!(whole.join("loss.png").exists());
}

/// Candle logits `[T, V]` of `tokens` from the checkpoint in `dir`.
fn candle_logits(model: &train::model::TrainModel, tokens: &[u32]) -> Vec<Vec<f32>> {
    let t = Tensor::from_vec(tokens.to_vec(), (1, tokens.len()), &Device::Cpu).unwrap();
    let logits = model.logits(&t).unwrap();
    logits.to_vec2::<f32>().unwrap()
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn exported_model_runs_the_same_numbers_as_the_training_graph() {
    for (streams, tied) in [("2", "false"), ("4", "true"), ("1", "false")] {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("ckpt");
        train_ok(&with(small_run(&ckpt, streams, "30"), "--tied", tied));
        let gguf = dir.path().join("model.gguf");
        run_ok(
            "quantize-export",
            &["--checkpoint", s(&ckpt), "--out", s(&gguf)],
        );

        let loaded = train::checkpoint::load(&ckpt, &Device::Cpu).unwrap();
        let options = train::model::GraphOptions {
            weights: loaded.state.weights,
            mtp_heads: 0,
        };
        let graph =
            train::model::TrainModel::from_tensors(&loaded.config, options, loaded.model).unwrap();
        let (engine_model, tokenizer) = Model::load(&gguf, None).unwrap();
        assert_eq!(engine_model.config, loaded.config);

        let (mut exact_positions, mut positions) = (0, 0);
        for prompt in [
            "fn main() {\n    let x = 1;",
            "pub fn parse(input: &str) -> Result<u32, String> {",
            "impl Default for Config {",
        ] {
            let tokens = tokenizer.encode(prompt).unwrap();
            assert!(tokens.len() >= 4, "{prompt:?}");
            let want = candle_logits(&graph, &tokens);
            // An f32 KV cache holds exactly what the training graph computes; the default f16
            // one is checked against it below.
            let engine_logits = |precision| {
                let (layers, kv_dim) = (loaded.config.n_layers, loaded.config.kv_dim());
                let mut cache = KvCache::with_precision(layers, kv_dim, precision);
                engine_model
                    .forward(&mut [SeqInput {
                        cache: &mut cache,
                        tokens: &tokens,
                        logits: Logits::All,
                    }])
                    .remove(0)
            };
            let got = engine_logits(KvPrecision::F32);
            let v = loaded.config.vocab_size;
            let range = logit_range(&want);
            // The two implementations agree to float rounding (~1e-6), except where an
            // activation lies within that rounding of an int8 quantization boundary: one code
            // then differs by one step, and the positions after it (which attend to it) move by
            // about a quantization step, a fraction of a percent of the logit range. Such flips
            // are common enough (thousands of quantized values per prompt) that any prompt may
            // show one; a real error (a wrong scale, mixing or rotation) moves every position
            // by a good part of the range.
            let rows: Vec<&[f32]> = got.chunks_exact(v).collect();
            let deltas: Vec<f32> = rows
                .iter()
                .zip(&want)
                .map(|(a, b)| max_delta(a, b))
                .collect();
            let worst = deltas.iter().copied().fold(0.0f32, f32::max);
            let exact_rows = deltas.iter().filter(|&&d| d <= 1e-5 * range).count();
            eprintln!(
                "streams {streams} tied {tied} {prompt:?}: max |Δ| {worst:.2e} over range \
                 {range:.2}, {exact_rows} of {} positions to rounding",
                deltas.len()
            );
            assert!(worst <= 0.02 * range, "max |Δ| {worst} over range {range}");
            (exact_positions, positions) = (exact_positions + exact_rows, positions + deltas.len());

            // Rounding keys and values to f16 moves the logits by a small fraction of their
            // range (through the int8 quantization of the attention output, whose codes it
            // flips here and there).
            let half = engine_logits(KvPrecision::F16);
            let drift = max_delta(&half, &got);
            eprintln!("  f16 KV cache: max |Δ| {drift:.2e} from the f32 one");
            assert!(
                drift <= 0.02 * range,
                "f16 KV: max |Δ| {drift} over range {range}"
            );

            // Greedy generation, KV cache in libs/model against a full recompute in candle: at
            // every step the engine's token must be candle's best, or tie with it within the
            // two logit rows' difference at that step (a flip can reorder a near-tie, and
            // nothing else may).
            let mut cache = KvCache::with_precision(
                loaded.config.n_layers,
                loaded.config.kv_dim(),
                KvPrecision::F32,
            );
            let (mut seq, mut step_input, mut ties) = (tokens.clone(), tokens.clone(), 0);
            for _ in 0..12 {
                let engine_row = engine_model
                    .forward(&mut [SeqInput {
                        cache: &mut cache,
                        tokens: &step_input,
                        logits: Logits::Last,
                    }])
                    .remove(0);
                let candle_row = candle_logits(&graph, &seq).pop().unwrap();
                let (engine_next, candle_next) = (argmax(&engine_row), argmax(&candle_row));
                if engine_next != candle_next {
                    let gap = candle_row[candle_next as usize] - candle_row[engine_next as usize];
                    let step_delta = max_delta(&engine_row, &candle_row);
                    assert!(
                        gap <= 2.0 * step_delta && step_delta <= 0.02 * range,
                        "after {} tokens: engine {engine_next}, candle {candle_next}, \
                         logit gap {gap} beyond the rows' difference {step_delta}",
                        seq.len()
                    );
                    ties += 1;
                }
                seq.push(engine_next);
                step_input = vec![engine_next];
            }
            assert!(ties <= 2, "{ties} near-ties in 12 greedy steps");
        }
        // Flips are the exception: most positions agree to rounding.
        assert!(
            exact_positions * 4 >= positions * 3,
            "only {exact_positions} of {positions} positions agree to rounding"
        );
    }
}

/// Largest absolute difference between two equally long rows.
fn max_delta(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

/// Highest minus lowest logit over all rows.
fn logit_range(rows: &[Vec<f32>]) -> f32 {
    let (lo, hi) = rows
        .iter()
        .flatten()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &b| (lo.min(b), hi.max(b)));
    hi - lo
}

fn fails_with(args: &[String], needle: &str) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, stderr) = run("train", &args);
    assert_eq!(code, 2, "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
}

#[test]
fn bad_inputs_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ckpt");
    let mut missing = small_run(&out, "2", "2");
    missing[1] = s(&dir.path().join("nope.bin")).to_string();
    fails_with(&missing, "nope.bin");
    fails_with(
        &with(small_run(&out, "2", "2"), "--seq-len", "65"),
        "context",
    );
    fails_with(&small_run(&out, "3", "2"), "mhc_streams");
    let d = data();
    let resume = |extra: &[&str]| {
        let mut a: Vec<String> = ["--resume", "--train", s(&d.train), "--out", s(&out)]
            .map(String::from)
            .to_vec();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    fails_with(&resume(&[]), "ckpt");
    train_ok(&small_run(&out, "2", "2"));
    fails_with(&small_run(&out, "2", "2"), "--resume");
    fails_with(&resume(&["--dim", "32"]), "--dim");
}

#[test]
fn a_diverging_run_stops_with_exit_1_and_keeps_its_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ckpt");
    let mut args = small_run(&out, "2", "20");
    for (flag, value) in [
        ("--lion-lr", "1e30"),
        ("--muon-lr", "1e30"),
        ("--grad-clip", "0"),
        ("--checkpoint-every", "1"),
    ] {
        args = with(args, flag, value);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, stderr) = run("train", &args);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("not finite"), "{stderr}");
    let state: Json =
        serde_json::from_str(&std::fs::read_to_string(out.join("trainer_state.json")).unwrap())
            .unwrap();
    let step = state["step"].as_u64().unwrap();
    assert!(step < 20, "stopped early, at step {step}");
    assert!(
        stderr.contains(&format!("from step {step}")),
        "the message names the checkpoint's step: {stderr}"
    );
}

/// maxrl's update (libs/train/policy) on a checkpoint train wrote: raising the weighted
/// log-likelihood of a chosen completion lowers its loss step after step, the exported policy
/// loads in the inference model, and the saved folder is a checkpoint again.
#[test]
fn a_policy_update_raises_the_likelihood_of_the_chosen_completion() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    train_ok(&small_run(&ckpt, "2", "3"));
    let mut policy = train::policy::Policy::load(&ckpt).unwrap();
    let tokenizer = model::Tokenizer::from_json(policy.tokenizer_json()).unwrap();
    let prompt = tokenizer
        .encode("fn add(a: i32, b: i32) -> i32 {\n")
        .unwrap();
    let completion = tokenizer.encode("    a + b\n}\n").unwrap();
    let sequence = train::policy::WeightedSequence {
        tokens: [prompt.clone(), completion.clone()].concat(),
        completion_start: prompt.len(),
        weight: 1.0,
    };
    let nll: Vec<f64> = (0..4)
        .map(|_| {
            let stats = policy
                .update(std::slice::from_ref(&sequence), 4, 1.0)
                .unwrap();
            assert_eq!(stats.completion_tokens, completion.len());
            stats.nll_per_token
        })
        .collect();
    assert!(nll.windows(2).all(|w| w[1] < w[0]), "{nll:?}");

    let gguf = dir.path().join("policy.gguf");
    policy.export(&gguf, "policy").unwrap();
    model::Model::load(&gguf, None).unwrap();
    let out = dir.path().join("rl");
    policy
        .save(&out, serde_json::json!({"estimator": "maxrl"}))
        .unwrap();
    let state: Json =
        serde_json::from_str(&std::fs::read_to_string(out.join("trainer_state.json")).unwrap())
            .unwrap();
    assert_eq!(state["rl"]["estimator"], "maxrl");
    train::policy::Policy::load(&out).unwrap();
}

/// maxrl end to end on a checkpoint train wrote: the supervised warm-up on reference solutions
/// lowers their loss; after it the sampled completions compile (real rustc), so RL iterations get
/// rewards and train on them; the summary holds the held-out rates; the output is a checkpoint
/// that quantize-export reads. A warm-up file without its step count, or warm-up prompts that
/// its solutions do not answer, is bad usage.
#[test]
fn maxrl_warms_up_then_learns_from_the_samples_that_compile() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    train_ok(&small_run(&ckpt, "2", "2"));
    let prompts = dir.path().join("prompts.jsonl");
    let solutions = dir.path().join("solutions.jsonl");
    let heldout = dir.path().join("heldout.jsonl");
    std::fs::write(
        &prompts,
        "{\"name\":\"add\",\"prompt\":\"fn add(a: i32, b: i32) -> i32 {\\n\"}\n\
         {\"name\":\"double\",\"prompt\":\"fn double(x: i32) -> i32 {\\n\"}\n",
    )
    .unwrap();
    std::fs::write(
        &solutions,
        "{\"name\":\"add\",\"body\":\"    a + b\\n\"}\n{\"name\":\"double\",\"body\":\"    x * 2\\n\"}\n",
    )
    .unwrap();
    std::fs::write(
        &heldout,
        "{\"name\":\"sub\",\"prompt\":\"fn sub(a: i32, b: i32) -> i32 {\\n\"}\n",
    )
    .unwrap();
    let out = dir.path().join("rl");
    #[rustfmt::skip]
    let args = [
        "--checkpoint", s(&ckpt), "--prompts", s(&prompts), "--heldout", s(&heldout),
        "--out", s(&out), "--warmup", s(&solutions), "--warmup-steps", "150",
        "--iterations", "2", "--batch-prompts", "2", "--samples", "4", "--temperature", "0.5",
        "--max-tokens", "12", "--lr-factor", "2", "--seed", "5",
    ];
    run_ok("maxrl", &args);

    let log = read_jsonl(&out.join("rl.jsonl"));
    let warmup: Vec<f64> = log
        .iter()
        .filter(|r| r["phase"] == "warmup")
        .map(|r| r["nll_per_token"].as_f64().unwrap())
        .collect();
    assert_eq!(warmup.len(), 150);
    assert!(
        warmup[149] < 0.25 * warmup[0],
        "the warm-up learns the solutions: {warmup:?}"
    );
    let iterations: Vec<&Json> = log.iter().filter(|r| r["phase"] == "rl").collect();
    assert_eq!(iterations.len(), 2);
    assert!(
        iterations
            .iter()
            .any(|r| r["reward_rate"].as_f64().unwrap() > 0.0
                && r["trained_sequences"].as_u64().unwrap() > 0
                && r["loss"].is_f64()),
        "sampled solutions compile and are trained on: {iterations:?}"
    );
    let summary: Json =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    for key in ["before", "after_warmup", "after"] {
        let rate = summary[format!("heldout_greedy_compile_rate_{key}")].as_f64();
        assert!(rate.is_some_and(|r| (0.0..=1.0).contains(&r)), "{summary}");
    }
    run_ok(
        "quantize-export",
        &[
            "--checkpoint",
            s(&out),
            "--out",
            s(&dir.path().join("rl.gguf")),
        ],
    );

    // Bad usage: the warm-up flags on top of a valid run; exit 2 and the message.
    let bad = dir.path().join("bad");
    let refused = |extra: &[&str]| {
        let mut args = vec![
            "--checkpoint",
            s(&ckpt),
            "--prompts",
            s(&prompts),
            "--out",
            s(&bad),
            "--warmup",
            s(&solutions),
        ];
        args.extend_from_slice(extra);
        let (code, _, stderr) = run("maxrl", &args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        stderr
    };
    // No step count.
    refused(&[]);
    // Warm-up prompts that none of the solutions answer (the RL prompts still do).
    let stderr = refused(&["--warmup-steps", "1", "--warmup-prompts", s(&heldout)]);
    assert!(stderr.contains("no solution names a task"), "{stderr}");
}

/// `--reward`: with tests no sample can pass (they ask add(2, 2) == 5), compiling answers earn
/// reward 1 under `--reward compile` and nothing under `--reward tests`, the default; the same
/// task twice across `--prompts` sets is bad usage.
#[test]
fn maxrl_rewards_passing_tests_or_compiling_as_asked() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    train_ok(&small_run(&ckpt, "2", "2"));
    let prompts = dir.path().join("prompts.jsonl");
    let task = serde_json::json!({
        "name": "add",
        "prompt": "fn add(a: i32, b: i32) -> i32 {\n",
        "tests": "}\n\n#[cfg(test)]\nmod tests {\n    use super::*;\n\n    #[test]\n    \
                  fn adds() {\n        assert_eq!(add(2, 2), 5);\n    }\n}\n",
    });
    write_jsonl(&prompts, &[task]);
    let solutions = dir.path().join("solutions.jsonl");
    std::fs::write(&solutions, "{\"name\":\"add\",\"body\":\"    a + b\\n\"}\n").unwrap();
    let rewards = |reward: &str| {
        let out = dir.path().join(reward);
        #[rustfmt::skip]
        let args = [
            "--checkpoint", s(&ckpt), "--prompts", s(&prompts), "--out", s(&out),
            "--warmup", s(&solutions), "--warmup-steps", "100", "--reward", reward,
            "--iterations", "1", "--batch-prompts", "1", "--samples", "4", "--temperature", "0.3",
            "--max-tokens", "12", "--lr-factor", "2", "--seed", "5",
        ];
        run_ok("maxrl", &args);
        let log = read_jsonl(&out.join("rl.jsonl"));
        let last = log.last().unwrap().clone();
        assert_eq!(last["reward"], reward, "{last}");
        last
    };
    let compile = rewards("compile");
    assert!(
        compile["compile_rate"].as_f64().unwrap() > 0.0
            && compile["reward_rate"] == compile["compile_rate"],
        "{compile}"
    );
    let by_tests = rewards("tests");
    assert_eq!(
        by_tests["compile_rate"], compile["compile_rate"],
        "same samples"
    );
    assert_eq!(by_tests["reward_rate"].as_f64(), Some(0.0), "{by_tests}");
    assert_eq!(
        by_tests["trained_sequences"].as_u64(),
        Some(0),
        "{by_tests}"
    );

    #[rustfmt::skip]
    let (code, _, stderr) = run("maxrl", &[
        "--checkpoint", s(&ckpt), "--prompts", s(&prompts), "--prompts", s(&prompts),
        "--out", s(&dir.path().join("twice")),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("already in an earlier --prompts set"),
        "{stderr}"
    );
}

/// Pairs in the extractor's format made from the RL warm-up set (never an evaluation set): each
/// prompt, and its reference body with the closing brace as the completion. The first `count`.
fn warmup_pairs(count: usize) -> Vec<Json> {
    let prompts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/prompts");
    let bodies: std::collections::HashMap<String, String> =
        read_jsonl(&prompts.join("rl_warmup.solutions.jsonl"))
            .into_iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().into(),
                    s["body"].as_str().unwrap().into(),
                )
            })
            .collect();
    read_jsonl(&prompts.join("rl_warmup.jsonl"))
        .into_iter()
        .take(count)
        .map(|p| {
            let name = p["name"].as_str().unwrap();
            serde_json::json!({
                "name": name,
                "prompt": p["prompt"],
                "completion": format!("{}}}\n", bodies[name]),
                "source": "data/prompts/rl_warmup",
            })
        })
        .collect()
}

fn write_jsonl(path: &Path, records: &[Json]) {
    let lines: Vec<String> = records.iter().map(Json::to_string).collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Mean negative log-likelihood per token of the completions and of the prompts (after their
/// first token) of `pairs` under the checkpoint in `dir`, from the full logits.
fn pair_nll(dir: &Path, pairs: &[Json]) -> (f64, f64) {
    let loaded = train::checkpoint::load(dir, &Device::Cpu).unwrap();
    let options = train::model::GraphOptions {
        weights: loaded.state.weights,
        mtp_heads: 0,
    };
    let graph =
        train::model::TrainModel::from_tensors(&loaded.config, options, loaded.model).unwrap();
    let tokenizer = model::Tokenizer::from_json(&loaded.tokenizer_json).unwrap();
    let (mut completion, mut prompt) = ((0.0, 0usize), (0.0, 0usize));
    for pair in pairs {
        let p = tokenizer.encode(pair["prompt"].as_str().unwrap()).unwrap();
        let c = tokenizer
            .encode(pair["completion"].as_str().unwrap())
            .unwrap();
        let tokens = [p.clone(), c].concat();
        let logits = candle_logits(&graph, &tokens[..tokens.len() - 1]);
        for (t, row) in (1..tokens.len()).zip(&logits) {
            let max = row.iter().fold(f32::MIN, |m, &v| m.max(v));
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
            let nll = (lse - row[tokens[t] as usize]) as f64;
            let sum = if t >= p.len() {
                &mut completion
            } else {
                &mut prompt
            };
            sum.0 += nll;
            sum.1 += 1;
        }
    }
    (
        completion.0 / completion.1 as f64,
        prompt.0 / prompt.1 as f64,
    )
}

#[test]
fn fine_tuning_learns_the_completions_then_exports_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    // Context 256: in this small vocabulary the warm-up pairs take up to about 100 tokens as
    // completions, 250 as chats.
    train_ok(&with(small_run(&base, "2", "20"), "--context", "256"));
    let pairs = warmup_pairs(24);
    let pairs_file = dir.path().join("pairs.jsonl");
    write_jsonl(&pairs_file, &pairs);

    let sft = dir.path().join("sft");
    let sft_flags = |out: &Path, steps: &str, chat_share: &str| -> Vec<String> {
        #[rustfmt::skip]
        let flags = [
            "--sft", s(&pairs_file), "--init", s(&base), "--out", s(out), "--steps", steps,
            "--batch", "8", "--sft-chat-share", chat_share, "--sft-val-share", "0.2",
            // Above fine-tuning's default: this base model has had 20 steps, not a corpus.
            "--muon-lr", "0.04", "--lion-lr", "1e-3",
            "--threads", "2", "--eval-every", "10", "--log-every", "1", "--seed", "4",
        ];
        flags.map(String::from).to_vec()
    };
    // Plain completions only: the chat turns' answers hold the prompt's text too.
    let stderr = train_ok(&sft_flags(&sft, "40", "0"));
    assert!(
        stderr.contains("fine-tuning") && stderr.contains("24 pairs"),
        "{stderr}"
    );

    // The likelihood of the completions, which the loss covers, rises; the prompts', which it
    // does not, moves much less.
    let (completion_before, prompt_before) = pair_nll(&base, &pairs);
    let (completion_after, prompt_after) = pair_nll(&sft, &pairs);
    eprintln!(
        "completion nll {completion_before:.3} -> {completion_after:.3}, \
         prompt nll {prompt_before:.3} -> {prompt_after:.3}"
    );
    assert!(
        completion_after < 0.7 * completion_before,
        "completion nll {completion_before} -> {completion_after}"
    );
    assert!(
        completion_after / completion_before < prompt_after / prompt_before - 0.2,
        "the completions gain more than the prompts"
    );

    // The metrics of pretraining: step records and the held-out pairs' losses, from step 0.
    let steps = records(&sft, "step");
    assert_eq!(steps.len(), 40);
    let evals = records(&sft, "eval");
    let eval_steps: Vec<u64> = evals.iter().map(|e| e["step"].as_u64().unwrap()).collect();
    assert_eq!(eval_steps, vec![0, 10, 20, 30, 40]);
    for e in &evals {
        for key in ["val_loss", "val_bpb"] {
            let v = e[key].as_f64().unwrap();
            assert!(v.is_finite() && v > 0.0, "{key}: {e}");
        }
        assert!(e["tokens"].as_u64().unwrap() > 0, "{e}");
        assert!(e["val_chat_loss"].is_null(), "no chat turns: {e}");
    }
    assert!(sft.join("loss.png").exists());
    let state: Json =
        serde_json::from_str(&std::fs::read_to_string(sft.join("trainer_state.json")).unwrap())
            .unwrap();
    assert_eq!(state["run"]["sft"]["init"], s(&base));

    // quantize-export reads the folder; serve runs the model.
    let gguf = dir.path().join("sft.gguf");
    run_ok(
        "quantize-export",
        &["--checkpoint", s(&sft), "--out", s(&gguf)],
    );
    let prompt = pairs[0]["prompt"].as_str().unwrap();
    #[rustfmt::skip]
    let (code, _, stderr) = run(
        "serve",
        &["--model", s(&gguf), "--prompt", prompt, "--max-tokens", "24", "--temperature", "0"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("completion tokens"), "{stderr}");

    // A fine-tuning run stopped and resumed ends where an uninterrupted one does.
    let (whole, split) = (dir.path().join("whole"), dir.path().join("split"));
    train_ok(&sft_flags(&whole, "6", "0.5"));
    train_ok(
        &[
            sft_flags(&split, "6", "0.5"),
            vec!["--stop-after".into(), "2".into()],
        ]
        .concat(),
    );
    #[rustfmt::skip]
    let resume = [
        "--resume", "--sft", s(&pairs_file), "--out", s(&split), "--threads", "2",
        "--eval-every", "10",
    ];
    train_ok(&resume.map(String::from));
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let a = std::fs::read(whole.join(file)).unwrap();
        let b = std::fs::read(split.join(file)).unwrap();
        assert!(
            a == b,
            "{file} differs between the whole and the resumed run"
        );
    }
    // With chat turns, the held-out pairs are scored as chats too.
    for e in records(&whole, "eval") {
        let chat = e["val_chat_loss"].as_f64().unwrap();
        assert!(chat.is_finite() && chat > 0.0, "{e}");
    }

    // Bad input: exit 2 with one line.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        format!("{}\n{{\"name\": \"x\", \"prompt\": 3}}\n", pairs[0]),
    )
    .unwrap();
    let out = dir.path().join("refused");
    let flags = |pairs: &Path| {
        let mut f = sft_flags(&out, "2", "0");
        f[1] = s(pairs).to_string();
        f
    };
    fails_with(
        &flags(&bad),
        "bad.jsonl: line 2: \"prompt\" is not a string",
    );
    fails_with(&with(flags(&pairs_file), "--dim", "32"), "drop --dim");
    let no_init: Vec<String> = flags(&pairs_file)
        .into_iter()
        .filter(|f| f != "--init" && f != s(&base))
        .collect();
    fails_with(&no_init, "--init");
    fails_with(&with(flags(&pairs_file), "--sft-chat-share", "2"), "share");
    fails_with(
        &with(flags(&pairs_file), "--train", s(&data().train)),
        "--train",
    );
    fails_with(
        &[vec!["--resume".to_string()], data_flags(&sft)].concat(),
        "fine-tunes on pairs",
    );
}
