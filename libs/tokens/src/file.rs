//! Token files in the llm.c convention: a header of 256 little-endian `i32` (`[0]` = 20240520, the
//! magic; `[1]` = 1, tokens are `u16`; `[2]` = the token count; the rest 0), then the tokens as
//! little-endian `u16`. [`TokenFile`] memory-maps one and checks every header field against the
//! file; [`TokenFileWriter`] streams one into a temporary file beside its destination and renames it
//! into place at [`TokenFileWriter::finish`], so a reader never sees a partial file.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

// The tokens are used in place, as the file's little-endian u16: only little-endian targets.
#[cfg(not(target_endian = "little"))]
compile_error!(
    "token files are read in place as little-endian u16: big-endian targets are unsupported"
);

/// `header[0]`: marks an llm.c token file.
pub const MAGIC: i32 = 20240520;
/// `header[1]`: the version that stores tokens as `u16` (the only one).
pub const VERSION_U16: i32 = 1;
/// Number of `i32` in the header.
pub const HEADER_INTS: usize = 256;
/// Bytes of the header (256 × 4).
pub const HEADER_BYTES: usize = HEADER_INTS * 4;
/// Largest token count the header can record (`header[2]` is an `i32`).
pub const MAX_TOKENS: u64 = i32::MAX as u64;

/// Why a token file could not be read or written. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a token file: {len} bytes, shorter than the {HEADER_BYTES}-byte header")]
    TooShort { path: PathBuf, len: u64 },
    #[error("{path}: not a token file: header[0] is {found}, expected the magic {MAGIC}")]
    BadMagic { path: PathBuf, found: i32 },
    #[error("{path}: unsupported token file version: header[1] is {found}, expected {VERSION_U16} (u16 tokens)")]
    BadVersion { path: PathBuf, found: i32 },
    #[error("{path}: corrupt token file: header[2] (token count) is negative ({found})")]
    NegativeCount { path: PathBuf, found: i32 },
    #[error("{path}: corrupt token file: the header says {count} tokens ({expected} bytes in all), the file has {len} bytes")]
    LengthMismatch {
        path: PathBuf,
        count: u64,
        expected: u64,
        len: u64,
    },
    #[error("{path}: more than {MAX_TOKENS} tokens do not fit the header's i32 count")]
    TooManyTokens { path: PathBuf },
}

/// A memory-mapped, checked token file. The tokens are borrowed from the mapping, never copied.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    map: memmap2::Mmap,
    count: usize,
}

