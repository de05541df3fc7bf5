//! Hostile samples through the real eval-compile: each completion of `add(a, b)` also returns
//! `a + b` (so its tests pass unless something stops it) and tries one thing a sandbox must
//! stop: writing or deleting outside its folder, reading secrets (at compile time too), fork
//! bombs, processes that outlive it, a double-forked daemon, endless output, sleeping past the
//! limit, the network, the parent's environment. Each test checks the harm did not happen (the
//! canary untouched, no process left, no connection) and the verdict.
//!
//! Samples that learn whether the harm worked return a wrong sum when it did, so a
//! `tests_pass` verdict also says the attempt failed inside the sandbox. Loopback only, bounded
//! in time (run limit 3 s) and in processes.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use serde_json::{json, Value};

const PROMPT: &str = "/// Sum.\npub fn add(a: i32, b: i32) -> i32 {\n";
const TESTS: &str = "}\n\nfn main() {\n    assert_eq!(add(2, 3), 5);\n}\n";

/// Runs eval-compile on one sample whose body is `body`; returns (summary, the sample's record).
fn judge(body: &str, env: &[(&str, &str)]) -> (Value, Value) {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    let task = json!({"name": "add", "prompt": PROMPT, "tests": TESTS});
    std::fs::write(&prompts, format!("{task}\n")).unwrap();
    let completions = dir.path().join("completions.jsonl");
    std::fs::write(
        &completions,
        format!("{}\n", json!({"name": "add", "body": body})),
    )
    .unwrap();
    let out = dir.path().join("eval.json");
    let mut command = Command::cargo_bin("eval-compile").unwrap();
    command
        .arg("--prompts")
        .arg(&prompts)
        .arg("--completions")
        .arg(&completions)
        .args(["--run-timeout", "3", "--compile-timeout", "30", "--out"])
        .arg(&out);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let samples = std::fs::read_to_string(dir.path().join("eval.samples.jsonl")).unwrap();
    let sample: Value = serde_json::from_str(samples.lines().next().unwrap()).unwrap();
    assert!(
        summary["sandbox"]
            .as_str()
            .unwrap()
            .starts_with("bubblewrap"),
        "{summary}"
    );
    (summary, sample)
}

fn verdict(sample: &Value) -> &str {
    sample["verdict"].as_str().unwrap()
}

/// Processes whose command line contains `marker` (a distinctive argument), from /proc.
fn processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmdline| {
            let text = String::from_utf8_lossy(cmdline).replace('\0', " ");
            text.contains(marker) && !text.contains("eval-compile")
        })
        .count()
}

/// A canary folder outside every sample's folder, with one file in it.
fn canary() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keep/secret.txt");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "canary").unwrap();
    (dir, file)
}

#[test]
fn writing_and_deleting_outside_the_folder_are_contained() {
    let (dir, file) = canary();
    let written = dir.path().join("written.txt");
    let body = format!(
        "    let _ = std::fs::write({written:?}, \"x\");\n    \
         let _ = std::fs::remove_dir_all({keep:?});\n    a + b\n",
        keep = file.parent().unwrap(),
    );
    let (_, sample) = judge(&body, &[]);
    assert_eq!(verdict(&sample), "tests_pass", "{sample}");
    assert!(!written.exists(), "the sample wrote outside its folder");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "canary");
}

/// A body that returns a wrong sum when it can read `path`.
fn reads(path: &Path) -> String {
    format!(
        "    if std::fs::read({path:?}).is_ok() {{\n        return a + b + 1;\n    }}\n    a + b\n"
    )
}

#[test]
fn secrets_in_the_home_folder_and_in_etc_are_out_of_reach() {
    let home = PathBuf::from(std::env::var_os("HOME").expect("HOME is set"));
    let secret = home.join(format!(".nanochat-sandbox-canary-{}", std::process::id()));
    std::fs::write(&secret, "secret").unwrap();
    let (_, in_home) = judge(&reads(&secret), &[]);
    let (_, in_etc) = judge(&reads(Path::new("/etc/passwd")), &[]);
    // At compile time too: include_str! of the secret must not compile.
    let (_, compiled_in) = judge(
        &format!("    let _ = include_str!({secret:?});\n    a + b\n"),
        &[],
    );
    std::fs::remove_file(&secret).unwrap();
    assert_eq!(verdict(&in_home), "tests_pass", "{in_home}");
    assert_eq!(verdict(&in_etc), "tests_pass", "{in_etc}");
    assert_eq!(verdict(&compiled_in), "compile_error", "{compiled_in}");
}

