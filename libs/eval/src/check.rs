//! Compiling and running generated code. Generated code is untrusted: each sample gets its own
//! temporary folder (removed afterwards), and both the compile step and the test run happen
//! inside bubblewrap (`bwrap`, the sandbox Flatpak runs applications in: unprivileged user
//! namespaces, no daemon, no setuid needed), which gives each run
//! - a read-only view of `/usr` (and of the Rust toolchain, for rustc) and nothing else of the
//!   system: no home folder, no `/etc` beyond what the linker needs, no `/root`, no secrets;
//! - the sample's folder as its only writable place, a private `/tmp`, `/proc` and `/dev`;
//! - new user, PID, network, IPC, UTS and cgroup namespaces: no network at all, and every
//!   process of the sample ends with it (the namespace's init exits, the kernel kills the rest);
//! - an empty environment (`PATH` only) and no controlling terminal (`--new-session`).
//!
//! The test binary also runs as an unprivileged user (`nobody` when the checker runs as root,
//! since root is exempt from the process limit) under `prlimit`: a process count (fork bombs),
//! CPU time, virtual memory, output size, no core files. Wall-time limits kill the whole process
//! group. Where bubblewrap cannot run, nothing is run unless the caller says `no_sandbox`, and the
//! summary then says so.

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
    /// The compiler (`rustc` on PATH by default; the toolchain it belongs to is what runs).
    pub rustc: PathBuf,
    /// Each rustc run (the library check, the test build).
    pub compile_timeout: Duration,
    /// The test binary.
    pub run_timeout: Duration,
    /// Virtual memory of the test binary.
    pub memory_limit_mb: u64,
    /// bubblewrap; `None`: `$NANOCHAT_BWRAP`, else the project's own copy (`make sandbox` puts it
    /// in `.tools/`), else `bwrap` on the PATH.
    pub bwrap: Option<PathBuf>,
    /// Run generated code unconfined where bubblewrap cannot run (never chosen silently).
    pub no_sandbox: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            rustc: PathBuf::from("rustc"),
            compile_timeout: Duration::from_secs(20),
            run_timeout: Duration::from_secs(10),
            memory_limit_mb: 512,
            bwrap: None,
            no_sandbox: false,
        }
    }
}

/// Processes the test binary may have (its own threads included) under the unprivileged user.
const MAX_PROCESSES: u64 = 256;
/// The user and group test binaries run as when the checker runs as root (`nobody`).
const UNPRIVILEGED_ID: u32 = 65534;
/// Where a sample's folder appears inside the sandbox.
const SANDBOX_DIR: &str = "/sample";

/// How generated code is confined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// bubblewrap at this path (see the module docs).
    Bubblewrap(PathBuf),
    /// Nothing: the caller asked for it (`--no-sandbox`) where bubblewrap could not run.
    Unconfined,
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

/// One rustc run with its diagnostics kept (rustc's JSON lines): a caller that puts many functions
/// in one file reads the error spans to learn which of them failed (see [`crate::harvest`]).
#[derive(Clone, Debug)]
pub struct Compilation {
    pub outcome: CompileOutcome,
    pub diagnostics: String,
}

/// How a test program's build and run ended, with what the binary printed.
#[derive(Clone, Debug)]
pub enum TestRun {
    /// The tests did not build (or the build ran past its time limit).
    BuildFailed(Compilation),
    /// Killed at the run time limit.
    TimedOut {
        output: String,
    },
    Exited {
        status: ExitStatus,
        output: String,
    },
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
    pub isolation: Isolation,
    /// The toolchain's root (`rustc --print sysroot`), bound read-only for the compile step.
    sysroot: PathBuf,
    /// The user the test binary runs as, when it is not the caller (`nobody` for root).
    run_as: Option<u32>,
    /// The process limit of the test binary: processes of its user, counted across the machine.
    max_processes: u64,
}

enum Finished {
    Exited(ExitStatus),
    TimedOut,
}

