//! The key/value cache of one sequence: per layer, the rotated keys and the values of every
//! position so far, `[positions, kv_dim]`. It grows as tokens arrive, so memory follows the
//! sequence's real length, not the context limit.
//!
//! Stored in f16 by default (as llama.cpp keeps them): half the bytes of f32, and attention
//! streams the whole cache of every sequence once per layer and token, so with several sequences
//! decoding together the caches and the weights compete for the last-level cache. f32 keeps the
//! activations exactly as the training graph computes them (for parity checks, or to rule the
//! rounding out).

use std::fmt;
use std::str::FromStr;

use half::f16;
use half::slice::HalfFloatSliceExt;

/// How keys and values are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvPrecision {
    /// Rounded to the nearest f16, saturating at ±65504 (never infinite).
    #[default]
    F16,
    /// Exactly as computed.
    F32,
}

impl KvPrecision {
    /// Bytes per stored key or value channel.
    pub fn bytes_per_value(self) -> usize {
        match self {
            KvPrecision::F16 => 2,
            KvPrecision::F32 => 4,
        }
    }
}

impl FromStr for KvPrecision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f16" => Ok(KvPrecision::F16),
            "f32" => Ok(KvPrecision::F32),
            _ => Err(format!("unknown KV cache type {s:?} (f16 or f32)")),
        }
    }
}

impl fmt::Display for KvPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvPrecision::F16 => "f16",
            KvPrecision::F32 => "f32",
        })
    }
}

/// Per layer, keys and values of every position.
#[derive(Clone, Debug)]
enum Store {
    F16 {
        keys: Vec<Vec<f16>>,
        values: Vec<Vec<f16>>,
    },
    F32 {
        keys: Vec<Vec<f32>>,
        values: Vec<Vec<f32>>,
    },
}

/// The first positions of one layer's keys and values.
#[derive(Clone, Copy)]
pub(crate) enum KvLayer<'a> {
    F16 { keys: &'a [f16], values: &'a [f16] },
    F32 { keys: &'a [f32], values: &'a [f32] },
}

/// Keys and values of one sequence.
#[derive(Clone, Debug)]
pub struct KvCache {
    store: Store,
    kv_dim: usize,
    len: usize,
}

impl KvCache {
    /// An empty f16 cache for `n_layers` layers of `kv_dim` channels.
    pub fn new(n_layers: usize, kv_dim: usize) -> Self {
        Self::with_precision(n_layers, kv_dim, KvPrecision::default())
    }

    /// An empty cache that stores keys and values in `precision`.
    pub fn with_precision(n_layers: usize, kv_dim: usize, precision: KvPrecision) -> Self {
        let store = match precision {
            KvPrecision::F16 => Store::F16 {
                keys: vec![Vec::new(); n_layers],
                values: vec![Vec::new(); n_layers],
            },
            KvPrecision::F32 => Store::F32 {
                keys: vec![Vec::new(); n_layers],
                values: vec![Vec::new(); n_layers],
            },
        };
        KvCache {
            store,
            kv_dim,
            len: 0,
        }
    }

    pub fn precision(&self) -> KvPrecision {
        match self.store {
            Store::F16 { .. } => KvPrecision::F16,
            Store::F32 { .. } => KvPrecision::F32,
        }
    }

    /// Positions held (committed by complete forward passes).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> usize {
        let values: usize = match &self.store {
            Store::F16 { keys, values } => keys.iter().chain(values).map(Vec::len).sum(),
            Store::F32 { keys, values } => keys.iter().chain(values).map(Vec::len).sum(),
        };
        values * self.precision().bytes_per_value()
    }

    /// Appends one position's key and value to `layer` (visible to [`Self::layer`] at once,
    /// counted by [`Self::len`] after [`Self::commit`]).
    pub(crate) fn push(&mut self, layer: usize, key: &[f32], value: &[f32]) {
        debug_assert_eq!(key.len(), self.kv_dim);
        debug_assert_eq!(value.len(), self.kv_dim);
        match &mut self.store {
            Store::F16 { keys, values } => {
                append_saturated(&mut keys[layer], key);
                append_saturated(&mut values[layer], value);
            }
            Store::F32 { keys, values } => {
                keys[layer].extend_from_slice(key);
                values[layer].extend_from_slice(value);
            }
        }
    }

    /// Counts `tokens` positions pushed to every layer.
    pub(crate) fn commit(&mut self, tokens: usize) {
        self.len += tokens;
        debug_assert_eq!(self.bytes(), self.expected_bytes());
    }

    fn expected_bytes(&self) -> usize {
        let layers = match &self.store {
            Store::F16 { keys, .. } => keys.len(),
            Store::F32 { keys, .. } => keys.len(),
        };
        2 * layers * self.len * self.kv_dim * self.precision().bytes_per_value()
    }

    /// The first `positions` keys and values of `layer`.
    pub(crate) fn layer(&self, layer: usize, positions: usize) -> KvLayer<'_> {
        let n = positions * self.kv_dim;
        match &self.store {
            Store::F16 { keys, values } => KvLayer::F16 {
                keys: &keys[layer][..n],
                values: &values[layer][..n],
            },
            Store::F32 { keys, values } => KvLayer::F32 {
                keys: &keys[layer][..n],
                values: &values[layer][..n],
            },
        }
    }
}

