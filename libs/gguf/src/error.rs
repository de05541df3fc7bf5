//! Errors of the reader ([`GgufError`]: what is wrong with a file and at which byte) and of the
//! writer ([`WriteError`]: a layout the format cannot hold, tensors written out of plan, I/O).
//!
//! Messages are one line and name the byte offset, so a tool can print `FILE: message` as is.

use crate::types::GgmlType;
use crate::value::{ValueType, MAX_ARRAY_DEPTH};
use std::path::PathBuf;

/// Why a file could not be read as GGUF. Offsets are bytes from the start of the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),

    #[error("truncated at byte {offset}: {what} needs {needed} bytes, only {available} left")]
    Truncated {
        offset: usize,
        what: &'static str,
        needed: u64,
        available: usize,
    },

    #[error(
        "not a GGUF file: the first 4 bytes are {found:02x?}, expected \"GGUF\" (47 47 55 46)"
    )]
    BadMagic { found: [u8; 4] },

    #[error("unsupported GGUF version {version} at byte 4: this reader reads version 3{hint}", hint = if *.version > 0xffff { " (a big-endian file?)" } else { "" })]
    UnsupportedVersion { version: u32 },

    #[error("{what} {count} at byte {offset} is impossible: the {available} bytes after it hold at most {max}")]
    CountTooLarge {
        offset: usize,
        what: &'static str,
        count: u64,
        max: u64,
        available: usize,
    },

    #[error("{what} at byte {offset} is not valid UTF-8")]
    BadUtf8 { offset: usize, what: &'static str },

    #[error("unknown metadata value type {id} at byte {offset}")]
    UnknownValueType { offset: usize, id: u32 },

    #[error("bool at byte {offset} is {value}, expected 0 or 1")]
    BadBool { offset: usize, value: u8 },

    #[error("array at byte {offset} is nested deeper than {MAX_ARRAY_DEPTH} levels")]
    TooDeep { offset: usize },

    #[error("duplicate metadata key {key:?} at byte {offset}")]
    DuplicateKey { offset: usize, key: String },

    #[error("general.alignment at byte {offset} has type {found}, expected u32")]
    AlignmentType { offset: usize, found: ValueType },

    #[error("general.alignment at byte {offset} is {value}, expected a non-zero power of two")]
    BadAlignment { offset: usize, value: u32 },

    #[error("tensor {name:?} at byte {offset} has {n_dims} dimensions, at most {max} allowed", max = crate::MAX_DIMS)]
    TooManyDims {
        offset: usize,
        name: String,
        n_dims: u32,
    },

    #[error("tensor {name:?} at byte {offset}: ne[{index}] = {value} is larger than 2^63 - 1")]
    BadDim {
        offset: usize,
        name: String,
        index: usize,
        value: u64,
    },

    #[error("tensor {name:?} at byte {offset}: unknown ggml type id {id}")]
    UnknownTensorType {
        offset: usize,
        name: String,
        id: u32,
    },

    #[error("tensor {name:?} at byte {offset}: row length ne[0] = {row} is not a multiple of the {ggml_type} block size {block}", block = .ggml_type.block_size())]
    PartialBlock {
        offset: usize,
        name: String,
        ggml_type: GgmlType,
        row: u64,
    },

    #[error("tensor {name:?} at byte {offset}: size overflows 64 bits")]
    SizeOverflow { offset: usize, name: String },

    #[error("duplicate tensor name {name:?} at byte {offset}")]
    DuplicateTensor { offset: usize, name: String },

    #[error("tensor {name:?} (info at byte {offset}): data offset {data_offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        offset: usize,
        name: String,
        data_offset: u64,
        alignment: u32,
    },

    #[error("tensor {name:?} (info at byte {offset}): data at bytes {start}..{end} runs past the end of the file ({file_len} bytes)")]
    TensorPastEnd {
        offset: usize,
        name: String,
        start: u64,
        end: u64,
        file_len: usize,
    },

    #[error("tensors {first:?} (bytes {first_start}..{first_end}) and {second:?} (from byte {second_start}) overlap")]
    OverlappingTensors {
        first: String,
        first_start: usize,
        first_end: usize,
        second: String,
        second_start: usize,
    },
}

/// Why a file could not be written. Nothing is left at the destination path in every case.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("general.alignment must be a u32 power of two, got {0:?}")]
    BadAlignment(crate::Value),

    #[error("metadata {key:?}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels")]
    TooDeep { key: String },

    #[error("tensor {0:?} is declared twice")]
    DuplicateTensor(String),

    #[error("tensor {name:?} has {n_dims} dimensions, at most {max} allowed", max = crate::MAX_DIMS)]
    TooManyDims { name: String, n_dims: usize },

    #[error("tensor {name:?}: dimension {value} is larger than 2^63 - 1")]
    BadDim { name: String, value: u64 },

    #[error("tensor {name:?}: row length {row} is not a multiple of the {ggml_type} block size {block}", block = .ggml_type.block_size())]
    PartialBlock {
        name: String,
        ggml_type: GgmlType,
        row: u64,
    },

    #[error("tensor {name:?}: size overflows 64 bits")]
    SizeOverflow { name: String },

    #[error("tensor {got:?} written out of plan: the next declared tensor is {expected}", expected = .expected.as_deref().map_or("none (all are written)".to_string(), |n| format!("{n:?}")))]
    OutOfOrder {
        expected: Option<String>,
        got: String,
    },

    #[error("tensor {name:?}: {actual} bytes of data given, its type and shape need {expected}")]
    WrongLength {
        name: String,
        expected: u64,
        actual: u64,
    },

    #[error("tensor {name:?}: declared {ggml_type} with shape {shape:?}, but written as {given}")]
    WrongKind {
        name: String,
        ggml_type: GgmlType,
        shape: Vec<u64>,
        given: String,
    },

    #[error("tensor {0:?} was declared but never written")]
    Missing(String),
}
