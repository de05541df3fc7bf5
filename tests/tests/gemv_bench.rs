//! gemv-bench as a user runs it: a small shape end to end (bandwidth probe, every kernel this CPU
//! runs, JSON output), and bad flags.

use assert_cmd::Command;
use serde_json::Value;
use ternary::Kernel;

fn gemv_bench() -> Command {
    Command::cargo_bin("gemv-bench").expect("gemv-bench is built with the workspace")
}

#[test]
fn json_report_covers_every_runnable_kernel_thread_count_and_batch() {
    let output = gemv_bench()
        .args(["--shape", "64x300", "--batch", "1,4", "--threads", "1,2"])
        .args(["--repeats", "3", "--min-sample-ms", "1", "--json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value =
        serde_json::from_slice(&output.stdout).expect("stdout is one JSON document");
    let bandwidth = report["read_bandwidth"].as_array().unwrap();
    assert_eq!(bandwidth.len(), 2);
    assert!(bandwidth
        .iter()
        .all(|b| b["bytes_per_second"].as_f64().unwrap() > 1e8));
    let results = report["results"].as_array().unwrap();
    let kernels: Vec<Kernel> = Kernel::available()
        .into_iter()
        .filter(|&k| k != Kernel::Reference)
        .collect();
    // One arithmetic peak per SIMD kernel and thread count; a row's share is its GOPS over the
    // peak of its kernel and thread count.
    let peaks = report["arithmetic_peak"].as_array().unwrap();
    let simd: Vec<Kernel> = kernels
        .iter()
        .copied()
        .filter(|&k| ternary::peak::instruction(k).is_some())
        .collect();
    assert_eq!(peaks.len(), simd.len() * 2);
    for row in results {
        let peak = peaks
            .iter()
            .find(|p| p["kernel"] == row["kernel"] && p["threads"] == row["threads"]);
        match peak {
            Some(p) => {
                let share = row["gops"].as_f64().unwrap() / p["gops"].as_f64().unwrap();
                let reported = row["peak_share"].as_f64().unwrap();
                assert!((share - reported).abs() <= 1e-9 * share, "{row}");
            }
            None => assert!(row["peak_share"].is_null(), "{row}"),
        }
    }
    assert_eq!(results.len(), kernels.len() * 2 * 2);
    // Rows in the plan's order, batch by batch, kernels best first, then thread counts (kernels
    // that read another code layout run in a pass of their own, and are put back in place).
    let order: Vec<(u64, &str, u64)> = results
        .iter()
        .map(|r| {
            let number = |key: &str| r[key].as_u64().unwrap();
            (
                number("batch"),
                r["kernel"].as_str().unwrap(),
                number("threads"),
            )
        })
        .collect();
    let expected: Vec<(u64, &str, u64)> = [1, 4]
        .into_iter()
        .flat_map(|batch| {
            let kernels = &kernels;
            kernels
                .iter()
                .flat_map(move |k| [1, 2].map(|threads| (batch, k.name(), threads)))
        })
        .collect();
    assert_eq!(order, expected);
    for kernel in kernels {
        let rows: Vec<&Value> = results
            .iter()
            .filter(|r| r["kernel"] == kernel.name())
            .collect();
        assert_eq!(rows.len(), 4, "{kernel}");
        for row in rows {
            assert_eq!(row["rows"], 64);
            assert_eq!(row["cols"], 300);
            let (gops, seconds) = (
                row["gops"].as_f64().unwrap(),
                row["median_seconds"].as_f64().unwrap(),
            );
            let batch = row["batch"].as_f64().unwrap();
            assert!(gops > 0.0 && seconds > 0.0);
            // GOPS is 2·M·K·B / s: the figures agree with each other.
            let expected = 2.0 * 64.0 * 300.0 * batch / seconds / 1e9;
            assert!(
                (gops - expected).abs() <= 1e-9 * expected.max(1.0),
                "{gops} vs {expected}"
            );
        }
    }
}

/// Kernels asked for in an order that puts one code layout on both sides of another (rows, VNNI's
/// interleaved, rows, where this CPU runs them) each give one row per shape, batch and thread
/// count, in the order asked.
#[test]
fn kernels_of_mixed_layouts_run_once_each_in_the_order_asked() {
    let asked: Vec<&str> = ["avx2", "avx512vnni", "scalar"]
        .into_iter()
        .filter(|name| Kernel::available().iter().any(|k| k.name() == *name))
        .collect();
    let mut command = gemv_bench();
    command.args(["--shape", "16x128", "--batch", "1", "--threads", "1"]);
    command.args(["--repeats", "1", "--min-sample-ms", "1", "--json"]);
    for name in &asked {
        command.args(["--kernel", name]);
    }
    let output = command.output().unwrap();
    assert!(output.status.success());
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let kernels: Vec<&str> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kernel"].as_str().unwrap())
        .collect();
    assert_eq!(kernels, asked);
}

#[test]
fn table_names_the_kernels_and_the_bandwidth() {
    let output = gemv_bench()
        .args(["--shape", "16x128", "--batch", "1", "--threads", "1"])
        .args([
            "--repeats",
            "1",
            "--min-sample-ms",
            "1",
            "--kernel",
            "scalar",
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(
        table.contains("memory read bandwidth, 1 thread(s):"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("scalar") && l.contains("16x128")),
        "{table}"
    );
}

#[test]
fn bad_flags_exit_2_with_one_clear_line() {
    for args in [
        vec!["--shape", "12"],
        vec!["--shape", "0x128"],
        vec!["--kernel", "sse9"],
        vec!["--threads", "many"],
        vec!["--batch", "0"],
    ] {
        let output = gemv_bench().args(&args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
