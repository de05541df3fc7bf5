//! What gguf-inspect reports about a `.mhc` file (`--mhc FILE`), as plain data: the header, every
//! module's matrices (H_res, h_pre, h_post) with its doubly-stochastic check, and the composite
//! gain across depth. Rendered as text by render.rs, serialized under the `"mhc"` key by `--json`.

use crate::report::f32_json;
use mhc::{MhcFile, ResMatrix};
use serde::Serialize;

/// Tolerance of the doubly-stochastic check: every row and column of H_res sums to 1 within it.
pub const TOLERANCE: f64 = 1e-6;

/// The whole `.mhc` report.
#[derive(Debug, Serialize)]
pub struct MhcReport {
    pub file: String,
    pub n_layers: usize,
    pub n_streams: usize,
    /// 2 per layer: attention, then FFN.
    pub modules: usize,
    /// Tolerance of the doubly-stochastic check.
    pub tolerance: f64,
    pub module_reports: Vec<ModuleReport>,
    /// P = H_last · … · H_first (first module applied first), in f64, row-major rows.
    pub composite: Vec<Vec<f64>>,
    /// `max(‖P‖_∞, ‖P‖_1)`: 1 (up to rounding) when every H_res is doubly stochastic.
    pub composite_gain: f64,
    /// Whether every module's H_res passed the check.
    pub all_doubly_stochastic: bool,
}

/// One mHC module.
#[derive(Debug, Serialize)]
pub struct ModuleReport {
    /// Module index in the file (2·layer + 0 attention, + 1 FFN).
    pub index: usize,
    pub layer: usize,
    /// `attention` or `ffn`.
    pub kind: &'static str,
    /// n×n, rows.
    pub h_res: Vec<Vec<serde_json::Value>>,
    pub h_pre: Vec<serde_json::Value>,
    pub h_post: Vec<serde_json::Value>,
    pub doubly_stochastic: bool,
    /// Largest |row or column sum − 1| when the check passed.
    pub max_deviation: Option<f64>,
    /// The first violation when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub violation: Option<String>,
}

fn rows(m: &ResMatrix) -> Vec<Vec<serde_json::Value>> {
    let n = m.n_streams().count();
    (0..n)
        .map(|i| (0..n).map(|j| f32_json(m.get(i, j))).collect())
        .collect()
}

impl MhcReport {
    pub fn new(file: &str, mhc: &MhcFile) -> MhcReport {
        let n = mhc.n_streams().count();
        let mixings = mhc.mixings();
        let mut composite: Vec<Vec<f64>> = (0..n)
            .map(|i| (0..n).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
            .collect();
        let module_reports: Vec<ModuleReport> = mixings
            .iter()
            .enumerate()
            .map(|(index, m)| {
                let h = m.h_res();
                // composite ← h · composite
                composite = (0..n)
                    .map(|i| {
                        (0..n)
                            .map(|j| (0..n).map(|s| h.get(i, s) as f64 * composite[s][j]).sum())
                            .collect()
                    })
                    .collect();
                let check = h.check_doubly_stochastic(TOLERANCE);
                ModuleReport {
                    index,
                    layer: index / 2,
                    kind: if index % 2 == 0 { "attention" } else { "ffn" },
                    h_res: rows(h),
                    h_pre: m.h_pre().iter().map(|&v| f32_json(v)).collect(),
                    h_post: m.h_post().iter().map(|&v| f32_json(v)).collect(),
                    doubly_stochastic: check.is_ok(),
                    max_deviation: check.as_ref().ok().copied(),
                    violation: check.err().map(|e| e.to_string()),
                }
            })
            .collect();
        MhcReport {
            file: file.to_string(),
            n_layers: mhc.n_layers(),
            n_streams: n,
            modules: mhc.modules().len(),
            tolerance: TOLERANCE,
            all_doubly_stochastic: module_reports.iter().all(|m| m.doubly_stochastic),
            module_reports,
            composite,
            composite_gain: mhc.composite_gain(),
        }
    }
}
