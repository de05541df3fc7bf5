//! Cross-tool tests of `tokenize functions` (issue 26): the real binary on a small folder of .rs
//! files made here (a documented function with a doc example, a method, a signature over the
//! crate's own type, a reformatted copy, a function that needs its crate, and a planted
//! evaluation prompt). Its tests.jsonl is a prompt set eval-compile reads, and every task passes
//! with the pairs as completions. The contamination check runs the corpus step's own code
//! (scripts/corpus.py) over every pair and every test: none holds an evaluation prompt, and a
//! planted one is caught. Bad inputs exit 2 with one line.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use cross_tool_tests::read_jsonl;
use serde_json::Value as Json;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The evaluation sets the pipeline keeps out (the Makefile's EVAL_SETS): the project's prompt
/// sets and, where they are, the benchmarks.
fn eval_sets() -> Vec<PathBuf> {
    let mut sets = Vec::new();
    for dir in [
        root().join("data/prompts"),
        root().join("../shared/benchmarks"),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".jsonl") && !name.ends_with(".solutions.jsonl") {
                sets.push(entry.path());
            }
        }
    }
    sets.sort();
    assert!(sets.len() >= 3, "data/prompts holds the project's sets");
    sets
}

/// The prompt of rust_tasks.jsonl's first task, and a body that compiles with it.
fn planted_prompt() -> (String, String) {
    let text = std::fs::read_to_string(root().join("data/prompts/rust_tasks.jsonl")).unwrap();
    let task: Json = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    (
        task["prompt"].as_str().unwrap().to_string(),
        task["name"].as_str().unwrap().to_string(),
    )
}

const LIB: &str = r#"use std::collections::HashMap;

/// Counts each word of `text`.
///
/// ```
/// use fake::word_counts;
/// let counts = word_counts("a b a");
/// assert_eq!(counts["a"], 2);
/// assert_eq!(counts.len(), 2);
/// ```
pub fn word_counts(text: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word.to_string()).or_insert(0) += 1;
    }
    counts
}

pub struct Celsius(pub f64);

impl Celsius {
    /// In Fahrenheit.
    pub fn fahrenheit(&self) -> f64 {
        let c = self.0;
        c * 9.0 / 5.0 + 32.0
    }

    /// Reads a temperature.
    pub fn parse(text: &str) -> Option<Celsius> {
        let value: f64 = text.trim().parse().ok()?;
        Some(Celsius(value))
    }

    /// The digits of `n`, most significant first.
    ///
    /// ```
    /// # use fake::Celsius;
    /// assert_eq!(Celsius::digits(907), vec![9, 0, 7]);
    /// assert_eq!(Celsius::digits(0), vec![0]);
    /// ```
    pub fn digits(mut n: u64) -> Vec<u8> {
        let mut digits = vec![(n % 10) as u8];
        while n >= 10 {
            n /= 10;
            digits.push((n % 10) as u8);
        }
        digits.reverse();
        digits
    }
}

/// Needs its crate.
pub fn uses_the_crate(x: u8) -> u8 {
    let y = internal(x);
    y + 1
}

fn internal(x: u8) -> u8 {
    x
}
"#;

/// The same function as LIB's first, formatted otherwise.
const COPY: &str = "use std::collections::HashMap;\n/// Counts each word of `text`.\n///\n/// ```\n/// use fake::word_counts;\n/// let counts = word_counts(\"a b a\");\n/// assert_eq!(counts[\"a\"], 2);\n/// assert_eq!(counts.len(), 2);\n/// ```\npub fn word_counts(text: &str) -> HashMap<String, usize> {\n    let mut counts = HashMap::new();\n    for word in text.split_whitespace() { *counts.entry(word.to_string()).or_insert(0) += 1; }\n    counts\n}\n";

fn tokenize() -> Command {
    Command::cargo_bin("tokenize")
        .expect("the tokenize binary is built (make test builds every binary first)")
}

