//! The reader: one parser over a byte slice, used for memory-mapped files ([`GgufFile::open`]) and
//! for bytes in memory ([`Gguf::parse`]).
//!
//! Every count, length and offset is checked against the bytes that remain before it is used, so a
//! count is never trusted for an allocation: a count of N items is refused unless N items of the
//! smallest possible encoding fit in the rest of the file. After the header the parser checks the
//! tensors as a whole: offsets are multiples of `general.alignment` (default 32, must be a u32
//! power of two), every tensor's data lies inside the file, and no two tensors overlap. The last
//! tensor may end at the end of the file (its trailing padding is optional, as in llama.cpp's
//! loader). Tensor data is handed out as slices of the mapped file, never copied.
//!
//! Shapes: [`TensorInfo::ne`] is the file's order, innermost first (`ne[0]` is the row length);
//! [`TensorInfo::shape`] is the reverse, outermost first (`[rows, cols]`, as numpy and PyTorch
//! write it).

use crate::error::GgufError;
use crate::types::GgmlType;
use crate::value::{Array, Value, ValueType, MAX_ARRAY_DEPTH};
use crate::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, VERSION};
use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;

/// Fewest bytes a metadata pair takes: key length, empty key, value type, a 1-byte value.
const MIN_KV_LEN: usize = 8 + 4 + 1;
/// Fewest bytes a tensor info takes: name length, empty name, n_dims = 0, type, offset.
const MIN_TENSOR_INFO_LEN: usize = 8 + 4 + 4 + 8;

/// One metadata pair, with the byte offset where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyValue {
    pub key: String,
    pub value: Value,
    pub offset: usize,
}

/// One tensor's description, checked against the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    name: String,
    ne: Vec<u64>,
    ggml_type: GgmlType,
    offset: u64,
    info_offset: usize,
    n_elements: u64,
    n_bytes: u64,
    data: Range<usize>,
}

impl TensorInfo {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dimensions as stored, innermost first: `ne[0]` is the row length.
    pub fn ne(&self) -> &[u64] {
        &self.ne
    }

    /// Dimensions outermost first (`[rows, cols]` for a matrix): the reverse of [`Self::ne`].
    pub fn shape(&self) -> Vec<u64> {
        self.ne.iter().rev().copied().collect()
    }

    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// Offset of the data from the start of the data section, as stored.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Byte offset of this tensor's info record in the file.
    pub fn info_offset(&self) -> usize {
        self.info_offset
    }

    /// Number of elements (the product of the dimensions).
    pub fn n_elements(&self) -> u64 {
        self.n_elements
    }

    /// Bytes of data.
    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }

    /// Where the data lies in the file.
    pub fn file_range(&self) -> Range<usize> {
        self.data.clone()
    }
}

/// A tensor and its data (a slice of the file).
#[derive(Debug, Clone, Copy)]
pub struct Tensor<'a> {
    pub info: &'a TensorInfo,
    pub data: &'a [u8],
}

impl<'a> Tensor<'a> {
    /// The data as f32 values if the tensor is F32: borrowed from the file where the host is
    /// little-endian and the data 4-byte aligned (always, for a mapped file with the default
    /// alignment), decoded into a copy otherwise.
    pub fn f32_values(&self) -> Option<Cow<'a, [f32]>> {
        if self.info.ggml_type != GgmlType::F32 {
            return None;
        }
        if cfg!(target_endian = "little") {
            if let Ok(values) = bytemuck::try_cast_slice::<u8, f32>(self.data) {
                return Some(Cow::Borrowed(values));
            }
        }
        Some(Cow::Owned(
            self.data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ))
    }
}

/// A parsed GGUF file over bytes `B` (a memory map, a `Vec<u8>`, a `&[u8]`).
pub struct Gguf<B> {
    bytes: B,
    version: u32,
    alignment: u32,
    data_offset: usize,
    metadata: Vec<KeyValue>,
    tensors: Vec<TensorInfo>,
}

/// A memory-mapped GGUF file.
pub type GgufFile = Gguf<memmap2::Mmap>;

impl<B> std::fmt::Debug for Gguf<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

