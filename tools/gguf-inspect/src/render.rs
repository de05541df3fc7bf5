//! Text rendering of a [`Report`] and a [`TensorReport`]: aligned tables for people. The JSON output
//! is the same structs serialized; nothing here decides what is shown, only how.

use crate::mhc_report::MhcReport;
use crate::report::{MetadataEntry, Report, TensorRow};
use crate::stats::{Stats, TensorReport, ValueStats};
use std::io::{self, Write};

/// Prints rows as columns padded to their widest cell; `right[i]` right-aligns column `i`.
fn table(out: &mut impl Write, rows: &[Vec<String>], right: &[bool]) -> io::Result<()> {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let mut line = String::from(" ");
        for (c, cell) in row.iter().enumerate() {
            let pad = " ".repeat(widths[c] - cell.chars().count());
            let last = c + 1 == columns;
            match (right.get(c).copied().unwrap_or(false), last) {
                (true, _) => line += &format!(" {pad}{cell}"),
                (false, true) => line += &format!(" {cell}"),
                (false, false) => line += &format!(" {cell}{pad}"),
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// A summarized JSON value as one line: strings quoted, arrays as `[a, b, …]`.
fn value_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(value_text).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

fn metadata_value(entry: &MetadataEntry) -> String {
    let text = value_text(&entry.value);
    match (&entry.value, entry.length) {
        (serde_json::Value::Array(_), Some(n)) if entry.truncated => {
            format!("{}, …] ({n} items)", &text[..text.len() - 1])
        }
        (serde_json::Value::Array(_), Some(n)) => format!("{text} ({n} items)"),
        (_, Some(n)) if entry.truncated => format!("{}…\" ({n} bytes)", &text[..text.len() - 1]),
        _ => text,
    }
}

fn shape_text(shape: &[u64]) -> String {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

fn tensor_table(out: &mut impl Write, tensors: &[&TensorRow]) -> io::Result<()> {
    let mut rows = vec![["name", "type", "shape", "file offset", "bytes"]
        .map(String::from)
        .to_vec()];
    rows.extend(tensors.iter().map(|t| {
        vec![
            t.name.clone(),
            t.ggml_type.clone(),
            shape_text(&t.shape),
            t.file_offset.to_string(),
            t.bytes.to_string(),
        ]
    }));
    table(out, &rows, &[false, false, false, true, true])
}

/// The full listing.
pub fn report(out: &mut impl Write, r: &Report) -> io::Result<()> {
    writeln!(out, "file      {} ({} bytes)", r.file, r.file_bytes)?;
    writeln!(
        out,
        "format    GGUF v{}, alignment {}, data section at byte {}",
        r.version, r.alignment, r.data_offset
    )?;
    writeln!(out, "metadata  {} keys", r.metadata.len())?;
    let rows: Vec<Vec<String>> = r
        .metadata
        .iter()
        .map(|m| vec![m.key.clone(), m.value_type.clone(), metadata_value(m)])
        .collect();
    table(out, &rows, &[])?;
    writeln!(
        out,
        "tensors   {} (shape outermost first: [rows, cols]; the file stores it reversed as ne)",
        r.tensors.len()
    )?;
    if !r.tensors.is_empty() {
        tensor_table(out, &r.tensors.iter().collect::<Vec<_>>())?;
    }
    if !r.ternary.is_empty() {
        writeln!(
            out,
            "ternary   {} weights (I8 codes NAME + F32 scales NAME.scale)",
            r.ternary.len()
        )?;
        let mut rows = vec![["name", "rows", "cols", "groups", "bytes"]
            .map(String::from)
            .to_vec()];
        rows.extend(r.ternary.iter().map(|p| {
            vec![
                p.name.clone(),
                p.rows.to_string(),
                p.cols.to_string(),
                p.groups.to_string(),
                p.bytes.to_string(),
            ]
        }));
        table(out, &rows, &[false, true, true, true, true])?;
    }
    let t = &r.totals;
    writeln!(
        out,
        "totals    {} parameters, {} bytes of tensor data, {:.3} bits per weight",
        t.parameters, t.bytes, t.bits_per_weight
    )?;
    if t.ternary_parameters > 0 {
        writeln!(
            out,
            "          ternary: {} parameters, {} bytes, {:.3} bits per weight",
            t.ternary_parameters, t.ternary_bytes, t.ternary_bits_per_weight
        )?;
    }
    Ok(())
}

fn value_stats(out: &mut impl Write, label: &str, s: &ValueStats) -> io::Result<()> {
    writeln!(
        out,
        "{label}min {} max {} mean {} std {} ({} values, {} NaN, {} infinite)",
        s.min, s.max, s.mean, s.std, s.count, s.nan, s.inf
    )
}

/// One tensor and its statistics.
pub fn tensor_report(out: &mut impl Write, r: &TensorReport) -> io::Result<()> {
    writeln!(out, "file      {}", r.file)?;
    tensor_table(out, &[&r.tensor])?;
    match &r.stats {
        Stats::Ternary(s) => {
            writeln!(
                out,
                "ternary   {} rows × {} codes (4 a byte)",
                s.rows, s.codes_per_row
            )?;
            let pct = |share: f64| format!("{:.2}%", share * 100.0);
            writeln!(
                out,
                "codes     -1: {} ({})  0: {} ({})  +1: {} ({})  invalid: {} ({})",
                s.minus_one,
                pct(s.share_minus_one),
                s.zero,
                pct(s.share_zero),
                s.plus_one,
                pct(s.share_plus_one),
                s.invalid,
                pct(s.share_invalid)
            )?;
            value_stats(out, "scales    ", &s.scales)
        }
        Stats::Values(s) => value_stats(out, "values    ", s),
        Stats::Unavailable { reason } => writeln!(out, "values    {reason}"),
    }
}

/// A number at 4 decimals; a non-number (`"NaN"`) as it is.
fn dec4(v: &serde_json::Value) -> String {
    v.as_f64()
        .map_or_else(|| value_text(v), |x| format!("{x:.4}"))
}

fn vector_text(values: &[serde_json::Value]) -> String {
    let items: Vec<String> = values.iter().map(dec4).collect();
    format!("[{}]", items.join(", "))
}

fn matrix(out: &mut impl Write, indent: &str, rows: &[Vec<serde_json::Value>]) -> io::Result<()> {
    for row in rows {
        writeln!(out, "{indent}{}", vector_text(row))?;
    }
    Ok(())
}

/// The `.mhc` listing: header, every module, the composite gain.
pub fn mhc_report(out: &mut impl Write, r: &MhcReport) -> io::Result<()> {
    writeln!(out, "mhc file  {}", r.file)?;
    writeln!(
        out,
        "mhc       n_layers {}, n_streams {}, {} modules (attention + ffn per layer)",
        r.n_layers, r.n_streams, r.modules
    )?;
    for m in &r.module_reports {
        writeln!(out, "module {} (layer {} {})", m.index, m.layer, m.kind)?;
        writeln!(out, "  H_res")?;
        matrix(out, "    ", &m.h_res)?;
        writeln!(out, "  h_pre     {}", vector_text(&m.h_pre))?;
        writeln!(out, "  h_post    {}", vector_text(&m.h_post))?;
        match (&m.violation, m.max_deviation) {
            (None, Some(dev)) => writeln!(
                out,
                "  doubly stochastic: yes (worst |row/col sum - 1| {dev:.3e}, tolerance {:e})",
                r.tolerance
            )?,
            (violation, _) => writeln!(
                out,
                "  doubly stochastic: NO ({})",
                violation.as_deref().unwrap_or("check failed")
            )?,
        }
    }
    writeln!(
        out,
        "composite H_res product over {} modules (first applied first)",
        r.modules
    )?;
    for row in &r.composite {
        let items: Vec<String> = row.iter().map(|x| format!("{x:.4}")).collect();
        writeln!(out, "    [{}]", items.join(", "))?;
    }
    writeln!(out, "composite gain {:.6}", r.composite_gain)?;
    let passed = r
        .module_reports
        .iter()
        .filter(|m| m.doubly_stochastic)
        .count();
    writeln!(
        out,
        "all modules doubly stochastic: {} ({passed}/{} passed)",
        if r.all_doubly_stochastic { "yes" } else { "NO" },
        r.modules
    )
}
