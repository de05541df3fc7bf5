//! The project's prompt sets (data/prompts), judged by the real tools: every name is unique across
//! the sets and the solutions files line up with their task files; every reference solution passes
//! its tests (or compiles, for a task without tests) in eval-compile; and every test of the RL set
//! rejects a constant answer, so that "the tests pass", maxrl's reward, is earned only by code
//! that computes something. The RL sets also hold no evaluation prompt by scripts/corpus.py's rule.
//!
//! Needs rustc and bubblewrap (`make sandbox`), as tests/tests/eval_compile.rs does. One
//! eval-compile run judges all of it (391 programs, one per core at a time): 85 s on two shared
//! cores under a load average of 6-8; the test prints its time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use cross_tool_tests::{python, read_jsonl, PYTHON_SETUP};
use serde_json::{json, Value};

/// The set whose prompts all have tests: what maxrl learns on.
const RL_SET: &str = "rl_train";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn prompts_dir() -> PathBuf {
    root().join("data/prompts")
}

/// Every prompt set of data/prompts (each `*.jsonl` that is not a `*.solutions.jsonl`), by stem,
/// with its records.
fn prompt_sets() -> BTreeMap<String, Vec<Value>> {
    let mut sets = BTreeMap::new();
    for entry in std::fs::read_dir(prompts_dir()).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        if let Some(stem) = file.strip_suffix(".jsonl") {
            if !stem.ends_with(".solutions") {
                sets.insert(stem.to_string(), read_jsonl(&path));
            }
        }
    }
    assert!(
        ["rust_tasks", "rl_train", "rl_warmup"]
            .iter()
            .all(|s| sets.contains_key(*s)),
        "{:?}",
        sets.keys()
    );
    sets
}

/// The reference bodies of a set, by task name, in file order (`None` without a solutions file).
fn solutions(set: &str) -> Option<Vec<(String, String)>> {
    let path = prompts_dir().join(format!("{set}.solutions.jsonl"));
    path.exists().then(|| {
        read_jsonl(&path)
            .iter()
            .map(|s| (text(s, "name"), text(s, "body")))
            .collect()
    })
}

fn text(record: &Value, field: &str) -> String {
    record[field]
        .as_str()
        .unwrap_or_else(|| panic!("no string {field:?} in {record}"))
        .to_string()
}

/// The function a prompt asks for (the last `fn NAME` in it) and whether it is a method (its
/// line is indented: the prompt ends inside an `impl` block).
fn function(prompt: &str) -> (String, bool) {
    let line = prompt.trim_end().lines().last().unwrap();
    let after = &line[line.find("fn ").unwrap_or_else(|| panic!("{line}")) + 3..];
    let name = after
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .next()
        .unwrap();
    (name.to_string(), line.starts_with("    "))
}

fn assertions(tests: &str) -> usize {
    ["assert!(", "assert_eq!(", "assert_ne!("]
        .iter()
        .map(|a| tests.matches(a).count())
        .sum()
}

#[test]
fn names_are_unique_and_every_rl_prompt_has_tests() {
    let sets = prompt_sets();
    let mut names: HashMap<String, String> = HashMap::new();
    let mut functions: HashMap<String, String> = HashMap::new();
    for (set, records) in &sets {
        for record in records {
            let name = text(record, "name");
            let (function, method) = function(&text(record, "prompt"));
            assert!(
                name.ends_with(&function),
                "{set}: {name} asks for {function}"
            );
            if let Some(other) = names.insert(name.clone(), set.clone()) {
                panic!("{name} is in {other} and in {set}");
            }
            if let Some(other) = functions.insert(function.clone(), set.clone()) {
                panic!("fn {function} is asked for in {other} and in {set}");
            }
            if let Some(tests) = record.get("tests") {
                let tests = tests.as_str().unwrap();
                let close = if method { "    }\n}\n" } else { "}\n" };
                assert!(
                    tests.starts_with(close) && tests.contains("#[cfg(test)]\nmod tests {"),
                    "{name}: {tests}"
                );
            }
        }
        if let Some(solutions) = solutions(set) {
            let task_names: Vec<String> = records.iter().map(|r| text(r, "name")).collect();
            let solution_names: Vec<String> = solutions.into_iter().map(|(n, _)| n).collect();
            assert_eq!(task_names, solution_names, "{set}.solutions.jsonl");
        }
    }
    let rl = &sets[RL_SET];
    assert!(rl.len() >= 135, "{} RL prompts", rl.len());
    for record in rl {
        let tests = record["tests"]
            .as_str()
            .unwrap_or_else(|| panic!("{record}"));
        let count = assertions(tests);
        assert!(
            (3..=6).contains(&count),
            "{}: {count} assertions",
            record["name"]
        );
    }
}

/// The constant a wrong answer returns: the default value of the return type (`Ok` of it for a
/// `Result`), written so that eval-compile's check for trivial answers (a lone literal or
/// `Default::default()`) does not catch it first: the tests must.
fn constant_body(prompt: &str) -> String {
    let (_, method) = function(prompt);
    let indent = if method { "        " } else { "    " };
    let value = if prompt
        .trim_end()
        .lines()
        .last()
        .unwrap()
        .contains("-> Result<")
    {
        "Ok(Default::default())"
    } else {
        "Default::default()"
    };
    format!("{indent}let constant = {value};\n{indent}constant\n")
}

