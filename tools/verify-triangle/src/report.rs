//! What a run prints: the table of what was compared (kernel, path, cases, shapes, result), the
//! failure lines and a summary naming every kernel compared and every kernel not verified; or the
//! same as JSON (`--json`). Pure functions of a [`Report`]; main.rs writes the text.

use crate::cases::{SeedCounts, LARGE_SHAPE_WEIGHTS, MODEL_BATCHES};
use crate::verify::{Failure, FailureKind, KernelStats, Path, PathStats, SelfCheck};
use crate::Report;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fmt::Write;
use ternary::Kernel;

/// How a kernel that this CPU cannot run is reported.
pub fn not_verified_text(kernel: Kernel) -> String {
    format!(
        "compiled, NOT verified on this CPU (needs {})",
        kernel.requirements()
    )
}

fn join(set: &BTreeSet<usize>) -> String {
    if set.is_empty() {
        return "-".to_string();
    }
    set.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `1,2,3,5,6,17` → `1-3,5-6,17`.
fn ranges(set: &BTreeSet<usize>) -> String {
    let mut parts: Vec<(usize, usize)> = Vec::new();
    for &v in set {
        match parts.last_mut() {
            Some((_, end)) if *end + 1 == v => *end = v,
            _ => parts.push((v, v)),
        }
    }
    if parts.is_empty() {
        return "-".to_string();
    }
    parts
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn path_result(kernel: &KernelStats, stats: &PathStats) -> String {
    if stats.failed > 0 {
        format!("FAIL ({} of {} cases)", stats.failed, stats.cases)
    } else if stats.cases == 0 && kernel.stopped {
        "not run (stopped after earlier failures)".to_string()
    } else if stats.cases == 0 {
        "not run".to_string()
    } else if kernel.stopped {
        "ok (then stopped after failures elsewhere)".to_string()
    } else {
        "ok".to_string()
    }
}

/// Left-aligned columns separated by two spaces (numbers right-aligned).
fn table(rows: &[Vec<String>], numeric: &[usize]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let last = c + 1 == row.len();
            if numeric.contains(&c) {
                let _ = write!(line, "{cell:>width$}", width = widths[c]);
            } else if last {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}", width = widths[c]);
            }
            if !last {
                line.push_str("  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn all_failures(report: &Report) -> Vec<&Failure> {
    report
        .tally
        .self_check_failures
        .iter()
        .chain(report.tally.kernels.iter().flat_map(|k| &k.failures))
        .collect()
}

/// The human-readable report: header, table, self-checks, failure lines, summary.
pub fn text(report: &Report) -> String {
    let mut out = String::new();
    let counts = SeedCounts::new(report.seeds);
    let _ = writeln!(
        out,
        "verify-triangle {}: every kernel path against the Rust reference (ternary::reference::gemv/gemm), bit for bit",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(model) = &report.model {
        let _ = writeln!(
            out,
            "--model {}: {} ternary tensors; --seed {} --seeds {}: per tensor and seed a random, a +-127 and a zero vector (gemv), batches {} (gemm); {} threads, {:.1} s",
            model.file.display(),
            model.tensors.len(),
            report.first_seed,
            report.seeds,
            join(&MODEL_BATCHES.into()),
            report.threads,
            report.elapsed.as_secs_f64()
        );
    } else {
        let _ = writeln!(
            out,
            "--seed {} --seeds {}: seeds per case: GEMV {} ({} over {} weights), GEMM {}; {} threads, {:.1} s",
            report.first_seed,
            report.seeds,
            counts.gemv,
            counts.gemv_large,
            LARGE_SHAPE_WEIGHTS,
            counts.gemm,
            report.threads,
            report.elapsed.as_secs_f64()
        );
    }
    out.push('\n');

    let mut rows = vec![[
        "kernel", "path", "cases", "outputs", "M", "K", "batch", "result",
    ]
    .map(String::from)
    .to_vec()];
    for kernel in &report.not_verified {
        rows.push(vec![
            kernel.name().to_string(),
            "all".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            not_verified_text(*kernel),
        ]);
    }
    for kernel in &report.tally.kernels {
        for path in Path::ALL {
            let stats = kernel.path(path);
            rows.push(vec![
                kernel.name.clone(),
                path.name().to_string(),
                stats.cases.to_string(),
                stats.outputs.to_string(),
                join(&stats.rows),
                join(&stats.cols),
                ranges(&stats.batches),
                path_result(kernel, stats),
            ]);
        }
    }
    out.push_str(&table(&rows, &[2, 3]));
    out.push('\n');

    let mut checks = vec![["reference self-check", "cases", "result"]
        .map(String::from)
        .to_vec()];
    for check in SelfCheck::ALL {
        let stats = report.tally.self_check(check);
        let result = if stats.failed > 0 {
            format!("FAIL ({} of {})", stats.failed, stats.cases)
        } else {
            "ok".to_string()
        };
        checks.push(vec![
            check.description().to_string(),
            stats.cases.to_string(),
            result,
        ]);
    }
    out.push_str(&table(&checks, &[1]));

    if let Some(model) = &report.model {
        out.push('\n');
        let mut tensors = vec![["tensor", "shape", "comparisons", "result"]
            .map(String::from)
            .to_vec()];
        for tensor in &model.tensors {
            tensors.push(vec![
                tensor.name.clone(),
                format!("{}x{}", tensor.rows, tensor.cols),
                tensor.comparisons.to_string(),
                tensor.result(),
            ]);
        }
        out.push_str(&table(&tensors, &[2]));
        let failing = model.tensors.iter().filter(|t| !t.ok()).count();
        let _ = writeln!(
            out,
            "{} ternary tensors, {} ok, {} failing",
            model.tensors.len(),
            model.tensors.len() - failing,
            failing
        );
    }

    let failures = all_failures(report);
    if !failures.is_empty() {
        out.push('\n');
        for failure in &failures {
            let _ = writeln!(out, "{failure}");
        }
    }
    out.push('\n');
    out.push_str(&summary(report));
    out.push('\n');
    out
}

/// The last line(s): every kernel compared, with its result, and every kernel not verified.
pub fn summary(report: &Report) -> String {
    let kernels = &report.tally.kernels;
    let matching: Vec<&str> = kernels
        .iter()
        .filter(|k| k.ok())
        .map(|k| k.name.as_str())
        .collect();
    let failing: Vec<&str> = kernels
        .iter()
        .filter(|k| !k.ok())
        .map(|k| k.name.as_str())
        .collect();
    let (cases, outputs) = kernels
        .iter()
        .flat_map(|k| k.paths.iter())
        .fold((0, 0), |(c, o), p| (c + p.cases, o + p.outputs));
    let on = match &report.model {
        Some(model) => format!(
            " on {} ternary tensors of {}",
            model.tensors.len(),
            model.file.display()
        ),
        None => String::new(),
    };
    let mut out = if report.ok() {
        format!(
            "OK: {} match the Rust reference bit for bit on gemv, par_gemv, gemm and par_gemm{on} ({cases} comparisons, {outputs} outputs).",
            matching.join(", ")
        )
    } else {
        let verb = |names: &[&str], one: &'static str, many: &'static str| {
            if names.len() == 1 {
                one
            } else {
                many
            }
        };
        let mut parts = Vec::new();
        if !failing.is_empty() {
            parts.push(format!(
                "{} {} NOT match the Rust reference",
                failing.join(", "),
                verb(&failing, "does", "do")
            ));
        }
        if !report.tally.self_check_failures.is_empty() {
            parts.push("the reference fails its own self-checks".to_string());
        }
        if !matching.is_empty() {
            parts.push(format!(
                "{} {}",
                matching.join(", "),
                verb(&matching, "matches", "match")
            ));
        }
        format!("FAILED: {}{on} ({cases} comparisons).", parts.join("; "))
    };
    if !report.not_verified.is_empty() {
        let listed: Vec<String> = report
            .not_verified
            .iter()
            .map(|k| format!("{} (needs {})", k.name(), k.requirements()))
            .collect();
        let _ = write!(
            out,
            "\nCompiled, NOT verified on this CPU: {}.",
            listed.join("; ")
        );
    }
    out
}

fn path_json(path: Path, stats: &PathStats) -> Value {
    json!({
        "path": path.name(),
        "cases": stats.cases,
        "outputs": stats.outputs,
        "failed": stats.failed,
        "m": stats.rows,
        "k": stats.cols,
        "batches": stats.batches,
    })
}

fn failure_json(failure: &Failure) -> Value {
    let mut value = json!({
        "kernel": failure.kernel,
        "path": failure.path,
        "m": failure.rows,
        "k": failure.cols,
        "batch": failure.batch,
        "seed": failure.label.seed,
        "tensor": failure.label.tensor,
        "case": failure.label.case,
        "line": failure.to_string(),
    });
    match &failure.kind {
        FailureKind::Mismatch {
            mismatch,
            vector,
            row,
        } => {
            value["index"] = json!(mismatch.index);
            value["vector"] = json!(vector);
            value["row"] = json!(row);
            // Strings: JSON has no NaN or infinity.
            value["got"] = json!(format!("{:?}", mismatch.got));
            value["got_bits"] = json!(format!("0x{:08x}", mismatch.got.to_bits()));
            value["expected"] = json!(format!("{:?}", mismatch.expected));
            value["expected_bits"] = json!(format!("0x{:08x}", mismatch.expected.to_bits()));
            value["differing"] = json!(mismatch.differing);
            value["total"] = json!(mismatch.total);
        }
        FailureKind::Error(message) | FailureKind::Check(message) => {
            value["error"] = json!(message);
        }
    }
    value
}

/// The machine-readable report (pretty-printed JSON and a newline).
pub fn json(report: &Report) -> String {
    let counts = SeedCounts::new(report.seeds);
    let mut kernels: Vec<Value> = report
        .not_verified
        .iter()
        .map(|k| {
            json!({
                "name": k.name(),
                "status": "not-verified",
                "needs": k.requirements(),
                "message": not_verified_text(*k),
            })
        })
        .collect();
    kernels.extend(report.tally.kernels.iter().map(|k| {
        json!({
            "name": k.name,
            "status": if k.ok() { "ok" } else { "mismatch" },
            "stopped": k.stopped,
            "paths": Path::ALL.iter().map(|&p| path_json(p, k.path(p))).collect::<Vec<_>>(),
        })
    }));
    let self_checks: Vec<Value> = SelfCheck::ALL
        .iter()
        .map(|&check| {
            let stats = report.tally.self_check(check);
            json!({
                "name": check.name(),
                "description": check.description(),
                "cases": stats.cases,
                "failed": stats.failed,
            })
        })
        .collect();
    let model = report.model.as_ref().map(|model| {
        json!({
            "file": model.file.display().to_string(),
            "tensor_count": model.tensors.len(),
            "activations": {
                "gemv": ["random", "+-127", "zeros"],
                "gemm_batches": MODEL_BATCHES,
            },
            "tensors": model.tensors.iter().map(|t| json!({
                "name": t.name,
                "shape": [t.rows, t.cols],
                "comparisons": t.comparisons,
                "ok": t.ok(),
                "failing": t.failing,
                "skipped": t.skipped,
                "self_check_failed": t.self_check_failed,
                "result": t.result(),
            })).collect::<Vec<_>>(),
        })
    });
    let value = json!({
        "tool": "verify-triangle",
        "model": model,
        "version": env!("CARGO_PKG_VERSION"),
        "ok": report.ok(),
        "seed": report.first_seed,
        "seeds": report.seeds,
        "seeds_per_case": {
            "gemv": counts.gemv,
            "gemv_large": counts.gemv_large,
            "gemm": counts.gemm,
            "large_shape_weights": LARGE_SHAPE_WEIGHTS,
        },
        "threads": report.threads,
        "elapsed_s": report.elapsed.as_secs_f64(),
        "verified": report.tally.kernels.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(),
        "not_verified": report.not_verified.iter().map(|k| k.name()).collect::<Vec<_>>(),
        "kernels": kernels,
        "self_checks": self_checks,
        "failures": all_failures(report).into_iter().map(failure_json).collect::<Vec<_>>(),
        "summary": summary(report),
    });
    let mut text = serde_json::to_string_pretty(&value).expect("JSON of plain values");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{Label, Tally};
    use std::time::Duration;

    fn report_with(kernels: &[&str], failure: bool) -> Report {
        let mut tally = Tally::new(kernels.iter().copied());
        tally.kernels[0].paths[0].add(31, 300, 1, 31, failure);
        if failure {
            tally.kernels[0].failures.push(Failure {
                kernel: kernels[0].to_string(),
                path: "gemv".into(),
                rows: 31,
                cols: 300,
                batch: 1,
                label: Label {
                    case: "random-f32".into(),
                    seed: Some(4),
                    tensor: None,
                },
                kind: FailureKind::Error("refused".into()),
            });
        }
        Report {
            first_seed: 1,
            seeds: 8,
            not_verified: Kernel::compiled()
                .into_iter()
                .filter(|k| !k.is_supported())
                .collect(),
            tally,
            threads: 2,
            elapsed: Duration::from_millis(1500),
            model: None,
        }
    }

    #[test]
    fn ranges_compress_consecutive_values() {
        let set: BTreeSet<usize> = [1, 2, 3, 5, 6, 17, 33].into();
        assert_eq!(ranges(&set), "1-3,5-6,17,33");
        assert_eq!(ranges(&BTreeSet::new()), "-");
        assert_eq!(join(&BTreeSet::new()), "-");
    }

    #[test]
    fn the_table_and_summary_name_every_kernel() {
        let report = report_with(&["avx2", "scalar", "reference"], false);
        let text = text(&report);
        for name in ["avx2", "scalar", "reference", "par_gemm", "OK:"] {
            assert!(text.contains(name), "{text}");
        }
        for kernel in &report.not_verified {
            assert!(text.contains(&not_verified_text(*kernel)));
        }
        let value: Value = serde_json::from_str(&json(&report)).unwrap();
        assert_eq!(value["ok"], true);
        assert_eq!(value["verified"], json!(["avx2", "scalar", "reference"]));
    }

    #[test]
    fn failures_are_listed_and_flip_the_summary() {
        let report = report_with(&["faulty", "scalar"], true);
        assert_eq!(report.exit_code(), crate::EXIT_MISMATCH);
        let text = text(&report);
        assert!(text.contains("ERROR kernel=faulty path=gemv shape=31x300 batch=1 seed=4"));
        assert!(text.contains("FAILED: faulty does NOT match the Rust reference; scalar matches"));
        let value: Value = serde_json::from_str(&json(&report)).unwrap();
        assert_eq!(value["ok"], false);
        assert_eq!(value["failures"][0]["kernel"], "faulty");
    }
}