impl Sandbox {
    /// Checks that rustc runs and that bubblewrap confines a compile and a run here; without
    /// bubblewrap, an error naming why, unless `options.no_sandbox`.
    pub fn new(options: CheckOptions) -> Result<Self, String> {
        let sysroot = Command::new(&options.rustc)
            .args(["--print", "sysroot"])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", options.rustc.display()))?;
        if !sysroot.status.success() {
            return Err(format!(
                "{} --print sysroot failed",
                options.rustc.display()
            ));
        }
        let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
        let uid = effective_uid();
        let run_as = (uid == Some(0)).then_some(UNPRIVILEGED_ID);
        // Tests run as root move to `nobody`, whose own processes are few; another user's are
        // counted against the limit too, all of them.
        let max_processes = MAX_PROCESSES
            + match uid {
                Some(0) | None => 0,
                Some(me) => processes_of(me),
            };
        let mut sandbox = Sandbox {
            options,
            isolation: Isolation::Unconfined,
            sysroot,
            run_as,
            max_processes,
        };
        match sandbox.find_bubblewrap() {
            Ok(bwrap) => sandbox.isolation = Isolation::Bubblewrap(bwrap),
            Err(why) if sandbox.options.no_sandbox => {
                eprintln!(
                    "WARNING: generated code runs UNCONFINED (--no-sandbox): {why}. It can read and \
                     write everything this user can, use the network and leave processes behind."
                );
            }
            Err(why) => {
                return Err(format!(
                    "refusing to run generated code without a sandbox: {why}. Install \
                     bubblewrap (`make sandbox` puts a copy in .tools/; Debian: apt-get install \
                     bubblewrap), or pass --no-sandbox to run it unconfined"
                ))
            }
        }
        Ok(sandbox)
    }

    /// What confines generated code, in one line (for summaries and report cards).
    pub fn isolation_summary(&self) -> String {
        match &self.isolation {
            Isolation::Bubblewrap(path) => format!(
                "bubblewrap ({}): read-only /usr and toolchain, private sample folder and /tmp, \
                 new user/PID/network namespaces, empty environment, {} processes, CPU, memory \
                 and output limits{}",
                path.display(),
                MAX_PROCESSES,
                match self.run_as {
                    Some(uid) => format!(", tests run as uid {uid}"),
                    None => String::new(),
                }
            ),
            Isolation::Unconfined => "NONE (--no-sandbox): generated code ran unconfined".into(),
        }
    }

    /// The first bubblewrap that confines both steps here, or why there is none.
    fn find_bubblewrap(&self) -> Result<PathBuf, String> {
        let candidates: Vec<PathBuf> = match &self.options.bwrap {
            Some(path) => vec![path.clone()],
            None => std::env::var_os("NANOCHAT_BWRAP")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .into_iter()
                .chain(project_bubblewrap())
                .chain(std::iter::once(PathBuf::from("bwrap")))
                .collect(),
        };
        let mut reasons = Vec::new();
        for bwrap in candidates {
            match self.probe(&bwrap) {
                Ok(()) => return Ok(bwrap),
                Err(why) => reasons.push(format!("{}: {why}", bwrap.display())),
            }
        }
        Err(reasons.join("; "))
    }

