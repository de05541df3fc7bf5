//! `serve` against hostile clients (issue 25): the real binary on a random-weight model, spoken to
//! over raw loopback sockets by clients that send other HTTP versions, stall, hoard descriptors,
//! declare huge bodies, send huge prompts, come without the API key or from another origin,
//! send malformed framing or control characters, or too many requests; each test checks that the
//! server refuses them as the hardening spec says and keeps serving everyone else. Timeouts are
//! set short by the flags (`--read-timeout-s 1`) so that no test waits long.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cross_tool_tests::serve::{
    exchange, read_for, read_until, request, start, try_request, End, Launch, Response,
};
use serde_json::{json, Value};

/// The `--read-timeout-s` of the tests that wait for the server to drop a client.
const READ_TIMEOUT_S: u64 = 1;
/// How much later than its read timeout the server may be seen closing a connection (the
/// timeout's own granularity plus a loaded 2-core machine).
const CLOSE_SLACK: Duration = Duration::from_secs(2);
/// How soon /health and a short completion must be answered while other clients stall.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// The model id serve gives the test model (its file's stem).
const MODEL_ID: &str = "tiny";

fn completion_body(prompt: &str, extra: Value) -> String {
    let mut body = json!({"prompt": prompt, "max_tokens": 4, "temperature": 0});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body.to_string()
}

/// A short greedy completion (4 tokens), with extra request headers.
fn complete(addr: &str, headers: &[(&str, &str)]) -> Response {
    let body = completion_body("fn main() {", json!({}));
    request(addr, "POST", "/v1/completions", headers, &body)
}

fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    request(addr, "GET", path, headers, "")
}

/// Asserts an OpenAI error object with this status and code.
#[track_caller]
fn assert_error(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{r:?}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{r:?}"
    );
}

/// Runs `f`, with how long it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

/// Polls `ok` every 20 ms until it holds or `within` passes; whether it held.
fn wait_until(within: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// File descriptors process `pid` holds.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A numeric field of /proc/PID/status (`Threads`, `VmHWM` in kB...).
fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace().next().unwrap().parse().unwrap()
}

/// Hex SHA-256 of a file (coreutils' sha256sum: the tests crate has no hash crate).
fn sha256_hex(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// Whether /health answers 200 within a second (false also when it cannot connect).
fn healthy(addr: &str) -> bool {
    try_request(addr, "GET", "/health", &[], "", Duration::from_secs(1))
        .is_ok_and(|r| r.status == 200)
}

/// Requests in HTTP versions serve does not speak: HTTP/2 and HTTP/3 request lines and the h2c
/// (prior-knowledge HTTP/2) connection preface.
const OTHER_VERSIONS: [&[u8]; 3] = [
    b"GET / HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET / HTTP/3.0\r\nHost: 127.0.0.1\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
];

/// Sends `hello` on a new connection: within 1 s the server must refuse it, with 400 (hyper's
/// answer to a request line it cannot parse, after which it closes) or 505, or close it; a
/// connection left hanging is the bug.
fn refuses_version(addr: &str, hello: &[u8]) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(hello).unwrap();
    // Stop reading once a header block is in: a refusal on an open connection is an answer too.
    let (raw, end) = read_until(&mut s, Duration::from_secs(1), |raw| {
        raw.windows(4).any(|w| w == b"\r\n\r\n")
    });
    let sent = String::from_utf8_lossy(hello);
    match Response::parse(&raw) {
        Some(r) if r.status == 400 || r.status == 505 => Ok(()),
        Some(r) => Err(format!(
            "{sent:?} answered {} instead of 400 or 505",
            r.status
        )),
        None if raw.is_empty() && end != End::Open => Ok(()),
        None if end == End::Open => Err(format!("{sent:?}: nothing and not closed within 1 s")),
        None => Err(format!(
            "{sent:?}: not an HTTP response: {:?}",
            String::from_utf8_lossy(&raw)
        )),
    }
}

