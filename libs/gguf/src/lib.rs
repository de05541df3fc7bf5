//! GGUF version 3: a reader that memory-maps a file and checks every field against the file size
//! before use, and a writer that streams a file through a temporary name into place.
//!
//! Owns: the container format ([`read`], [`write`]), metadata values ([`value`]), the standard ggml
//! tensor types ([`types`]), the ternary weight pair convention of this project ([`ternary`]:
//! I8 codes `name` + F32 scales `name.scale`), and the block codecs of the llama.cpp types the
//! project reads: TQ1_0/TQ2_0 ([`tq`]) and Q8_0 ([`q8`], which it also writes for the embedding
//! and head). Does not own what the metadata means (libs/model), nor any printing or exiting
//! (tools/gguf-inspect).
//!
//! Shapes: GGUF stores dimensions innermost first (`ne[0]` is the row length). This crate's API
//! speaks `shape`, outermost first (`[rows, cols]`, as numpy and PyTorch do), and gives the file's
//! order as `ne` where it matters ([`TensorInfo::ne`]).
//!
//! Reading:
//! ```no_run
//! let file = gguf::GgufFile::open("model.gguf")?;
//! let arch = file.get("general.architecture").and_then(|v| v.as_str());
//! for t in file.tensors() {
//!     println!("{} {} {:?} {} bytes", t.info.name(), t.info.ggml_type(), t.info.shape(), t.data.len());
//! }
//! # Ok::<(), gguf::GgufError>(())
//! ```
//! Writing:
//! ```no_run
//! use gguf::{GgmlType, GgufWriter, Layout};
//! let mut layout = Layout::new();
//! layout.set("general.architecture", "nanochat")?;
//! layout.add_tensor("output_norm.weight", GgmlType::F32, &[4])?;
//! let mut writer = GgufWriter::create("model.gguf", &layout)?;
//! writer.write_f32("output_norm.weight", &[1.0; 4])?;
//! writer.finish()?;
//! # Ok::<(), gguf::WriteError>(())
//! ```

pub mod error;
pub mod q8;
pub mod read;
pub mod ternary;
#[cfg(test)]
mod testutil;
pub mod tq;
pub mod types;
pub mod value;
pub mod write;

pub use error::{GgufError, WriteError};
pub use read::{Gguf, GgufFile, KeyValue, Tensor, TensorInfo};
pub use ternary::{read_ternary, ternary_pair, ternary_pairs, TernaryError, TernaryPair};
pub use types::GgmlType;
pub use value::{Array, Value, ValueType};
pub use write::{GgufWriter, Layout};

/// The first 4 bytes of every GGUF file.
pub const MAGIC: [u8; 4] = *b"GGUF";

/// The format version this crate reads and writes.
pub const VERSION: u32 = 3;

/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u32 = 32;

/// The metadata key that sets the alignment (a u32 power of two).
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
