//! verify-triangle as a user (and `make verify`) runs it: the default run passes and names every
//! kernel it compared and every compiled kernel this CPU cannot run; ternary's deliberately wrong
//! kernel (`fault-injection`, which this package turns on for the binary through its
//! dev-dependency) is caught with exit code 1; bad usage exits 2 with one line. `--model` verifies
//! the ternary tensors of a GGUF file written here with libs/gguf's writer.
//!
//! The assertions hold on any CPU: what must be verified and what must be listed as not verified
//! is derived from `Kernel::compiled()` and `Kernel::is_supported()` of this very machine.

use assert_cmd::Command;
use gguf::{GgmlType, GgufWriter, Layout};
use serde_json::Value;
use std::path::{Path, PathBuf};
use ternary::{Kernel, PlanarWeights};

fn verify_triangle() -> Command {
    Command::cargo_bin("verify-triangle").expect("verify-triangle is built with the workspace")
}

/// Exit code, stdout, stderr.
fn run(args: &[&str]) -> (i32, String, String) {
    let output = verify_triangle().args(args).output().unwrap();
    (
        output.status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The table row of `kernel` and `path` (columns separated by spaces).
fn row<'a>(table: &'a str, kernel: &str, path: &str) -> Option<&'a str> {
    table.lines().find(|line| {
        let mut cells = line.split_whitespace();
        cells.next() == Some(kernel) && cells.next() == Some(path)
    })
}

fn not_verified_message(kernel: Kernel) -> String {
    format!(
        "compiled, NOT verified on this CPU (needs {})",
        kernel.requirements()
    )
}

#[test]
fn default_run_passes_and_names_every_compiled_kernel() {
    let (code, stdout, stderr) = run(&["--seeds", "2"]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("OK: "))
        .unwrap_or_else(|| panic!("no OK summary in\n{stdout}"));
    // This machine: the portable kernels always, AVX2 where the CPU has it.
    let mut expected = vec![Kernel::Scalar, Kernel::Reference];
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        expected.push(Kernel::Avx2);
    }
    for kernel in &expected {
        assert!(Kernel::compiled().contains(kernel) && kernel.is_supported());
    }
    for kernel in Kernel::compiled() {
        if kernel.is_supported() {
            assert!(
                summary.contains(kernel.name()),
                "{kernel} not in {summary:?}"
            );
            for path in ["gemv", "par_gemv", "gemm", "par_gemm"] {
                let line = row(&stdout, kernel.name(), path)
                    .unwrap_or_else(|| panic!("no row {kernel} {path} in\n{stdout}"));
                assert!(line.trim_end().ends_with(" ok"), "{line}");
            }
        } else {
            // Compiled but not runnable here (avx512bw / avx512vnni on an AVX2-only CPU): listed
            // in the table and in the summary, never silently skipped.
            let line = row(&stdout, kernel.name(), "all")
                .unwrap_or_else(|| panic!("{kernel} not listed in\n{stdout}"));
            assert!(line.ends_with(&not_verified_message(kernel)), "{line}");
            let summary_line = stdout
                .lines()
                .find(|l| l.starts_with("Compiled, NOT verified on this CPU: "))
                .unwrap_or_else(|| panic!("no not-verified summary in\n{stdout}"));
            let listed = format!("{} (needs {})", kernel.name(), kernel.requirements());
            assert!(summary_line.contains(&listed), "{summary_line}");
        }
    }
    // Every listed M and K appears on the GEMV paths, batches 1-16, 17 and 33 on the GEMM paths.
    let gemv = row(&stdout, "reference", "gemv").unwrap();
    assert!(gemv.contains("1,8,31,127,128,4096") && gemv.contains("128,256,300,1000,4096,11008"));
    assert!(row(&stdout, "scalar", "par_gemm")
        .unwrap()
        .contains("1-17,33"));
    assert!(stdout.contains("invalid code 10 gives the bits of code 00"));
}

