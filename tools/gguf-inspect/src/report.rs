//! What gguf-inspect reports, as plain data: built once from a parsed file, then rendered as text
//! (render.rs) or serialized as JSON. Both outputs come from these structs, so they never disagree.
//!
//! Long values are summarized here, for both outputs: arrays show their first [`ARRAY_ITEMS`]
//! items and their length, strings longer than [`STRING_CHARS`] characters show their beginning
//! and their length in bytes (the tokenizer JSON among them).

use gguf::{Gguf, TensorInfo, Value};
use serde::Serialize;
use serde_json::json;

/// Items of an array shown before it is cut.
pub const ARRAY_ITEMS: usize = 8;
/// Characters of a string shown before it is cut.
pub const STRING_CHARS: usize = 64;

/// The whole listing of a file.
#[derive(Debug, Serialize)]
pub struct Report {
    pub file: String,
    pub file_bytes: usize,
    pub version: u32,
    pub alignment: u32,
    /// Byte offset of the data section.
    pub data_offset: usize,
    pub metadata: Vec<MetadataEntry>,
    pub tensors: Vec<TensorRow>,
    pub ternary: Vec<TernaryRow>,
    pub totals: Totals,
}

/// One metadata pair, summarized.
#[derive(Debug, Serialize)]
pub struct MetadataEntry {
    pub key: String,
    /// `u32`, `string`, `array[string]`, `array[array]`, ...
    #[serde(rename = "type")]
    pub value_type: String,
    /// The value; for a long array its first items, for a long string its beginning.
    pub value: serde_json::Value,
    /// Items of an array, bytes of a string; absent for other scalars.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<usize>,
    /// Whether `value` shows only part of the value.
    pub truncated: bool,
}

/// One tensor.
#[derive(Debug, Serialize)]
pub struct TensorRow {
    pub name: String,
    #[serde(rename = "type")]
    pub ggml_type: String,
    /// Outermost first (`[rows, cols]`).
    pub shape: Vec<u64>,
    /// As stored, innermost first (`ne[0]` is the row length).
    pub ne: Vec<u64>,
    /// Offset in the data section, as stored.
    pub offset: u64,
    /// Offset from the start of the file.
    pub file_offset: usize,
    pub bytes: u64,
    pub elements: u64,
    /// Name of the ternary weight this tensor belongs to (codes or scales), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ternary_of: Option<String>,
}

/// One ternary weight pair.
#[derive(Debug, Serialize)]
pub struct TernaryRow {
    pub name: String,
    pub rows: u64,
    /// `4 × packed bytes per row`: the real cols when a multiple of 4, up to 3 more otherwise.
    pub cols: u64,
    pub groups: u64,
    pub bytes: u64,
}

/// Sums over the file.
#[derive(Debug, Serialize)]
pub struct Totals {
    pub tensors: usize,
    /// Elements of every tensor, a ternary pair counting as rows × cols (its scales add none).
    pub parameters: u64,
    pub bytes: u64,
    pub bits_per_weight: f64,
    pub ternary_parameters: u64,
    pub ternary_bytes: u64,
    pub ternary_bits_per_weight: f64,
}

fn bits_per_weight(bytes: u64, parameters: u64) -> f64 {
    if parameters == 0 {
        0.0
    } else {
        bytes as f64 * 8.0 / parameters as f64
    }
}