#[test]
fn other_http_versions_are_refused_at_once_and_leak_nothing() {
    let server = start(&[]);
    let (a, pid) = (server.addr.as_str(), server.pid());
    for hello in OTHER_VERSIONS {
        refuses_version(a, hello).unwrap();
    }
    assert!(healthy(a));
    let (fds, threads) = (open_fds(pid), proc_status(pid, "Threads"));
    // Each used to cost a descriptor pair and a thread for good: 70 of them would show.
    for hello in OTHER_VERSIONS.iter().cycle().take(70) {
        refuses_version(a, hello).unwrap();
    }
    // The server may close its side a moment after the client sees the close.
    let slack = 8;
    let settled = wait_until(Duration::from_secs(2), || {
        open_fds(pid) <= fds + slack && proc_status(pid, "Threads") <= threads + slack as u64
    });
    assert!(
        settled,
        "after 70 refused connections serve holds {} descriptors and {} threads (before: {fds}, \
         {threads})",
        open_fds(pid),
        proc_status(pid, "Threads")
    );
    assert!(healthy(a));
}

#[test]
fn idle_and_stalled_clients_neither_block_others_nor_stay() {
    let workers = 2;
    let server = start(&[
        "--workers",
        &workers.to_string(),
        "--read-timeout-s",
        &READ_TIMEOUT_S.to_string(),
    ]);
    let a = server.addr.as_str();
    let since = Instant::now();
    // More clients than --workers that hold a connection: twice as many that connect and say
    // nothing, four times as many that send a request's headers and 10 of the 1000 body bytes
    // they declare, then nothing.
    let mut idle: Vec<TcpStream> = (0..2 * workers)
        .map(|_| TcpStream::connect(a).unwrap())
        .collect();
    let stalled_head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {a}\r\nContent-Type: application/json\r\n\
         Content-Length: 1000\r\n\r\n{{\"prompt\":"
    );
    let mut stalled: Vec<TcpStream> = (0..4 * workers)
        .map(|_| {
            let mut s = TcpStream::connect(a).unwrap();
            s.write_all(stalled_head.as_bytes()).unwrap();
            s
        })
        .collect();
    // A slowloris: header bytes trickle in, never a complete header block; its headers must be
    // complete within the read timeout of their first byte, so the trickle does not keep it.
    let slowloris = {
        let a = a.to_string();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(&a).unwrap();
            let started = Instant::now();
            let head = format!("GET /health HTTP/1.1\r\nHost: {a}\r\n");
            for byte in head.bytes().chain(b"X-Slow: ".iter().copied().cycle()) {
                if s.write_all(&[byte]).is_err() {
                    return Some(started.elapsed());
                }
                let (_, end) = read_for(&mut s, Duration::from_millis(200));
                if end != End::Open {
                    return Some(started.elapsed());
                }
                if started.elapsed() > Duration::from_secs(READ_TIMEOUT_S) + CLOSE_SLACK {
                    return None;
                }
            }
            unreachable!("an endless trickle")
        })
    };

    let (health, took) = timed(|| get(a, "/health", &[]));
    assert_eq!(health.status, 200, "{health:?}");
    assert!(
        took < ANSWER_WITHIN,
        "/health took {took:?} beside stalled clients"
    );
    let (done, took) = timed(|| complete(a, &[]));
    assert_eq!(done.status, 200, "{done:?}");
    assert!(
        took < ANSWER_WITHIN,
        "a completion took {took:?} beside stalled clients"
    );

    let deadline = since + Duration::from_secs(READ_TIMEOUT_S) + CLOSE_SLACK;
    for (kind, clients) in [("an idle", &mut idle), ("a stalled-body", &mut stalled)] {
        for s in clients.iter_mut() {
            let (_, end) = read_for(s, deadline.saturating_duration_since(Instant::now()));
            assert_ne!(
                end,
                End::Open,
                "{kind} connection is still open {:?} after it went quiet \
                 (--read-timeout-s {READ_TIMEOUT_S})",
                since.elapsed()
            );
        }
    }
    assert!(
        slowloris.join().unwrap().is_some(),
        "a client trickling header bytes was not cut off (--read-timeout-s {READ_TIMEOUT_S})"
    );
}

