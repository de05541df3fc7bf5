//! The corpus: every `.rs` file under the input folders, in a fixed order, and the train/val split.
//!
//! - **Walk** ([`walk`]): inputs in the order given; under each, every regular file whose name ends
//!   in `.rs`, sorted by its path relative to that input (component by component). Symbolic links
//!   are not followed (a linked file or folder is left out), except an input given as a link.
//!   A folder that cannot be listed is skipped and counted; an input that is missing or not a
//!   folder or file is an error. An input may be a single file (taken whatever its name).
//! - **Exclusion** ([`Exclude`]): a pattern with `*` or `?` is a glob over the whole path as given
//!   (`*` matches any run of characters, `/` included; `?` one character); any other pattern is a
//!   substring of that path. Excluded files are counted.
//! - **Reading** ([`read_source`]): a file that cannot be read or is not UTF-8 is skipped and
//!   counted by the caller, never fatal.
//! - **Split** ([`is_validation`]): a file goes to validation when `hash(rel) / 2^64 < fraction`,
//!   where `rel` is its path relative to its input with `/` separators and `hash` is [`path_hash`]
//!   (FNV-1a 64 of the UTF-8 bytes, then the splitmix64 finalizer). It depends on that file's path
//!   only, so adding files never moves another file between train and val.
//! - **Sample** ([`sample`]): files ordered by [`seeded_hash`] of `rel`, taken until a byte budget
//!   is reached, returned in walk order.

use std::path::{Path, PathBuf};

/// Why the walk could not start.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("{path}: input does not exist")]
    Missing { path: PathBuf },
    #[error("{path}: input is not a folder or a regular file")]
    NotDirOrFile { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One source file of the corpus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// Path as found (the input joined with `rel`).
    pub path: PathBuf,
    /// Index of the input it was found under.
    pub input: usize,
    /// Path relative to its input, `/`-separated (for an input that is a file: its file name).
    pub rel: String,
    /// Size in bytes at walk time.
    pub len: u64,
}

/// What a walk found.
#[derive(Clone, Debug, Default)]
pub struct Corpus {
    /// Every `.rs` file kept, in walk order.
    pub files: Vec<SourceFile>,
    /// Files left out by an exclusion pattern.
    pub excluded: usize,
    /// Folders that could not be listed (path and reason).
    pub unreadable_dirs: Vec<(PathBuf, String)>,
}

impl Corpus {
    /// Total bytes of the kept files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.len).sum()
    }
}

/// Exclusion patterns (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Exclude {
    patterns: Vec<String>,
}

impl Exclude {
    /// Patterns as given on the command line.
    pub fn new(patterns: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Exclude {
            patterns: patterns.into_iter().map(Into::into).collect(),
        }
    }

    /// True when `path` (as given, lossily as UTF-8) matches any pattern.
    pub fn matches(&self, path: &Path) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let text = path.to_string_lossy();
        self.patterns.iter().any(|p| {
            if p.contains(['*', '?']) {
                glob_match(p.as_bytes(), text.as_bytes())
            } else {
                text.contains(p.as_str())
            }
        })
    }
}

/// `*` = any run of bytes (including `/`), `?` = one character, anything else literal; the whole
/// text must match. Iterative, with one backtrack point (the last `*`).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == b'?' {
            // One UTF-8 character: its lead byte and continuation bytes.
            p += 1;
            t += 1;
            while t < text.len() && text[t] & 0xC0 == 0x80 {
                t += 1;
            }
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Walks `inputs` (see the module docs), leaving out files matched by `exclude`.
pub fn walk(inputs: &[PathBuf], exclude: &Exclude) -> Result<Corpus, CorpusError> {
    let mut corpus = Corpus::default();
    for (input, root) in inputs.iter().enumerate() {
        let meta = match std::fs::metadata(root) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CorpusError::Missing { path: root.clone() })
            }
            Err(source) => {
                return Err(CorpusError::Io {
                    path: root.clone(),
                    source,
                })
            }
        };
        let mut found: Vec<(Vec<String>, PathBuf, u64)> = Vec::new();
        if meta.is_file() {
            let name = root
                .file_name()
                .map_or_else(|| root.to_string_lossy(), |n| n.to_string_lossy())
                .into_owned();
            found.push((vec![name], root.clone(), meta.len()));
        } else if meta.is_dir() {
            // The root itself must be listable: a typo'd permission is bad input, not a skip.
            let entries = std::fs::read_dir(root).map_err(|source| CorpusError::Io {
                path: root.clone(),
                source,
            })?;
            collect(entries, root, &mut Vec::new(), &mut found, &mut corpus);
        } else {
            return Err(CorpusError::NotDirOrFile { path: root.clone() });
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        for (components, path, len) in found {
            if exclude.matches(&path) {
                corpus.excluded += 1;
                continue;
            }
            corpus.files.push(SourceFile {
                path,
                input,
                rel: components.join("/"),
                len,
            });
        }
    }
    Ok(corpus)
}

