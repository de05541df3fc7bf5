//! Ternary weights in GGUF (docs/formats.md, "GGUF"): a weight `name` of shape `[rows, cols]` is
//! the pair
//! - `name`: I8, shape `[rows, ceil(cols / 4)]` (ne = `[ceil(cols / 4), rows]`), the packed 2-bit
//!   codes of `ternary::trit` (weight `j` of a row in byte `j / 4` at bits `2 * (j % 4)`);
//! - `name.scale`: F32, shape `[rows, ceil(cols / 128)]`, one scale per group of 128 weights.
//!
//! Writing goes through [`ternary::PlanarWeights::to_packed`], loading through
//! [`ternary::PlanarWeights::from_packed`]. The file does not record `cols` itself, only
//! `ceil(cols / 4)`: loaders pass the `cols` they expect (from the model's configuration), and
//! [`TernaryPair::max_cols`] (4 bytes × 4 codes) is exact whenever `cols` is a multiple of 4.

use crate::error::WriteError;
use crate::read::{Gguf, Tensor};
use crate::types::GgmlType;
use crate::write::{GgufWriter, Layout};
use ternary::planar::PlanarError;
use ternary::{groups_for, trit, PlanarWeights};

/// Suffix of the scale tensor's name.
pub const SCALE_SUFFIX: &str = ".scale";

/// Name of the scale tensor of ternary weight `name`.
pub fn scale_name(name: &str) -> String {
    format!("{name}{SCALE_SUFFIX}")
}

/// The `[codes, scales]` shapes (outermost first) of a `[rows, cols]` ternary weight.
pub fn pair_shapes(rows: usize, cols: usize) -> [[u64; 2]; 2] {
    let rows = rows as u64;
    [
        [rows, trit::packed_len(cols) as u64],
        [rows, groups_for(cols) as u64],
    ]
}

/// Why a ternary weight pair could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TernaryError {
    #[error("no tensor {0:?} in the file")]
    Missing(String),

    #[error("tensor {name:?} is {found}, the {role} of a ternary weight must be {expected}")]
    WrongType {
        name: String,
        role: &'static str,
        found: GgmlType,
        expected: GgmlType,
    },

    #[error("tensor {name:?} has shape {found:?}, {expected}")]
    WrongShape {
        name: String,
        found: Vec<u64>,
        expected: String,
    },

    #[error("ternary weight {name:?}: {source}")]
    Planar { name: String, source: PlanarError },
}

/// A ternary weight pair found in a file.
#[derive(Debug, Clone, Copy)]
pub struct TernaryPair<'a> {
    /// The I8 codes tensor (`name`).
    pub codes: Tensor<'a>,
    /// The F32 scales tensor (`name.scale`).
    pub scales: Tensor<'a>,
    pub rows: u64,
    /// Bytes of codes per row: `ceil(cols / 4)`.
    pub packed_cols: u64,
    /// Scales per row: `ceil(cols / 128)`.
    pub groups: u64,
}

impl TernaryPair<'_> {
    pub fn name(&self) -> &str {
        self.codes.info.name()
    }

    /// The largest `cols` the pair can hold (`4 × packed_cols`); the real `cols` is one of the
    /// 4 values up to it, and equal to it when a multiple of 4.
    pub fn max_cols(&self) -> u64 {
        self.packed_cols * 4
    }
}