#[test]
fn running_out_of_descriptors_does_not_kill_the_listener() {
    let fd_limit = 64;
    let mut server = Launch::new(&[]).fd_limit(fd_limit).start();
    let a = server.addr.clone();
    let pid = server.pid();
    // More connections than serve can have descriptors: the kernel completes them (the listen
    // backlog) while serve's accept fails with EMFILE. A refusal ends the hoarding early (a
    // listener that died refuses).
    let target = a.parse().unwrap();
    let held: Vec<TcpStream> = (0..100)
        .map_while(|_| TcpStream::connect_timeout(&target, Duration::from_secs(1)).ok())
        .collect();
    let exhausted = || open_fds(pid) + 4 >= fd_limit as usize;
    assert!(
        wait_until(Duration::from_secs(2), exhausted),
        "serve never ran out of descriptors ({} open, {} connected)",
        open_fds(pid),
        held.len()
    );
    drop(held);
    let back = wait_until(Duration::from_secs(10), || healthy(&a));
    assert!(server.alive(), "serve died: {}", server.log());
    assert!(
        back,
        "no /health 10 s after the descriptors were freed: {}",
        server.log()
    );
    let done = complete(&a, &[]);
    assert_eq!(done.status, 200, "{done:?}");
}

#[test]
fn a_body_over_the_cap_is_refused_before_it_is_sent() {
    let server = start(&["--max-body-bytes", "1048576"]);
    let a = server.addr.as_str();
    for declared in [2_000_000u64, 100_000_000] {
        // Only the headers: a server that waits for the body before answering hangs here.
        let head = format!(
            "POST /v1/completions HTTP/1.1\r\nHost: {a}\r\nContent-Type: application/json\r\n\
             Content-Length: {declared}\r\n\r\n"
        );
        let (raw, end) = exchange(a, head.as_bytes(), Duration::from_secs(2));
        let r = Response::parse(&raw).unwrap_or_else(|| {
            panic!(
                "Content-Length {declared}: no answer ({end:?}): {:?}",
                String::from_utf8_lossy(&raw)
            )
        });
        assert_eq!(r.status, 413, "Content-Length {declared}: {r:?}");
        assert!(r.json()["error"]["message"].is_string(), "{r:?}");
        assert_ne!(end, End::Open, "Content-Length {declared}: left open");
    }
    assert!(healthy(a));
}

#[test]
fn sixteen_megabyte_prompts_at_once_stay_out_of_memory() {
    let server = start(&[]);
    let pid = server.pid();
    // 16 requests, each a 1,000,000-byte prompt (under the 1 MiB body cap, far over the 256-token
    // context): each must be refused without the server holding their tokens at once.
    // No character JSON escapes: the body is the prompt's size plus a few bytes.
    let line = "let x = 1; ";
    let prompt = line.repeat(1_000_000 / line.len() + 1)[..1_000_000].to_string();
    let body = std::sync::Arc::new(completion_body(&prompt, json!({})));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (a, body) = (server.addr.clone(), std::sync::Arc::clone(&body));
            std::thread::spawn(move || request(&a, "POST", "/v1/completions", &[], &body))
        })
        .collect();
    for c in clients {
        assert_error(&c.join().unwrap(), 400, "context_length_exceeded");
    }
    let peak = proc_status(pid, "VmHWM") * 1024;
    assert!(
        peak < 100_000_000,
        "resident memory peaked at {} MB",
        peak / 1_000_000
    );
}

const KEY: &str = "sk-test-8f14e45fceea167a";

