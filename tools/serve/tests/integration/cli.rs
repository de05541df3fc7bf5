//! The `serve` binary: flags and exit codes, CLI mode, server mode with its ready line and
//! SIGTERM/SIGINT, on the echo backend and on a tiny model with random weights.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

use crate::util::{get, post};

fn serve() -> Command {
    Command::new(env!("CARGO_BIN_EXE_serve"))
}

/// Runs serve with `args` (and `stdin`); returns (exit code, stdout, stderr).
fn run(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = serve()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().expect("an exit code, not a signal"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Asserts exit 2 with one `serve: ` line on stderr; returns it.
fn fails_with_one_line(args: &[&str]) -> String {
    let (code, stdout, stderr) = run(args, "");
    assert_eq!(code, 2, "{args:?}: {stderr}");
    assert_eq!(stdout, "");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.starts_with("serve: "), "{stderr:?}");
    stderr
}

/// A tiny model with random weights in a temporary folder.
fn tiny_model(dir: &Path) -> PathBuf {
    let config = model::ModelConfig::preset("tiny").unwrap();
    let (gguf, _mhc) = model::testmodel::write_random_model(dir, "tiny", &config, 7).unwrap();
    gguf
}

/// The binary in server mode; stopped with a signal by [`Running::signal`], killed if dropped
/// before.
struct Running {
    child: Child,
    addr: SocketAddr,
    stderr: mpsc::Receiver<String>,
}

impl Running {
    /// Starts `serve ARGS --port 0` and waits for its `listening on` line.
    fn start(args: &[&str]) -> Running {
        let mut child = serve()
            .args(args)
            .args(["--port", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, stderr) = mpsc::channel();
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        thread::spawn(move || lines.map_while(Result::ok).for_each(|l| drop(tx.send(l))));
        let mut running = Running {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            stderr,
        };
        loop {
            let line = running
                .stderr
                .recv_timeout(Duration::from_secs(60))
                .expect("serve prints its listening line");
            if let Some(url) = line.strip_prefix("serve: listening on http://") {
                running.addr = url.parse().unwrap();
                return running;
            }
        }
    }

    /// Sends `signal` (TERM, INT); returns the exit code and the rest of stderr.
    fn signal(mut self, signal: &str) -> (i32, String) {
        let pid = self.child.id().to_string();
        let kill = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status();
        assert!(kill.unwrap().success());
        let code = self
            .child
            .wait()
            .unwrap()
            .code()
            .expect("an exit code, not a signal");
        (code, self.stderr.iter().collect::<Vec<_>>().join("\n"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn help_version_and_bad_usage() {
    let (code, stdout, _) = run(&["--help"], "");
    assert_eq!(code, 0);
    for needle in [
        "Examples:",
        "--echo-backend",
        "--request-timeout-s",
        "Exit status",
    ] {
        assert!(stdout.contains(needle), "{needle}");
    }
    let (code, stdout, _) = run(&["--version"], "");
    assert_eq!((code, stdout.starts_with("serve ")), (0, true));

    assert!(fails_with_one_line(&[]).contains("--model"));
    assert!(
        fails_with_one_line(&["--echo-backend", "--prompt", "x", "--temperature", "3"])
            .contains("--temperature must be between 0 and 2")
    );
    assert!(fails_with_one_line(&["--echo-backend", "--workers", "0"]).contains("--workers"));
    assert!(fails_with_one_line(&["--echo-backend", "--request-timeout-s=-1"]).contains("timeout"));
    assert!(fails_with_one_line(&["--echo-backend", "--chat"]).contains("--prompt"));
    assert!(
        fails_with_one_line(&["--model", "/nonexistent/m.gguf", "--prompt", "x"])
            .contains("/nonexistent/m.gguf")
    );
    assert!(
        fails_with_one_line(&["--echo-backend", "--host", "256.0.0.1"]).contains("cannot listen")
    );
    assert!(fails_with_one_line(&["--echo-backend", "--prompt", ""]).contains("must not be empty"));
}

#[test]
fn cli_mode_prints_the_completion() {
    let (code, stdout, stderr) = run(
        &["--echo-backend", "--prompt", "hello", "--max-tokens", "3"],
        "",
    );
    assert_eq!((code, stdout.as_str()), (0, "hel\n"), "{stderr}");
    assert!(
        stderr.contains("5 prompt + 3 completion tokens, finish reason length"),
        "{stderr}"
    );
    let (code, stdout, _) = run(
        &["--echo-backend", "--prompt", "-", "--chat", "--stop", "d"],
        "a b c d e",
    );
    assert_eq!((code, stdout.as_str()), (0, "a b c \n"));
}

#[test]
fn server_mode_stops_on_sigterm() {
    let server = Running::start(&["--echo-backend", "--workers", "2"]);
    let health = get(server.addr, "/health").json();
    assert_eq!(health["status"], "ok");
    let r = post(server.addr, "/v1/completions", &json!({"prompt": "ping"}));
    assert_eq!(r.json()["choices"][0]["text"], "ping");
    let (code, stderr) = server.signal("TERM");
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(r#"method="POST" path="/v1/completions" status=200"#),
        "{stderr}"
    );
    assert!(stderr.ends_with("serve: stopped"), "{stderr}");
}

#[test]
fn cli_mode_on_a_random_model_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_model(dir.path());
    let args = [
        "--model",
        gguf.to_str().unwrap(),
        "--prompt",
        "fn main() {",
        "--max-tokens",
        "12",
        "--temperature",
        "0.9",
        "--top-k",
        "50",
        "--seed",
        "3",
        "--threads",
        "2",
    ];
    let (code, first, stderr) = run(&args, "");
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("serve: loaded"), "{stderr}");
    assert!(stderr.contains("11 prompt + "), "{stderr}");
    assert_eq!(run(&args, "").1, first, "same seed, same completion");
}

#[test]
fn server_mode_on_a_random_model() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_model(dir.path());
    let server = Running::start(&["--model", gguf.to_str().unwrap(), "--max-batch", "2"]);
    let a = server.addr;
    assert_eq!(get(a, "/v1/models").json()["data"][0]["id"], "tiny");

    let ask = json!([{"role": "user", "content": "Write hello world in Rust."}]);
    let v = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": ask, "max_tokens": 8, "seed": 1}),
    )
    .json();
    assert_eq!(v["object"], "chat.completion", "{v}");
    let usage = &v["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() <= 8, "{v}");
    assert!(["stop", "length"].contains(&v["choices"][0]["finish_reason"].as_str().unwrap()));

    let body = json!({"messages": ask, "max_tokens": 8, "seed": 1, "stream": true,
                      "stream_options": {"include_usage": true}});
    let r = post(a, "/v1/chat/completions", &body);
    let events = r.events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        r.body
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        v["choices"][0]["message"]["content"].as_str().unwrap(),
        "same seed, same reply"
    );
    assert_eq!(chunks.last().unwrap()["usage"], *usage);

    let r = post(a, "/v1/completions", &json!({"prompt": "x".repeat(600)}));
    r.assert_error(400, Some("prompt"));
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");

    let (code, stderr) = server.signal("INT");
    assert_eq!(code, 0, "{stderr}");
}
