//! The key/value cache of one sequence: per layer, the rotated keys and the values of every
//! position so far, `[positions, kv_dim]` f32. It grows as tokens arrive, so memory follows the
//! sequence's real length, not the context limit.

/// Keys and values of one sequence.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    kv_dim: usize,
    len: usize,
}

impl KvCache {
    /// An empty cache for `n_layers` layers of `kv_dim` channels.
    pub fn new(n_layers: usize, kv_dim: usize) -> Self {
        KvCache {
            keys: vec![Vec::new(); n_layers],
            values: vec![Vec::new(); n_layers],
            kv_dim,
            len: 0,
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
        4 * self
            .keys
            .iter()
            .chain(&self.values)
            .map(Vec::len)
            .sum::<usize>()
    }

    /// Appends one position's key and value to `layer` (visible to [`Self::layer`] at once,
    /// counted by [`Self::len`] after [`Self::commit`]).
    pub(crate) fn push(&mut self, layer: usize, key: &[f32], value: &[f32]) {
        debug_assert_eq!(key.len(), self.kv_dim);
        self.keys[layer].extend_from_slice(key);
        self.values[layer].extend_from_slice(value);
    }

    /// Counts `tokens` positions pushed to every layer.
    pub(crate) fn commit(&mut self, tokens: usize) {
        self.len += tokens;
        debug_assert!(self.keys.iter().all(|k| k.len() == self.len * self.kv_dim));
    }

    /// The first `positions` keys and values of `layer`.
    pub(crate) fn layer(&self, layer: usize, positions: usize) -> (&[f32], &[f32]) {
        let n = positions * self.kv_dim;
        (&self.keys[layer][..n], &self.values[layer][..n])
    }
}