/// With `key` required: /v1/* and /metrics refuse a missing, wrong or truncated key with 401
/// and accept the key; / and /health stay open.
fn check_api_key(addr: &str, key: &str) {
    let good = format!("Bearer {key}");
    let wrong = "Bearer sk-wrong".to_string();
    // A prefix of the key: a comparison that stops at the shorter one lets it in.
    let truncated = format!("Bearer {}", &key[..key.len() - 1]);
    let guarded = [
        (
            "POST",
            "/v1/completions",
            completion_body("fn f(", json!({})),
        ),
        ("GET", "/v1/models", String::new()),
        ("GET", "/v1/models/tiny", String::new()),
        ("GET", "/metrics", String::new()),
    ];
    for (method, path, body) in &guarded {
        for auth in [None, Some(&wrong), Some(&truncated)] {
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|v| ("Authorization", v.as_str())).collect();
            let r = request(addr, method, path, &headers, body);
            assert_error(&r, 401, "invalid_api_key");
            assert_eq!(r.json()["error"]["type"], "invalid_request_error");
            assert!(
                r.header("www-authenticate")
                    .is_some_and(|v| v.starts_with("Bearer")),
                "{method} {path}: {r:?}"
            );
        }
        let r = request(addr, method, path, &[("Authorization", &good)], body);
        assert_eq!(r.status, 200, "{method} {path} with the key: {r:?}");
    }
    for path in ["/", "/health"] {
        assert_eq!(get(addr, path, &[]).status, 200, "{path} without a key");
    }
}

#[test]
fn an_api_key_flag_guards_the_api_and_metrics() {
    let server = start(&["--api-key", KEY]);
    check_api_key(&server.addr, KEY);
}

#[test]
fn an_api_key_from_the_environment_guards_too_and_none_leaves_all_open() {
    let server = Launch::new(&[]).env("NANOCHAT_API_KEY", KEY).start();
    check_api_key(&server.addr, KEY);
    let open = start(&[]);
    for path in ["/v1/models", "/v1/models/tiny", "/metrics"] {
        assert_eq!(get(&open.addr, path, &[]).status, 200, "{path}");
    }
    assert_eq!(complete(&open.addr, &[]).status, 200);
}

#[test]
fn cross_origin_and_rebinding_requests_are_refused() {
    let server = start(&[]);
    let a = server.addr.as_str();
    // A page on another site posting to the local server (CSRF), a form-style body a browser
    // sends without preflight, and a rebound DNS name pointing at 127.0.0.1.
    assert_error(
        &complete(a, &[("Origin", "http://evil.example")]),
        403,
        "forbidden_origin",
    );
    assert_error(
        &complete(a, &[("Content-Type", "text/plain")]),
        415,
        "unsupported_media_type",
    );
    assert_error(
        &complete(a, &[("Host", "evil.example")]),
        403,
        "forbidden_host",
    );
    // What a local page or client sends is fine.
    let same_origin = format!("http://{a}");
    assert_eq!(complete(a, &[("Origin", &same_origin)]).status, 200);
    let charset = [("Content-Type", "application/json; charset=utf-8")];
    assert_eq!(complete(a, &charset).status, 200);
    let port = a.rsplit_once(':').unwrap().1;
    let localhost = format!("localhost:{port}");
    assert_eq!(
        get(a, "/v1/models", &[("Host", &localhost)]).status,
        200,
        "Host: {localhost}"
    );
}

