//! The writer: a [`Layout`] says what the file holds (metadata, then each tensor's name, type and
//! shape, in order); [`GgufWriter`] writes the header at once, then takes each tensor's data in that
//! order as the caller produces it, so a model is never held twice in memory.
//!
//! Output goes to a temporary file in the destination's folder, renamed into place by
//! [`GgufWriter::finish`]: an error, or a writer dropped before `finish`, leaves no file behind.
//! Every tensor's data is padded to the alignment, the last one too, as ggml and the Python package
//! write it, and `general.alignment` is always stored (u32, 32 unless the layout sets it).
//!
//! Shapes given to [`Layout::add_tensor`] are outermost first (`[rows, cols]`); the file stores them
//! reversed (`ne[0]` = cols), as GGUF does.

use crate::error::WriteError;
use crate::types::GgmlType;
use crate::value::{Array, Value, MAX_ARRAY_DEPTH};
use crate::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, VERSION};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A tensor the layout declares.
#[derive(Debug, Clone, PartialEq)]
struct PlannedTensor {
    name: String,
    ggml_type: GgmlType,
    /// Outermost first.
    shape: Vec<u64>,
    n_bytes: u64,
}

/// What a file will hold: metadata pairs and tensor declarations, each in insertion order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Layout {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PlannedTensor>,
}

impl Layout {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets metadata `key` (replacing its value, keeping its place, if it is already set).
    /// `general.alignment` must be a u32 power of two: it is the alignment the writer uses.
    pub fn set(
        &mut self,
        key: impl Into<String>,
        value: impl Into<Value>,
    ) -> Result<&mut Self, WriteError> {
        let (key, value) = (key.into(), value.into());
        if key == ALIGNMENT_KEY && !matches!(value, Value::U32(a) if a.is_power_of_two()) {
            return Err(WriteError::BadAlignment(value));
        }
        if value.depth() > MAX_ARRAY_DEPTH {
            return Err(WriteError::TooDeep { key });
        }
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some((_, slot)) => *slot = value,
            None => self.metadata.push((key, value)),
        }
        Ok(self)
    }

    /// The metadata pairs, in order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Alignment of tensor data: `general.alignment` if set, else 32.
    pub fn alignment(&self) -> u32 {
        match self.metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            Some((_, Value::U32(a))) => *a,
            _ => DEFAULT_ALIGNMENT,
        }
    }

    /// Declares a tensor of `shape` (outermost first, at most 4 dimensions; the innermost one a
    /// multiple of the type's block size).
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ggml_type: GgmlType,
        shape: &[u64],
    ) -> Result<&mut Self, WriteError> {
        let name = name.into();
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(WriteError::DuplicateTensor(name));
        }
        if shape.len() > MAX_DIMS {
            return Err(WriteError::TooManyDims {
                name,
                n_dims: shape.len(),
            });
        }
        if let Some(&value) = shape.iter().find(|&&d| d > i64::MAX as u64) {
            return Err(WriteError::BadDim { name, value });
        }
        let row = shape.last().copied().unwrap_or(1);
        if row % ggml_type.block_size() != 0 {
            return Err(WriteError::PartialBlock {
                name,
                ggml_type,
                row,
            });
        }
        let n_bytes = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|n| ggml_type.bytes_for(n));
        let Some(n_bytes) = n_bytes else {
            return Err(WriteError::SizeOverflow { name });
        };
        self.tensors.push(PlannedTensor {
            name,
            ggml_type,
            shape: shape.to_vec(),
            n_bytes,
        });
        Ok(self)
    }

    /// The header bytes: magic through the tensor infos, without the padding after them.
    fn header(&self) -> Result<Vec<u8>, String> {
        let alignment = u64::from(self.alignment());
        let has_alignment = self.metadata.iter().any(|(k, _)| k == ALIGNMENT_KEY);
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        let kv_count = self.metadata.len() + usize::from(!has_alignment);
        out.extend_from_slice(&(kv_count as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut out, key);
            out.extend_from_slice(&value.value_type().id().to_le_bytes());
            put_value(&mut out, value);
        }
        if !has_alignment {
            put_string(&mut out, ALIGNMENT_KEY);
            let value = Value::U32(DEFAULT_ALIGNMENT);
            out.extend_from_slice(&value.value_type().id().to_le_bytes());
            put_value(&mut out, &value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_string(&mut out, &t.name);
            out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in t.shape.iter().rev() {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset = offset
                .checked_add(t.n_bytes)
                .and_then(|end| end.checked_next_multiple_of(alignment))
                .ok_or_else(|| t.name.clone())?;
        }
        Ok(out)
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(v) => put_string(out, v),
        Value::Array(v) => put_array(out, v),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}

fn put_array(out: &mut Vec<u8>, array: &Array) {
    out.extend_from_slice(&array.element_type().id().to_le_bytes());
    out.extend_from_slice(&(array.len() as u64).to_le_bytes());
    macro_rules! numbers {
        ($v:expr) => {
            $v.iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes()))
        };
    }
    match array {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => numbers!(v),
        Array::U16(v) => numbers!(v),
        Array::I16(v) => numbers!(v),
        Array::U32(v) => numbers!(v),
        Array::I32(v) => numbers!(v),
        Array::F32(v) => numbers!(v),
        Array::Bool(v) => v.iter().for_each(|&b| out.push(u8::from(b))),
        Array::String(v) => v.iter().for_each(|s| put_string(out, s)),
        Array::Array(v) => v.iter().for_each(|a| put_array(out, a)),
        Array::U64(v) => numbers!(v),
        Array::I64(v) => numbers!(v),
        Array::F64(v) => numbers!(v),
    }
}