impl Report {
    pub fn new<B: AsRef<[u8]>>(file: &str, gguf: &Gguf<B>) -> Report {
        let pairs = gguf::ternary_pairs(gguf);
        let pair_of = |t: &TensorInfo| {
            pairs
                .iter()
                .find(|p| p.codes.info.name() == t.name() || p.scales.info.name() == t.name())
        };
        let tensors: Vec<TensorRow> = gguf
            .tensor_infos()
            .iter()
            .map(|t| TensorRow {
                name: t.name().to_string(),
                ggml_type: t.ggml_type().name().to_string(),
                shape: t.shape(),
                ne: t.ne().to_vec(),
                offset: t.offset(),
                file_offset: t.file_range().start,
                bytes: t.n_bytes(),
                elements: t.n_elements(),
                ternary_of: pair_of(t).map(|p| p.name().to_string()),
            })
            .collect();
        let ternary: Vec<TernaryRow> = pairs
            .iter()
            .map(|p| TernaryRow {
                name: p.name().to_string(),
                rows: p.rows,
                cols: p.max_cols(),
                groups: p.groups,
                bytes: p.codes.info.n_bytes() + p.scales.info.n_bytes(),
            })
            .collect();
        // Sums saturate: a file may declare empty tensors of any size in its header.
        let ternary_parameters = ternary.iter().fold(0u64, |acc, p| {
            acc.saturating_add(p.rows.saturating_mul(p.cols))
        });
        let ternary_bytes = ternary.iter().map(|p| p.bytes).sum();
        let other_parameters = tensors
            .iter()
            .filter(|t| t.ternary_of.is_none())
            .fold(0u64, |acc, t| acc.saturating_add(t.elements));
        let parameters = other_parameters.saturating_add(ternary_parameters);
        let bytes = tensors.iter().map(|t| t.bytes).sum();
        Report {
            file: file.to_string(),
            file_bytes: gguf.file_len(),
            version: gguf.version(),
            alignment: gguf.alignment(),
            data_offset: gguf.data_offset(),
            metadata: gguf
                .metadata()
                .iter()
                .map(|kv| MetadataEntry::new(&kv.key, &kv.value))
                .collect(),
            totals: Totals {
                tensors: tensors.len(),
                parameters,
                bytes,
                bits_per_weight: bits_per_weight(bytes, parameters),
                ternary_parameters,
                ternary_bytes,
                ternary_bits_per_weight: bits_per_weight(ternary_bytes, ternary_parameters),
            },
            tensors,
            ternary,
        }
    }
}

impl MetadataEntry {
    fn new(key: &str, value: &Value) -> MetadataEntry {
        let (value_json, length, truncated) = summarize(value);
        MetadataEntry {
            key: key.to_string(),
            value_type: type_name(value),
            value: value_json,
            length,
            truncated,
        }
    }
}

/// `u32`, `string`, `array[u32]`, `array[array]`.
fn type_name(value: &Value) -> String {
    match value {
        Value::Array(a) => format!("array[{}]", a.element_type()),
        v => v.value_type().to_string(),
    }
}

/// A value as JSON, cut to size: (json, length of a string or array, whether it was cut).
fn summarize(value: &Value) -> (serde_json::Value, Option<usize>, bool) {
    let scalar = |json| (json, None, false);
    match *value {
        Value::String(ref s) => {
            let (text, cut) = cut_string(s);
            (json!(text), Some(s.len()), cut)
        }
        Value::Array(ref a) => {
            let shown = a.len().min(ARRAY_ITEMS);
            let items = (0..shown)
                .filter_map(|i| a.get(i))
                .map(|v| summarize(&v).0)
                .collect();
            (
                serde_json::Value::Array(items),
                Some(a.len()),
                shown < a.len(),
            )
        }
        Value::U8(v) => scalar(json!(v)),
        Value::I8(v) => scalar(json!(v)),
        Value::U16(v) => scalar(json!(v)),
        Value::I16(v) => scalar(json!(v)),
        Value::U32(v) => scalar(json!(v)),
        Value::I32(v) => scalar(json!(v)),
        Value::U64(v) => scalar(json!(v)),
        Value::I64(v) => scalar(json!(v)),
        Value::F32(v) => scalar(f32_json(v)),
        Value::F64(v) => scalar(float_json(v)),
        Value::Bool(v) => scalar(json!(v)),
    }
}

/// The first [`STRING_CHARS`] characters of `s`, and whether that is not all of it.
fn cut_string(s: &str) -> (&str, bool) {
    match s.char_indices().nth(STRING_CHARS) {
        Some((end, _)) => (&s[..end], true),
        None => (s, false),
    }
}

/// A float as a JSON number, or `"NaN"`, `"inf"`, `"-inf"` (JSON has no such numbers).
pub fn float_json(v: f64) -> serde_json::Value {
    if v.is_finite() {
        json!(v)
    } else {
        json!(v.to_string())
    }
}

/// An f32 as the shortest decimal that reads back as it (0.1, not 0.10000000149011612).
pub fn f32_json(v: f32) -> serde_json::Value {
    float_json(v.to_string().parse().unwrap_or(f64::from(v)))
}