#[test]
fn an_allowed_origin_gets_cors_headers_and_preflights() {
    let app = "http://app.example";
    let server = start(&["--allow-origin", app]);
    let a = server.addr.as_str();
    let r = complete(a, &[("Origin", app)]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some(app), "{r:?}");
    assert!(
        r.header("vary")
            .is_some_and(|v| v.to_ascii_lowercase().contains("origin")),
        "{r:?}"
    );
    let preflight = |origin: &str| {
        request(
            a,
            "OPTIONS",
            "/v1/chat/completions",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                (
                    "Access-Control-Request-Headers",
                    "authorization, content-type",
                ),
            ],
            "",
        )
    };
    let r = preflight(app);
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some(app), "{r:?}");
    assert!(
        r.header("access-control-allow-methods")
            .is_some_and(|v| v.contains("POST")),
        "{r:?}"
    );
    let allowed_headers = r
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        allowed_headers.contains("authorization") && allowed_headers.contains("content-type"),
        "{r:?}"
    );
    assert!(
        r.header("access-control-max-age")
            .is_some_and(|v| v.parse::<u64>().is_ok()),
        "{r:?}"
    );
    assert_eq!(preflight("http://other.example").status, 403);
    assert_error(
        &complete(a, &[("Origin", "http://other.example")]),
        403,
        "forbidden_origin",
    );
}

#[test]
fn ambiguous_framing_is_a_bad_request() {
    let server = start(&[]);
    let a = server.addr.as_str();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {a}\r\nContent-Type: application/json\r\n\
         Connection: close\r\n"
    );
    // Two lengths (request smuggling behind a proxy that takes the other one), and a chunk size
    // that is not hexadecimal.
    let cases = [
        format!("{head}Content-Length: 2\r\nContent-Length: 3\r\n\r\n"),
        format!("{head}Transfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"),
    ];
    for case in cases {
        let (raw, _) = exchange(a, case.as_bytes(), Duration::from_secs(5));
        let status = Response::parse(&raw).map(|r| r.status);
        assert_eq!(
            status,
            Some(400),
            "{case:?}: {:?}",
            String::from_utf8_lossy(&raw)
        );
    }
    assert!(healthy(a));
}

#[test]
fn control_characters_from_clients_reach_the_log_escaped() {
    let server = start(&[]);
    let a = server.addr.as_str();
    // An escape sequence in the method, and a C1 control (U+009B, CSI, as UTF-8) in the path: a
    // terminal showing the log would obey either if it came through raw.
    let method = "G\x1b[31mET";
    let path = "/\u{9b}31mred";
    for line in [
        format!("{method} / HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n"),
        format!("GET {path} HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n"),
    ] {
        let (_, end) = exchange(a, line.as_bytes(), Duration::from_secs(5));
        assert_ne!(end, End::Open, "{line:?}: no answer");
    }
    // The path's request is logged once answered (escaped, the text after the control character
    // intact); the method's may be refused before it is a request, and then not logged.
    let logged = wait_until(Duration::from_secs(2), || server.log().contains("31mred"));
    let log = server.log();
    assert!(!log.contains(method), "raw escape from the method: {log:?}");
    assert!(!log.contains(path), "raw C1 control from the path: {log:?}");
    assert!(
        logged,
        "the request for {path:?} is not in the log: {log:?}"
    );
}