/// The ternary pair `name` + `name.scale`: both present, I8 and F32, 2-D, the same rows, and the
/// scales' group count matching the codes' row length.
pub fn ternary_pair<'a, B: AsRef<[u8]>>(
    gguf: &'a Gguf<B>,
    name: &str,
) -> Result<TernaryPair<'a>, TernaryError> {
    let scale = scale_name(name);
    let codes = gguf
        .tensor(name)
        .ok_or_else(|| TernaryError::Missing(name.to_string()))?;
    let scales = gguf
        .tensor(&scale)
        .ok_or_else(|| TernaryError::Missing(scale.clone()))?;
    for (tensor, role, expected) in [
        (codes, "codes", GgmlType::I8),
        (scales, "scales", GgmlType::F32),
    ] {
        if tensor.info.ggml_type() != expected {
            return Err(TernaryError::WrongType {
                name: tensor.info.name().to_string(),
                role,
                found: tensor.info.ggml_type(),
                expected,
            });
        }
    }
    let &[rows, packed_cols] = codes.info.shape().as_slice() else {
        return Err(TernaryError::WrongShape {
            name: name.to_string(),
            found: codes.info.shape(),
            expected: "ternary codes must be 2-D [rows, ceil(cols/4)]".to_string(),
        });
    };
    // A tensor with 0 rows may claim any row length: keep the arithmetic from overflowing.
    let Some(groups) = packed_cols
        .checked_mul(4)
        .map(|cols| cols.div_ceil(ternary::GROUP_SIZE as u64))
    else {
        return Err(TernaryError::WrongShape {
            name: name.to_string(),
            found: codes.info.shape(),
            expected: "the row length is too large for ternary codes".to_string(),
        });
    };
    if scales.info.shape() != [rows, groups] {
        return Err(TernaryError::WrongShape {
            name: scale,
            found: scales.info.shape(),
            expected: format!(
                "expected [{rows}, {groups}] to match the codes' shape [{rows}, {packed_cols}]"
            ),
        });
    }
    Ok(TernaryPair {
        codes,
        scales,
        rows,
        packed_cols,
        groups,
    })
}

/// Every ternary pair in the file: each I8 tensor whose `.scale` partner makes a valid pair.
pub fn ternary_pairs<B: AsRef<[u8]>>(gguf: &Gguf<B>) -> Vec<TernaryPair<'_>> {
    gguf.tensor_infos()
        .iter()
        .filter(|t| t.ggml_type() == GgmlType::I8)
        .filter_map(|t| ternary_pair(gguf, t.name()).ok())
        .collect()
}