#[test]
fn reference_solutions_pass_and_a_constant_answer_fails() {
    let sets = prompt_sets();
    // One prompt set and one completions file for everything: "SET/NAME" for each reference
    // solution, "rl_train/NAME/constant" for the planted wrong answer.
    let (mut tasks, mut completions) = (Vec::new(), Vec::new());
    let mut expected: BTreeMap<String, &str> = BTreeMap::new();
    let mut judged = 0;
    for (set, records) in &sets {
        let Some(bodies) = solutions(set) else {
            continue;
        };
        judged += 1;
        for (record, (_, body)) in records.iter().zip(bodies) {
            let name = format!("{set}/{}", text(record, "name"));
            let mut task = record.clone();
            task["name"] = json!(name);
            expected.insert(
                name.clone(),
                if record.get("tests").is_some() {
                    "tests_pass"
                } else {
                    "compiles"
                },
            );
            completions.push(json!({"name": name, "body": body}));
            tasks.push(task.clone());
            if set == RL_SET {
                let name = format!("{name}/constant");
                task["name"] = json!(name);
                let body = constant_body(&text(record, "prompt"));
                completions.push(json!({"name": name, "body": body}));
                expected.insert(name, "tests_fail");
                tasks.push(task);
            }
        }
    }
    assert!(judged >= 3, "the sets with solutions: {judged}");

    let dir = tempfile::tempdir().unwrap();
    let write = |file: &str, records: &[Value]| {
        let path = dir.path().join(file);
        let lines: Vec<String> = records.iter().map(Value::to_string).collect();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    };
    let prompts = write("prompts.jsonl", &tasks);
    let bodies = write("bodies.jsonl", &completions);
    let out = dir.path().join("eval.json");
    let started = std::time::Instant::now();
    let output = Command::cargo_bin("eval-compile")
        .expect("the eval-compile binary is built")
        .args(["--prompts", prompts.to_str().unwrap()])
        .args(["--completions", bodies.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    eprintln!(
        "eval-compile judged {} programs in {:.1} s",
        tasks.len(),
        started.elapsed().as_secs_f64()
    );

    let samples = read_jsonl(&dir.path().join("eval.samples.jsonl"));
    assert_eq!(samples.len(), tasks.len());
    let wrong: Vec<String> = samples
        .iter()
        .filter_map(|sample| {
            let task = text(sample, "task");
            let verdict = text(sample, "verdict");
            (verdict != expected[&task]).then(|| {
                format!(
                    "{task}: {verdict}, expected {} ({} {})",
                    expected[&task], sample["errors"], sample["detail"]
                )
            })
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let constants = expected.values().filter(|v| **v == "tests_fail").count();
    assert_eq!(constants, sets[RL_SET].len());
}

/// No prompt of the RL sets holds an evaluation prompt (its signature and every doc line), by the
/// rule the corpus step applies (scripts/corpus.py): each prompt with its reference body as a file
/// of a corpus, the evaluation sets (rust_tasks and, where they are, the MultiPL-E benchmarks) as
/// the prompts to exclude; a planted copy of an evaluation prompt is excluded, nothing else is.
#[test]
fn the_rl_sets_hold_no_evaluation_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    let sets = prompt_sets();
    let mut files = 0;
    for set in ["rl_train", "rl_warmup"] {
        let bodies: HashMap<String, String> = solutions(set).unwrap().into_iter().collect();
        for record in &sets[set] {
            let name = text(record, "name");
            let prompt = text(record, "prompt");
            let close = if function(&prompt).1 {
                "    }\n}\n"
            } else {
                "}\n"
            };
            let program = format!("{prompt}{}{close}", bodies[&name]);
            std::fs::write(source.join(format!("{name}.rs")), program).unwrap();
            files += 1;
        }
    }
    let heldout = text(&sets["rust_tasks"][0], "prompt");
    std::fs::write(
        source.join("planted.rs"),
        format!("{heldout}    todo!()\n}}\n"),
    )
    .unwrap();

    let mut eval_sets = vec![prompts_dir().join("rust_tasks.jsonl")];
    let benchmarks = root().join("../shared/benchmarks");
    for file in ["humaneval_rs.jsonl", "mbpp_rs.jsonl"] {
        if benchmarks.join(file).exists() {
            eval_sets.push(benchmarks.join(file));
        }
    }
    let out = dir.path().join("corpus");
    let mut command = std::process::Command::new(python());
    command
        .arg(root().join("scripts/corpus.py"))
        .args(["--out", out.to_str().unwrap()])
        .args(["--source", source.to_str().unwrap()]);
    for set in &eval_sets {
        command.args(["--prompts", set.to_str().unwrap()]);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("python: {e} ({PYTHON_SETUP})"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let excluded = std::fs::read_to_string(out.join("excluded.tsv")).unwrap();
    let excluded: HashSet<&str> = excluded
        .lines()
        .skip(1)
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    let planted = source.join("planted.rs");
    assert_eq!(
        excluded,
        HashSet::from([planted.to_str().unwrap()]),
        "against {eval_sets:?}"
    );
    let corpus: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("corpus.json")).unwrap()).unwrap();
    assert_eq!(corpus["files"], files);
}