/// Appends `values` rounded to the nearest f16, clamped to ±65504 first: a value past f16's range
/// becomes its largest finite one, not infinity, so attention never meets `∞ - ∞` or `0 · ∞`.
/// NaN stays NaN.
fn append_saturated(cache: &mut Vec<f16>, values: &[f32]) {
    const CHUNK: usize = 64;
    let max = f16::MAX.to_f32();
    let start = cache.len();
    cache.resize(start + values.len(), f16::ZERO);
    let mut clamped = [0.0f32; CHUNK];
    for (out, chunk) in cache[start..].chunks_mut(CHUNK).zip(values.chunks(CHUNK)) {
        for (c, &v) in clamped.iter_mut().zip(chunk) {
            *c = v.clamp(-max, max);
        }
        // The slice conversion uses F16C where the CPU has it (round to nearest even, like the
        // scalar one).
        out.convert_from_f32_slice(&clamped[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_layer(cache: &KvCache, layer: usize, positions: usize) -> (&[f16], &[f16]) {
        match cache.layer(layer, positions) {
            KvLayer::F16 { keys, values } => (keys, values),
            KvLayer::F32 { .. } => panic!("an f16 cache"),
        }
    }

    #[test]
    fn values_round_to_f16_and_saturate_instead_of_overflowing() {
        let mut cache = KvCache::new(2, 3);
        cache.push(0, &[0.0; 3], &[0.0; 3]);
        cache.push(1, &[1.0, 1e6, -1e6], &[0.1, f32::NAN, 65519.0]);
        cache.commit(1);
        let (keys, values) = f16_layer(&cache, 1, 1);
        let keys: Vec<f32> = keys.iter().map(|h| h.to_f32()).collect();
        assert_eq!(keys, [1.0, 65504.0, -65504.0]);
        assert_eq!(values[0], f16::from_f32(0.1));
        assert!(values[1].is_nan());
        assert_eq!(values[2].to_f32(), 65504.0);
        assert_eq!(cache.bytes(), 2 * 2 * 2 * 3);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn long_rows_convert_every_chunk() {
        let row: Vec<f32> = (0..200).map(|i| i as f32 * 0.37 - 20.0).collect();
        let mut cache = KvCache::new(1, row.len());
        cache.push(0, &row, &row);
        cache.push(0, &row, &row);
        cache.commit(2);
        let (keys, _) = f16_layer(&cache, 0, 2);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(*k, f16::from_f32(row[i % row.len()]), "channel {i}");
        }
    }

    #[test]
    fn an_f32_cache_keeps_values_exactly_in_twice_the_bytes() {
        let mut cache = KvCache::with_precision(1, 2, KvPrecision::F32);
        cache.push(0, &[0.1, 1e6], &[-3.0, f32::MIN_POSITIVE]);
        cache.commit(1);
        assert_eq!(cache.precision(), KvPrecision::F32);
        assert_eq!(cache.bytes(), 2 * 2 * 4);
        match cache.layer(0, 1) {
            KvLayer::F32 { keys, values } => {
                assert_eq!(keys, [0.1, 1e6]);
                assert_eq!(values, [-3.0, f32::MIN_POSITIVE]);
            }
            KvLayer::F16 { .. } => panic!("an f32 cache"),
        }
    }

    #[test]
    fn precisions_parse_and_print() {
        for p in [KvPrecision::F16, KvPrecision::F32] {
            assert_eq!(p.to_string().parse::<KvPrecision>(), Ok(p));
        }
        assert!("bf16"
            .parse::<KvPrecision>()
            .unwrap_err()
            .contains("f16 or f32"));
    }
}