/// Loads ternary weight `name`, expected to be `[rows, cols]`, into planar runtime form.
pub fn read_ternary<B: AsRef<[u8]>>(
    gguf: &Gguf<B>,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<PlanarWeights, TernaryError> {
    let pair = ternary_pair(gguf, name)?;
    let [codes_shape, scales_shape] = pair_shapes(rows, cols);
    if pair.codes.info.shape() != codes_shape {
        return Err(TernaryError::WrongShape {
            name: name.to_string(),
            found: pair.codes.info.shape(),
            expected: format!("expected {codes_shape:?} for a {rows}x{cols} ternary weight"),
        });
    }
    // The codes' shape fixes the scales' shape (checked by `ternary_pair`); kept as a check.
    if pair.scales.info.shape() != scales_shape {
        return Err(TernaryError::WrongShape {
            name: scale_name(name),
            found: pair.scales.info.shape(),
            expected: format!("expected {scales_shape:?} for a {rows}x{cols} ternary weight"),
        });
    }
    let scales = pair
        .scales
        .f32_values()
        .ok_or_else(|| TernaryError::WrongType {
            name: scale_name(name),
            role: "scales",
            found: pair.scales.info.ggml_type(),
            expected: GgmlType::F32,
        })?;
    PlanarWeights::from_packed(rows, cols, pair.codes.data, &scales).map_err(|source| {
        TernaryError::Planar {
            name: name.to_string(),
            source,
        }
    })
}

impl Layout {
    /// Declares ternary weight `name` of shape `[rows, cols]`: the I8 codes and F32 scales pair.
    pub fn add_ternary(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<&mut Self, WriteError> {
        let [codes, scales] = pair_shapes(rows, cols);
        self.add_tensor(name, GgmlType::I8, &codes)?;
        self.add_tensor(scale_name(name), GgmlType::F32, &scales)
    }
}

impl GgufWriter {
    /// Writes ternary weight `name` (declared with [`Layout::add_ternary`] for the same shape, and
    /// next in order): its packed codes, then its scales.
    pub fn write_ternary(&mut self, name: &str, weights: &PlanarWeights) -> Result<(), WriteError> {
        let scale = scale_name(name);
        let shapes = pair_shapes(weights.rows(), weights.cols());
        for ((tensor, ggml_type), shape) in [(name, GgmlType::I8), (scale.as_str(), GgmlType::F32)]
            .into_iter()
            .zip(&shapes)
        {
            match self.next_tensor() {
                Some((next, declared, declared_shape))
                    if next == tensor && (declared != ggml_type || declared_shape != shape) =>
                {
                    return Err(WriteError::WrongKind {
                        name: tensor.to_string(),
                        ggml_type: declared,
                        shape: declared_shape.to_vec(),
                        given: format!(
                            "{ggml_type} {shape:?} of a {}x{} ternary weight",
                            weights.rows(),
                            weights.cols()
                        ),
                    });
                }
                // Out of order or matching: `write_tensor` reports the former.
                _ => {}
            }
        }
        let (packed, scales) = weights.to_packed();
        self.write_tensor(name, &packed)?;
        self.write_f32(&scale, &scales)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{scratch_dir, Rng};
    use ternary::{quantize_activations, Kernel};

    fn random_weights(rows: usize, cols: usize, rng: &mut Rng) -> PlanarWeights {
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.f32() - 0.5).collect();
        PlanarWeights::from_f32(rows, cols, &w).expect("valid shape")
    }

    fn gemv(kernel: Kernel, w: &PlanarWeights, x: &[f32]) -> Vec<u32> {
        let q = quantize_activations(x);
        let mut y = vec![0f32; w.rows()];
        let w = w.clone().into_layout(kernel.code_layout());
        ternary::kernels::gemv(kernel, &w, &q, &mut y).expect("kernel runs");
        y.into_iter().map(f32::to_bits).collect()
    }

    /// planar → GGUF file → planar → GEMV gives the bits of the GEMV on the original weights,
    /// with the reference and with the best kernel of this CPU.
    #[test]
    fn ternary_weights_survive_gguf_bit_for_bit() {
        let dir = scratch_dir();
        let mut rng = Rng(7);
        let shapes = [(1, 1), (3, 130), (8, 128), (17, 300), (9, 4096), (5, 1001)];
        let weights: Vec<_> = shapes
            .iter()
            .map(|&(r, c)| random_weights(r, c, &mut rng))
            .collect();
        let mut layout = Layout::new();
        for (i, w) in weights.iter().enumerate() {
            layout
                .add_ternary(&format!("blk.{i}.w"), w.rows(), w.cols())
                .unwrap();
        }
        let path = dir.path().join("ternary.gguf");
        let mut writer = GgufWriter::create(&path, &layout).unwrap();
        for (i, w) in weights.iter().enumerate() {
            writer.write_ternary(&format!("blk.{i}.w"), w).unwrap();
        }
        writer.finish().unwrap();

        let file = Gguf::open(&path).unwrap();
        assert_eq!(ternary_pairs(&file).len(), weights.len());
        for (i, w) in weights.iter().enumerate() {
            let back = read_ternary(&file, &format!("blk.{i}.w"), w.rows(), w.cols()).unwrap();
            assert_eq!(back.codes(), w.codes());
            assert_eq!(back.scales(), w.scales());
            assert_eq!(back.histogram(), w.histogram());
            let x: Vec<f32> = (0..w.cols()).map(|_| rng.f32() * 4.0 - 2.0).collect();
            for kernel in [Kernel::Reference, Kernel::best()] {
                assert_eq!(gemv(kernel, &back, &x), gemv(kernel, w, &x), "{kernel}");
            }
            assert_eq!(
                gemv(Kernel::best(), &back, &x),
                gemv(Kernel::Reference, w, &x)
            );
        }
    }

    #[test]
    fn mismatched_shapes_and_types_are_clear_errors() {
        let dir = scratch_dir();
        let mut rng = Rng(3);
        let w = random_weights(4, 256, &mut rng);
        let mut layout = Layout::new();
        layout.add_ternary("w", 4, 256).unwrap();
        layout.add_tensor("lonely", GgmlType::I8, &[4, 64]).unwrap();
        layout.add_tensor("f", GgmlType::F32, &[4, 64]).unwrap();
        layout
            .add_tensor("f.scale", GgmlType::F32, &[4, 2])
            .unwrap();
        layout.add_tensor("bad", GgmlType::I8, &[4, 64]).unwrap();
        layout
            .add_tensor("bad.scale", GgmlType::F32, &[4, 3])
            .unwrap();
        let path = dir.path().join("pairs.gguf");
        let mut writer = GgufWriter::create(&path, &layout).unwrap();
        writer.write_ternary("w", &w).unwrap();
        writer.write_tensor("lonely", &[0; 256]).unwrap();
        writer.write_f32("f", &[0.0; 256]).unwrap();
        writer.write_f32("f.scale", &[1.0; 8]).unwrap();
        writer.write_tensor("bad", &[0; 256]).unwrap();
        writer.write_f32("bad.scale", &[1.0; 12]).unwrap();
        writer.finish().unwrap();
        let file = Gguf::open(&path).unwrap();

        let err = |name: &str, rows, cols| read_ternary(&file, name, rows, cols).unwrap_err();
        assert!(read_ternary(&file, "w", 4, 256).is_ok());
        // cols 255 packs to 64 bytes too, so only the caller's cols tell them apart.
        assert!(read_ternary(&file, "w", 4, 255).is_ok());
        assert!(matches!(err("w", 4, 300), TernaryError::WrongShape { .. }));
        assert!(matches!(err("w", 5, 256), TernaryError::WrongShape { .. }));
        assert!(matches!(err("nope", 4, 256), TernaryError::Missing(n) if n == "nope"));
        assert!(matches!(err("lonely", 4, 256), TernaryError::Missing(n) if n == "lonely.scale"));
        assert!(matches!(
            err("f", 4, 256),
            TernaryError::WrongType { role: "codes", .. }
        ));
        let bad = err("bad", 4, 256);
        assert!(matches!(bad, TernaryError::WrongShape { ref name, .. } if name == "bad.scale"));
        assert!(bad.to_string().contains("[4, 2]"), "{bad}");
        assert_eq!(
            ternary_pairs(&file)
                .iter()
                .map(|p| (p.name(), p.max_cols()))
                .collect::<Vec<_>>(),
            [("w", 256)]
        );
    }

    #[test]
    fn bad_scales_in_the_file_are_reported_by_name() {
        let dir = scratch_dir();
        let mut layout = Layout::new();
        layout.add_ternary("w", 1, 4).unwrap();
        let path = dir.path().join("nan.gguf");
        let mut writer = GgufWriter::create(&path, &layout).unwrap();
        writer.write_tensor("w", &[0b01]).unwrap();
        writer.write_f32("w.scale", &[f32::NAN]).unwrap();
        writer.finish().unwrap();
        let file = Gguf::open(&path).unwrap();
        let err = read_ternary(&file, "w", 1, 4).unwrap_err();
        assert!(matches!(err, TernaryError::Planar { .. }));
        assert!(
            err.to_string()
                .starts_with("ternary weight \"w\": scale of row 0"),
            "{err}"
        );
    }

    #[test]
    fn writing_weights_of_another_shape_is_refused() {
        let dir = scratch_dir();
        let mut rng = Rng(5);
        let mut layout = Layout::new();
        layout.add_ternary("w", 4, 128).unwrap();
        let path = dir.path().join("shape.gguf");
        let mut writer = GgufWriter::create(&path, &layout).unwrap();
        let err = writer
            .write_ternary("w", &random_weights(4, 256, &mut rng))
            .unwrap_err();
        assert!(matches!(err, WriteError::WrongKind { .. }), "{err}");
        let err = writer
            .write_ternary("other", &random_weights(4, 128, &mut rng))
            .unwrap_err();
        assert!(matches!(err, WriteError::OutOfOrder { .. }), "{err}");
        drop(writer);
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