/// Adds the `.rs` files under one listed folder to `found` (depth first, no symlinks followed).
fn collect(
    entries: std::fs::ReadDir,
    dir: &Path,
    prefix: &mut Vec<String>,
    found: &mut Vec<(Vec<String>, PathBuf, u64)>,
    corpus: &mut Corpus,
) {
    let mut subdirs = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                corpus
                    .unreadable_dirs
                    .push((dir.to_path_buf(), e.to_string()));
                continue;
            }
        };
        // DirEntry::file_type does not follow symbolic links.
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        if kind.is_dir() {
            subdirs.push((name, entry.path()));
        } else if kind.is_file() && name.ends_with(".rs") {
            let len = entry.metadata().map_or(0, |m| m.len());
            let mut components = prefix.clone();
            components.push(name);
            found.push((components, entry.path(), len));
        }
    }
    for (name, path) in subdirs {
        match std::fs::read_dir(&path) {
            Ok(entries) => {
                prefix.push(name);
                collect(entries, &path, prefix, found, corpus);
                prefix.pop();
            }
            Err(e) => corpus.unreadable_dirs.push((path, e.to_string())),
        }
    }
}

/// Why a file was skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// It could not be read (the I/O error).
    Unreadable(String),
    /// Its bytes are not UTF-8.
    NotUtf8,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::Unreadable(e) => write!(f, "unreadable: {e}"),
            Skip::NotUtf8 => f.write_str("not UTF-8"),
        }
    }
}