#[test]
fn json_summary_lists_verified_and_not_verified_kernels() {
    let (code, stdout, stderr) = run(&["--seeds", "1", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("stdout is one JSON document");
    assert_eq!(report["ok"], true);
    let names = |kernels: Vec<Kernel>| -> Vec<Value> {
        kernels.iter().map(|k| Value::from(k.name())).collect()
    };
    assert_eq!(report["verified"], Value::Array(names(Kernel::available())));
    let unsupported: Vec<Kernel> = Kernel::compiled()
        .into_iter()
        .filter(|k| !k.is_supported())
        .collect();
    assert_eq!(
        report["not_verified"],
        Value::Array(names(unsupported.clone()))
    );
    for entry in report["kernels"].as_array().unwrap() {
        let kernel = Kernel::from_name(entry["name"].as_str().unwrap()).unwrap();
        if unsupported.contains(&kernel) {
            assert_eq!(entry["status"], "not-verified");
            assert_eq!(entry["message"], not_verified_message(kernel).as_str());
        } else {
            assert_eq!(entry["status"], "ok");
            let paths = entry["paths"].as_array().unwrap();
            assert_eq!(paths.len(), 4);
            assert!(paths.iter().all(|p| p["cases"].as_u64().unwrap() > 0));
            assert!(paths.iter().all(|p| p["failed"] == 0));
        }
    }
    assert_eq!(report["failures"], Value::Array(Vec::new()));
    assert_eq!(report["seed"], 1);
}

#[test]
fn the_faulty_kernel_is_caught_with_exit_code_1() {
    let (code, stdout, stderr) = run(&[
        "--include-faulty-kernel",
        "--kernel",
        "scalar",
        "--seeds",
        "1",
    ]);
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let failures: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("MISMATCH "))
        .collect();
    assert!(!failures.is_empty() && failures.len() <= 5, "{stdout}");
    for line in &failures {
        for part in [
            "kernel=faulty",
            "path=",
            "shape=",
            "batch=",
            "seed=",
            "case=",
            "index=",
            "got ",
            "reference ",
            "(0x",
        ] {
            assert!(line.contains(part), "{line:?} lacks {part:?}");
        }
    }
    assert!(
        stdout.contains("FAILED: faulty does NOT match the Rust reference; scalar matches"),
        "{stdout}"
    );
    // The honest kernel beside it still passes.
    assert!(row(&stdout, "scalar", "gemv").unwrap().ends_with(" ok"));

    let honest = if Kernel::Avx2.is_supported() {
        "avx2"
    } else {
        "scalar"
    };
    let (code, stdout, _) = run(&[
        "--include-faulty-kernel",
        "--kernel",
        honest,
        "--seeds",
        "1",
        "--json",
    ]);
    assert_eq!(code, 1);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["failures"][0]["kernel"], "faulty");
    assert!(report["failures"][0]["got_bits"]
        .as_str()
        .unwrap()
        .starts_with("0x"));
}