#[test]
fn a_model_is_found_by_id_with_the_sha256_of_its_file() {
    let server = start(&[]);
    let a = server.addr.as_str();
    let sha = sha256_hex(&server.gguf);
    let r = get(a, &format!("/v1/models/{MODEL_ID}"), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let model = r.json();
    assert_eq!(model["id"], MODEL_ID);
    assert_eq!(model["object"], "model");
    assert_eq!(model["sha256"], sha.as_str());
    assert_eq!(get(a, "/v1/models", &[]).json()["data"][0], model);
    assert_error(&get(a, "/v1/models/other", &[]), 404, "model_not_found");
}

#[test]
fn a_subnormal_temperature_is_greedy() {
    let server = start(&[]);
    let a = server.addr.as_str();
    // 1e-45 is the smallest f32 above 0: dividing logits by it overflows to infinities, whose
    // softmax is NaN unless the sampler treats it as the greedy limit it is.
    let text = |temperature: f64| {
        let body = completion_body(
            "fn main() {",
            json!({"temperature": temperature, "max_tokens": 8}),
        );
        let r = request(a, "POST", "/v1/completions", &[], &body);
        assert_eq!(r.status, 200, "temperature {temperature}: {r:?}");
        r.json()["choices"][0]["text"].as_str().unwrap().to_string()
    };
    assert_eq!(text(1e-45), text(0.0));
}

/// The families of an OpenMetrics text exposition, as the reference parser (the Python
/// `prometheus_client` package, tests/fixtures/prom_parse.py) reads them.
fn prometheus_parse(text: &str) -> Vec<Value> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/prom_parse.py");
    let mut child = Command::new(cross_tool_tests::python())
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "python cannot run ({e}): {}",
                cross_tool_tests::PYTHON_SETUP
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prom_parse.py (the package is in {}): {}\n{text}",
        cross_tool_tests::PYTHON_SETUP,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// A parsed exposition, looked up by sample name.
struct Metrics(Vec<Value>);

impl Metrics {
    fn scrape(addr: &str) -> Metrics {
        let r = get(addr, "/metrics", &[]);
        assert_eq!(r.status, 200, "{r:?}");
        let content_type = r.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "/metrics is not OpenMetrics text: Content-Type {content_type}"
        );
        Metrics(prometheus_parse(&r.body))
    }

    /// The type of the family holding samples named `sample` (None: no such sample).
    fn kind(&self, sample: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|f| {
                f["samples"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["name"] == sample)
            })
            .map(|f| f["type"].as_str().unwrap())
    }

    /// The labels and values of the samples named `sample`.
    fn samples(&self, sample: &str) -> Vec<(Value, f64)> {
        self.0
            .iter()
            .flat_map(|f| f["samples"].as_array().unwrap())
            .filter(|s| s["name"] == sample)
            .map(|s| (s["labels"].clone(), s["value"].as_f64().unwrap()))
            .collect()
    }

    /// The value of the sample named `sample` whose labels include `labels`.
    fn value(&self, sample: &str, labels: Value) -> Option<f64> {
        let labels = labels.as_object().unwrap();
        self.samples(sample)
            .into_iter()
            .find(|(have, _)| labels.iter().all(|(k, v)| &have[k] == v))
            .map(|(_, v)| v)
    }

    /// Nonzero `nanochat_http_requests_total` by (route, status).
    fn requests(&self) -> Vec<(String, String, f64)> {
        let mut counts: Vec<_> = self
            .samples("nanochat_http_requests_total")
            .into_iter()
            .filter(|(_, v)| *v != 0.0)
            .map(|(l, v)| {
                let label = |k: &str| l[k].as_str().unwrap_or_default().to_string();
                (label("route"), label("status"), v)
            })
            .collect();
        counts.sort_by(|x, y| x.partial_cmp(y).unwrap());
        counts
    }
}

