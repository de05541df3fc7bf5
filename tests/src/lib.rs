//! Cross-tool tests live in `tests/tests/`: each runs the release binaries of tools/ on real files
//! made in a temporary folder. This library holds what several of them share.

use std::path::{Path, PathBuf};

pub mod corpus;
pub mod serve;

/// The Python interpreter that has the pinned packages of `requirements.txt` (the reference
/// `gguf` package and numpy): `$NANOCHAT_PYTHON` (which `make test` sets), else the project's own
/// `.venv/` (which `make venv` makes), else `python3` from the PATH.
pub fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("NANOCHAT_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

/// How to get the packages `python()` needs, for failure messages.
pub const PYTHON_SETUP: &str = "`make venv` (a project-local .venv with requirements.txt)";

/// Runs `tests/fixtures/SCRIPT` with [`python()`]; panics with its output on failure, else
/// returns its stdout.
pub fn fixture_script(script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(script);
    let out = std::process::Command::new(python())
        .arg(path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("python cannot run ({e}): {PYTHON_SETUP}"));
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The records of a JSONL file (panics on a line that is not JSON: a test's own output).
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
