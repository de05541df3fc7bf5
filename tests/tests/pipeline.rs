//! The Makefile's whole flow on a small scale: `make report` with a tiny corpus (the project's own
//! libs/ plus a planted file) and a two-step training run, through the real binaries. Checks that
//! every step leaves its file target, that the corpus step keeps out a file holding an evaluation
//! prompt, that the report card is written from those files, and that a second `make` finds
//! nothing to do.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `make` in the repository root with the small-scale overrides; CARGO=true because the
/// binaries are built already (and cargo's lock is held by the `cargo test` running this).
fn make(run: &Path, sources: &str, targets: &[&str]) -> std::process::Output {
    let run = run.to_str().expect("UTF-8 temp path");
    let mut vars = vec![
        "CARGO=true".to_string(),
        format!("RUN={run}"),
        format!("CORPUS_SOURCES={sources}"),
        "BENCHMARKS_DIR=/nonexistent".to_string(),
        "VOCAB=384".to_string(),
        "TOKENIZER_SAMPLE_BYTES=400000".to_string(),
        "SEQ_LEN=32".to_string(),
        "BATCH=2".to_string(),
        "STEPS=2".to_string(),
        "WARMUP=1".to_string(),
        "EVAL_EVERY=2".to_string(),
        "EVAL_WINDOWS=2".to_string(),
        "CHECKPOINT_EVERY=2".to_string(),
        "EVAL_SAMPLES=1".to_string(),
        "EVAL_MAX_TOKENS=4".to_string(),
    ];
    vars.extend(targets.iter().map(|t| t.to_string()));
    Command::new("make")
        .current_dir(root())
        .args(["--no-print-directory", "-s"])
        .args(&vars)
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .output()
        .expect("make runs")
}

#[test]
fn make_runs_every_step_into_file_targets_and_writes_the_report_card() {
    let dir = tempfile::tempdir().unwrap();
    // A file holding one of the project's evaluation prompts, signature and doc lines.
    let planted = dir.path().join("planted");
    std::fs::create_dir_all(&planted).unwrap();
    let first_task: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(root().join("data/prompts/rust_tasks.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let prompt = first_task["prompt"].as_str().unwrap();
    std::fs::write(
        planted.join("copied.rs"),
        format!("// a crate that copied a benchmark\n{prompt}    todo!()\n}}\n"),
    )
    .unwrap();
    std::fs::write(planted.join("kept.rs"), "pub fn kept() -> u8 { 1 }\n").unwrap();

    let run = dir.path().join("run");
    let sources = format!("libs {}", planted.display());
    let first = make(&run, &sources, &["report"]);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "make report failed:\n{stderr}");

    for target in [
        "corpus/corpus.json",
        "data/tokenizer.json",
        "data/train.bin",
        "data/val.bin",
        "train.done",
        "ckpt/loss.png",
        "model.gguf",
        "model.mhc",
        "inspect.json",
        "verify.json",
        "eval.json",
        "eval.samples.jsonl",
        "eval-greedy.json",
        "eval-greedy.samples.jsonl",
        "gemv.json",
        "report.md",
    ] {
        assert!(run.join(target).is_file(), "{target} was not written");
    }
    let excluded = std::fs::read_to_string(run.join("corpus/excluded.tsv")).unwrap();
    assert!(
        excluded.contains("copied.rs") && excluded.contains(first_task["name"].as_str().unwrap()),
        "{excluded}"
    );
    assert!(!excluded.contains("kept.rs"), "{excluded}");
    assert!(
        run.join("corpus/planted/kept.rs").is_file()
            && !run.join("corpus/planted/copied.rs").exists()
    );

    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).unwrap()).unwrap();
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    for needle in [
        "## Headline: does the code pass its tests",
        "| pretrained | rust_tasks (49 with tests) |",
        "## Model",
        "2 of 2 steps",
        "bits per ternary weight",
        "verify-triangle --model: **ok**",
        "64 prompts",
        "## Kernel",
        "1 files excluded",
    ] {
        assert!(
            report.contains(needle),
            "report lacks {needle:?}:\n{report}"
        );
    }
    assert_eq!(eval["prompts"], 64);

    // Everything is up to date: a second run does nothing and changes nothing.
    let before = std::fs::metadata(run.join("report.md"))
        .unwrap()
        .modified()
        .unwrap();
    let second = make(&run, &sources, &["report"]);
    assert!(second.status.success());
    let after = std::fs::metadata(run.join("report.md"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "the second make rebuilt the report");

    // Fine-tuning: the function pairs of the corpus, two steps from the checkpoint, its GGUF and
    // evaluations, and the report card with the stage in its headline.
    let sft = make(
        &run,
        &sources,
        &["SFT_STEPS=2", "SFT_CHAT_SHARE=0.5", "sft"],
    );
    assert!(
        sft.status.success(),
        "make sft failed:\n{}",
        String::from_utf8_lossy(&sft.stderr)
    );
    for target in [
        "functions/pairs.jsonl",
        "functions/summary.json",
        "sft.done",
        "sft/model.gguf",
        "sft/eval.json",
        "sft/eval-greedy.json",
    ] {
        assert!(run.join(target).is_file(), "{target} was not written");
    }
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    for needle in [
        "| + fine-tuning | rust_tasks (49 with tests) |",
        "## Fine-tuning on function pairs (make sft)",
        "- 2 steps from",
    ] {
        assert!(
            report.contains(needle),
            "report lacks {needle:?}:\n{report}"
        );
    }

    // A prompt set named later is excluded too: the corpus (and what follows) is rebuilt even
    // though the file is older than the corpus, and the file that holds its prompt goes.
    let extra = dir.path().join("extra.jsonl");
    std::fs::write(
        &extra,
        "{\"name\": \"kept\", \"prompt\": \"pub fn kept() -> u8 {\\n\"}\n",
    )
    .unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(&extra)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let humaneval = format!("HUMANEVAL_RS={}", extra.display());
    let third = make(&run, &sources, &[&humaneval, "corpus"]);
    assert!(
        third.status.success(),
        "{}",
        String::from_utf8_lossy(&third.stderr)
    );
    let excluded = std::fs::read_to_string(run.join("corpus/excluded.tsv")).unwrap();
    assert!(excluded.contains("kept.rs"), "{excluded}");
    assert!(!run.join("corpus/planted/kept.rs").exists());
}