#[test]
fn a_fork_bomb_hits_the_process_limit() {
    // Up to 4,000 children: the limit (256 for the sandbox's user) must stop it first, and the
    // sample says so by returning the right sum only when a spawn failed.
    let marker = "31.4159";
    let body = format!(
        "    for _ in 0..4000 {{\n        \
         if std::process::Command::new(\"sleep\").arg(\"{marker}\").spawn().is_err() {{\n            \
         return a + b;\n        }}\n    }}\n    a + b + 1\n"
    );
    let (_, sample) = judge(&body, &[]);
    assert_eq!(verdict(&sample), "tests_pass", "{sample}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        processes_with(marker),
        0,
        "the bomb's children outlived the sample"
    );
}

#[test]
fn children_and_double_forked_daemons_do_not_outlive_the_sample() {
    let child = "27.1828";
    let daemon = "16.1803";
    let body = format!(
        "    let _ = std::process::Command::new(\"sleep\").arg(\"{child}\").spawn();\n    \
         let _ = std::process::Command::new(\"sh\").arg(\"-c\")\n        \
         .arg(\"(setsid sleep {daemon} </dev/null >/dev/null 2>&1 &) &\").status();\n    \
         a + b\n"
    );
    let (_, sample) = judge(&body, &[]);
    assert_eq!(verdict(&sample), "tests_pass", "{sample}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(processes_with(child), 0, "a child outlived the sample");
    assert_eq!(processes_with(daemon), 0, "a daemon outlived the sample");
}

#[test]
fn endless_output_and_sleeping_past_the_limit_are_cut_off() {
    let (_, output) = judge(
        "    loop {\n        println!(\"{}\", \"x\".repeat(4096));\n    }\n",
        &[],
    );
    assert_eq!(verdict(&output), "tests_fail", "{output}");
    let (_, sleeper) = judge(
        "    std::thread::sleep(std::time::Duration::from_secs(60));\n    a + b\n",
        &[],
    );
    assert_eq!(verdict(&sleeper), "test_timeout", "{sleeper}");
}

#[test]
fn the_network_is_out_of_reach() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let body = format!(
        "    use std::io::Write;\n    \
         if let Ok(mut s) = std::net::TcpStream::connect((\"127.0.0.1\", {port})) {{\n        \
         let _ = s.write_all(b\"leak\");\n        return a + b + 1;\n    }}\n    a + b\n"
    );
    let (_, sample) = judge(&body, &[]);
    assert_eq!(verdict(&sample), "tests_pass", "{sample}");
    match listener.accept() {
        Ok((mut stream, _)) => {
            let mut got = String::new();
            let _ = stream.read_to_string(&mut got);
            panic!("the sample connected to the loopback server and sent {got:?}");
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
    }
}

#[test]
fn the_parents_environment_is_out_of_reach() {
    // Its own environment is empty; the parents' /proc/PID/environ files are not visible.
    let body = "    if std::env::vars().any(|(k, _)| k == \"NANOCHAT_CANARY\") {\n        \
        return a + b + 1;\n    }\n    \
        let mut pid = std::process::id();\n    \
        for _ in 0..8 {\n        \
        let env = std::fs::read(format!(\"/proc/{pid}/environ\")).unwrap_or_default();\n        \
        if String::from_utf8_lossy(&env).contains(\"NANOCHAT_CANARY\") {\n            \
        return a + b + 1;\n        }\n        \
        let status = std::fs::read_to_string(format!(\"/proc/{pid}/status\")).unwrap_or_default();\n        \
        pid = status.lines().find_map(|l| l.strip_prefix(\"PPid:\")).and_then(|p| p.trim().parse().ok()).unwrap_or(0);\n        \
        if pid == 0 {\n            break;\n        }\n    }\n    a + b\n";
    let (_, sample) = judge(body, &[("NANOCHAT_CANARY", "hunter2")]);
    assert_eq!(verdict(&sample), "tests_pass", "{sample}");
}

#[test]
fn without_bubblewrap_nothing_runs_unless_asked_and_then_it_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    let task = json!({"name": "add", "prompt": PROMPT, "tests": TESTS});
    std::fs::write(&prompts, format!("{task}\n")).unwrap();
    let completions = dir.path().join("completions.jsonl");
    let body = json!({"name": "add", "body": "    a + b\n"});
    std::fs::write(&completions, format!("{body}\n")).unwrap();
    let out = dir.path().join("eval.json");
    let run = |extra: &[&str]| {
        Command::cargo_bin("eval-compile")
            .unwrap()
            .arg("--prompts")
            .arg(&prompts)
            .arg("--completions")
            .arg(&completions)
            .args(["--bwrap", "/nonexistent/bwrap", "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = run(&[]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("refusing to run generated code without a sandbox")
            && stderr.contains("/nonexistent/bwrap"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing was judged");

    let unconfined = run(&["--no-sandbox"]);
    assert_eq!(unconfined.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&unconfined.stderr);
    assert!(stderr.contains("UNCONFINED"), "{stderr}");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(
        summary["sandbox"].as_str().unwrap().starts_with("NONE"),
        "{summary}"
    );
    assert_eq!(summary["success_rate"], 1.0, "{summary}");
}
