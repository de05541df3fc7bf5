//! `serve` as the tests run it: the real binary on a random-weight model file (the real GGUF +
//! .mhc format) on a free loopback port, and raw HTTP/1.1 spoken to it over `TcpStream`s (no
//! client library, so a test can send exactly the bytes a hostile client would).

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long [`request`] waits for an answer: long enough for any completion the tests ask for,
/// short enough that a hung server fails the test instead of stalling the run.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// The serve binary the tests run.
pub fn serve_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("serve")
}

/// A running server; killed when dropped.
pub struct Server {
    child: Child,
    /// `host:port` it listens on.
    pub addr: String,
    /// The model file it serves.
    pub gguf: PathBuf,
    /// Everything it wrote on stderr so far.
    log: Arc<Mutex<Vec<u8>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// The server's process id (with [`Launch::fd_limit`], `sh` has exec'd into serve: the
    /// same process).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stderr so far (lossily decoded).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small random model (2 layers of the tiny preset, context 256) in `dir`: the GGUF and .mhc.
pub fn model_files(dir: &Path) -> (PathBuf, PathBuf) {
    let config = model::ModelConfig {
        n_layers: 2,
        context_length: 256,
        ..model::ModelConfig::preset("tiny").unwrap()
    };
    let (gguf, mhc) = model::testmodel::write_random_model(dir, "tiny", &config, 5).unwrap();
    (gguf, mhc.unwrap())
}

/// Starts serve on a new model with `extra` flags on 127.0.0.1, port 0.
pub fn start(extra: &[&str]) -> Server {
    Launch::new(extra).start()
}

/// How to start serve, for the tests that need more than flags.
pub struct Launch {
    args: Vec<OsString>,
    envs: Vec<(String, String)>,
    fd_limit: Option<u32>,
}

impl Launch {
    pub fn new(extra: &[&str]) -> Launch {
        Launch {
            args: extra.iter().map(OsString::from).collect(),
            envs: Vec::new(),
            fd_limit: None,
        }
    }

    /// Sets an environment variable of the server.
    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    /// Runs the server with at most `n` open file descriptors (`ulimit -n`).
    pub fn fd_limit(mut self, n: u32) -> Launch {
        self.fd_limit = Some(n);
        self
    }

    pub fn start(self) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let (gguf, mhc) = model_files(dir.path());
        let mut command = match self.fd_limit {
            None => Command::new(serve_bin()),
            Some(n) => {
                // The shell lowers its limit and execs serve, so the limit is serve's own and
                // the child's id stays serve's.
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n}; exec \"$0\" \"$@\""))
                    .arg(serve_bin());
                sh
            }
        };
        command
            .arg("--model")
            .arg(&gguf)
            .arg("--mhc")
            .arg(&mhc)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(&self.args)
            // A key in the test runner's environment must not turn authentication on.
            .env_remove("NANOCHAT_API_KEY")
            .envs(self.envs)
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        let mut child = command.spawn().unwrap();
        // The server announces its address on stderr once it listens.
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut line = Vec::new();
        let addr = loop {
            line.clear();
            if stderr.read_until(b'\n', &mut line).unwrap() == 0 {
                let _ = child.wait();
                panic!(
                    "serve exited before listening: {}",
                    String::from_utf8_lossy(&log.lock().unwrap())
                );
            }
            log.lock().unwrap().extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line);
            if let Some(at) = text.find("http://") {
                // Only the address: a log formatter may put fields or colour codes after it.
                let addr: String = text[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || ".:[]".contains(*c))
                    .collect();
                break addr;
            }
        };
        // Keep draining stderr (so the server never blocks on a full pipe), keeping it for the
        // tests that read the log.
        let sink = Arc::clone(&log);
        std::thread::spawn(move || loop {
            line.clear();
            match stderr.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => sink.lock().unwrap().extend_from_slice(&line),
            }
        });
        Server {
            child,
            addr,
            gguf,
            log,
            _dir: dir,
        }
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: String,
}

impl Response {
    /// The response at the start of `raw`, or None when `raw` has no complete header block.
    pub fn parse(raw: &[u8]) -> Option<Response> {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_string()
        };
        Some(Response {
            status,
            headers,
            body,
        })
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (Null when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// One request on its own connection (`Connection: close`), answered in full. `Host: addr` and
/// `Content-Type: application/json` are sent unless `headers` names them. Panics when there is
/// no answer within a minute.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    try_request(addr, method, path, headers, body, ANSWER_TIMEOUT)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`request`], failing instead of panicking when the server cannot be reached, does not answer
/// within `timeout`, or answers something that is not HTTP.
pub fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> io::Result<Response> {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    let named = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if !named("host") {
        head += &format!("Host: {addr}\r\n");
    }
    if !named("content-type") {
        head += "Content-Type: application/json\r\n";
    }
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += &format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Response::parse(&raw).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no HTTP response: {:?}", String::from_utf8_lossy(&raw)),
        )
    })
}

/// Status and body of one request with the default headers.
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let r = request(addr, method, path, &[], body);
    (r.status, r.body)
}

/// How a connection ended while the client read from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The server closed it (end of stream).
    Closed,
    /// The server reset it.
    Reset,
    /// Still open when the reader gave up.
    Open,
}

/// Reads what `stream` brings until the server ends the connection, `enough` says the bytes so
/// far suffice (then [`End::Open`]), or `within` passes; returns the bytes and how it ended.
pub fn read_until(
    stream: &mut TcpStream,
    within: Duration,
    enough: impl Fn(&[u8]) -> bool,
) -> (Vec<u8>, End) {
    let deadline = Instant::now() + within;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || enough(&raw) {
            return (raw, End::Open);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (raw, End::Closed),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return (raw, End::Open)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return (raw, End::Reset),
        }
    }
}

/// Reads what `stream` brings until the server ends the connection or `within` passes.
pub fn read_for(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, End) {
    read_until(stream, within, |_| false)
}

/// Connects to `addr`, sends `bytes` and reads until the server ends the connection or `within`
/// passes.
pub fn exchange(addr: &str, bytes: &[u8], within: Duration) -> (Vec<u8>, End) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(bytes).unwrap();
    read_for(&mut s, within)
}
