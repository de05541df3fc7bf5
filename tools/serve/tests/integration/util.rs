//! Test helpers: a server on the echo backend (port 0, stopped on drop) and a minimal HTTP/1.1
//! client that writes raw requests and parses responses (Content-Length or chunked) and
//! server-sent events.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;
use serve::backend::{Backend, EchoBackend};
pub use serve::server::Config;
use serve::server::{Server, Stopper};

/// A running server on an [`EchoBackend`].
pub struct TestServer {
    pub addr: SocketAddr,
    pub backend: Arc<EchoBackend>,
    stopper: Stopper,
    thread: Option<JoinHandle<()>>,
}

/// The settings of most tests: 8 workers, 4 KiB bodies, max_tokens cap 64, 10 s timeout.
pub fn config() -> Config {
    Config {
        workers: 8,
        max_body_bytes: 4096,
        max_tokens_cap: 64,
        request_timeout: Duration::from_secs(10),
        ..Config::default()
    }
}

impl TestServer {
    /// Echo backend with a 128-token context and `delay` per character.
    pub fn start(config: Config, delay: Duration) -> TestServer {
        let backend = Arc::new(EchoBackend::new(128, delay));
        let server = Server::bind("127.0.0.1:0", backend.clone(), config).unwrap();
        let (addr, stopper) = (server.addr(), server.stopper());
        let thread = thread::spawn(move || server.run().unwrap());
        TestServer {
            addr,
            backend,
            stopper,
            thread: Some(thread),
        }
    }

    pub fn stop(&mut self) {
        self.stopper.stop();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    /// Waits until the backend has no active request (panics after 5 s).
    pub fn wait_idle(&self) {
        let t = Instant::now();
        while self.backend.stats().active > 0 {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "a request still holds its slot"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A parsed response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The `data:` payloads of a server-sent event stream, in order (comments skipped).
    pub fn events(&self) -> Vec<String> {
        self.body
            .split("\n\n")
            .filter_map(|event| event.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }

    /// Asserts an OpenAI error object with this status and param; returns its message.
    pub fn assert_error(&self, status: u16, param: Option<&str>) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.header("Content-Type"), Some("application/json"));
        let e = &self.json()["error"];
        assert!(e["type"].is_string() && e.get("code").is_some(), "{e}");
        assert_eq!(e["param"].as_str(), param, "{e}");
        e["message"].as_str().unwrap().to_string()
    }
}

/// Sends raw request bytes on a new connection and reads the whole response.
pub fn raw(addr: SocketAddr, request: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(request).unwrap();
    read_response(BufReader::new(stream))
}

/// `METHOD path` with an optional body (`Connection: close`).
pub fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Response {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    if method == "HEAD" {
        // No body follows the headers, whatever Content-Length says.
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(&r).unwrap();
        let (status, headers) = read_head(&mut BufReader::new(stream));
        return Response {
            status,
            headers,
            body: String::new(),
        };
    }
    raw(addr, &r)
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, b"")
}

pub fn post(addr: SocketAddr, path: &str, body: &Value) -> Response {
    request(addr, "POST", path, body.to_string().as_bytes())
}

/// Reads the status line and headers.
pub fn read_head(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            return (status, headers);
        }
        let (name, value) = line.split_once(':').unwrap();
        headers.push((name.to_string(), value.trim().to_string()));
    }
}

/// Reads a response: Content-Length, chunked, or up to the close.
pub fn read_response(mut reader: impl BufRead) -> Response {
    let (status, headers) = read_head(&mut reader);
    let mut response = Response {
        status,
        headers,
        body: String::new(),
    };
    let mut body = Vec::new();
    if response.header("Transfer-Encoding") == Some("chunked") {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            assert_eq!(&chunk[size..], b"\r\n", "chunk framing");
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = response.header("Content-Length") {
        body.resize(n.parse().unwrap(), 0);
        reader.read_exact(&mut body).unwrap();
    } else {
        reader.read_to_end(&mut body).unwrap();
    }
    response.body = String::from_utf8(body).unwrap();
    response
}
