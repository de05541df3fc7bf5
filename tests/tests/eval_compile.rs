//! eval-compile against a hand-made OpenAI-compatible server on loopback that answers each
//! prompt with known code: every verdict path (compiles, compile error, tests pass through both
//! the #[test] harness and a MultiPL-E fn main, tests fail, test timeout (an infinite loop,
//! killed), compile timeout, trivial, generation error) comes out as it must, and the summary's
//! rates follow from them. Needs rustc on PATH (the Rust toolchain every machine here has).

use std::path::Path;
use std::thread;

use assert_cmd::Command;
use serde_json::{json, Value};

/// (task name, prompt, tests, completion the fake server returns, expected verdict).
/// A completion of None makes the server answer HTTP 500.
type Case = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    &'static str,
);

const CASES: &[Case] = &[
    (
        "adds",
        "/// Sum.\nfn add(a: i32, b: i32) -> i32 {\n",
        None,
        Some("    a + b\n}\n\nfn unrelated() {}\n"),
        "compiles",
    ),
    (
        "type_error",
        "fn neg(x: i32) -> i32 {\n",
        None,
        Some("    x + \"one\"\n}\n"),
        "compile_error",
    ),
    (
        "doubles",
        "fn double(x: i32) -> i32 {\n",
        Some("}\n\n#[cfg(test)]\nmod tests {\n    use super::*;\n    #[test]\n    fn two() { assert_eq!(double(2), 4); }\n}\n"),
        Some("    x * 2\n}\n"),
        "tests_pass",
    ),
    (
        "subtracts_main",
        "fn sub(a: i32, b: i32) -> i32 {\n",
        Some("}\n\nfn main() {\n    assert_eq!(sub(3, 1), 2);\n}\n"),
        Some("    a - b"),
        "tests_pass",
    ),
    (
        "triples_wrongly",
        "fn triple(x: i32) -> i32 {\n",
        Some("}\n\n#[cfg(test)]\nmod tests {\n    use super::*;\n    #[test]\n    fn two() { assert_eq!(triple(2), 6); }\n}\n"),
        Some("    x * 2\n}\n"),
        "tests_fail",
    ),
    (
        "spins_forever",
        "fn spin(x: u64) -> u64 {\n",
        Some("}\n\nfn main() {\n    assert_eq!(spin(1), 1);\n}\n"),
        Some("    let mut i = x;\n    while i != 0 {\n        i = i.wrapping_mul(3) | 1;\n    }\n    i\n}\n"),
        "test_timeout",
    ),
    (
        "slow_to_compile",
        "fn slow() -> u64 {\n",
        None,
        Some("    #[allow(long_running_const_eval)]\n    const N: u64 = {\n        let mut i = 1u64;\n        while i != 0 {\n            i = i.wrapping_mul(3) | 1;\n        }\n        i\n    };\n    N\n}\n"),
        "compile_timeout",
    ),
    (
        "placeholder",
        "fn parse(s: &str) -> i32 {\n",
        Some("}\n\nfn main() {\n    assert_eq!(parse(\"1\"), 1);\n}\n"),
        Some("    todo!()\n}\n"),
        "trivial",
    ),
    (
        "server_error",
        "fn lost() -> bool {\n",
        None,
        None,
        "generation_error",
    ),
];

/// Serves POST /v1/completions on a free loopback port until the process ends; returns the
/// base URL.
fn fake_server() -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("a loopback port");
    let url = format!("http://{}", server.server_addr());
    thread::spawn(move || {
        for mut request in server.incoming_requests() {
            let mut body = String::new();
            let _ = request.as_reader().read_to_string(&mut body);
            let prompt = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["prompt"].as_str().map(str::to_string))
                .unwrap_or_default();
            let case = CASES.iter().find(|c| c.1 == prompt);
            let response = match case.and_then(|c| c.3) {
                Some(text) => tiny_http::Response::from_string(
                    json!({
                        "choices": [{"text": text, "index": 0, "finish_reason": "stop"}],
                        "usage": {"completion_tokens": 7}
                    })
                    .to_string(),
                ),
                None => {
                    tiny_http::Response::from_string("{\"error\":\"boom\"}").with_status_code(500)
                }
            };
            let _ = request.respond(response);
        }
    });
    url
}

