//! The data side of training: seeded random windows over a memory-mapped token file, the fixed
//! validation windows, and bits per byte.
//!
//! Everything random here draws from [`Rng`], whose whole state is one `u64`, so a checkpoint
//! stores the loader's position exactly and a resumed run reads the same windows as an
//! uninterrupted one.

use candle_core::{Device, Result, Tensor};
use tokens::{Encoder, TokenFile};

/// The loader's generator: libs/model's SplitMix64, whose one-word state a checkpoint stores.
pub use model::rng::SplitMix64 as Rng;

/// Why a token file cannot feed training.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {count} tokens, too few for one window of {needed} (seq-len + 1)")]
pub struct TooShort {
    pub path: String,
    pub count: usize,
    pub needed: usize,
}

/// Random training windows: each sequence is `seq_len + 1` consecutive tokens starting at a
/// uniformly drawn offset (inputs are the first `seq_len`, targets the last `seq_len`).
pub struct Batcher {
    file: TokenFile,
    seq_len: usize,
    rng: Rng,
}

impl Batcher {
    pub fn new(file: TokenFile, seq_len: usize, seed: u64) -> std::result::Result<Self, TooShort> {
        check_length(&file, seq_len)?;
        Ok(Batcher {
            file,
            seq_len,
            rng: Rng::new(seed),
        })
    }

    /// The next `batch` windows as `(inputs, targets)`, each `[batch, seq_len]` u32.
    pub fn next_batch(&mut self, batch: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let span = (self.file.len() - self.seq_len) as u64;
        let starts: Vec<usize> = (0..batch).map(|_| self.rng.below(span) as usize).collect();
        eval_batch(&self.file, &starts, self.seq_len, device)
    }

    pub fn rng_state(&self) -> u64 {
        self.rng.state()
    }

    pub fn set_rng_state(&mut self, state: u64) {
        self.rng = Rng::new(state);
    }
}

fn check_length(file: &TokenFile, seq_len: usize) -> std::result::Result<(), TooShort> {
    if file.len() <= seq_len {
        return Err(TooShort {
            path: file.path().display().to_string(),
            count: file.len(),
            needed: seq_len + 1,
        });
    }
    Ok(())
}

/// The start offsets of the validation windows: non-overlapping windows of `seq_len + 1` tokens,
/// at most `max` of them spread evenly over the file (the same windows at every evaluation, so
/// the figures of one run compare). Empty when the file is shorter than one window.
pub fn eval_windows(file: &TokenFile, seq_len: usize, max: usize) -> Vec<usize> {
    if check_length(file, seq_len).is_err() || max == 0 {
        return Vec::new();
    }
    let available = (file.len() - 1) / seq_len;
    spread(available, max)
        .into_iter()
        .map(|slot| slot * seq_len)
        .collect()
}

/// At most `max` of the indices `0..available`, spread evenly (stride ≥ 1).
pub fn spread(available: usize, max: usize) -> Vec<usize> {
    let count = available.min(max);
    (0..count).map(|i| i * available / count).collect()
}

/// The windows starting at `starts` as `(inputs, targets)`, each `[starts.len(), seq_len]` u32.
/// Every start must leave `seq_len + 1` tokens in the file.
pub fn eval_batch(
    file: &TokenFile,
    starts: &[usize],
    seq_len: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let tokens = file.tokens();
    let mut inputs = Vec::with_capacity(starts.len() * seq_len);
    let mut targets = Vec::with_capacity(starts.len() * seq_len);
    for &start in starts {
        let window = tokens.get(start..start + seq_len + 1).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "window {start}..{} is past the end of {} ({} tokens)",
                start + seq_len + 1,
                file.path().display(),
                tokens.len()
            ))
        })?;
        inputs.extend(window[..seq_len].iter().map(|&t| t as u32));
        targets.extend(window[1..].iter().map(|&t| t as u32));
    }
    let shape = (starts.len(), seq_len);
    Ok((
        Tensor::from_vec(inputs, shape, device)?,
        Tensor::from_vec(targets, shape, device)?,
    ))
}

/// How many bytes of text each token id stands for, to turn nats per token into bits per byte
/// (the measure that compares across tokenizers). Special tokens (end-of-text, chat markers) stand
/// for no source text and count 0 bytes; their loss is still counted, as in nanochat's bpb up to
/// the one end-of-text per document.
#[derive(Clone, Debug)]
pub struct TokenBytes {
    bytes: Vec<u32>,
}