#[test]
fn bad_usage_exits_2_with_one_line() {
    let (code, stdout, stderr) = run(&["--no-such-flag"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty());
    assert!(stderr.contains("--no-such-flag"));

    let (code, stdout, stderr) = run(&["--kernel", "nosuch"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("nosuch") && stderr.contains("unknown kernel"),
        "{stderr}"
    );

    let (code, _, stderr) = run(&["--seeds", "0"]);
    assert_eq!(code, 2, "{stderr}");

    // A compiled kernel this CPU cannot run cannot be verified here: said in one line.
    for kernel in Kernel::compiled().into_iter().filter(|k| !k.is_supported()) {
        let (code, stdout, stderr) = run(&["--kernel", kernel.name()]);
        assert_eq!(code, 2, "{stderr}");
        assert!(stdout.is_empty());
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(&not_verified_message(kernel)), "{stderr}");
    }
}

#[test]
fn help_explains_every_flag_and_version_prints() {
    let (code, help, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--seeds",
        "--seed",
        "--kernel",
        "--json",
        "--version",
        "Example",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    assert!(help.contains("--model") && help.contains("--model model.gguf"));
    // Test-only flags stay out of the help.
    assert!(!help.contains("faulty"));
    let (code, version, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        version.trim(),
        format!("verify-triangle {}", env!("CARGO_PKG_VERSION"))
    );
}

/// The ternary tensors of the small model of these tests: (name, rows, cols).
const MODEL_TENSORS: [(&str, usize, usize); 3] = [
    ("blk.0.attn_q.weight", 64, 300),
    ("blk.0.ffn_up.weight", 40, 128),
    ("output.weight", 17, 1000),
];

/// Random f32 weights (SplitMix64 from `seed`) through `PlanarWeights::from_f32`.
fn random_weights(rows: usize, cols: usize, seed: u64) -> PlanarWeights {
    let mut state = seed;
    let values: Vec<f32> = (0..rows * cols)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    PlanarWeights::from_f32(rows, cols, &values).unwrap()
}

/// A small model: the ternary tensors of [`MODEL_TENSORS`], an F32 norm and some metadata.
fn write_model(dir: &Path) -> PathBuf {
    let mut layout = Layout::new();
    layout.set("general.architecture", "nanochat").unwrap();
    layout.set("nanochat.n_layer", 1u32).unwrap();
    layout
        .add_tensor("blk.0.attn_norm.weight", GgmlType::F32, &[300])
        .unwrap();
    for (name, rows, cols) in MODEL_TENSORS {
        layout.add_ternary(name, rows, cols).unwrap();
    }
    let path = dir.join("model.gguf");
    let mut writer = GgufWriter::create(&path, &layout).unwrap();
    writer
        .write_f32("blk.0.attn_norm.weight", &[1.0; 300])
        .unwrap();
    for (i, (name, rows, cols)) in MODEL_TENSORS.into_iter().enumerate() {
        writer
            .write_ternary(name, &random_weights(rows, cols, i as u64 + 1))
            .unwrap();
    }
    writer.finish().unwrap();
    path
}

#[test]
fn model_tensors_are_verified_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path());
    let model = model.to_str().unwrap();
    let (code, stdout, stderr) = run(&["--model", model]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for (name, rows, cols) in MODEL_TENSORS {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not listed in\n{stdout}"));
        assert!(line.contains(&format!("{rows}x{cols}")), "{line}");
        assert!(line.trim_end().ends_with(" ok"), "{line}");
    }
    // Only the model's tensors: no generated case, and the F32 norm is not a ternary tensor.
    assert!(!stdout.contains("random-f32") && !stdout.contains("attn_norm"));
    assert!(stdout.contains("3 ternary tensors"), "{stdout}");
    let summary = stdout.lines().find(|l| l.starts_with("OK: ")).unwrap();
    assert!(summary.contains("on 3 ternary tensors of"), "{summary}");
    for kernel in Kernel::available() {
        assert!(summary.contains(kernel.name()), "{summary}");
        for path in ["gemv", "par_gemv", "gemm", "par_gemm"] {
            let line = row(&stdout, kernel.name(), path).unwrap();
            assert!(line.trim_end().ends_with(" ok"), "{line}");
        }
    }

    let (code, stdout, _) = run(&["--model", model, "--json", "--seeds", "2"]);
    assert_eq!(code, 0);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["seeds"], 2);
    assert_eq!(report["model"]["tensor_count"], 3);
    let names: Vec<&str> = report["model"]["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, MODEL_TENSORS.map(|t| t.0));
    assert_eq!(
        report["model"]["tensors"][0]["shape"],
        serde_json::json!([64, 300])
    );
}

#[test]
fn the_faulty_kernel_is_caught_on_a_model_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path());
    let (code, stdout, stderr) = run(&[
        "--model",
        model.to_str().unwrap(),
        "--include-faulty-kernel",
        "--kernel",
        "scalar",
    ]);
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let failures: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("MISMATCH "))
        .collect();
    assert!(!failures.is_empty() && failures.len() <= 5, "{stdout}");
    for line in &failures {
        assert!(line.contains("kernel=faulty"), "{line}");
        // The faulty kernel drops the last weight of the last (padded) group: it only differs
        // where K is a multiple of 128, here the 40x128 tensor.
        assert!(
            line.contains("tensor=blk.0.ffn_up.weight ") && line.contains("shape=40x128"),
            "{line}"
        );
        for part in ["path=", "shape=", "batch=", "seed=", "index=", "(0x"] {
            assert!(line.contains(part), "{line:?} lacks {part:?}");
        }
    }
    let tensor_row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not listed in\n{stdout}"))
    };
    assert!(tensor_row("blk.0.ffn_up.weight").ends_with("FAIL (faulty)"));
    assert!(tensor_row("blk.0.attn_q.weight").ends_with(" ok"));
    assert!(
        stdout.contains("3 ternary tensors, 2 ok, 1 failing"),
        "{stdout}"
    );
    assert!(stdout.contains("FAILED: faulty does NOT match the Rust reference; scalar matches"));
}

#[test]
fn model_files_without_ternary_tensors_or_unreadable_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let mut layout = Layout::new();
    layout.set("general.architecture", "nanochat").unwrap();
    layout
        .add_tensor("norm", GgmlType::F32, &[4, 8])
        .unwrap()
        .add_tensor("norm.scale", GgmlType::F32, &[4, 1])
        .unwrap();
    let floats = dir.path().join("floats.gguf");
    let mut writer = GgufWriter::create(&floats, &layout).unwrap();
    writer.write_f32("norm", &[0.5; 32]).unwrap();
    writer.write_f32("norm.scale", &[1.0; 4]).unwrap();
    writer.finish().unwrap();
    let (code, stdout, stderr) = run(&["--model", floats.to_str().unwrap()]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("no ternary tensors in {}", floats.display())),
        "{stderr}"
    );

    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a GGUF file at all").unwrap();
    let missing = dir.path().join("missing.gguf");
    for (file, problem) in [(&garbage, "not a GGUF file"), (&missing, "cannot read")] {
        let (code, stdout, stderr) = run(&["--model", file.to_str().unwrap(), "--json"]);
        assert_eq!(code, 2, "{stdout}{stderr}");
        assert!(stdout.is_empty());
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&file.display().to_string()) && stderr.contains(problem),
            "{stderr}"
        );
    }
}