impl Gguf<memmap2::Mmap> {
    /// Maps and parses the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let file = std::fs::File::open(path)?;
        if file.metadata()?.is_dir() {
            return Err(GgufError::Io(std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "it is a folder",
            )));
        }
        // SAFETY: the map is read-only and the slices handed out borrow from it, so Rust never sees
        // the memory freed. Mapping is only undefined behaviour if another process changes the file
        // while it is mapped; this project's files are written once to a temporary name and renamed
        // into place, never modified in place, so a mapped file does not change under us.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Self::parse(map)
    }

    /// Takes the pages under `bytes` (a slice of this file's data, e.g. a tensor's) out of this
    /// process's resident memory: they stay in the page cache, and reading them again maps the
    /// same bytes back. A loader that copies tensors out calls it after each copy, so that loading
    /// peaks near the size of what it keeps instead of that plus the whole file. Best effort: a
    /// slice from elsewhere, or a refusal of the kernel, leaves everything as it was.
    pub fn release(&self, bytes: &[u8]) {
        let map = self.bytes.as_ref();
        let Some(offset) = (bytes.as_ptr() as usize).checked_sub(map.as_ptr() as usize) else {
            return;
        };
        if offset.saturating_add(bytes.len()) > map.len() {
            return;
        }
        // SAFETY: MADV_DONTNEED on this read-only shared file mapping only drops page-table
        // entries; the next access faults the file's bytes back in, and the file is never changed
        // in place (see `open`), so every slice borrowed from the map keeps its contents.
        let _ = unsafe {
            self.bytes.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                offset,
                bytes.len(),
            )
        };
    }
}

impl<B: AsRef<[u8]>> Gguf<B> {
    /// Parses and checks the whole header of `bytes`.
    pub fn parse(bytes: B) -> Result<Self, GgufError> {
        let parsed = Parser::parse(bytes.as_ref())?;
        Ok(Self {
            bytes,
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
        })
    }

    /// The format version (always 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of tensor data in bytes (`general.alignment`, or 32).
    pub fn alignment(&self) -> u32 {
        self.alignment
    }

    /// Byte offset of the data section (the end of the tensor infos, rounded up to the alignment).
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> usize {
        self.bytes.as_ref().len()
    }

    /// Every metadata pair, in file order.
    pub fn metadata(&self) -> &[KeyValue] {
        &self.metadata
    }

    /// The value of metadata `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata
            .iter()
            .find(|kv| kv.key == key)
            .map(|kv| &kv.value)
    }

    /// Every tensor's description, in file order.
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Every tensor with its data, in file order.
    pub fn tensors(&self) -> impl Iterator<Item = Tensor<'_>> {
        self.tensors.iter().map(|info| self.with_data(info))
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<Tensor<'_>> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .map(|info| self.with_data(info))
    }

    fn with_data<'a>(&'a self, info: &'a TensorInfo) -> Tensor<'a> {
        // In range: `Parser::check_tensor_data` checked every range against these very bytes.
        let data = &self.bytes.as_ref()[info.data.clone()];
        Tensor { info, data }
    }
}

/// What the parser finds.
struct Parsed {
    version: u32,
    alignment: u32,
    data_offset: usize,
    metadata: Vec<KeyValue>,
    tensors: Vec<TensorInfo>,
}

/// A position in the bytes; every read checks what remains.
struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

macro_rules! read_le {
    ($($name:ident: $t:ty),* $(,)?) => {$(
        fn $name(&mut self, what: &'static str) -> Result<$t, GgufError> {
            let bytes = self.take(std::mem::size_of::<$t>() as u64, what)?;
            let mut buf = [0u8; std::mem::size_of::<$t>()];
            buf.copy_from_slice(bytes);
            Ok(<$t>::from_le_bytes(buf))
        }
    )*};
}

macro_rules! read_array {
    ($self:ident, $count:ident, $variant:ident, $t:ty) => {{
        let size = std::mem::size_of::<$t>();
        // `count` was checked against the remaining bytes, so this neither overflows nor reads past.
        let bytes = $self.take(($count * size) as u64, "array")?;
        Array::$variant(
            bytes
                .chunks_exact(size)
                .map(|c| {
                    let mut buf = [0u8; std::mem::size_of::<$t>()];
                    buf.copy_from_slice(c);
                    <$t>::from_le_bytes(buf)
                })
                .collect(),
        )
    }};
}