    /// Runs `true` under both profiles.
    fn probe(&self, bwrap: &Path) -> Result<(), String> {
        let dir = tempfile::Builder::new()
            .prefix("eval-probe-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary folder: {e}"))?;
        let isolation = Isolation::Bubblewrap(bwrap.to_path_buf());
        let succeeds = |mut command: Command| -> Result<(), String> {
            let output = command
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot start it: {e}"))?;
            match output.status.success() {
                true => Ok(()),
                false => Err(String::from_utf8_lossy(&output.stderr).trim().to_string()),
            }
        };
        succeeds(self.compile_command(&isolation, dir.path(), "true", &[]))?;
        self.hand_over(dir.path())?;
        succeeds(self.run_command(&isolation, dir.path(), "true", &[]))
    }

    /// Appends bubblewrap's arguments every profile shares (namespaces, the read-only system,
    /// the sample's folder) to `c`, whose program is bubblewrap or a wrapper that runs it next.
    fn confine(c: &mut Command, dir: &Path) {
        c.args(["--unshare-all", "--die-with-parent", "--new-session"])
            .args(["--ro-bind", "/usr", "/usr"])
            .args(["--symlink", "usr/bin", "/bin"])
            .args(["--symlink", "usr/lib", "/lib"])
            .args(["--symlink", "usr/lib64", "/lib64"])
            .args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"])
            .arg("--bind")
            .arg(dir)
            .arg(SANDBOX_DIR)
            .args([
                "--chdir",
                SANDBOX_DIR,
                "--clearenv",
                "--setenv",
                "PATH",
                "/usr/bin",
            ]);
    }

    /// rustc (the toolchain's own binary, so no rustup proxy and no home folder) in `dir`.
    fn compile_command(
        &self,
        isolation: &Isolation,
        dir: &Path,
        program: &str,
        args: &[&str],
    ) -> Command {
        match isolation {
            Isolation::Bubblewrap(bwrap) => {
                let mut c = Command::new(bwrap);
                Self::confine(&mut c, dir);
                // The linker (cc) is an alternatives link; ld.so.cache speeds up loading.
                c.args(["--ro-bind", "/etc/alternatives", "/etc/alternatives"])
                    .args(["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"])
                    .arg("--ro-bind")
                    .arg(&self.sysroot)
                    .arg(&self.sysroot)
                    .arg("--")
                    .arg(program)
                    .args(args);
                c
            }
            Isolation::Unconfined => {
                let mut c = Command::new(program);
                c.args(args).current_dir(dir);
                c
            }
        }
    }

    /// A test binary in `dir`, as the unprivileged user under the process limits.
    fn run_command(
        &self,
        isolation: &Isolation,
        dir: &Path,
        program: &str,
        args: &[&str],
    ) -> Command {
        let o = &self.options;
        let mut c = Command::new("prlimit");
        c.arg(format!("--nproc={}", self.max_processes))
            .arg(format!("--as={}", o.memory_limit_mb << 20))
            .arg(format!("--cpu={}", o.run_timeout.as_secs() + 1))
            .arg(format!("--fsize={}", 16u64 << 20))
            .args(["--core=0", "--"]);
        match isolation {
            Isolation::Bubblewrap(bwrap) => {
                Self::confine(c.arg(bwrap), dir);
                c.arg("--").arg(program).args(args);
            }
            Isolation::Unconfined => {
                c.arg(program).args(args).current_dir(dir);
            }
        }
        if let Some(id) = self.run_as {
            c.uid(id).gid(id);
        }
        c.env_clear().env("PATH", "/usr/bin:/bin");
        c
    }

    /// Compiles `body` in `task` as a library and, when that works and the task has tests,
    /// builds and runs them. `Err` only when the checker itself fails (no temp folder, no rustc).
    pub fn check(&self, task: &Task, body: &str) -> Result<CheckResult, String> {
        let dir = sample_dir()?;
        let dir = dir.path();
        let compile = self
            .compile_library_in(dir, &library_program(task, body), &[])?
            .outcome;
        let tests = match (&compile, test_program(task, body)) {
            (CompileOutcome::Ok, Some(program)) => Some(self.run_tests(dir, &program)?),
            _ => None,
        };
        Ok(CheckResult { compile, tests })
    }

    /// Compiles `program` as a library (metadata only) in its own folder, rustc's diagnostics
    /// kept; `extra_args` go to rustc after the usual ones (`--force-warn unused_imports`).
    pub fn compile_library(
        &self,
        program: &str,
        extra_args: &[&str],
    ) -> Result<Compilation, String> {
        self.compile_library_in(sample_dir()?.path(), program, extra_args)
    }

    /// Builds `program`'s tests in their own folder and runs them (one test at a time).
    pub fn run_test_program(&self, program: &str) -> Result<TestRun, String> {
        self.build_and_run_tests(sample_dir()?.path(), program)
    }

    fn compile_library_in(
        &self,
        dir: &Path,
        program: &str,
        extra_args: &[&str],
    ) -> Result<Compilation, String> {
        write(&dir.join("sample.rs"), program)?;
        let mut args = vec![
            "--crate-type",
            "lib",
            "--emit=metadata",
            "-o",
            "libsample.rmeta",
        ];
        args.extend_from_slice(extra_args);
        args.push("sample.rs");
        self.rustc(dir, &args)
    }

    /// The folder becomes the unprivileged user's, so the test binary can write in it (its
    /// files stay readable to it: rustc wrote them world-readable).
    fn hand_over(&self, dir: &Path) -> Result<(), String> {
        match self.run_as {
            Some(id) => std::os::unix::fs::chown(dir, Some(id), Some(id))
                .map_err(|e| format!("{}: {e}", dir.display())),
            None => Ok(()),
        }
    }

    fn run_tests(&self, dir: &Path, program: &str) -> Result<TestOutcome, String> {
        Ok(match self.build_and_run_tests(dir, program)? {
            TestRun::BuildFailed(Compilation {
                outcome: CompileOutcome::Error(codes),
                ..
            }) => TestOutcome::Fail(format!(
                "does not compile with its tests: {}",
                codes.join(", ")
            )),
            TestRun::BuildFailed(_) => {
                TestOutcome::Fail("the test build ran past its time limit".into())
            }
            TestRun::TimedOut { .. } => TestOutcome::Timeout,
            TestRun::Exited { status, .. } if status.success() => TestOutcome::Pass,
            TestRun::Exited { status, output } => {
                TestOutcome::Fail(failure_detail(status, &output))
            }
        })
    }

    fn build_and_run_tests(&self, dir: &Path, program: &str) -> Result<TestRun, String> {
        write(&dir.join("sample_tests.rs"), program)?;
        // `#[test]` functions build with the test harness; MultiPL-E tests are a `fn main`.
        let harness = program.contains("#[test]");
        let mut args = vec!["-o", "sample_tests", "sample_tests.rs"];
        if harness {
            args.insert(0, "--test");
        }
        let build = self.rustc(dir, &args)?;
        if build.outcome != CompileOutcome::Ok {
            return Ok(TestRun::BuildFailed(build));
        }
        self.hand_over(dir)?;
        let args: &[&str] = if harness { &["--test-threads=1"] } else { &[] };
        let command = self.run_command(&self.isolation, dir, "./sample_tests", args);
        let output = dir.join("run.out");
        let finished = self.run(command, &output, self.options.run_timeout)?;
        let output = std::fs::read_to_string(&output).unwrap_or_default();
        Ok(match finished {
            Finished::TimedOut => TestRun::TimedOut { output },
            Finished::Exited(status) => TestRun::Exited { status, output },
        })
    }

    fn rustc(&self, dir: &Path, args: &[&str]) -> Result<Compilation, String> {
        let rustc = self.sysroot.join("bin/rustc");
        let mut all = vec![
            "--edition",
            "2021",
            "--error-format=json",
            "-A",
            "warnings",
            "--crate-name",
            "sample",
        ];
        all.extend_from_slice(args);
        let command = self.compile_command(&self.isolation, dir, &rustc.to_string_lossy(), &all);
        let output = dir.join("rustc.out");
        let finished = self.run(command, &output, self.options.compile_timeout)?;
        let diagnostics = std::fs::read_to_string(&output).unwrap_or_default();
        let outcome = match finished {
            Finished::TimedOut => CompileOutcome::Timeout,
            Finished::Exited(status) if status.success() => CompileOutcome::Ok,
            Finished::Exited(_) => CompileOutcome::Error(error_codes(&diagnostics)),
        };
        Ok(Compilation {
            outcome,
            diagnostics,
        })
    }

    /// Runs `command` in `dir`, stdout and stderr to `output`, in its own process group, killed
    /// with the group at `timeout`.
    fn run(
        &self,
        mut command: Command,
        output: &Path,
        timeout: Duration,
    ) -> Result<Finished, String> {
        let out = File::create(output).map_err(|e| format!("{}: {e}", output.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", output.display()))?;
        let mut child = command
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

/// This process's effective user: the owner of its /proc entry.
fn effective_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Processes user `me` runs now (the process limit counts them all).
fn processes_of(me: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc").map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .filter(|e| e.metadata().is_ok_and(|m| m.uid() == me))
            .count() as u64
    })
}

/// bubblewrap as `make sandbox` installs it: `.tools/usr/bin/bwrap` in a folder above this
/// executable (target/release/ lies two below the project root).
fn project_bubblewrap() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .take(5)
        .map(|dir| dir.join(".tools/usr/bin/bwrap"))
        .find(|path| path.is_file())
}

/// A sample's own temporary folder (removed when dropped).
fn sample_dir() -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix("eval-sample-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary folder: {e}"))
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