/// Runs `tokenize functions` on `input` with every evaluation set; returns the summary.
fn functions(input: &Path, out: &Path) -> Json {
    let output = tokenize()
        .arg("functions")
        .arg("--input")
        .arg(input)
        .arg("--prompts")
        .args(eval_sets())
        .arg("--out")
        .arg(out)
        .args(["--min-body-lines", "2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("documented functions ->"), "{stderr}");
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn pairs_and_tests_from_a_small_crate_check_with_eval_compile() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("fake/src");
    std::fs::create_dir_all(&src).unwrap();
    let (prompt, task) = planted_prompt();
    std::fs::write(src.join("lib.rs"), LIB).unwrap();
    std::fs::write(src.join("copy.rs"), COPY).unwrap();
    let planted_body = "    let vowels = \"aeiouAEIOU\";\n    s.chars().filter(|c| vowels.contains(*c)).count()\n}\n";
    std::fs::write(src.join("planted.rs"), format!("{prompt}{planted_body}")).unwrap();
    let out = dir.path().join("functions");
    let summary = functions(&dir.path().join("fake"), &out);

    assert_eq!(summary["files"], 3);
    assert_eq!(summary["functions_found"], 7);
    let dropped = &summary["dropped"];
    for (reason, count) in [
        ("self_receiver", 1),
        ("non_std_types", 1),
        ("duplicate", 1),
        ("evaluation_prompt", 1),
        ("does_not_compile", 1),
    ] {
        assert_eq!(dropped[reason], count, "{reason}: {summary}");
    }
    assert_eq!(summary["pairs"], 2);
    assert_eq!(
        (summary["tests"].as_u64(), summary["test_tasks"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(summary["evaluation_prompts"].as_u64().unwrap() > 100);

    let pairs = read_jsonl(&out.join("pairs.jsonl"));
    let names: Vec<&str> = pairs.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["word_counts", "digits"],
        "{task} was planted and is excluded"
    );
    assert!(pairs[0]["source"]
        .as_str()
        .unwrap()
        .ends_with("fake/src/copy.rs:10"));
    assert!(pairs[1]["prompt"]
        .as_str()
        .unwrap()
        .ends_with("fn digits(mut n: u64) -> Vec<u8> {\n"));
    assert!(pairs[1]["completion"]
        .as_str()
        .unwrap()
        .ends_with("    digits\n}"));

    // tests.jsonl is a prompt set: eval-compile passes every task with the pairs' bodies.
    let eval = dir.path().join("eval.json");
    let output = Command::cargo_bin("eval-compile")
        .unwrap()
        .arg("--prompts")
        .arg(out.join("tests.jsonl"))
        .arg("--completions")
        .arg(out.join("pairs.jsonl"))
        .arg("--out")
        .arg(&eval)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Json = serde_json::from_str(&std::fs::read_to_string(&eval).unwrap()).unwrap();
    assert_eq!(result["prompts_with_tests"], 2);
    assert_eq!(result["verdicts"]["tests_pass"], 2, "{result}");

    // The contamination check, by the corpus step's own code: nothing found in the outputs; the
    // planted prompt, written beside them, is.
    let check = dir.path().join("check");
    std::fs::create_dir_all(&check).unwrap();
    for (i, pair) in pairs.iter().enumerate() {
        let text = format!(
            "{}{}",
            pair["prompt"].as_str().unwrap(),
            pair["completion"].as_str().unwrap()
        );
        std::fs::write(check.join(format!("pair{i}.rs")), text).unwrap();
    }
    for (i, test) in read_jsonl(&out.join("tests.jsonl")).iter().enumerate() {
        let text = format!(
            "{}{}",
            test["prompt"].as_str().unwrap(),
            test["tests"].as_str().unwrap()
        );
        std::fs::write(check.join(format!("test{i}.rs")), text).unwrap();
    }
    std::fs::write(check.join("planted.rs"), format!("{prompt}{planted_body}")).unwrap();
    let corpus = dir.path().join("corpus");
    let status = std::process::Command::new("python3")
        .arg(root().join("scripts/corpus.py"))
        .arg("--out")
        .arg(&corpus)
        .arg("--source")
        .arg(&check)
        .args(
            eval_sets()
                .iter()
                .flat_map(|set| [Path::new("--prompts"), set.as_path()]),
        )
        .status()
        .expect("python3 runs scripts/corpus.py");
    assert!(status.success());
    let excluded = std::fs::read_to_string(corpus.join("excluded.tsv")).unwrap();
    let excluded: Vec<&str> = excluded.lines().skip(1).collect();
    assert_eq!(excluded.len(), 1, "{excluded:?}");
    assert!(
        excluded[0].contains("planted.rs") && excluded[0].ends_with(&task),
        "{excluded:?}"
    );
}

#[test]
fn bad_inputs_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.rs"), "/// A.\nfn a() -> u8 {\n    1\n}\n").unwrap();
    let good_set = dir.path().join("set.jsonl");
    std::fs::write(
        &good_set,
        "{\"name\": \"t\", \"prompt\": \"fn t() {\\n\"}\n",
    )
    .unwrap();
    let bad_set = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad_set,
        "{\"name\": \"t\", \"prompt\": \"fn t() {\\n\"}\n{oops\n",
    )
    .unwrap();
    let a_file = dir.path().join("file");
    std::fs::write(&a_file, "").unwrap();
    let out = dir.path().join("out");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let cases: [(Vec<String>, &str); 4] = [
        (
            vec![s(&dir.path().join("missing")), s(&good_set), s(&out)],
            "does not exist",
        ),
        (
            vec![s(&src), s(&bad_set), s(&out)],
            "bad.jsonl:2: not a prompt record",
        ),
        (vec![s(&src), s(&good_set), s(&a_file)], "is a file"),
        (
            vec![s(&src), s(&dir.path().join("none.jsonl")), s(&out)],
            "cannot read",
        ),
    ];
    for (args, message) in cases {
        let output = tokenize()
            .args([
                "functions",
                "--input",
                &args[0],
                "--prompts",
                &args[1],
                "--out",
                &args[2],
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("tokenize: ") && stderr.contains(message),
            "{stderr}"
        );
    }
    assert!(!out.exists(), "nothing written on bad input");
}