#[test]
fn metrics_count_what_was_served() {
    let server = start(&[]);
    let a = server.addr.as_str();
    let (mut prompt_tokens, mut completion_tokens) = (0.0, 0.0);
    for i in 0..3 {
        let body = completion_body(&format!("struct S{i} {{"), json!({"max_tokens": 8}));
        let r = request(a, "POST", "/v1/completions", &[], &body);
        assert_eq!(r.status, 200, "{r:?}");
        let usage = &r.json()["usage"];
        prompt_tokens += usage["prompt_tokens"].as_f64().unwrap();
        completion_tokens += usage["completion_tokens"].as_f64().unwrap();
    }
    for _ in 0..2 {
        let r = request(a, "POST", "/v1/completions", &[], "{not json");
        assert_eq!(r.status, 400, "{r:?}");
    }
    assert_eq!(get(a, "/v2/nothing", &[]).status, 404);

    let m = Metrics::scrape(a);
    let requests = |route: &str, status: &str, n: f64| (route.to_string(), status.to_string(), n);
    assert_eq!(
        m.requests(),
        vec![
            requests("/v1/completions", "200", 3.0),
            requests("/v1/completions", "400", 2.0),
            requests("other", "404", 1.0),
        ],
        "a scrape counts what came before it, not itself"
    );
    for (sample, kind) in [
        ("nanochat_http_requests_total", "counter"),
        ("nanochat_prompt_tokens_total", "counter"),
        ("nanochat_completion_tokens_total", "counter"),
        ("nanochat_rejected_connections_total", "counter"),
        ("nanochat_time_to_first_token_seconds_count", "histogram"),
        ("nanochat_time_per_output_token_seconds_count", "histogram"),
        ("nanochat_queued_requests", "gauge"),
        ("nanochat_active_sequences", "gauge"),
        ("nanochat_kv_cache_tokens", "gauge"),
        ("nanochat_kv_cache_capacity_tokens", "gauge"),
        ("nanochat_open_connections", "gauge"),
    ] {
        assert_eq!(m.kind(sample), Some(kind), "the family of {sample}");
    }
    let total = |sample: &str| m.value(sample, json!({})).unwrap();
    assert_eq!(total("nanochat_prompt_tokens_total"), prompt_tokens);
    assert_eq!(total("nanochat_completion_tokens_total"), completion_tokens);
    // One first token per completion; the histogram's +Inf bucket holds every observation.
    let ttft = "nanochat_time_to_first_token_seconds";
    assert_eq!(total(&format!("{ttft}_count")), 3.0);
    assert_eq!(
        m.value(&format!("{ttft}_bucket"), json!({"le": "+Inf"})),
        Some(3.0)
    );
    assert!(total("nanochat_time_per_output_token_seconds_count") > 0.0);
    assert_eq!(total("nanochat_queued_requests"), 0.0);
    assert_eq!(total("nanochat_active_sequences"), 0.0);
    assert!(total("nanochat_kv_cache_capacity_tokens") > 0.0);
    let info = json!({"model": MODEL_ID, "sha256": sha256_hex(&server.gguf)});
    assert_eq!(m.value("nanochat_model_info", info), Some(1.0));

    // The first scrape shows in the second.
    let again = Metrics::scrape(a);
    assert_eq!(
        again.value(
            "nanochat_http_requests_total",
            json!({"route": "/metrics", "status": "200"})
        ),
        Some(1.0)
    );
}

#[test]
fn a_client_over_the_rate_limit_gets_429_but_health_answers() {
    let server = start(&["--rate-limit", "3/min"]);
    let a = server.addr.as_str();
    // /health is outside the limit: before and after, it neither counts nor is refused.
    assert!(healthy(a));
    for _ in 0..3 {
        assert_eq!(get(a, "/v1/models", &[]).status, 200);
    }
    let r = get(a, "/v1/models", &[]);
    assert_error(&r, 429, "rate_limit_exceeded");
    let retry_after: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no whole-seconds Retry-After: {r:?}"));
    assert!(retry_after >= 1, "{r:?}");
    assert!(healthy(a));
}

/// The read timeout is for silence, not for slowness: a body that keeps coming in pieces, each
/// within the timeout, is read to its end and answered even though the whole takes longer.
#[test]
fn a_slow_but_steady_body_is_served() {
    let server = start(&["--read-timeout-s", &READ_TIMEOUT_S.to_string()]);
    let a = server.addr.as_str();
    let body = completion_body("fn f(", json!({}));
    let mut s = TcpStream::connect(a).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: {a}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    // Four pieces 400 ms apart: 1.2 s in all, over the read timeout, never quiet for as long.
    let pieces = body.as_bytes().chunks(body.len().div_ceil(4));
    for piece in pieces {
        std::thread::sleep(Duration::from_millis(400));
        s.write_all(piece).unwrap();
    }
    let mut raw = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.read_to_end(&mut raw).unwrap();
    let r = Response::parse(&raw).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
}
