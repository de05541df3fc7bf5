//! Compiling and running generated code. Generated code is untrusted: each sample gets its own
//! temporary folder (removed afterwards), rustc and the test binary are killed at their time
//! limits (the whole process group), the binary runs with a memory and output-size limit, an
//! empty environment, no stdin and, where user namespaces allow it, no network.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::extract::{library_program, test_program};
use crate::prompts::Task;

/// Limits and tools of the checker.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// The compiler (`rustc` on PATH by default).
    pub rustc: PathBuf,
    /// Each rustc run (the library check, the test build).
    pub compile_timeout: Duration,
    /// The test binary.
    pub run_timeout: Duration,
    /// Virtual memory of the test binary.
    pub memory_limit_mb: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            rustc: PathBuf::from("rustc"),
            compile_timeout: Duration::from_secs(20),
            run_timeout: Duration::from_secs(10),
            memory_limit_mb: 512,
        }
    }
}

/// The library check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompileOutcome {
    Ok,
    /// The error codes (`E0308`), or for errors without one their message with the quoted parts
    /// blanked (`expected one of _, _, or _, found _`), in order.
    Error(Vec<String>),
    Timeout,
}

/// The test run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TestOutcome {
    Pass,
    /// Failed assertions, a crash, a limit hit, or tests that do not compile with the body;
    /// the detail says which.
    Fail(String),
    /// Still running at the time limit: killed.
    Timeout,
}

/// Both checks of one sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    pub compile: CompileOutcome,
    /// `None` when the task has no tests or the library check failed.
    pub tests: Option<TestOutcome>,
}

/// The checker: options plus what this machine allows.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub options: CheckOptions,
    /// `unshare --user --net` works here: test binaries run with no network.
    pub network_isolated: bool,
}

enum Finished {
    Exited(ExitStatus),
    TimedOut,
}

impl Sandbox {
    /// Checks that rustc runs, and whether user namespaces can take the network away.
    pub fn new(options: CheckOptions) -> Result<Self, String> {
        let version = Command::new(&options.rustc)
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", options.rustc.display()))?;
        if !version.status.success() {
            return Err(format!("{} --version failed", options.rustc.display()));
        }
        let network_isolated = Command::new("unshare")
            .args(["--user", "--net", "--map-root-user", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        Ok(Sandbox {
            options,
            network_isolated,
        })
    }

    /// Compiles `body` in `task` as a library and, when that works and the task has tests,
    /// builds and runs them. `Err` only when the checker itself fails (no temp folder, no rustc).
    pub fn check(&self, task: &Task, body: &str) -> Result<CheckResult, String> {
        let dir = tempfile::Builder::new()
            .prefix("eval-sample-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary folder: {e}"))?;
        let dir = dir.path();
        let library = dir.join("sample.rs");
        write(&library, &library_program(task, body))?;
        let compile = self.rustc(
            dir,
            &[
                "--crate-type",
                "lib",
                "--emit=metadata",
                "-o",
                "libsample.rmeta",
                "sample.rs",
            ],
        )?;
        let tests = match (&compile, test_program(task, body)) {
            (CompileOutcome::Ok, Some(program)) => Some(self.run_tests(dir, &program)?),
            _ => None,
        };
        Ok(CheckResult { compile, tests })
    }

    fn run_tests(&self, dir: &Path, program: &str) -> Result<TestOutcome, String> {
        write(&dir.join("sample_tests.rs"), program)?;
        // `#[test]` functions build with the test harness; MultiPL-E tests are a `fn main`.
        let harness = program.contains("#[test]");
        let mut args = vec!["-o", "sample_tests", "sample_tests.rs"];
        if harness {
            args.insert(0, "--test");
        }
        match self.rustc(dir, &args)? {
            CompileOutcome::Ok => {}
            CompileOutcome::Error(codes) => {
                return Ok(TestOutcome::Fail(format!(
                    "does not compile with its tests: {}",
                    codes.join(", ")
                )))
            }
            CompileOutcome::Timeout => {
                return Ok(TestOutcome::Fail(
                    "the test build ran past its time limit".into(),
                ))
            }
        }
        // ulimit -v: KiB of virtual memory; -f: blocks of output files (stdout is a file here);
        // -c 0: no core dumps.
        let limits = format!(
            "ulimit -v {} && ulimit -f 4096 && ulimit -c 0 && exec ./sample_tests \"$@\"",
            self.options.memory_limit_mb * 1024
        );
        let mut command = if self.network_isolated {
            let mut c = Command::new("unshare");
            c.args(["--user", "--net", "--map-root-user", "sh", "-c", &limits]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &limits]);
            c
        };
        command.arg("sample_tests");
        if harness {
            command.arg("--test-threads=1");
        }
        command.env_clear();
        let output = dir.join("run.out");
        match self.run(dir, command, &output, self.options.run_timeout)? {
            Finished::TimedOut => Ok(TestOutcome::Timeout),
            Finished::Exited(status) if status.success() => Ok(TestOutcome::Pass),
            Finished::Exited(status) => {
                let text = std::fs::read_to_string(&output).unwrap_or_default();
                Ok(TestOutcome::Fail(failure_detail(status, &text)))
            }
        }
    }

