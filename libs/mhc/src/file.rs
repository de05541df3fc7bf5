//! `.mhc` files: all mHC parameters of a model, exactly as docs/formats.md (".mhc") defines
//! them.
//!
//! Owns the byte layout, its strict reader (every size checked before use, never a panic, never an
//! allocation sized by an unchecked count), the writer (temp file in the same folder, then rename)
//! and the whole-model checks built on [`crate::check`].
//!
//! Layout, all little-endian:
//! ```text
//!   offset  size  field
//!        0     4  magic      u32 = 0x6D484321 (MAGIC)
//!        4     4  version    u32 = 1          (VERSION)
//!        8     4  n_layers   u32 in 1..=4096  (MAX_LAYERS)
//!       12     4  n_streams  u32 = 2 or 4
//!       16     …  2·n_layers module records, in order: block 0 attention, block 0 FFN,
//!                 block 1 attention, …; each record is the module's flat parameters as f32
//!                 (Mhc2::to_flat: 9 values = 36 bytes; Mhc4::to_flat: 40 values = 160 bytes)
//! ```
//! The file ends right after the last record, so its length is exactly
//! `16 + 2·n_layers·record_size`. Every parameter must be finite.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::check::{composite_gain, StochasticError};
use crate::mixing::{Mixing, ResMatrix};
use crate::params::{Mhc2, Mhc4, MhcParams, NStreams};

/// First header field, "!CHm" as little-endian bytes.
pub const MAGIC: u32 = 0x6D48_4321;
/// The only format version.
pub const VERSION: u32 = 1;
/// Header size in bytes.
pub const HEADER_BYTES: usize = 16;
/// Largest n_layers a file may declare; anything above is treated as corrupt. Keeps the largest
/// valid file at about 1.3 MB.
pub const MAX_LAYERS: usize = 4096;
/// mHC modules per transformer block (attention, FFN).
pub const MODULES_PER_LAYER: usize = 2;

/// The largest valid file: `MAX_LAYERS` layers of N = 4 records.
const MAX_FILE_BYTES: usize =
    HEADER_BYTES + MAX_LAYERS * MODULES_PER_LAYER * NStreams::Four.module_bytes();

/// What is wrong with the bytes of a `.mhc` file (or with the modules given to [`MhcFile::new`]).
/// Every variant that refers to file content names its byte offset.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FormatError {
    /// The data ends before something that must be there.
    #[error("truncated: {what} at byte {offset} needs {needed} bytes in all, the data ends at byte {len}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where it starts.
        offset: usize,
        /// The length the data needs.
        needed: usize,
        /// The length it has.
        len: usize,
    },
    /// The magic number is wrong: not a `.mhc` file.
    #[error("bad magic at byte {offset}: 0x{found:08X}, a .mhc file starts with 0x{MAGIC:08X}")]
    BadMagic {
        /// Always 0.
        offset: usize,
        /// The value found.
        found: u32,
    },
    /// Unsupported version.
    #[error("unsupported version {found} at byte {offset}, this reader knows version {VERSION}")]
    BadVersion {
        /// Always 4.
        offset: usize,
        /// The value found.
        found: u32,
    },
    /// n_layers is 0 or absurdly large.
    #[error("n_layers {found} at byte {offset} is outside 1..={MAX_LAYERS}")]
    BadLayerCount {
        /// Always 8.
        offset: usize,
        /// The value found.
        found: u64,
    },
    /// n_streams is not 2 or 4.
    #[error("n_streams {found} at byte {offset} is not 2 or 4")]
    BadStreamCount {
        /// Always 12.
        offset: usize,
        /// The value found.
        found: u32,
    },
    /// Bytes after the last module record.
    #[error(
        "{} unexpected bytes at byte {offset}: n_layers and n_streams make the file exactly {offset} bytes, it has {len}",
        len - offset
    )]
    TrailingBytes {
        /// Where the file should end.
        offset: usize,
        /// Its actual length.
        len: usize,
    },
    /// A parameter is NaN or infinite.
    #[error("parameter {field} of module {module} at byte {offset} is not finite ({value})")]
    NonFinite {
        /// Where the value sits in the file layout.
        offset: usize,
        /// Module index (2·block + 0 attention, + 1 FFN).
        module: usize,
        /// Parameter name, e.g. `pre_bias[1]`.
        field: String,
        /// The value.
        value: f32,
    },
    /// [`MhcFile::new`] got a module count that is not 2·n_layers with n_layers in 1..=MAX_LAYERS.
    #[error("{count} modules: a .mhc file holds 2 per layer (attention, FFN) for 1..={MAX_LAYERS} layers")]
    ModuleCount {
        /// The count given.
        count: usize,
    },
    /// [`MhcFile::new`] got a module whose stream count differs from the file's.
    #[error("module {module} has {found:?} streams, the file has {expected:?}")]
    MixedStreams {
        /// Module index.
        module: usize,
        /// Its stream count.
        found: NStreams,
        /// The file's stream count.
        expected: NStreams,
    },
}

