//! The binary of this crate, run directly: a one-kernel run passes, and a run is reproducible
//! from its seed (same JSON apart from the elapsed time).
//!
//! Also why this file exists at all: cargo builds a package's binaries for `cargo test` only when
//! the package has an integration test, so this one makes `cargo test --workspace` build
//! `verify-triangle` for the cross-tool tests (tests/tests/verify_triangle.rs).

use std::process::Command;

fn verify_triangle(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_verify-triangle"))
        .args(args)
        .output()
        .expect("run verify-triangle");
    (
        output.status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn one_kernel_run_passes_and_says_so() {
    let (code, stdout, stderr) = verify_triangle(&["--kernel", "scalar", "--seeds", "1"]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("OK: "))
        .expect("summary");
    assert!(summary.starts_with("OK: scalar match the Rust reference bit for bit"));
    assert!(
        !stdout.contains("NOT verified"),
        "--kernel restricts the report to that kernel"
    );
}

#[test]
fn a_run_is_reproducible_from_its_seed() {
    let args = [
        "--kernel", "scalar", "--seed", "4242", "--seeds", "1", "--json",
    ];
    let runs: Vec<serde_json::Value> = (0..2)
        .map(|_| {
            let (code, stdout, stderr) = verify_triangle(&args);
            assert_eq!(code, 0, "{stderr}");
            let mut report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            report["elapsed_s"] = serde_json::Value::Null;
            report["summary"] = serde_json::Value::Null;
            report
        })
        .collect();
    assert_eq!(runs[0], runs[1]);
    assert_eq!(runs[0]["seed"], 4242);
}