impl TokenFile {
    /// Maps `path` and checks the magic, the version, the count and that the file is exactly the
    /// header plus `count` tokens long.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, TokenFileError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| TokenFileError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if meta.is_dir() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "is a folder, not a token file",
            )));
        }
        let len = meta.len();
        if len < HEADER_BYTES as u64 {
            return Err(TokenFileError::TooShort { path, len });
        }
        // SAFETY: the mapping is read-only and private to this value. Token files are written
        // atomically (temp file + rename) by this project, so no writer changes the mapped file
        // in place; a file truncated by someone else underneath us is outside what we guard.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let field =
            |i: usize| i32::from_le_bytes(map[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        let magic = field(0);
        if magic != MAGIC {
            return Err(TokenFileError::BadMagic { path, found: magic });
        }
        let version = field(1);
        if version != VERSION_U16 {
            return Err(TokenFileError::BadVersion {
                path,
                found: version,
            });
        }
        let count = field(2);
        if count < 0 {
            return Err(TokenFileError::NegativeCount { path, found: count });
        }
        let count = count as u64;
        let expected = HEADER_BYTES as u64 + 2 * count;
        if expected != map.len() as u64 {
            return Err(TokenFileError::LengthMismatch {
                path,
                count,
                expected,
                len: map.len() as u64,
            });
        }
        Ok(TokenFile {
            path,
            map,
            count: count as usize,
        })
    }

    /// The tokens, in place in the mapping.
    pub fn tokens(&self) -> &[u16] {
        // The mapping starts on a page boundary and the header is 1024 bytes, so the tokens are
        // 2-byte aligned; the length was checked at open.
        bytemuck::cast_slice(&self.map[HEADER_BYTES..HEADER_BYTES + 2 * self.count])
    }

    /// The 256 header fields as written in the file.
    pub fn header(&self) -> [i32; HEADER_INTS] {
        let mut header = [0i32; HEADER_INTS];
        for (i, h) in header.iter_mut().enumerate() {
            *h = i32::from_le_bytes(self.map[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        }
        header
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when the file holds no token.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The path this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A temporary file beside `path` (same folder, so the final rename is atomic), with the mode of an
/// ordinary new file.
fn temp_file_beside(path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or("tokens".into(), |n| n.to_string_lossy());
    let mut builder = tempfile::Builder::new();
    let prefix = format!(".{name}.");
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    builder.tempfile_in(folder)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, flushed to disk, then renamed
/// into place (for small outputs such as `tokenizer.json`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = temp_file_beside(path)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Streams a token file: tokens are appended to a temporary file beside the destination;
/// [`finish`](Self::finish) writes the header and renames the file into place. Dropped without
/// `finish`, the temporary file is removed and the destination is untouched.
#[derive(Debug)]
pub struct TokenFileWriter {
    path: PathBuf,
    out: BufWriter<tempfile::NamedTempFile>,
    count: u64,
}

impl TokenFileWriter {
    /// Starts a token file that will be `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, TokenFileError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| TokenFileError::Io {
            path: path.clone(),
            source,
        };
        let tmp = temp_file_beside(&path).map_err(io)?;
        let mut out = BufWriter::with_capacity(1 << 20, tmp);
        // A zero header for now (count and magic are written at finish).
        out.write_all(&[0u8; HEADER_BYTES]).map_err(io)?;
        Ok(TokenFileWriter {
            path,
            out,
            count: 0,
        })
    }

    /// Appends `tokens`.
    pub fn write(&mut self, tokens: &[u16]) -> Result<(), TokenFileError> {
        let count = self.count + tokens.len() as u64;
        if count > MAX_TOKENS {
            return Err(TokenFileError::TooManyTokens {
                path: self.path.clone(),
            });
        }
        self.out
            .write_all(bytemuck::cast_slice(tokens))
            .map_err(|source| TokenFileError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.count = count;
        Ok(())
    }

    /// Tokens written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The destination path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the header, flushes to disk and renames the file into place; returns the count.
    pub fn finish(self) -> Result<u64, TokenFileError> {
        let TokenFileWriter { path, out, count } = self;
        let io = |source| TokenFileError::Io {
            path: path.clone(),
            source,
        };
        let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
        let mut header = [0i32; HEADER_INTS];
        header[0] = MAGIC;
        header[1] = VERSION_U16;
        header[2] = i32::try_from(count).expect("count checked at write");
        let bytes: Vec<u8> = header.iter().flat_map(|h| h.to_le_bytes()).collect();
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.as_file().sync_all().map_err(io)?;
        file.persist(&path).map_err(|e| io(e.error))?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, chunks: &[&[u16]]) -> u64 {
        let mut w = TokenFileWriter::create(path).unwrap();
        for c in chunks {
            w.write(c).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn round_trip_with_llm_c_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.bin");
        let a: Vec<u16> = (0..1000).map(|i| (i * 37 % 65536) as u16).collect();
        assert_eq!(write(&path, &[&a, &[65535, 0], &[]]), 1002);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), HEADER_BYTES + 2 * 1002);
        assert_eq!(&bytes[0..4], &20240520i32.to_le_bytes());
        assert_eq!(&bytes[4..8], &1i32.to_le_bytes());
        assert_eq!(&bytes[8..12], &1002i32.to_le_bytes());
        assert!(bytes[12..HEADER_BYTES].iter().all(|&b| b == 0));
        assert_eq!(&bytes[HEADER_BYTES..HEADER_BYTES + 2], &a[0].to_le_bytes());
        let f = TokenFile::open(&path).unwrap();
        assert_eq!(f.len(), 1002);
        assert_eq!(&f.tokens()[..1000], &a[..]);
        assert_eq!(&f.tokens()[1000..], &[65535, 0]);
        assert_eq!(f.header()[..3], [MAGIC, VERSION_U16, 1002]);
        // Only the final file is left in the folder.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn empty_file_has_a_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("val.bin");
        assert_eq!(write(&path, &[]), 0);
        let f = TokenFile::open(&path).unwrap();
        assert!(f.is_empty());
        assert_eq!(f.tokens(), &[] as &[u16]);
    }

    #[test]
    fn write_atomic_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(write_atomic(&dir.path().join("no/such/dir/t.json"), b"x").is_err());
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.bin");
        let mut w = TokenFileWriter::create(&path).unwrap();
        w.write(&[1, 2, 3]).unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn every_header_field_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.bin");
        write(&path, &[&[5, 6, 7]]);
        let good = std::fs::read(&path).unwrap();
        let check = |bytes: &[u8], want: &str| {
            let p = dir.path().join("bad.bin");
            std::fs::write(&p, bytes).unwrap();
            let err = TokenFile::open(&p).unwrap_err().to_string();
            assert!(err.contains("bad.bin"), "{err}");
            assert!(err.contains(want), "{err:?} should say {want:?}");
        };
        check(&good[..100], "shorter than the 1024-byte header");
        let mut b = good.clone();
        b[0] ^= 1;
        check(&b, "expected the magic 20240520");
        let mut b = good.clone();
        b[4] = 2;
        check(&b, "header[1] is 2");
        let mut b = good.clone();
        b[8..12].copy_from_slice(&(-1i32).to_le_bytes());
        check(&b, "negative");
        check(&good[..good.len() - 1], "header says 3 tokens");
        let mut b = good.clone();
        b.extend_from_slice(&[0, 0]);
        check(&b, "the file has 1032 bytes");
        let err = TokenFile::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("folder"), "{err}");
        let err = TokenFile::open(dir.path().join("missing.bin"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.bin"), "{err}");
    }
}