/// Reading or writing a `.mhc` file failed; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum MhcFileError {
    /// The file system said no.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is larger than any valid `.mhc` file (checked before reading it).
    #[error("{}: {len} bytes, larger than any valid .mhc file ({max} bytes)", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The largest valid size.
        max: usize,
    },
    /// The content is not a valid `.mhc` file.
    #[error("{}: {source}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: FormatError,
    },
}

/// A module of the file whose H_res is not doubly stochastic.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[error("module {module} (block {}, {}): H_res {source}", module / 2, if module % 2 == 0 { "attention" } else { "FFN" })]
pub struct ModuleCheckError {
    /// Module index (2·block + 0 attention, + 1 FFN).
    pub module: usize,
    /// The violation.
    pub source: StochasticError,
}

/// All mHC parameters of a model: `2·n_layers` modules of one stream count.
///
/// Invariants (checked by [`MhcFile::new`] and [`MhcFile::from_bytes`]): n_layers in
/// 1..=[`MAX_LAYERS`], every module has the file's stream count, every parameter is finite.
#[derive(Clone, Debug, PartialEq)]
pub struct MhcFile {
    n_streams: NStreams,
    modules: Vec<MhcParams>,
}

impl MhcFile {
    /// A file from its modules, in file order (block 0 attention, block 0 FFN, block 1 attention, …).
    pub fn new(n_streams: NStreams, modules: Vec<MhcParams>) -> Result<Self, FormatError> {
        let count = modules.len();
        if count == 0 || count % MODULES_PER_LAYER != 0 || count > MAX_LAYERS * MODULES_PER_LAYER {
            return Err(FormatError::ModuleCount { count });
        }
        for (module, p) in modules.iter().enumerate() {
            if p.n_streams() != n_streams {
                return Err(FormatError::MixedStreams {
                    module,
                    found: p.n_streams(),
                    expected: n_streams,
                });
            }
            check_finite(n_streams, module, &p.to_flat())?;
        }
        Ok(MhcFile { n_streams, modules })
    }

    /// A file with the documented initialisation ([`crate::params`]) for `n_layers` blocks.
    pub fn init(n_streams: NStreams, n_layers: usize) -> Result<Self, FormatError> {
        if n_layers == 0 || n_layers > MAX_LAYERS {
            let count = n_layers.saturating_mul(MODULES_PER_LAYER);
            return Err(FormatError::ModuleCount { count });
        }
        let modules = (0..n_layers * MODULES_PER_LAYER)
            .map(|m| MhcParams::init(n_streams, m))
            .collect();
        Self::new(n_streams, modules)
    }

    /// The stream count.
    pub fn n_streams(&self) -> NStreams {
        self.n_streams
    }

    /// The number of transformer blocks (half the module count).
    pub fn n_layers(&self) -> usize {
        self.modules.len() / MODULES_PER_LAYER
    }

    /// All modules in file order: module `2·l` wraps block l's attention, `2·l + 1` its FFN.
    pub fn modules(&self) -> &[MhcParams] {
        &self.modules
    }

    /// The module around block `layer`'s attention, if the block exists.
    pub fn attention(&self, layer: usize) -> Option<&MhcParams> {
        self.modules.get(layer.checked_mul(MODULES_PER_LAYER)?)
    }

    /// The module around block `layer`'s FFN, if the block exists.
    pub fn ffn(&self, layer: usize) -> Option<&MhcParams> {
        self.modules
            .get(layer.checked_mul(MODULES_PER_LAYER)?.checked_add(1)?)
    }

    /// The matrices of every module, in file order.
    pub fn mixings(&self) -> Vec<Mixing> {
        self.modules.iter().map(Mixing::from_params).collect()
    }