/// The text of one source file, or why it is skipped.
pub fn read_source(path: &Path) -> Result<String, Skip> {
    let bytes = std::fs::read(path).map_err(|e| Skip::Unreadable(e.to_string()))?;
    String::from_utf8(bytes).map_err(|_| Skip::NotUtf8)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// The splitmix64 finalizer: spreads FNV's weakly mixed high bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The split hash of a relative path: FNV-1a 64 (offset 0xcbf29ce484222325, prime 0x100000001b3)
/// over its UTF-8 bytes, then the splitmix64 finalizer. Fixed forever: changing it moves files
/// between train and val.
pub fn path_hash(rel: &str) -> u64 {
    mix(fnv1a(FNV_OFFSET, rel.as_bytes()))
}

/// The sampling hash: as [`path_hash`], with the 8 little-endian bytes of `seed` hashed first.
pub fn seeded_hash(seed: u64, rel: &str) -> u64 {
    mix(fnv1a(
        fnv1a(FNV_OFFSET, &seed.to_le_bytes()),
        rel.as_bytes(),
    ))
}

/// True when the file at `rel` belongs to the validation set for `fraction` (0 = none, 1 = all).
pub fn is_validation(rel: &str, fraction: f64) -> bool {
    // The top 53 bits as a uniform number in [0, 1).
    let u = (path_hash(rel) >> 11) as f64 / (1u64 << 53) as f64;
    u < fraction
}

/// A deterministic sample of `files` of about `max_bytes`: files in [`seeded_hash`] order are taken
/// while the total stays below `max_bytes` (the last one may cross it); returned in the given order.
pub fn sample(files: &[SourceFile], max_bytes: u64, seed: u64) -> Vec<SourceFile> {
    let mut order: Vec<(u64, usize)> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (seeded_hash(seed, &f.rel), i))
        .collect();
    order.sort_unstable();
    let mut keep = vec![false; files.len()];
    let mut total = 0u64;
    for (_, i) in order {
        if total >= max_bytes {
            break;
        }
        keep[i] = true;
        total += files[i].len;
    }
    files
        .iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(f, _)| f.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str, text: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn walk_is_sorted_recursive_rs_only_and_skips_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for rel in [
            "b.rs",
            "a/z.rs",
            "a/b/c.rs",
            "a.rs",
            "notes.txt",
            "x/y.rs.bak",
        ] {
            touch(root, rel, b"fn f() {}\n");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(root.join("a"), root.join("link_dir")).unwrap();
            std::os::unix::fs::symlink(root.join("b.rs"), root.join("link.rs")).unwrap();
        }
        let corpus = walk(&[root.to_path_buf()], &Exclude::default()).unwrap();
        let rels: Vec<&str> = corpus.files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(rels, ["a/b/c.rs", "a/z.rs", "a.rs", "b.rs"]);
        assert_eq!(corpus.files[0].path, root.join("a/b/c.rs"));
        assert_eq!(corpus.bytes(), 4 * 10);
    }

    #[test]
    fn inputs_keep_their_order_and_a_file_input_is_taken() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        touch(a.path(), "z.rs", b"");
        touch(b.path(), "a.rs", b"");
        let single = b.path().join("a.rs");
        let corpus = walk(
            &[a.path().to_path_buf(), b.path().to_path_buf(), single],
            &Exclude::default(),
        )
        .unwrap();
        let got: Vec<(usize, &str)> = corpus
            .files
            .iter()
            .map(|f| (f.input, f.rel.as_str()))
            .collect();
        assert_eq!(got, [(0, "z.rs"), (1, "a.rs"), (2, "a.rs")]);
    }

    #[test]
    fn missing_input_is_an_error_naming_it() {
        let err = walk(&[PathBuf::from("/no/such/dir")], &Exclude::default()).unwrap_err();
        assert_eq!(err.to_string(), "/no/such/dir: input does not exist");
    }

    #[test]
    fn exclude_by_substring_and_glob() {
        let dir = tempfile::tempdir().unwrap();
        for rel in [
            "benchmarks/humaneval.rs",
            "src/lib.rs",
            "src/bench_x.rs",
            "tests/t.rs",
        ] {
            touch(dir.path(), rel, b"");
        }
        let ex = Exclude::new(["benchmarks", "*/src/bench_?.rs"]);
        let corpus = walk(&[dir.path().to_path_buf()], &ex).unwrap();
        let rels: Vec<&str> = corpus.files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(rels, ["src/lib.rs", "tests/t.rs"]);
        assert_eq!(corpus.excluded, 2);
    }

    #[test]
    fn glob_semantics() {
        let m = |p: &str, t: &str| glob_match(p.as_bytes(), t.as_bytes());
        assert!(m("*", ""));
        assert!(m("*.rs", "a/b/c.rs"));
        assert!(!m("*.rs", "a/b/c.rs.bak"));
        assert!(m("a?c", "aéc"));
        assert!(!m("a?c", "ac"));
        assert!(m("*/tests/*", "x/tests/y.rs"));
        assert!(m("**/t*s/**", "x/tests/y.rs"));
        assert!(!m("abc", "abcd"));
    }

    #[test]
    fn read_source_skips_non_utf8_and_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "bad.rs", &[b'a', 0xff, b'b']);
        assert_eq!(read_source(&dir.path().join("bad.rs")), Err(Skip::NotUtf8));
        assert!(matches!(
            read_source(&dir.path().join("none.rs")),
            Err(Skip::Unreadable(_))
        ));
        assert!(matches!(read_source(dir.path()), Err(Skip::Unreadable(_))));
    }

    #[test]
    fn hash_is_fixed() {
        // Written down values: a change here moves files between train and val.
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(
            path_hash("src/lib.rs"),
            mix(fnv1a(FNV_OFFSET, b"src/lib.rs"))
        );
    }

    #[test]
    fn split_fraction_is_respected_and_stable() {
        let names: Vec<String> = (0..20000)
            .map(|i| format!("crate-{}/src/m{i}.rs", i % 97))
            .collect();
        let val = names.iter().filter(|n| is_validation(n, 0.1)).count();
        assert!((1800..2200).contains(&val), "{val}");
        assert!(names.iter().all(|n| !is_validation(n, 0.0)));
        assert!(names.iter().all(|n| is_validation(n, 1.0)));
        // Monotone in the fraction: a val file at 1% stays val at 5%.
        assert!(names
            .iter()
            .filter(|n| is_validation(n, 0.01))
            .all(|n| is_validation(n, 0.05)));
    }

    #[test]
    fn sample_is_deterministic_and_bounded() {
        let files: Vec<SourceFile> = (0..100)
            .map(|i| SourceFile {
                path: PathBuf::from(format!("/c/f{i}.rs")),
                input: 0,
                rel: format!("f{i}.rs"),
                len: 10,
            })
            .collect();
        let s = sample(&files, 255, 7);
        assert_eq!(s.len(), 26);
        assert_eq!(s, sample(&files, 255, 7));
        assert_ne!(s, sample(&files, 255, 8));
        // Walk order kept.
        let index = |f: &SourceFile| files.iter().position(|g| g == f).unwrap();
        assert!(s.windows(2).all(|w| index(&w[0]) < index(&w[1])));
        assert_eq!(sample(&files, u64::MAX, 0).len(), 100);
        assert!(sample(&files, 0, 0).is_empty());
    }
}
