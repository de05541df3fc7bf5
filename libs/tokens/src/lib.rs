//! Token data for nanochat-rs-ternary: everything between a folder of `.rs` files and the token
//! files training reads.
//!
//! - [`file`]: token files in the llm.c format ([`TokenFile`] memory-maps and checks one,
//!   [`TokenFileWriter`] streams one into place atomically).
//! - [`corpus`]: the deterministic walk over `.rs` files, exclusion patterns, the train/val split by
//!   a fixed hash of the relative path, deterministic sampling.
//! - [`encode`]: [`Encoder`], an exact and fast encoder for byte-level BPE `tokenizer.json` files
//!   (the same ids as the tokenizers crate), and byte-exact decoding.
//! - [`train`]: training a byte-level BPE tokenizer with the tokenizers crate.
//!
//! No printing, no exiting: `tools/tokenize` is the command-line face.

pub mod corpus;
pub mod encode;
pub mod file;
pub mod train;

pub use corpus::{walk, Corpus, CorpusError, Exclude, Skip, SourceFile};
pub use encode::{EncodeError, Encoder};
pub use file::{write_atomic, TokenFile, TokenFileError, TokenFileWriter};
pub use train::{train_bpe, TrainError};