    /// Checks every module's H_res with [`ResMatrix::check_doubly_stochastic`]; returns the
    /// largest |row or column sum − 1| over the model, or the first failing module.
    pub fn check_doubly_stochastic(&self, tol: f64) -> Result<f64, ModuleCheckError> {
        let mut worst = 0.0f64;
        for (module, m) in self.mixings().iter().enumerate() {
            let dev = m
                .h_res()
                .check_doubly_stochastic(tol)
                .map_err(|source| ModuleCheckError { module, source })?;
            worst = worst.max(dev);
        }
        Ok(worst)
    }

    /// The composite gain ([`composite_gain`]) of all H_res matrices of the model, first module
    /// applied first.
    pub fn composite_gain(&self) -> f64 {
        let hs: Vec<ResMatrix> = self.mixings().iter().map(|m| *m.h_res()).collect();
        composite_gain(&hs)
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(HEADER_BYTES + self.modules.len() * self.n_streams.module_bytes());
        for word in [
            MAGIC,
            VERSION,
            self.n_layers() as u32,
            self.n_streams.count() as u32,
        ] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        for p in &self.modules {
            for v in p.to_flat() {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// Parses and validates a whole file (see the module doc for the layout and the checks).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        let len = bytes.len();
        let magic = header_word(bytes, 0, "header field magic")?;
        if magic != MAGIC {
            return Err(FormatError::BadMagic {
                offset: 0,
                found: magic,
            });
        }
        let version = header_word(bytes, 4, "header field version")?;
        if version != VERSION {
            return Err(FormatError::BadVersion {
                offset: 4,
                found: version,
            });
        }
        let n_layers = header_word(bytes, 8, "header field n_layers")?;
        if n_layers == 0 || n_layers as u64 > MAX_LAYERS as u64 {
            return Err(FormatError::BadLayerCount {
                offset: 8,
                found: n_layers as u64,
            });
        }
        let n_streams_raw = header_word(bytes, 12, "header field n_streams")?;
        let n_streams =
            NStreams::from_count(n_streams_raw as usize).ok_or(FormatError::BadStreamCount {
                offset: 12,
                found: n_streams_raw,
            })?;

        // n_layers ≤ MAX_LAYERS, so neither product can overflow.
        let n_modules = n_layers as usize * MODULES_PER_LAYER;
        let record = n_streams.module_bytes();
        let expected = HEADER_BYTES + n_modules * record;
        if len < expected {
            return Err(FormatError::Truncated {
                what: "module records",
                offset: HEADER_BYTES,
                needed: expected,
                len,
            });
        }
        if len > expected {
            return Err(FormatError::TrailingBytes {
                offset: expected,
                len,
            });
        }

        // The length is now verified, so the allocation is bounded by the data itself.
        let mut modules = Vec::with_capacity(n_modules);
        for (module, rec) in bytes[HEADER_BYTES..].chunks_exact(record).enumerate() {
            let p = match n_streams {
                NStreams::Two => {
                    let f = read_floats::<{ Mhc2::PARAMS }>(rec);
                    check_finite(n_streams, module, &f)?;
                    MhcParams::Two(Mhc2::from_flat(f))
                }
                NStreams::Four => {
                    let f = read_floats::<{ Mhc4::PARAMS }>(rec);
                    check_finite(n_streams, module, &f)?;
                    MhcParams::Four(Mhc4::from_flat(f))
                }
            };
            modules.push(p);
        }
        Ok(MhcFile { n_streams, modules })
    }

    /// Reads and validates a `.mhc` file. Files larger than any valid one are refused before
    /// reading.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, MhcFileError> {
        let path = path.as_ref();
        let io = |source| MhcFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len > MAX_FILE_BYTES as u64 {
            return Err(MhcFileError::TooLarge {
                path: path.to_path_buf(),
                len,
                max: MAX_FILE_BYTES,
            });
        }
        let mut bytes = Vec::with_capacity(len as usize);
        // The cap also covers a file that grows while being read.
        file.take(MAX_FILE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        Self::from_bytes(&bytes).map_err(|source| MhcFileError::Format {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes the file atomically: to a temp file in the same folder, synced, then renamed over
    /// `path`. On error nothing is left behind and an existing `path` is untouched.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), MhcFileError> {
        let path = path.as_ref();
        let io = |source| MhcFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".mhc-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(io)?;
        tmp.write_all(&self.to_bytes()).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

/// The little-endian u32 at `offset`, or `Truncated` if the data ends first.
fn header_word(bytes: &[u8], offset: usize, what: &'static str) -> Result<u32, FormatError> {
    match bytes.get(offset..offset + 4) {
        Some(&[a, b, c, d]) => Ok(u32::from_le_bytes([a, b, c, d])),
        _ => Err(FormatError::Truncated {
            what,
            offset,
            needed: offset + 4,
            len: bytes.len(),
        }),
    }
}

/// The first `P` little-endian f32 of `rec` (which holds exactly `4·P` bytes).
fn read_floats<const P: usize>(rec: &[u8]) -> [f32; P] {
    let mut f = [0.0f32; P];
    for (v, b) in f.iter_mut().zip(rec.chunks_exact(4)) {
        *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    f
}

/// `NonFinite` for the first NaN or infinite value of module `module`'s flat parameters.
fn check_finite(n: NStreams, module: usize, flat: &[f32]) -> Result<(), FormatError> {
    match flat.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(FormatError::NonFinite {
            offset: HEADER_BYTES + module * n.module_bytes() + 4 * i,
            module,
            field: n.field_name(i),
            value: flat[i],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A file whose every parameter is distinct and awkward (negative zero, subnormal, extremes).
    fn sample(n: NStreams, n_layers: usize) -> MhcFile {
        let special = [
            -0.0,
            f32::MIN_POSITIVE / 8.0,
            f32::MAX,
            f32::MIN,
            1.0e-30,
            -7.25,
        ];
        let modules = (0..2 * n_layers)
            .map(|m| {
                let mut flat = MhcParams::init(n, m).to_flat();
                for (i, v) in flat.iter_mut().enumerate() {
                    *v += (m * 31 + i) as f32 * 0.013 - 0.4;
                    if (m + i) % 7 == 0 {
                        *v = special[(m + i) % special.len()];
                    }
                }
                match n {
                    NStreams::Two => MhcParams::Two(Mhc2::from_flat(flat.try_into().unwrap())),
                    NStreams::Four => MhcParams::Four(Mhc4::from_flat(flat.try_into().unwrap())),
                }
            })
            .collect();
        MhcFile::new(n, modules).unwrap()
    }

    fn bits(f: &MhcFile) -> Vec<u32> {
        f.modules()
            .iter()
            .flat_map(|p| p.to_flat())
            .map(f32::to_bits)
            .collect()
    }

    #[test]
    fn layout_matches_the_design() {
        let f = MhcFile::init(NStreams::Two, 3).unwrap();
        let b = f.to_bytes();
        assert_eq!(b.len(), 16 + 6 * 36);
        assert_eq!(&b[..4], &[0x21, 0x43, 0x48, 0x6D]);
        assert_eq!(&b[4..16], &[1, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0]);
        // Module 1 (block 0 FFN) starts at 16 + 36: alpha_logit, then pre_logits[0].
        assert_eq!(&b[52..56], &crate::params::INIT_ALPHA_LOGIT.to_le_bytes());
        // pre_bias of module 1 favours stream 1: [-1, +1] at bytes 12..20 of the record.
        assert_eq!(&b[52 + 12..52 + 20], &[0, 0, 128, 191, 0, 0, 128, 63]);
        assert_eq!(
            MhcFile::init(NStreams::Four, 5).unwrap().to_bytes().len(),
            16 + 10 * 160
        );
    }

    #[test]
    fn bytes_round_trip_is_bit_exact() {
        for n in [NStreams::Two, NStreams::Four] {
            let f = sample(n, 7);
            let b = f.to_bytes();
            let g = MhcFile::from_bytes(&b).unwrap();
            assert_eq!(bits(&g), bits(&f));
            assert_eq!(g.to_bytes(), b);
            assert_eq!((g.n_layers(), g.n_streams()), (7, n));
            assert_eq!(g.attention(6), Some(&f.modules()[12]));
            assert_eq!(g.ffn(6), Some(&f.modules()[13]));
            assert_eq!(g.ffn(7), None);
            assert_eq!(g.attention(usize::MAX), None);
        }
    }

    #[test]
    fn file_round_trip_and_atomic_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.mhc");
        let f = sample(NStreams::Four, 4);
        f.write(&path).unwrap();
        assert_eq!(bits(&MhcFile::read(&path).unwrap()), bits(&f));
        // Overwrite in place; no temp file is left next to it.
        let g = sample(NStreams::Two, 2);
        g.write(&path).unwrap();
        assert_eq!(MhcFile::read(&path).unwrap(), g);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["model.mhc"]);
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.mhc");
        let err = MhcFile::read(&missing).unwrap_err();
        assert!(
            matches!(err, MhcFileError::Io { .. }) && err.to_string().contains("missing.mhc"),
            "{err}"
        );

        let bad = dir.path().join("bad.mhc");
        std::fs::write(&bad, [0u8; 20]).unwrap();
        let err = MhcFile::read(&bad).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{}: bad magic at byte 0", bad.display())),
            "{err}"
        );

        let huge = dir.path().join("huge.mhc");
        std::fs::File::create(&huge)
            .unwrap()
            .set_len(MAX_FILE_BYTES as u64 + 1)
            .unwrap();
        assert!(matches!(
            MhcFile::read(&huge),
            Err(MhcFileError::TooLarge { .. })
        ));

        let err = MhcFile::init(NStreams::Two, 1)
            .unwrap()
            .write(dir.path().join("no/such/dir.mhc"));
        assert!(matches!(err, Err(MhcFileError::Io { .. })));
    }

    #[test]
    fn every_truncated_prefix_is_an_error() {
        for n in [NStreams::Two, NStreams::Four] {
            let b = sample(n, 3).to_bytes();
            for cut in 0..b.len() {
                let err = MhcFile::from_bytes(&b[..cut]).unwrap_err();
                assert!(
                    matches!(err, FormatError::Truncated { len, .. } if len == cut),
                    "{cut}: {err}"
                );
            }
        }
        let err = MhcFile::from_bytes(&[0x21, 0x43, 0x48, 0x6D, 1, 0]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "truncated: header field version at byte 4 needs 8 bytes in all, the data ends at byte 6"
        );
    }

    /// `b` with the u32 at `offset` replaced.
    fn patched(b: &[u8], offset: usize, v: u32) -> Vec<u8> {
        let mut b = b.to_vec();
        b[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
        b
    }

    #[test]
    fn header_errors_name_the_problem_and_offset() {
        let b = sample(NStreams::Two, 2).to_bytes();
        let err = MhcFile::from_bytes(&patched(&b, 0, 0x4655_4747)).unwrap_err();
        assert_eq!(
            err,
            FormatError::BadMagic {
                offset: 0,
                found: 0x4655_4747
            }
        );
        assert_eq!(
            err.to_string(),
            "bad magic at byte 0: 0x46554747, a .mhc file starts with 0x6D484321"
        );
        let err = MhcFile::from_bytes(&patched(&b, 4, 2)).unwrap_err();
        assert_eq!(
            err,
            FormatError::BadVersion {
                offset: 4,
                found: 2
            }
        );
        for layers in [0, MAX_LAYERS as u32 + 1, u32::MAX] {
            let err = MhcFile::from_bytes(&patched(&b, 8, layers)).unwrap_err();
            assert_eq!(
                err,
                FormatError::BadLayerCount {
                    offset: 8,
                    found: layers as u64
                }
            );
        }
        for streams in [0, 1, 3, 5, 8, u32::MAX] {
            let err = MhcFile::from_bytes(&patched(&b, 12, streams)).unwrap_err();
            assert_eq!(
                err,
                FormatError::BadStreamCount {
                    offset: 12,
                    found: streams
                }
            );
            assert!(err.to_string().contains("n_streams"));
        }
        // Header says 4 streams, records are N = 2 sized: the length gives it away.
        let err = MhcFile::from_bytes(&patched(&b, 12, 4)).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::Truncated {
                    what: "module records",
                    ..
                }
            ),
            "{err}"
        );
        // More layers declared than present, and fewer.
        assert!(matches!(
            MhcFile::from_bytes(&patched(&b, 8, 3)),
            Err(FormatError::Truncated {
                needed: 232,
                len: 160,
                ..
            })
        ));
        let err = MhcFile::from_bytes(&patched(&b, 8, 1)).unwrap_err();
        assert_eq!(
            err,
            FormatError::TrailingBytes {
                offset: 88,
                len: 160
            }
        );
        assert!(
            err.to_string()
                .starts_with("72 unexpected bytes at byte 88"),
            "{err}"
        );
    }

    #[test]
    fn non_finite_parameters_are_rejected_with_their_name_and_offset() {
        let b = sample(NStreams::Four, 2).to_bytes();
        // Module 1, flat index 29 = pre_bias[1]: offset 16 + 160 + 116.
        let at = 16 + 160 + 4 * 29;
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let err = MhcFile::from_bytes(&patched(&b, at, bad.to_bits())).unwrap_err();
            assert!(
                matches!(&err, FormatError::NonFinite { offset, module: 1, field, .. } if *offset == at && field == "pre_bias[1]"),
                "{err}"
            );
        }
        let mut p = Mhc2::init(0);
        p.post_bias[1] = f32::NAN;
        let err = MhcFile::new(
            NStreams::Two,
            vec![MhcParams::Two(p), MhcParams::Two(Mhc2::init(1))],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "parameter post_bias[1] of module 0 at byte 48 is not finite (NaN)"
        );
    }

    #[test]
    fn new_rejects_inconsistent_modules() {
        let two = |m| MhcParams::init(NStreams::Two, m);
        assert_eq!(
            MhcFile::new(NStreams::Two, vec![]),
            Err(FormatError::ModuleCount { count: 0 })
        );
        assert_eq!(
            MhcFile::new(NStreams::Two, vec![two(0)]),
            Err(FormatError::ModuleCount { count: 1 })
        );
        assert_eq!(
            MhcFile::new(
                NStreams::Four,
                vec![MhcParams::init(NStreams::Four, 0), two(1)]
            ),
            Err(FormatError::MixedStreams {
                module: 1,
                found: NStreams::Two,
                expected: NStreams::Four
            })
        );
        assert_eq!(
            MhcFile::init(NStreams::Four, 0),
            Err(FormatError::ModuleCount { count: 0 })
        );
        assert!(matches!(
            MhcFile::init(NStreams::Four, MAX_LAYERS + 1),
            Err(FormatError::ModuleCount { .. })
        ));
        assert!(MhcFile::init(NStreams::Four, MAX_LAYERS).is_ok());
    }

    #[test]
    fn whole_model_checks() {
        let f = MhcFile::init(NStreams::Four, 32).unwrap();
        assert!(f.check_doubly_stochastic(1e-6).unwrap() < 1e-6);
        assert!(f.composite_gain() <= 1.0 + 1e-4);
        let err = ModuleCheckError {
            module: 3,
            source: StochasticError::Negative {
                row: 0,
                col: 1,
                value: -0.5,
            },
        };
        assert_eq!(
            err.to_string(),
            "module 3 (block 1, FFN): H_res entry (0, 1) is negative (-0.5)"
        );
    }

    /// The fuzz target's property (fuzz/fuzz_targets/mhc_reader.rs), replayed over the committed
    /// seeds and crash regressions so it runs on stable with every `cargo test`.
    fn fuzz_property(data: &[u8]) {
        if let Ok(file) = MhcFile::from_bytes(data) {
            assert_eq!(
                file.to_bytes(),
                data,
                "accepted bytes must re-encode identically"
            );
            file.check_doubly_stochastic(1e-5).unwrap();
            assert!(file.composite_gain() <= 1.0 + 1e-3);
        }
    }

    #[test]
    fn fuzz_seeds_replay() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            fuzz_property(&data);
            let name = path.file_name().unwrap().to_string_lossy();
            // Seeds named valid_* must parse; the others are kept as known-bad inputs.
            assert_eq!(
                MhcFile::from_bytes(&data).is_ok(),
                name.starts_with("valid_"),
                "{name}"
            );
            count += 1;
        }
        assert!(count >= 2, "expected seed files in {}", dir.display());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_mutations_never_panic(
            four in any::<bool>(),
            layers in 1usize..4,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let n = if four { NStreams::Four } else { NStreams::Two };
            let mut b = sample(n, layers).to_bytes();
            for (at, v) in edits {
                let i = at.index(b.len());
                b[i] = v;
            }
            if truncate {
                b.truncate(cut.index(b.len()));
            }
            fuzz_property(&b);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            fuzz_property(&b);
        }

        #[test]
        fn arbitrary_finite_parameters_round_trip(
            flat in proptest::collection::vec(
                prop::num::f32::POSITIVE
                    | prop::num::f32::NEGATIVE
                    | prop::num::f32::NORMAL
                    | prop::num::f32::SUBNORMAL
                    | prop::num::f32::ZERO,
                160,
            ),
        ) {
            let modules = flat
                .chunks_exact(Mhc4::PARAMS)
                .map(|c| MhcParams::Four(Mhc4::from_flat(c.try_into().unwrap())))
                .collect();
            let f = MhcFile::new(NStreams::Four, modules).unwrap();
            let g = MhcFile::from_bytes(&f.to_bytes()).unwrap();
            prop_assert_eq!(bits(&g), bits(&f));
        }
    }
}