    fn rustc(&self, dir: &Path, args: &[&str]) -> Result<CompileOutcome, String> {
        let mut command = Command::new(&self.options.rustc);
        command
            .args([
                "--edition",
                "2021",
                "--error-format=json",
                "-A",
                "warnings",
                "--crate-name",
                "sample",
            ])
            .args(args);
        let output = dir.join("rustc.out");
        Ok(
            match self.run(dir, command, &output, self.options.compile_timeout)? {
                Finished::TimedOut => CompileOutcome::Timeout,
                Finished::Exited(status) if status.success() => CompileOutcome::Ok,
                Finished::Exited(_) => {
                    let text = std::fs::read_to_string(&output).unwrap_or_default();
                    CompileOutcome::Error(error_codes(&text))
                }
            },
        )
    }

    /// Runs `command` in `dir`, stdout and stderr to `output`, in its own process group, killed
    /// with the group at `timeout`.
    fn run(
        &self,
        dir: &Path,
        mut command: Command,
        output: &Path,
        timeout: Duration,
    ) -> Result<Finished, String> {
        let out = File::create(output).map_err(|e| format!("{}: {e}", output.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", output.display()))?;
        let mut child = command
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", command.get_program()))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Ok(Finished::Exited(status));
            }
            if Instant::now() >= deadline {
                // The group: rustc's linker, or processes the test binary started.
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .stderr(Stdio::null())
                    .status();
                let _ = child.kill();
                let _ = child.wait();
                return Ok(Finished::TimedOut);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The errors of rustc's JSON diagnostics (one object a line): codes, or blanked messages for
/// errors without a code; the closing "aborting due to" summary is left out.
pub fn error_codes(json_lines: &str) -> Vec<String> {
    let mut codes = Vec::new();
    for line in json_lines.lines() {
        let Ok(diagnostic) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if diagnostic["level"] != "error" {
            continue;
        }
        if let Some(code) = diagnostic["code"]["code"].as_str() {
            codes.push(code.to_string());
            continue;
        }
        let message = diagnostic["message"].as_str().unwrap_or("");
        if message.is_empty() || message.starts_with("aborting due to") {
            continue;
        }
        codes.push(blank_quoted(message));
    }
    codes
}

/// `expected one of `,`, `;`, found `x`` → `expected one of _, _, found _`: one category per kind
/// of message, whatever the tokens.
fn blank_quoted(message: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in message.chars() {
        if c == '`' {
            if !quoted {
                out.push('_');
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

fn failure_detail(status: ExitStatus, output: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "failed".to_string(),
    };
    // The first panic message or failing assertion, shortened.
    let first = output
        .lines()
        .find(|l| l.contains("panicked at") || l.contains("assertion") || l.contains("memory"))
        .map(|l| l.trim().chars().take(160).collect::<String>());
    match first {
        Some(line) => format!("{how}: {line}"),
        None => how,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_diagnostics_give_codes_and_blanked_messages() {
        let text = concat!(
            r#"{"$message_type":"diagnostic","message":"mismatched types","code":{"code":"E0308","explanation":""},"level":"error"}"#,
            "\n",
            r#"{"$message_type":"diagnostic","message":"expected one of `,` or `)`, found `x`","code":null,"level":"error"}"#,
            "\n",
            r#"{"$message_type":"diagnostic","message":"unused variable","code":{"code":"unused"},"level":"warning"}"#,
            "\n",
            r#"{"$message_type":"diagnostic","message":"aborting due to 2 previous errors","code":null,"level":"error"}"#,
            "\nnot json\n"
        );
        assert_eq!(
            error_codes(text),
            vec![
                "E0308".to_string(),
                "expected one of _ or _, found _".to_string()
            ]
        );
    }
}