impl TokenBytes {
    pub fn from_tokenizer_json(json: &str) -> std::result::Result<Self, tokens::EncodeError> {
        let encoder = Encoder::from_json(json)?;
        let special: std::collections::HashSet<u32> = encoder
            .tokenizer()
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| id)
            .collect();
        let mut bytes = Vec::with_capacity(encoder.vocab_size());
        let mut buf = Vec::new();
        for id in 0..encoder.vocab_size() as u32 {
            buf.clear();
            if !special.contains(&id) {
                encoder.decode_bytes(&[id], &mut buf)?;
            }
            bytes.push(buf.len() as u32);
        }
        Ok(TokenBytes { bytes })
    }

    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// Bytes of text behind `targets` (ids beyond the tokenizer count 0).
    pub fn count(&self, targets: &[u32]) -> u64 {
        targets
            .iter()
            .map(|&t| self.bytes.get(t as usize).copied().unwrap_or(0) as u64)
            .sum()
    }

    /// `nats` (summed over `targets`) in bits per byte of the text they encode.
    pub fn bits_per_byte(&self, nats: f64, targets: &[u32]) -> f64 {
        nats / std::f64::consts::LN_2 / self.count(targets).max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokens::TokenFileWriter;

    fn token_file(dir: &std::path::Path, tokens: &[u16]) -> TokenFile {
        let path = dir.join("t.bin");
        let mut writer = TokenFileWriter::create(&path).unwrap();
        writer.write(tokens).unwrap();
        writer.finish().unwrap();
        TokenFile::open(&path).unwrap()
    }

    #[test]
    fn rng_is_deterministic_and_restorable() {
        let mut a = Rng::new(42);
        let first: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let mut b = Rng::new(42);
        assert_eq!(first, (0..5).map(|_| b.next_u64()).collect::<Vec<_>>());
        let mut c = Rng::new(a.state());
        assert_eq!(a.next_u64(), c.next_u64());
        assert!((0..1000).all(|_| a.below(7) < 7));
        let mean = (0..20_000).map(|_| a.normal()).sum::<f64>() / 20_000.0;
        assert!(mean.abs() < 0.05, "{mean}");
    }

    #[test]
    fn windows_are_shifted_pairs_and_resume_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let tokens: Vec<u16> = (0..500).collect();
        let file = token_file(dir.path(), &tokens);
        let dev = Device::Cpu;
        let mut batcher = Batcher::new(file, 16, 9).unwrap();
        let (x, y) = batcher.next_batch(4, &dev).unwrap();
        assert_eq!(x.dims(), &[4, 16]);
        let (x, y) = (x.to_vec2::<u32>().unwrap(), y.to_vec2::<u32>().unwrap());
        for (xs, ys) in x.iter().zip(&y) {
            // Consecutive tokens: targets are the inputs shifted by one.
            assert!(xs.windows(2).all(|w| w[1] == w[0] + 1));
            assert_eq!(&xs[1..], &ys[..15]);
        }
        let state = batcher.rng_state();
        let next = batcher
            .next_batch(4, &dev)
            .unwrap()
            .0
            .to_vec2::<u32>()
            .unwrap();
        batcher.set_rng_state(state);
        let again = batcher
            .next_batch(4, &dev)
            .unwrap()
            .0
            .to_vec2::<u32>()
            .unwrap();
        assert_eq!(next, again);
    }

    #[test]
    fn short_files_are_refused_and_eval_windows_fit() {
        let dir = tempfile::tempdir().unwrap();
        let file = token_file(dir.path(), &[1, 2, 3]);
        let err = Batcher::new(file, 3, 0).err().expect("too short");
        assert!(err.to_string().contains("3 tokens"), "{err}");

        let file = token_file(dir.path(), &(0..101).collect::<Vec<u16>>());
        let all = eval_windows(&file, 10, 100);
        assert_eq!(all, (0..10).map(|i| i * 10).collect::<Vec<_>>());
        let some = eval_windows(&file, 10, 3);
        assert_eq!(some.len(), 3);
        let (x, _) = eval_batch(&file, &all, 10, &Device::Cpu).unwrap();
        assert_eq!(x.dims(), &[10, 10]);
        assert!(eval_batch(&file, &[95], 10, &Device::Cpu).is_err());
    }
}