/// Writes one GGUF file: the header at [`GgufWriter::create`], then every declared tensor's data in
/// declaration order, then [`GgufWriter::finish`] renames the file into place.
pub struct GgufWriter {
    path: PathBuf,
    out: std::io::BufWriter<tempfile::NamedTempFile>,
    tensors: Vec<PlannedTensor>,
    next: usize,
    alignment: u64,
    written: u64,
}

impl std::fmt::Debug for GgufWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("path", &self.path)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

/// A temporary file beside `path` (same folder, so the final rename is atomic).
fn temp_file_beside(path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let stem = path
        .file_name()
        .map_or("gguf".into(), |n| n.to_string_lossy());
    let prefix = format!(".{stem}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // The mode of an ordinary new file (the umask still applies), not the private 0600.
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    builder.tempfile_in(folder)
}

impl GgufWriter {
    /// Starts `path`: writes the header of `layout` to a temporary file beside it.
    pub fn create(path: impl AsRef<Path>, layout: &Layout) -> Result<Self, WriteError> {
        let path = path.as_ref().to_path_buf();
        let header = layout
            .header()
            .map_err(|name| WriteError::SizeOverflow { name })?;
        let io = |source| WriteError::Io {
            path: path.clone(),
            source,
        };
        let file = temp_file_beside(&path).map_err(io)?;
        let mut writer = Self {
            out: std::io::BufWriter::with_capacity(1 << 20, file),
            path: path.clone(),
            tensors: layout.tensors.clone(),
            next: 0,
            alignment: u64::from(layout.alignment()),
            written: 0,
        };
        writer.put(&header)?;
        writer.pad()?;
        Ok(writer)
    }

    fn io_error(&self, source: std::io::Error) -> WriteError {
        WriteError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        self.out.write_all(bytes).map_err(|e| self.io_error(e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Zeros up to the next multiple of the alignment.
    fn pad(&mut self) -> Result<(), WriteError> {
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut padding = self.written.next_multiple_of(self.alignment) - self.written;
        while padding > 0 {
            let n = padding.min(ZEROS.len() as u64);
            self.put(&ZEROS[..n as usize])?;
            padding -= n;
        }
        Ok(())
    }

    /// The next declared tensor, which must be `name`.
    fn expect_next(&self, name: &str) -> Result<&PlannedTensor, WriteError> {
        match self.tensors.get(self.next) {
            Some(t) if t.name == name => Ok(t),
            other => Err(WriteError::OutOfOrder {
                expected: other.map(|t| t.name.clone()),
                got: name.to_string(),
            }),
        }
    }

    /// Writes the data of tensor `name` (the next declared one), exactly its size in bytes, as the
    /// file stores it (little-endian).
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<(), WriteError> {
        let expected = self.expect_next(name)?.n_bytes;
        if data.len() as u64 != expected {
            return Err(WriteError::WrongLength {
                name: name.to_string(),
                expected,
                actual: data.len() as u64,
            });
        }
        self.put(data)?;
        self.pad()?;
        self.next += 1;
        Ok(())
    }

    /// Writes F32 tensor `name` (the next declared one) from f32 values.
    pub fn write_f32(&mut self, name: &str, values: &[f32]) -> Result<(), WriteError> {
        let planned = self.expect_next(name)?;
        if planned.ggml_type != GgmlType::F32 {
            return Err(WriteError::WrongKind {
                name: name.to_string(),
                ggml_type: planned.ggml_type,
                shape: planned.shape.clone(),
                given: "f32 values".to_string(),
            });
        }
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.write_tensor(name, &bytes)
    }

    /// The declaration of the next tensor to write: name, type and shape (outermost first).
    pub(crate) fn next_tensor(&self) -> Option<(&str, GgmlType, &[u64])> {
        self.tensors
            .get(self.next)
            .map(|t| (t.name.as_str(), t.ggml_type, t.shape.as_slice()))
    }

    /// Checks that every declared tensor was written, flushes to disk and renames the file into
    /// place.
    pub fn finish(mut self) -> Result<(), WriteError> {
        if let Some(t) = self.tensors.get(self.next) {
            return Err(WriteError::Missing(t.name.clone()));
        }
        self.out.flush().map_err(|e| self.io_error(e))?;
        let Self { out, path, .. } = self;
        let file = out.into_inner().map_err(|e| WriteError::Io {
            path: path.clone(),
            source: e.into_error(),
        })?;
        file.as_file().sync_all().map_err(|source| WriteError::Io {
            path: path.clone(),
            source,
        })?;
        file.persist(&path).map_err(|e| WriteError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::Gguf;
    use crate::testutil::{every_value, sample_file, sample_tensors, scratch_dir, tensor_bytes};

    #[test]
    fn round_trip_keeps_every_value_and_every_tensor_byte() {
        let bytes = sample_file();
        let file = Gguf::parse(bytes.as_slice()).unwrap();
        let expected = every_value();
        assert_eq!(file.metadata().len(), expected.len());
        for (kv, (key, value)) in file.metadata().iter().zip(&expected) {
            assert_eq!(kv.key, *key);
            assert_eq!(kv.value, *value, "{key}");
        }
        for (i, (t, (name, ty, shape))) in file.tensors().zip(sample_tensors()).enumerate() {
            assert_eq!((t.info.name(), t.info.ggml_type()), (name, ty));
            let n = ty.bytes_for(shape.iter().product()).unwrap() as usize;
            if name.ends_with(".scale") {
                assert_eq!(t.f32_values().unwrap().as_ref(), [0.5, 1.0, 2.0]);
            } else {
                assert_eq!(t.data, tensor_bytes(n, i as u64), "{name}");
            }
        }
    }

    #[test]
    fn alignment_is_always_stored_and_honoured() {
        let dir = scratch_dir();
        for alignment in [None, Some(1u32), Some(8), Some(64), Some(4096)] {
            let mut layout = Layout::new();
            layout.set("general.name", "a").unwrap();
            if let Some(a) = alignment {
                layout.set(ALIGNMENT_KEY, a).unwrap();
            }
            layout.add_tensor("a", GgmlType::I8, &[3]).unwrap();
            layout.add_tensor("b", GgmlType::F32, &[2, 2]).unwrap();
            let path = dir.path().join("aligned.gguf");
            let mut writer = GgufWriter::create(&path, &layout).unwrap();
            writer.write_tensor("a", &[1, 2, 3]).unwrap();
            writer.write_f32("b", &[1.0, 2.0, 3.0, 4.0]).unwrap();
            writer.finish().unwrap();
            let file = crate::GgufFile::open(&path).unwrap();
            let a = alignment.unwrap_or(DEFAULT_ALIGNMENT);
            assert_eq!(file.alignment(), a);
            assert_eq!(file.get(ALIGNMENT_KEY), Some(&Value::U32(a)));
            assert_eq!(file.data_offset() % a as usize, 0);
            assert_eq!(
                file.file_len() % a as usize,
                0,
                "the last tensor is padded too"
            );
            assert_eq!(file.tensor("a").unwrap().data, [1, 2, 3]);
            let b = file.tensor("b").unwrap();
            assert_eq!(b.f32_values().unwrap().as_ref(), [1.0, 2.0, 3.0, 4.0]);
            assert_eq!(b.info.ne(), [2, 2]);
        }
    }

    #[test]
    fn setting_a_key_again_replaces_it_in_place() {
        let mut layout = Layout::new();
        layout.set("a", 1u32).unwrap().set("b", 2u32).unwrap();
        layout.set("a", "x").unwrap();
        let keys: Vec<_> = layout.metadata().map(|(k, v)| (k, v.clone())).collect();
        assert_eq!(keys, [("a", Value::from("x")), ("b", Value::U32(2))]);
    }

    #[test]
    fn impossible_layouts_are_refused() {
        let mut layout = Layout::new();
        for bad in [Value::U32(0), Value::U32(48), Value::U64(32)] {
            assert!(matches!(
                layout.set(ALIGNMENT_KEY, bad),
                Err(WriteError::BadAlignment(_))
            ));
        }
        let mut deep = Array::from(vec![1u8]);
        for _ in 0..MAX_ARRAY_DEPTH {
            deep = Array::from(vec![deep]);
        }
        assert!(matches!(
            layout.set("deep", deep),
            Err(WriteError::TooDeep { .. })
        ));
        layout.add_tensor("t", GgmlType::F32, &[1]).unwrap();
        let add = |layout: &mut Layout, name: &str, ty, shape: &[u64]| {
            layout.add_tensor(name, ty, shape).map(|_| ()).unwrap_err()
        };
        assert!(matches!(
            add(&mut layout, "t", GgmlType::F32, &[1]),
            WriteError::DuplicateTensor(_)
        ));
        assert!(matches!(
            add(&mut layout, "u", GgmlType::F32, &[1, 1, 1, 1, 1]),
            WriteError::TooManyDims { n_dims: 5, .. }
        ));
        assert!(matches!(
            add(&mut layout, "u", GgmlType::Q8_0, &[2, 16]),
            WriteError::PartialBlock { row: 16, .. }
        ));
        assert!(matches!(
            add(&mut layout, "u", GgmlType::F32, &[1 << 62, 4]),
            WriteError::SizeOverflow { .. }
        ));
        assert!(matches!(
            add(&mut layout, "u", GgmlType::F32, &[1 << 63]),
            WriteError::BadDim { .. }
        ));
    }

    #[test]
    fn writing_out_of_plan_is_an_error_and_leaves_no_file() {
        let dir = scratch_dir();
        let path = dir.path().join("out.gguf");
        let mut layout = Layout::new();
        layout.add_tensor("a", GgmlType::F32, &[2]).unwrap();
        layout.add_tensor("b", GgmlType::I8, &[2]).unwrap();

        let mut writer = GgufWriter::create(&path, &layout).unwrap();
        assert!(matches!(
            writer.write_tensor("b", &[0; 2]),
            Err(WriteError::OutOfOrder { expected: Some(ref e), .. }) if e == "a"
        ));
        assert!(matches!(
            writer.write_tensor("a", &[0; 7]),
            Err(WriteError::WrongLength {
                expected: 8,
                actual: 7,
                ..
            })
        ));
        writer.write_f32("a", &[1.0, 2.0]).unwrap();
        assert!(matches!(
            writer.write_f32("b", &[1.0, 2.0]),
            Err(WriteError::WrongKind { .. })
        ));
        assert!(matches!(writer.finish(), Err(WriteError::Missing(ref n)) if n == "b"));
        assert!(!path.exists());

        let mut writer = GgufWriter::create(&path, &layout).unwrap();
        writer.write_f32("a", &[1.0, 2.0]).unwrap();
        writer.write_tensor("b", &[1, 2]).unwrap();
        let e = writer.write_tensor("c", &[]).unwrap_err();
        assert!(e.to_string().contains("none (all are written)"), "{e}");
        drop(writer);
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no temp file left"
        );
    }

    #[test]
    fn finishing_replaces_an_existing_file_and_a_bad_folder_is_an_io_error() {
        let dir = scratch_dir();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, b"old").unwrap();
        GgufWriter::create(&path, &Layout::new())
            .unwrap()
            .finish()
            .unwrap();
        let file = crate::GgufFile::open(&path).unwrap();
        assert_eq!(file.metadata().len(), 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let e =
            GgufWriter::create(dir.path().join("no/such/dir/m.gguf"), &Layout::new()).unwrap_err();
        assert!(matches!(e, WriteError::Io { .. }));
        assert!(e.to_string().contains("no/such/dir/m.gguf"), "{e}");
    }
}
