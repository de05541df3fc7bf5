//! Training a byte-level BPE tokenizer with the tokenizers crate: GPT-2's byte-level pre-tokenizer
//! and decoder (no prefix space), every one of the 256 byte characters in the vocabulary whatever
//! the corpus, and the given special tokens first (ids 0, 1, ... in the order given). The result is
//! the same for the same texts (the trainer breaks ties by pair, not by hash order).

use std::collections::HashSet;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("vocabulary size {size} is too small: the {special} special tokens and 256 byte tokens need at least {min}")]
    VocabTooSmall {
        size: usize,
        special: usize,
        min: usize,
    },
    #[error("vocabulary size {size} is too large: token files hold u16 ids, at most {max} tokens")]
    VocabTooLarge { size: usize, max: usize },
    #[error("training failed: {0}")]
    Trainer(String),
}

/// Largest vocabulary a `u16` token file can hold.
pub const MAX_VOCAB: usize = 1 << 16;

/// The smallest vocabulary for `special` special tokens: those plus the 256 byte tokens.
pub fn min_vocab(special: usize) -> usize {
    special + 256
}

/// Checks `vocab_size` against [`min_vocab`] and [`MAX_VOCAB`].
pub fn check_vocab_size(vocab_size: usize, special: usize) -> Result<(), TrainError> {
    let min = min_vocab(special);
    if vocab_size < min {
        return Err(TrainError::VocabTooSmall {
            size: vocab_size,
            special,
            min,
        });
    }
    if vocab_size > MAX_VOCAB {
        return Err(TrainError::VocabTooLarge {
            size: vocab_size,
            max: MAX_VOCAB,
        });
    }
    Ok(())
}

/// Trains a `vocab_size` byte-level BPE on `texts` (each a document) with `special` tokens first.
/// `show_progress` lets the tokenizers crate draw its own bars on stderr.
pub fn train_bpe<I, S>(
    texts: I,
    vocab_size: usize,
    special: &[&str],
    show_progress: bool,
) -> Result<tokenizers::Tokenizer, TrainError>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    check_vocab_size(vocab_size, special.len())?;
    let byte_level = ByteLevel::new(false, true, true);
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(0)
        .show_progress(show_progress)
        .special_tokens(
            special
                .iter()
                .map(|t| AddedToken::from(t.to_string(), true))
                .collect(),
        )
        .initial_alphabet(alphabet)
        .build();
    let mut trainer = TrainerWrapper::from(trainer);
    let mut tokenizer = tokenizers::Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(byte_level));
    tokenizer.with_decoder(Some(byte_level));
    tokenizer
        .train(&mut trainer, texts)
        .map_err(|e| TrainError::Trainer(e.to_string()))?;
    Ok(tokenizer)
}