impl<'a> Parser<'a> {
    read_le!(u32: u32, u64: u64);

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// The next `n` bytes.
    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], GgufError> {
        let available = self.remaining();
        match usize::try_from(n) {
            Ok(len) if len <= available => {
                let out = &self.bytes[self.pos..self.pos + len];
                self.pos += len;
                Ok(out)
            }
            _ => Err(GgufError::Truncated {
                offset: self.pos,
                what,
                needed: n,
                available,
            }),
        }
    }

    /// A u64 count of items that take at least `min_len` bytes each, checked against the rest.
    fn count(&mut self, what: &'static str, min_len: usize) -> Result<usize, GgufError> {
        let offset = self.pos;
        let count = self.u64(what)?;
        self.check_count(offset, what, count, min_len)
    }

    fn check_count(
        &self,
        offset: usize,
        what: &'static str,
        count: u64,
        min_len: usize,
    ) -> Result<usize, GgufError> {
        let available = self.remaining();
        let max = (available / min_len) as u64;
        if count > max {
            return Err(GgufError::CountTooLarge {
                offset,
                what,
                count,
                max,
                available,
            });
        }
        // count <= available / min_len <= usize::MAX.
        Ok(count as usize)
    }

    fn string(&mut self, what: &'static str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let offset = self.pos;
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| GgufError::BadUtf8 { offset, what })
    }

    fn value_type(&mut self) -> Result<ValueType, GgufError> {
        let offset = self.pos;
        let id = self.u32("value type")?;
        ValueType::from_id(id).ok_or(GgufError::UnknownValueType { offset, id })
    }

    fn bool(&mut self) -> Result<bool, GgufError> {
        let offset = self.pos;
        match self.take(1, "bool")?[0] {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(GgufError::BadBool { offset, value }),
        }
    }

    fn value(&mut self, ty: ValueType, depth: usize) -> Result<Value, GgufError> {
        let scalar = |p: &mut Self, n: u64| p.take(n, ty.name());
        Ok(match ty {
            ValueType::U8 => Value::U8(scalar(self, 1)?[0]),
            ValueType::I8 => Value::I8(scalar(self, 1)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(bytes2(scalar(self, 2)?))),
            ValueType::I16 => Value::I16(i16::from_le_bytes(bytes2(scalar(self, 2)?))),
            ValueType::U32 => Value::U32(u32::from_le_bytes(bytes4(scalar(self, 4)?))),
            ValueType::I32 => Value::I32(i32::from_le_bytes(bytes4(scalar(self, 4)?))),
            ValueType::F32 => Value::F32(f32::from_le_bytes(bytes4(scalar(self, 4)?))),
            ValueType::U64 => Value::U64(u64::from_le_bytes(bytes8(scalar(self, 8)?))),
            ValueType::I64 => Value::I64(i64::from_le_bytes(bytes8(scalar(self, 8)?))),
            ValueType::F64 => Value::F64(f64::from_le_bytes(bytes8(scalar(self, 8)?))),
            ValueType::Bool => Value::Bool(self.bool()?),
            ValueType::String => Value::String(self.string("string")?),
            ValueType::Array => Value::Array(self.array(depth + 1)?),
        })
    }

    /// An array at nesting `depth` (1 for an array directly under a key).
    fn array(&mut self, depth: usize) -> Result<Array, GgufError> {
        let offset = self.pos;
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::TooDeep { offset });
        }
        let ty = self.value_type()?;
        let count = self.count("array length", ty.min_encoded_len())?;
        Ok(match ty {
            ValueType::U8 => Array::U8(self.take(count as u64, "array")?.to_vec()),
            ValueType::I8 => read_array!(self, count, I8, i8),
            ValueType::U16 => read_array!(self, count, U16, u16),
            ValueType::I16 => read_array!(self, count, I16, i16),
            ValueType::U32 => read_array!(self, count, U32, u32),
            ValueType::I32 => read_array!(self, count, I32, i32),
            ValueType::F32 => read_array!(self, count, F32, f32),
            ValueType::U64 => read_array!(self, count, U64, u64),
            ValueType::I64 => read_array!(self, count, I64, i64),
            ValueType::F64 => read_array!(self, count, F64, f64),
            ValueType::Bool => {
                Array::Bool((0..count).map(|_| self.bool()).collect::<Result<_, _>>()?)
            }
            ValueType::String => Array::String(
                (0..count)
                    .map(|_| self.string("string"))
                    .collect::<Result<_, _>>()?,
            ),
            ValueType::Array => Array::Array(
                (0..count)
                    .map(|_| self.array(depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    fn parse(bytes: &'a [u8]) -> Result<Parsed, GgufError> {
        let mut p = Parser { bytes, pos: 0 };
        let magic = p.take(4, "magic")?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic {
                found: bytes4(magic),
            });
        }
        let version = p.u32("version")?;
        if version != VERSION {
            return Err(GgufError::UnsupportedVersion { version });
        }
        let tensor_offset = p.pos;
        let tensor_count = p.u64("tensor count")?;
        let kv_count = p.count("metadata count", MIN_KV_LEN)?;
        // Checked now, before any metadata is parsed: neither count can be larger than the file.
        p.check_count(
            tensor_offset,
            "tensor count",
            tensor_count,
            MIN_TENSOR_INFO_LEN,
        )?;

        let mut metadata = Vec::with_capacity(kv_count);
        let mut keys = HashSet::with_capacity(kv_count);
        for _ in 0..kv_count {
            let offset = p.pos;
            let key = p.string("metadata key")?;
            let ty = p.value_type()?;
            let value = p.value(ty, 0)?;
            if !keys.insert(key.clone()) {
                return Err(GgufError::DuplicateKey { offset, key });
            }
            metadata.push(KeyValue { key, value, offset });
        }
        let alignment = alignment_of(&metadata)?;

        let tensor_count = p.check_count(
            tensor_offset,
            "tensor count",
            tensor_count,
            MIN_TENSOR_INFO_LEN,
        )?;
        let mut tensors = Vec::with_capacity(tensor_count);
        let mut names = HashSet::with_capacity(tensor_count);
        for _ in 0..tensor_count {
            let info = p.tensor_info()?;
            if !names.insert(info.name.clone()) {
                return Err(GgufError::DuplicateTensor {
                    offset: info.info_offset,
                    name: info.name,
                });
            }
            tensors.push(info);
        }
        // Past usize only on a 32-bit host with a file near 4 GiB; then no tensor can have data.
        let data_offset = p
            .pos
            .checked_next_multiple_of(alignment as usize)
            .unwrap_or(usize::MAX);
        check_tensor_data(&mut tensors, data_offset, alignment, bytes.len())?;
        Ok(Parsed {
            version,
            alignment,
            data_offset,
            metadata,
            tensors,
        })
    }

    /// One tensor info record; its data range is filled in by [`check_tensor_data`].
    fn tensor_info(&mut self) -> Result<TensorInfo, GgufError> {
        let offset = self.pos;
        let name = self.string("tensor name")?;
        let n_dims = self.u32("tensor dimension count")?;
        if n_dims as usize > MAX_DIMS {
            return Err(GgufError::TooManyDims {
                offset,
                name,
                n_dims,
            });
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for index in 0..n_dims as usize {
            let value = self.u64("tensor dimension")?;
            if value > i64::MAX as u64 {
                return Err(GgufError::BadDim {
                    offset,
                    name,
                    index,
                    value,
                });
            }
            ne.push(value);
        }
        let id = self.u32("tensor type")?;
        let Some(ggml_type) = GgmlType::from_id(id) else {
            return Err(GgufError::UnknownTensorType { offset, name, id });
        };
        let data_offset = self.u64("tensor data offset")?;
        let row = ne.first().copied().unwrap_or(1);
        if row % ggml_type.block_size() != 0 {
            return Err(GgufError::PartialBlock {
                offset,
                name,
                ggml_type,
                row,
            });
        }
        let n_elements = ne.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let Some((n_elements, n_bytes)) =
            n_elements.and_then(|n| Some((n, ggml_type.bytes_for(n)?)))
        else {
            return Err(GgufError::SizeOverflow { offset, name });
        };
        Ok(TensorInfo {
            name,
            ne,
            ggml_type,
            offset: data_offset,
            info_offset: offset,
            n_elements,
            n_bytes,
            data: 0..0,
        })
    }
}

/// `general.alignment`: absent means 32; present, it must be a u32 power of two.
fn alignment_of(metadata: &[KeyValue]) -> Result<u32, GgufError> {
    let Some(kv) = metadata.iter().find(|kv| kv.key == ALIGNMENT_KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match kv.value {
        Value::U32(value) if value.is_power_of_two() => Ok(value),
        Value::U32(value) => Err(GgufError::BadAlignment {
            offset: kv.offset,
            value,
        }),
        ref other => Err(GgufError::AlignmentType {
            offset: kv.offset,
            found: other.value_type(),
        }),
    }
}

/// Places every tensor's data in the file: aligned, inside the file, no two overlapping.
fn check_tensor_data(
    tensors: &mut [TensorInfo],
    data_offset: usize,
    alignment: u32,
    file_len: usize,
) -> Result<(), GgufError> {
    for t in tensors.iter_mut() {
        if t.offset % u64::from(alignment) != 0 {
            return Err(GgufError::MisalignedTensor {
                offset: t.info_offset,
                name: t.name.clone(),
                data_offset: t.offset,
                alignment,
            });
        }
        let start = (data_offset as u64).checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len as u64 => {
                // Both fit in usize: they are at most file_len.
                t.data = start as usize..end as usize;
            }
            _ => {
                return Err(GgufError::TensorPastEnd {
                    offset: t.info_offset,
                    name: t.name.clone(),
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    file_len,
                })
            }
        }
    }
    let mut by_start: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    by_start.sort_by_key(|t| (t.data.start, t.data.end));
    for pair in by_start.windows(2) {
        let (first, second) = (pair[0], pair[1]);
        if second.data.start < first.data.end {
            return Err(GgufError::OverlappingTensors {
                first: first.name.clone(),
                first_start: first.data.start,
                first_end: first.data.end,
                second: second.name.clone(),
                second_start: second.data.start,
            });
        }
    }
    Ok(())
}

fn bytes2(b: &[u8]) -> [u8; 2] {
    [b[0], b[1]]
}

fn bytes4(b: &[u8]) -> [u8; 4] {
    [b[0], b[1], b[2], b[3]]
}

fn bytes8(b: &[u8]) -> [u8; 8] {
    [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ternary::{read_ternary, ternary_pairs};
    use crate::testutil::{sample_file, sample_tensors, Raw};
    use proptest::prelude::*;

    fn parse(bytes: &[u8]) -> Result<Gguf<&[u8]>, GgufError> {
        Gguf::parse(bytes)
    }

    fn err(bytes: &[u8]) -> GgufError {
        match parse(bytes) {
            Ok(_) => panic!("a malformed file parsed"),
            Err(e) => e,
        }
    }

    /// Touches everything a parsed file hands out, as a tool would.
    fn exercise<B: AsRef<[u8]>>(file: &Gguf<B>) {
        for kv in file.metadata() {
            assert!(kv.offset < file.file_len());
            let _ = format!("{:?}", kv.value);
        }
        for t in file.tensors() {
            assert_eq!(t.data.len() as u64, t.info.n_bytes());
            let _ = t.f32_values();
        }
        for pair in ternary_pairs(file) {
            let (rows, cols) = (pair.rows as usize, pair.max_cols() as usize);
            let _ = read_ternary(file, pair.name(), rows, cols);
        }
    }

    #[test]
    fn sample_file_parses_with_every_tensor_in_place() {
        let bytes = sample_file();
        let file = parse(&bytes).unwrap();
        assert_eq!((file.version(), file.alignment()), (3, 32));
        assert_eq!(file.data_offset() % 32, 0);
        let expected = sample_tensors();
        assert_eq!(file.tensor_infos().len(), expected.len());
        for (t, (name, ty, shape)) in file.tensors().zip(expected) {
            assert_eq!((t.info.name(), t.info.ggml_type()), (name, ty));
            assert_eq!(t.info.shape(), shape);
            let ne: Vec<u64> = shape.iter().rev().copied().collect();
            assert_eq!(t.info.ne(), ne);
            assert_eq!(t.info.offset() % 32, 0);
        }
        let last = file.tensor_infos().last().unwrap();
        assert_eq!(
            last.file_range().end,
            bytes.len(),
            "the sample ends with tensor data"
        );
        exercise(&file);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample_file();
        for len in 0..bytes.len() {
            assert!(
                parse(&bytes[..len]).is_err(),
                "prefix of {len} bytes parsed"
            );
        }
        assert!(parse(&bytes).is_ok());
        assert!(matches!(err(&[]), GgufError::Truncated { offset: 0, .. }));
        assert!(matches!(
            err(b"GGUF\x03\0"),
            GgufError::Truncated { offset: 4, .. }
        ));
    }

    #[test]
    fn trailing_padding_after_the_last_tensor_is_optional() {
        let full = Raw::header(1, 0).tensor("t", &[3], 0, 0).pad(32).zeros(32);
        let data_end = full.0.len() - 32 + 12;
        for len in data_end..=full.0.len() {
            let file = parse(&full.0[..len]).unwrap();
            assert_eq!(file.tensor("t").unwrap().data.len(), 12);
        }
        assert!(matches!(
            err(&full.0[..data_end - 1]),
            GgufError::TensorPastEnd { .. }
        ));
    }

    #[test]
    fn wrong_magic_and_version() {
        let mut bytes = sample_file();
        bytes[3] = b'G';
        assert!(matches!(err(&bytes), GgufError::BadMagic { found } if &found == b"GGUG"));
        for version in [0u32, 1, 2, 4, 3u32.swap_bytes()] {
            let raw = Raw::default().bytes(b"GGUF").u32(version).u64(0).u64(0);
            let e = err(&raw.0);
            assert!(matches!(e, GgufError::UnsupportedVersion { version: v } if v == version));
            assert!(e.to_string().contains("at byte 4"), "{e}");
        }
        let e = err(&Raw::default().bytes(b"GGUF").u32(3 << 24).0);
        assert!(e.to_string().contains("big-endian"), "{e}");
    }

    #[test]
    fn absurd_counts_fail_before_allocating() {
        let e = err(&Raw::header(1 << 60, 0).0);
        assert!(matches!(
            e,
            GgufError::CountTooLarge {
                what: "tensor count",
                offset: 8,
                ..
            }
        ));
        assert!(e.to_string().contains("1152921504606846976"), "{e}");
        // The tensor count is checked before the metadata is parsed.
        let e = err(&Raw::header(1 << 60, 1).kv_u32("a", 1).0);
        assert!(matches!(
            e,
            GgufError::CountTooLarge {
                what: "tensor count",
                ..
            }
        ));
        let e = err(&Raw::header(0, 1 << 60).0);
        assert!(matches!(
            e,
            GgufError::CountTooLarge {
                what: "metadata count",
                offset: 16,
                ..
            }
        ));
        let e = err(&Raw::header(0, u64::MAX).0);
        assert!(matches!(e, GgufError::CountTooLarge { .. }));
        // A key whose length runs past the end.
        let e = err(&Raw::header(0, 1).u64(1 << 60).bytes(b"abc").u32(4).u32(0).0);
        assert!(
            matches!(e, GgufError::Truncated { offset: 32, what: "metadata key", needed, .. } if needed == 1 << 60)
        );
        // A string value whose length runs past the end.
        let e = err(&Raw::header(0, 1)
            .string("k")
            .u32(8)
            .u64(1 << 60)
            .bytes(b"x")
            .0);
        assert!(matches!(e, GgufError::Truncated { what: "string", .. }));
        // Arrays of 2^60 elements, of plain values and of strings.
        for element in [0u32, 8, 9] {
            let raw = Raw::header(0, 1)
                .string("k")
                .u32(9)
                .u32(element)
                .u64(1 << 60);
            let e = err(&raw.zeros(64).0);
            assert!(
                matches!(
                    e,
                    GgufError::CountTooLarge {
                        what: "array length",
                        ..
                    }
                ),
                "{e}"
            );
        }
        // A tensor name past the end.
        let e = err(&Raw::header(1, 0).u64(u64::MAX).zeros(40).0);
        assert!(
            matches!(
                e,
                GgufError::Truncated {
                    what: "tensor name",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_values_are_errors_naming_the_offset() {
        let unknown = err(&Raw::header(0, 1).string("k").u32(13).u32(0).0);
        assert!(matches!(
            unknown,
            GgufError::UnknownValueType { offset: 33, id: 13 }
        ));
        let bad_bool = err(&Raw::header(0, 1).string("k").u32(7).bytes(&[2]).0);
        assert!(matches!(
            bad_bool,
            GgufError::BadBool {
                offset: 37,
                value: 2
            }
        ));
        let bad_utf8 = err(&Raw::header(0, 1)
            .u64(2)
            .bytes(&[0xff, 0xfe])
            .u32(4)
            .u32(0)
            .0);
        assert!(matches!(
            bad_utf8,
            GgufError::BadUtf8 {
                offset: 32,
                what: "metadata key"
            }
        ));
        let dup = err(&Raw::header(0, 2).kv_u32("k", 1).kv_u32("k", 2).0);
        assert!(matches!(dup, GgufError::DuplicateKey { offset: 41, .. }));
        let mut deep = Raw::header(0, 1).string("k").u32(9);
        for _ in 0..MAX_ARRAY_DEPTH + 1 {
            deep = deep.u32(9).u64(1);
        }
        let deep = err(&deep.u32(4).u64(0).0);
        assert!(matches!(deep, GgufError::TooDeep { .. }), "{deep}");
        for (alignment, expected_offset) in [(0u32, 24usize), (48, 24)] {
            let e = err(&Raw::header(0, 1).kv_u32(ALIGNMENT_KEY, alignment).0);
            assert!(
                matches!(e, GgufError::BadAlignment { offset, value } if offset == expected_offset && value == alignment)
            );
        }
        let wide = Raw::header(0, 1).string(ALIGNMENT_KEY).u32(10).u64(32);
        assert!(matches!(
            err(&wide.0),
            GgufError::AlignmentType {
                found: ValueType::U64,
                ..
            }
        ));
    }

    #[test]
    fn bad_tensor_infos_are_errors() {
        let tensor = |ne: &[u64], type_id: u32| Raw::header(1, 0).tensor("t", ne, type_id, 0);
        for id in [4u32, 5, 31, 36, 42, 99, u32::MAX] {
            let e = err(&tensor(&[4], id).pad(32).zeros(64).0);
            assert!(matches!(e, GgufError::UnknownTensorType { offset: 24, id: i, .. } if i == id));
        }
        let e = err(&tensor(&[1, 1, 1, 1, 1], 0).0);
        assert!(matches!(e, GgufError::TooManyDims { n_dims: 5, .. }));
        let e = err(&tensor(&[1 << 63], 0).0);
        assert!(matches!(e, GgufError::BadDim { index: 0, .. }));
        let e = err(&tensor(&[16], GgmlType::Q8_0.id()).0);
        assert!(matches!(e, GgufError::PartialBlock { row: 16, .. }));
        let e = err(&tensor(&[1 << 40, 1 << 40], 0).0);
        assert!(matches!(e, GgufError::SizeOverflow { .. }));
        let e = err(&tensor(&[1 << 62], 0).0);
        assert!(matches!(e, GgufError::SizeOverflow { .. }), "{e}");
        let dup = Raw::header(2, 0)
            .tensor("t", &[4], 0, 0)
            .tensor("t", &[4], 0, 32);
        assert!(matches!(
            err(&dup.pad(32).zeros(64).0),
            GgufError::DuplicateTensor { .. }
        ));
    }

    #[test]
    fn misaligned_overlapping_and_out_of_file_tensors_are_errors() {
        let misaligned = Raw::header(1, 0).tensor("t", &[4], 0, 4).pad(32).zeros(64);
        let e = err(&misaligned.0);
        assert!(matches!(
            e,
            GgufError::MisalignedTensor {
                data_offset: 4,
                alignment: 32,
                ..
            }
        ));
        // With alignment 4 the same offset is fine.
        let aligned = Raw::header(1, 1)
            .kv_u32(ALIGNMENT_KEY, 4)
            .tensor("t", &[4], 0, 4)
            .pad(4)
            .zeros(20);
        assert_eq!(parse(&aligned.0).unwrap().alignment(), 4);

        let overlapping = Raw::header(2, 0)
            .tensor("a", &[16], 0, 0)
            .tensor("b", &[8], 0, 32)
            .pad(32)
            .zeros(64);
        let e = err(&overlapping.0);
        assert!(
            matches!(e, GgufError::OverlappingTensors { ref first, ref second, .. } if first == "a" && second == "b")
        );
        let same_start = Raw::header(2, 0)
            .tensor("a", &[8], 0, 0)
            .tensor("b", &[8], 0, 0)
            .pad(32)
            .zeros(64);
        assert!(matches!(
            err(&same_start.0),
            GgufError::OverlappingTensors { .. }
        ));

        let past_end = Raw::header(1, 0).tensor("t", &[16], 0, 0).pad(32).zeros(63);
        let e = err(&past_end.0);
        assert!(matches!(
            e,
            GgufError::TensorPastEnd {
                start: 64,
                end: 128,
                file_len: 127,
                ..
            }
        ));
        let far = Raw::header(1, 0)
            .tensor("t", &[8], 0, u64::MAX - 31)
            .pad(32);
        assert!(matches!(err(&far.0), GgufError::TensorPastEnd { .. }));
    }

    #[test]
    fn error_messages_name_the_problem_and_the_byte() {
        let e = err(&Raw::header(1, 0)
            .tensor("blk.0.x", &[4], 0, 4)
            .pad(32)
            .zeros(64)
            .0);
        assert_eq!(
            e.to_string(),
            "tensor \"blk.0.x\" (info at byte 24): data offset 4 is not a multiple of the alignment 32"
        );
        let e = err(b"PK\x03\x04rest");
        assert_eq!(
            e.to_string(),
            "not a GGUF file: the first 4 bytes are [50, 4b, 03, 04], expected \"GGUF\" (47 47 55 46)"
        );
    }

    #[test]
    fn open_maps_a_file_and_reports_a_missing_one() {
        let dir = crate::testutil::scratch_dir();
        let path = dir.path().join("f.gguf");
        std::fs::write(&path, sample_file()).unwrap();
        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.tensor_infos().len(), sample_tensors().len());
        let empty = dir.path().join("empty.gguf");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            GgufFile::open(&empty),
            Err(GgufError::Truncated { .. })
        ));
        assert!(matches!(
            GgufFile::open(dir.path().join("missing")),
            Err(GgufError::Io(_))
        ));
        let folder = GgufFile::open(dir.path()).unwrap_err();
        assert_eq!(folder.to_string(), "cannot read the file: it is a folder");
    }

    /// This process's resident file-backed memory in kB (RssFile), on Linux.
    fn resident_file_kb() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("RssFile:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    #[test]
    fn released_pages_leave_memory_and_read_back_the_same() {
        let dir = crate::testutil::scratch_dir();
        let path = dir.path().join("big.gguf");
        let mut layout = crate::Layout::new();
        layout
            .add_tensor("big", GgmlType::F32, &[16 << 20])
            .unwrap();
        let data = crate::testutil::tensor_bytes(64 << 20, 7);
        let mut writer = crate::GgufWriter::create(&path, &layout).unwrap();
        writer.write_tensor("big", &data).unwrap();
        writer.finish().unwrap();

        let file = GgufFile::open(&path).unwrap();
        let tensor = file.tensor("big").unwrap();
        let Some(before) = resident_file_kb() else {
            return; // no /proc: nothing to measure
        };
        assert_eq!(tensor.data, &data[..], "read through the map");
        let mapped = resident_file_kb().unwrap();
        file.release(tensor.data);
        let released = resident_file_kb().unwrap();
        assert!(
            mapped >= before + 60_000 && released + 60_000 <= mapped,
            "RssFile: {before} kB, {mapped} kB read, {released} kB released"
        );
        assert_eq!(tensor.data, &data[..], "read again after the release");
        // A slice that is not the file's is left alone.
        file.release(&data);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Random byte changes never panic; whatever still parses can be used in full.
        #[test]
        fn mutations_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut bytes = sample_file_cached().to_vec();
            for (index, byte) in edits {
                let i = index.index(bytes.len());
                bytes[i] = byte;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            if let Ok(file) = parse(&bytes) {
                exercise(&file);
            }
        }

        /// Mutations aimed at the header, which holds every count, length and offset.
        #[test]
        fn header_mutations_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let mut bytes = sample_file_cached().to_vec();
            let header_len = parse(&bytes).map_or(bytes.len(), |f| f.data_offset());
            for (index, byte) in edits {
                bytes[index.index(header_len)] = byte;
            }
            if let Ok(file) = parse(&bytes) {
                exercise(&file);
            }
        }
    }

    fn sample_file_cached() -> &'static [u8] {
        static SAMPLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        SAMPLE.get_or_init(sample_file)
    }
}