fn write_prompts(path: &Path) {
    let lines: Vec<String> = CASES
        .iter()
        .map(|(name, prompt, tests, _, _)| {
            let mut task = json!({"name": name, "prompt": prompt});
            if let Some(tests) = tests {
                task["tests"] = json!(tests);
            }
            task.to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn eval_compile() -> Command {
    Command::cargo_bin("eval-compile").expect("the eval-compile binary is built")
}

#[test]
fn every_verdict_path_against_a_fake_server() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    write_prompts(&prompts);
    let out = dir.path().join("eval.json");
    let url = fake_server();
    let output = eval_compile()
        .args(["--prompts", prompts.to_str().unwrap(), "--server", &url])
        .args([
            "--compile-timeout",
            "3",
            "--run-timeout",
            "1",
            "--jobs",
            "2",
        ])
        .args(["--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");

    let samples = std::fs::read_to_string(dir.path().join("eval.samples.jsonl")).unwrap();
    let samples: Vec<Value> = samples
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(samples.len(), CASES.len());
    for (sample, case) in samples.iter().zip(CASES) {
        assert_eq!(sample["task"], case.0);
        assert_eq!(sample["verdict"], case.4, "{}: {sample}", case.0);
        let reward = if ["compiles", "tests_pass"].contains(&case.4) {
            1.0
        } else {
            0.0
        };
        assert_eq!(sample["reward"], reward, "{}", case.0);
    }
    let by_task = |name: &str| samples.iter().find(|s| s["task"] == name).unwrap();
    // Cut at the stop string "\n}" derived from the prompt, before the rest of the file.
    assert_eq!(by_task("adds")["body"], "    a + b");
    assert_eq!(by_task("type_error")["errors"], json!(["E0277"]));
    assert_eq!(by_task("placeholder")["trivial"], "todo");
    assert!(by_task("triples_wrongly")["detail"]
        .as_str()
        .unwrap()
        .contains("exit code"));

    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let n = CASES.len() as f64;
    // compiled: adds, doubles, subtracts_main, triples_wrongly, spins_forever.
    assert!((summary["compile_success_rate"].as_f64().unwrap() - 5.0 / n).abs() < 1e-9);
    assert!((summary["success_rate"].as_f64().unwrap() - 3.0 / n).abs() < 1e-9);
    assert!((summary["trivial_rate"].as_f64().unwrap() - 1.0 / n).abs() < 1e-9);
    // Tasks with tests: doubles, subtracts_main pass; triples, spins, placeholder fail.
    assert!((summary["pass_at_k"]["1"].as_f64().unwrap() - 2.0 / 5.0).abs() < 1e-9);
    assert_eq!(summary["verdicts"]["compile_timeout"], 1);
    assert_eq!(summary["completion_tokens"], 7 * (CASES.len() - 1));
    assert_eq!(summary["top_errors"][0][0], "E0277");
}

#[test]
fn an_unreachable_server_fails_and_bad_input_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    write_prompts(&prompts);
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = eval_compile()
        .args(["--prompts", prompts.to_str().unwrap()])
        .args([
            "--server",
            &format!("http://127.0.0.1:{port}"),
            "--limit",
            "2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no completion came back"));

    std::fs::write(
        &prompts,
        "{\"name\": \"x\", \"prompt\": \"no function here\"}\n",
    )
    .unwrap();
    let out = eval_compile()
        .args([
            "--prompts",
            prompts.to_str().unwrap(),
            "--server",
            "http://127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 1") && stderr.contains("no open brace"),
        "{stderr}"
    );
}
