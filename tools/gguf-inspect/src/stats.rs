//! Statistics of one tensor (`--tensor NAME`): for a ternary weight the share of each code and its
//! scales' range; for float and integer tensors min, max, mean, standard deviation and the count of
//! NaN and infinite values; block-quantized tensors get no statistics, only their description.

use crate::report::{float_json, TensorRow};
use gguf::types::{bf16_to_f32, f16_to_f32};
use gguf::{GgmlType, Gguf, Tensor};
use serde::Serialize;
use ternary::trit::CodeHistogram;

/// `--tensor NAME`: the tensor's row of the table and its statistics.
#[derive(Debug, Serialize)]
pub struct TensorReport {
    pub file: String,
    pub tensor: TensorRow,
    pub stats: Stats,
}

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Stats {
    /// The codes tensor of a ternary pair.
    Ternary(TernaryStats),
    /// Floats or integers, one element at a time.
    Values(ValueStats),
    /// Block-quantized data.
    Unavailable { reason: String },
}

#[derive(Debug, Serialize)]
pub struct TernaryStats {
    pub rows: u64,
    /// Codes counted per row: `4 × packed bytes`, which includes up to 3 padding codes (00) when
    /// the weight's cols is not a multiple of 4.
    pub codes_per_row: u64,
    pub minus_one: u64,
    pub zero: u64,
    pub plus_one: u64,
    pub invalid: u64,
    pub share_minus_one: f64,
    pub share_zero: f64,
    pub share_plus_one: f64,
    pub share_invalid: f64,
    /// The `NAME.scale` tensor.
    pub scales: ValueStats,
}

/// Over every element: min, max, mean and std of the finite ones; NaN and infinities counted.
#[derive(Debug, Serialize)]
pub struct ValueStats {
    pub count: u64,
    pub finite: u64,
    pub nan: u64,
    pub inf: u64,
    #[serde(serialize_with = "as_json_float")]
    pub min: f64,
    #[serde(serialize_with = "as_json_float")]
    pub max: f64,
    #[serde(serialize_with = "as_json_float")]
    pub mean: f64,
    #[serde(serialize_with = "as_json_float")]
    pub std: f64,
}

fn as_json_float<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    float_json(*v).serialize(s)
}

impl ValueStats {
    /// Statistics of `values`; with no finite value, min/max/mean/std are NaN.
    pub fn of(values: impl Iterator<Item = f64>) -> ValueStats {
        let (mut count, mut nan, mut inf) = (0u64, 0u64, 0u64);
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        // Welford's running mean and sum of squared deviations: stable for large tensors.
        let (mut finite, mut mean, mut m2) = (0u64, 0f64, 0f64);
        for v in values {
            count += 1;
            if v.is_nan() {
                nan += 1;
            } else if v.is_infinite() {
                inf += 1;
            } else {
                finite += 1;
                min = min.min(v);
                max = max.max(v);
                let delta = v - mean;
                mean += delta / finite as f64;
                m2 += delta * (v - mean);
            }
        }
        if finite == 0 {
            (min, max, mean) = (f64::NAN, f64::NAN, f64::NAN);
        }
        let std = if finite == 0 {
            f64::NAN
        } else {
            (m2 / finite as f64).sqrt()
        };
        ValueStats {
            count,
            finite,
            nan,
            inf,
            min,
            max,
            mean,
            std,
        }
    }
}

/// Every element of a plain (not block-quantized) tensor as f64, little-endian.
fn values<'a>(t: &Tensor<'a>) -> Option<Box<dyn Iterator<Item = f64> + 'a>> {
    fn each<'a, const N: usize>(
        data: &'a [u8],
        f: impl Fn([u8; N]) -> f64 + 'a,
    ) -> Box<dyn Iterator<Item = f64> + 'a> {
        Box::new(data.chunks_exact(N).map(move |c| {
            let mut bytes = [0u8; N];
            bytes.copy_from_slice(c);
            f(bytes)
        }))
    }
    let data = t.data;
    Some(match t.info.ggml_type() {
        GgmlType::F32 => each(data, |b| f64::from(f32::from_le_bytes(b))),
        GgmlType::F16 => each(data, |b| f64::from(f16_to_f32(u16::from_le_bytes(b)))),
        GgmlType::Bf16 => each(data, |b| f64::from(bf16_to_f32(u16::from_le_bytes(b)))),
        GgmlType::F64 => each(data, f64::from_le_bytes),
        GgmlType::I8 => each(data, |b: [u8; 1]| f64::from(b[0] as i8)),
        GgmlType::I16 => each(data, |b| f64::from(i16::from_le_bytes(b))),
        GgmlType::I32 => each(data, |b| f64::from(i32::from_le_bytes(b))),
        GgmlType::I64 => each(data, |b| i64::from_le_bytes(b) as f64),
        _ => return None,
    })
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Statistics of `tensor` in `gguf`.
pub fn tensor_stats<B: AsRef<[u8]>>(gguf: &Gguf<B>, tensor: &Tensor<'_>) -> Stats {
    if let Ok(pair) = gguf::ternary_pair(gguf, tensor.info.name()) {
        let h = CodeHistogram::of_packed(pair.codes.data, pair.codes.data.len() * 4);
        let total = h.minus_one + h.zero + h.plus_one + h.invalid;
        // The scales are F32 (checked by `ternary_pair`), so `values` always has them.
        let scales = ValueStats::of(values(&pair.scales).into_iter().flatten());
        return Stats::Ternary(TernaryStats {
            rows: pair.rows,
            codes_per_row: pair.max_cols(),
            minus_one: h.minus_one,
            zero: h.zero,
            plus_one: h.plus_one,
            invalid: h.invalid,
            share_minus_one: share(h.minus_one, total),
            share_zero: share(h.zero, total),
            share_plus_one: share(h.plus_one, total),
            share_invalid: share(h.invalid, total),
            scales,
        });
    }
    match values(tensor) {
        Some(v) => Stats::Values(ValueStats::of(v)),
        None => Stats::Unavailable {
            reason: format!(
                "{} is block-quantized ({} weights in {} bytes a block): no element statistics",
                tensor.info.ggml_type(),
                tensor.info.ggml_type().block_size(),
                tensor.info.ggml_type().block_bytes()
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_stats_skip_non_finite_values_and_count_them() {
        let s = ValueStats::of([1.0, f64::NAN, 3.0, f64::INFINITY, -1.0].into_iter());
        assert_eq!((s.count, s.finite, s.nan, s.inf), (5, 3, 1, 1));
        assert_eq!((s.min, s.max, s.mean), (-1.0, 3.0, 1.0));
        assert!((s.std - (8.0f64 / 3.0).sqrt()).abs() < 1e-12);
        let empty = ValueStats::of(std::iter::empty());
        assert_eq!(empty.count, 0);
        assert!(empty.mean.is_nan() && empty.min.is_nan());
    }
}
