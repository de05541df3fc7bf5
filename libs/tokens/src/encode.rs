//! An exact, fast encoder for byte-level BPE tokenizers (GPT-2 style `tokenizer.json`).
//!
//! [`Encoder::encode`] gives exactly the ids of the tokenizers crate's
//! `Tokenizer::encode_fast(text, false)` for the same `tokenizer.json`; it is only faster. The steps
//! are those of the tokenizers pipeline, with the bookkeeping it does for offsets left out:
//!
//! 1. Added tokens are cut out of the text: leftmost-longest matches of the tokens that are matched
//!    on the raw text (`normalized: false`), then, in the pieces between, of the others (with no
//!    normalizer the text is its own normalized form).
//! 2. Every other piece is pre-tokenized by GPT-2's split pattern
//!    `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`: the `regex`
//!    crate has no look-ahead, so the pattern runs without `\s+(?!\S)` and a whitespace run of two
//!    or more characters that is followed by a non-space gives back its last character (which is
//!    what the look-ahead does).
//! 3. Each pre-token's bytes become GPT-2's byte characters and go through the tokenizer's own
//!    model (`Model::tokenize`, the BPE merges), so the merge step is the crate's, not a copy.
//! 4. The ids of each distinct pre-token are cached per thread: source code repeats its words, and
//!    a hit costs one hash lookup instead of steps 2-3's allocations.
//!
//! A tokenizer outside what this reproduces (a normalizer, another pre-tokenizer, truncation or
//! padding, added tokens with `lstrip`/`rstrip`/`single_word`, special tokens encoded as text) is
//! encoded by the tokenizers crate itself ([`Encoder::is_fast`] is then false): slower, still exact.
//!
//! [`Encoder::decode_bytes`] is the inverse for byte-level tokenizers: the bytes of each token
//! concatenated (what the tokenizers crate's ByteLevel decoder gives before its lossy UTF-8 step).

use ahash::AHashMap;
use std::sync::Mutex;
use tokenizers::{DecoderWrapper, PostProcessorWrapper, PreTokenizerWrapper};

/// Why an encoder could not be built or could not encode.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("tokenizer JSON does not load: {0}")]
    Load(String),
    #[error("tokenizer failed: {0}")]
    Codec(String),
    #[error("token id {0} is not in the vocabulary")]
    UnknownId(u32),
}

/// Entries a thread's cache holds before it is emptied (bounds memory on huge corpora).
const CACHE_LIMIT: usize = 1 << 19;

/// GPT-2's byte-to-character map: printable Latin-1 bytes map to themselves, the other 68 bytes to
/// U+0100 + n in byte order.
pub fn byte_chars() -> [char; 256] {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut chars = ['\0'; 256];
    let mut shifted = 0;
    for (b, c) in chars.iter_mut().enumerate() {
        let b = b as u32;
        let code = if printable(b) {
            b
        } else {
            shifted += 1;
            255 + shifted
        };
        *c = char::from_u32(code).expect("below U+0200");
    }
    chars
}

/// GPT-2's split pattern without its look-ahead alternative (see the module docs).
const SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// Added tokens matched in one pass, leftmost-longest.
#[derive(Debug)]
struct AddedSet {
    /// (content, id), longest first so the first hit at a position is the longest.
    tokens: Vec<(String, u32)>,
    /// Bytes that start some token.
    first: [bool; 256],
}

impl AddedSet {
    fn new(mut tokens: Vec<(String, u32)>) -> Self {
        tokens.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        let mut first = [false; 256];
        for (t, _) in &tokens {
            first[t.as_bytes()[0] as usize] = true;
        }
        AddedSet { tokens, first }
    }

    /// The leftmost-longest match in `text` at or after `from`: (start, end, id).
    fn find(&self, text: &str, from: usize) -> Option<(usize, usize, u32)> {
        if self.tokens.is_empty() {
            return None;
        }
        let bytes = text.as_bytes();
        (from..bytes.len())
            .filter(|&i| self.first[bytes[i] as usize])
            .find_map(|i| {
                self.tokens
                    .iter()
                    .find(|(t, _)| bytes[i..].starts_with(t.as_bytes()))
                    .map(|(t, id)| (i, i + t.len(), *id))
            })
    }

    /// Calls `piece(text)` for the text between matches and `token(id)` for each match, in order.
    fn split<E>(
        &self,
        text: &str,
        piece: &mut impl FnMut(&str) -> Result<(), E>,
        token: &mut impl FnMut(u32),
    ) -> Result<(), E> {
        let mut at = 0;
        while let Some((start, end, id)) = self.find(text, at) {
            if start > at {
                piece(&text[at..start])?;
            }
            token(id);
            at = end;
        }
        if at < text.len() {
            piece(&text[at..])?;
        }
        Ok(())
    }
}

/// Ids of pre-tokens already encoded, by their text.
type WordCache = AHashMap<Box<str>, Box<[u32]>>;

/// The parts of the fast path.
#[derive(Debug)]
struct Fast {
    raw: AddedSet,
    normalized: AddedSet,
    split: regex::Regex,
    chars: [char; 256],
    /// One cache per rayon worker (by thread index) plus one for other threads.
    caches: Vec<Mutex<WordCache>>,
}

/// A tokenizer ready to encode many documents, from many threads: each worker of the rayon pool
/// that was current when it was built has its own pre-token cache; other threads share one.
pub struct Encoder {
    tokenizer: tokenizers::Tokenizer,
    fast: Option<Fast>,
    /// Bytes of every id, for byte-level tokenizers (`None` otherwise).
    id_bytes: Option<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("vocab_size", &self.vocab_size())
            .field("fast", &self.is_fast())
            .finish()
    }
}

impl Encoder {
    /// Loads a `tokenizer.json` document.
    pub fn from_json(json: &str) -> Result<Self, EncodeError> {
        let tokenizer = json
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| EncodeError::Load(e.to_string()))?;
        Ok(Self::new(tokenizer))
    }

    /// Wraps a loaded tokenizer.
    pub fn new(tokenizer: tokenizers::Tokenizer) -> Self {
        let byte_level = matches!(tokenizer.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
        let id_bytes = byte_level.then(|| id_bytes(&tokenizer));
        let fast = fast_path(&tokenizer);
        Encoder {
            tokenizer,
            fast,
            id_bytes,
        }
    }

    /// The tokenizers-crate tokenizer.
    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    /// True when this tokenizer is encoded by the fast path (else by the tokenizers crate).
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    /// Tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The id of `token` (a vocabulary or added token), if any.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Appends the ids of `text` to `out`: exactly `encode_fast(text, false)` of the tokenizers
    /// crate (added tokens in the text become their ids).
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<(), EncodeError> {
        let Some(fast) = &self.fast else {
            let encoding = self
                .tokenizer
                .encode_fast(text, false)
                .map_err(|e| EncodeError::Codec(e.to_string()))?;
            out.extend_from_slice(encoding.get_ids());
            return Ok(());
        };
        let slot = rayon::current_thread_index().map_or(0, |i| 1 + i % (fast.caches.len() - 1));
        let mut cache = fast.caches[slot]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let model = self.tokenizer.get_model();
        let mut mapped = String::new();
        let out = std::cell::RefCell::new(out);
        let mut words = |piece: &str| -> Result<(), EncodeError> {
            let mut out = out.borrow_mut();
            pre_tokenize(&fast.split, piece, |word| {
                if let Some(ids) = cache.get(word) {
                    out.extend_from_slice(ids);
                    return Ok(());
                }
                mapped.clear();
                mapped.extend(word.bytes().map(|b| fast.chars[b as usize]));
                let tokens = tokenizers::Model::tokenize(model, &mapped)
                    .map_err(|e| EncodeError::Codec(e.to_string()))?;
                let ids: Box<[u32]> = tokens.iter().map(|t| t.id).collect();
                out.extend_from_slice(&ids);
                if cache.len() >= CACHE_LIMIT {
                    cache.clear();
                }
                cache.insert(word.into(), ids);
                Ok(())
            })
        };
        let mut normalized_pieces = |piece: &str| {
            fast.normalized
                .split(piece, &mut words, &mut |id| out.borrow_mut().push(id))
        };
        fast.raw.split(text, &mut normalized_pieces, &mut |id| {
            out.borrow_mut().push(id)
        })
    }

    /// Appends the bytes of `ids` to `out`: for a byte-level tokenizer, the exact bytes each token
    /// stands for (a whole document's ids give back its text); otherwise the tokenizers crate's
    /// decoding (special tokens kept) as UTF-8.
    pub fn decode_bytes(&self, ids: &[u32], out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match &self.id_bytes {
            Some(table) => {
                for &id in ids {
                    let bytes = table.get(id as usize).ok_or(EncodeError::UnknownId(id))?;
                    out.extend_from_slice(bytes);
                }
            }
            None => {
                let text = self
                    .tokenizer
                    .decode(ids, false)
                    .map_err(|e| EncodeError::Codec(e.to_string()))?;
                out.extend_from_slice(text.as_bytes());
            }
        }
        Ok(())
    }
}

/// Calls `word` with each pre-token of `piece` in order: GPT-2's split (see the module docs).
fn pre_tokenize<E>(
    split: &regex::Regex,
    piece: &str,
    mut word: impl FnMut(&str) -> Result<(), E>,
) -> Result<(), E> {
    let mut at = 0;
    while at < piece.len() {
        let m = split
            .find_at(piece, at)
            .expect("every character matches one alternative");
        debug_assert_eq!(m.start(), at);
        let mut end = m.end();
        let run = &piece[at..end];
        // `\s+(?!\S)`: a run of 2+ spaces followed by a non-space leaves its last one.
        if end < piece.len() && run.chars().all(char::is_whitespace) {
            let last = run.chars().next_back().map_or(0, char::len_utf8);
            if last < run.len() {
                end -= last;
            }
        }
        word(&piece[at..end])?;
        at = end;
    }
    Ok(())
}

/// The fast path's parts when the tokenizer is one it reproduces exactly.
fn fast_path(tokenizer: &tokenizers::Tokenizer) -> Option<Fast> {
    if tokenizer.get_normalizer().is_some()
        || tokenizer.get_truncation().is_some()
        || tokenizer.get_padding().is_some()
        || tokenizer.get_encode_special_tokens()
    {
        return None;
    }
    match tokenizer.get_pre_tokenizer() {
        Some(PreTokenizerWrapper::ByteLevel(b)) if !b.add_prefix_space && b.use_regex => {}
        _ => return None,
    }
    match tokenizer.get_post_processor() {
        None | Some(PostProcessorWrapper::ByteLevel(_)) => {}
        _ => return None,
    }
    let mut raw = Vec::new();
    let mut normalized = Vec::new();
    for (id, t) in tokenizer.get_added_tokens_decoder() {
        if t.content.is_empty() || t.lstrip || t.rstrip || t.single_word {
            return None;
        }
        // As the tokenizers crate: `normalized: false` tokens are matched on the raw text first.
        if !t.normalized {
            raw.push((t.content, id));
        } else {
            normalized.push((t.content, id));
        }
    }
    let threads = rayon::current_num_threads().max(1);
    Some(Fast {
        raw: AddedSet::new(raw),
        normalized: AddedSet::new(normalized),
        split: regex::Regex::new(SPLIT).expect("valid pattern"),
        chars: byte_chars(),
        caches: (0..threads + 1).map(|_| Mutex::default()).collect(),
    })
}

/// The bytes each id stands for in a byte-level tokenizer: a model token's characters mapped back
/// through [`byte_chars`]; an added token's content as UTF-8 (as the ByteLevel decoder does with a
/// token holding a character outside the map).
fn id_bytes(tokenizer: &tokenizers::Tokenizer) -> Vec<Vec<u8>> {
    let chars = byte_chars();
    let mut char_byte: AHashMap<char, u8> = AHashMap::new();
    for (b, c) in chars.iter().enumerate() {
        char_byte.insert(*c, b as u8);
    }
    let vocab = tokenizer.get_vocab(true);
    let size = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
    let mut table = vec![Vec::new(); size];
    for (token, id) in vocab {
        let Some(slot) = table.get_mut(id as usize) else {
            continue;
        };
        let mapped: Option<Vec<u8>> = token.chars().map(|c| char_byte.get(&c).copied()).collect();
        *slot = mapped.unwrap_or_else(|| token.into_bytes());
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::{read_source, sample, walk, Exclude};
    use rayon::prelude::*;
    use std::path::{Path, PathBuf};
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    const SPECIAL: [&str; 5] = [
        "<|endoftext|>",
        "<|system|>",
        "<|user|>",
        "<|assistant|>",
        "<|end|>",
    ];

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// The project's own Rust sources: always there, real code.
    fn own_sources() -> Vec<String> {
        let w = workspace();
        let corpus = walk(&[w.join("libs"), w.join("tools")], &Exclude::default()).unwrap();
        corpus
            .files
            .iter()
            .filter_map(|f| read_source(&f.path).ok())
            .collect()
    }

    /// About `bytes` of third-party Rust sources from the cargo registry (where this machine
    /// built the project), read in place, never copied into the repository.
    fn registry_sources(bytes: u64) -> Vec<(PathBuf, String)> {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
        let Some(src) = home.map(|h| h.join("registry/src")) else {
            return Vec::new();
        };
        let Ok(indexes) = std::fs::read_dir(&src) else {
            return Vec::new();
        };
        let mut roots: Vec<PathBuf> = indexes.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        roots.sort();
        let Ok(corpus) = walk(&roots, &Exclude::default()) else {
            return Vec::new();
        };
        sample(&corpus.files, bytes, 1)
            .into_iter()
            .filter_map(|f| read_source(&f.path).ok().map(|t| (f.path, t)))
            .collect()
    }

    fn trained(vocab: usize) -> tokenizers::Tokenizer {
        crate::train::train_bpe(own_sources().into_iter(), vocab, &SPECIAL, false).unwrap()
    }

    fn reference(t: &tokenizers::Tokenizer, text: &str) -> Vec<u32> {
        t.encode_fast(text, false).unwrap().get_ids().to_vec()
    }

    fn ours(e: &Encoder, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        e.encode(text, &mut ids).unwrap();
        ids
    }

    /// Texts that exercise the edges: added tokens inside words and overlapping prefixes,
    /// whitespace runs before words and at the end, contractions, Unicode letters, digits,
    /// separators and marks.
    fn edge_texts() -> Vec<String> {
        let mut v: Vec<String> = [
            "",
            " ",
            "  ",
            "\n",
            "\n\n\n",
            "a",
            "fn main() {\n    println!(\"hi\");\n}\n",
            "x  y   z\t\tw \n q  ",
            "<|endoftext|>",
            "a<|endoftext|>b<|end|><|endoftext|<|user|><|system|>x<|assistant|>",
            "<|end|>ofText <|endoftext|> <|endoftext|>\n<|end|>",
            "<|<|end|>|>",
            "it's they've we'll I'm he'd 'S 's's don't",
            "héllo wörld 日本語 ✓ 🦀 crab\u{200d}🦀 ①②③ ½ ٣٤ Ⅻ",
            "tabs\u{85}next\u{a0}nbsp\u{2028}ls\u{3000}ideo\u{200b}zw \u{feff}bom",
            "  \u{a0}x \u{3000}\u{3000}y\u{2029}",
            "e\u{301}\u{301} a\u{300}b 1\u{301}",
            "let x = 0x1F_u8; // 123456789 1.5e-3",
            "   leading and trailing   ",
            "//! doc\r\n/// more\r\n\r\n",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push(" ".repeat(1000) + "x");
        v.push("a".repeat(5000));
        v
    }

    #[test]
    fn byte_chars_is_the_tokenizers_alphabet() {
        let ours: ahash::AHashSet<char> = byte_chars().into_iter().collect();
        assert_eq!(ours.len(), 256);
        assert_eq!(ours, ByteLevel::alphabet());
        assert_eq!(byte_chars()[b' ' as usize], 'Ġ');
        assert_eq!(byte_chars()[b'\n' as usize], 'Ċ');
    }

    use tokenizers::pre_tokenizers::byte_level::ByteLevel;

    /// Our pre-tokenization against the crate's (Oniguruma) on every Unicode scalar value in
    /// contexts that tell letters, numbers, spaces and the rest apart.
    #[test]
    fn pre_tokenizer_matches_on_every_character() {
        let re = regex::Regex::new(SPLIT).unwrap();
        let byte_level = ByteLevel::new(false, true, true);
        let chars: Vec<char> = (0..=0x10FFFFu32).filter_map(char::from_u32).collect();
        chars.par_chunks(8192).for_each(|chunk| {
            let mut text = String::new();
            for &c in chunk {
                // c after a letter, before a digit, after a space, doubled before a letter, alone
                // after a newline, and before 's.
                text.extend([
                    'a', c, '1', ' ', c, c, 'b', '\n', c, ' ', ' ', c, '\'', 's', ' ',
                ]);
            }
            let mut want = PreTokenizedString::from(text.as_str());
            byte_level.pre_tokenize(&mut want).unwrap();
            let want: Vec<(usize, usize)> = want
                .get_splits(OffsetReferential::Original, OffsetType::Byte)
                .into_iter()
                .map(|(_, o, _)| o)
                .collect();
            let mut got = Vec::new();
            let base = text.as_ptr() as usize;
            pre_tokenize::<()>(&re, &text, |w| {
                let start = w.as_ptr() as usize - base;
                got.push((start, start + w.len()));
                Ok(())
            })
            .unwrap();
            if got != want {
                let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
                let (s, _) = want[at.min(want.len() - 1)];
                panic!(
                    "split differs near {:?}: ours {:?}, crate {:?}",
                    &text[s.saturating_sub(8)..(s + 16).min(text.len())],
                    &got[at..(at + 4).min(got.len())],
                    &want[at..(at + 4).min(want.len())]
                );
            }
        });
    }

    #[test]
    fn fast_path_equals_tokenizers_on_edge_texts() {
        let t = trained(1024);
        let e = Encoder::new(t.clone());
        assert!(e.is_fast());
        for text in edge_texts() {
            let want = reference(&t, &text);
            assert_eq!(ours(&e, &text), want, "text {text:?}");
            // Again, now from the cache.
            assert_eq!(ours(&e, &text), want, "cached, text {text:?}");
            let mut bytes = Vec::new();
            e.decode_bytes(&want, &mut bytes).unwrap();
            assert_eq!(bytes, text.as_bytes(), "decode of {text:?}");
            assert_eq!(t.decode(&want, false).unwrap(), text);
        }
        // The special tokens have ids 0.. in order and are recognised inside text.
        for (i, s) in SPECIAL.iter().enumerate() {
            assert_eq!(e.token_to_id(s), Some(i as u32));
        }
        assert_eq!(ours(&e, "x<|endoftext|>y")[1], 0);
    }

    /// Real third-party files, in parallel (the caches are per thread): every id equal.
    #[test]
    fn fast_path_equals_tokenizers_on_real_files() {
        let t = trained(2048);
        let e = Encoder::new(t.clone());
        let mut files = registry_sources(3_000_000);
        let own = own_sources();
        files.extend(own.into_iter().map(|s| (PathBuf::from("own"), s)));
        assert!(files.len() > 20, "a corpus to compare on");
        let bytes: usize = files.iter().map(|f| f.1.len()).sum();
        eprintln!("comparing on {} files, {bytes} bytes", files.len());
        files.par_iter().for_each(|(path, text)| {
            let want = reference(&t, text);
            let got = ours(&e, text);
            if got != want {
                let at = got.iter().zip(&want).position(|(a, b)| a != b);
                panic!("{}: ids differ at {at:?}", path.display());
            }
            let mut back = Vec::new();
            e.decode_bytes(&got, &mut back).unwrap();
            assert!(back == text.as_bytes(), "{}: round trip", path.display());
        });
    }

    #[test]
    fn other_tokenizers_fall_back_to_the_crate() {
        let t = trained(400);
        let mut json: serde_json::Value =
            serde_json::from_str(&t.to_string(false).unwrap()).unwrap();
        json["pre_tokenizer"]["add_prefix_space"] = serde_json::Value::Bool(true);
        let e = Encoder::from_json(&json.to_string()).unwrap();
        assert!(!e.is_fast());
        let t2: tokenizers::Tokenizer = json.to_string().parse().unwrap();
        for text in edge_texts() {
            assert_eq!(ours(&e, &text), reference(&t2, &text));
        }
        assert!(Encoder::from_json("{").is_err());
        let mut out = Vec::new();
        assert!(matches!(
            Encoder::new(t).decode_bytes(&[70000], &mut out),
            Err(EncodeError::UnknownId(70000))
        ));
    }

    #[test]
    fn training_is_deterministic_and_specials_come_first() {
        let a = trained(600).to_string(true).unwrap();
        let b = trained(600).to_string(true).unwrap();
        assert_eq!(a, b);
        let t: tokenizers::Tokenizer = a.parse().unwrap();
        assert_eq!(t.get_vocab_size(true), 600);
        for (i, s) in SPECIAL.iter().enumerate() {
            assert_eq!(t.token_to_id(s), Some(i as u32));
        }
        assert!(crate::train::train_bpe(std::iter::once("x"), 260, &SPECIAL, false).is_err());
        assert!(crate::train::train_bpe(std::iter::once("x"), 65537, &SPECIAL, false).is_err());
    }

    /// The vendored corpus (`make corpus`) with the tokenizer `tokenize train` made from it
    /// (`TOKENS_TOKENIZER`, default data/generated/tokenizer.json): every file's ids equal the
    /// crate's, and the speed of both on one thread and on all. Slow (minutes): run by hand with
    /// `cargo test --release -p tokens -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn vendored_corpus_equals_tokenizers_and_speed() {
        let w = workspace();
        let json_path = std::env::var_os("TOKENS_TOKENIZER")
            .map_or_else(|| w.join("data/generated/tokenizer.json"), PathBuf::from);
        let json = std::fs::read_to_string(&json_path).expect("a trained tokenizer.json");
        let t: tokenizers::Tokenizer = json.parse().unwrap();
        let corpus = walk(&[w.join("data/vendor")], &Exclude::default()).unwrap();
        let files: Vec<String> = corpus
            .files
            .iter()
            .filter_map(|f| read_source(&f.path).ok())
            .collect();
        let bytes: usize = files.iter().map(String::len).sum();
        let mbs = |secs: f64| bytes as f64 / 1e6 / secs;
        let e = Encoder::new(t.clone());
        let clock = std::time::Instant::now();
        let ours_all: Vec<Vec<u32>> = files.par_iter().map(|f| ours(&e, f)).collect();
        let ours_par = clock.elapsed().as_secs_f64();
        let e1 = Encoder::new(t.clone());
        let clock = std::time::Instant::now();
        files.iter().for_each(|f| drop(ours(&e1, f)));
        let ours_one = clock.elapsed().as_secs_f64();
        let clock = std::time::Instant::now();
        let theirs: Vec<Vec<u32>> = files.par_iter().map(|f| reference(&t, f)).collect();
        let theirs_par = clock.elapsed().as_secs_f64();
        eprintln!(
            "{} files, {bytes} bytes: ours {:.1} MB/s on {} threads, {:.1} MB/s on one; tokenizers crate {:.1} MB/s on {} threads",
            files.len(),
            mbs(ours_par),
            rayon::current_num_threads(),
            mbs(ours_one),
            mbs(theirs_par),
            rayon::current_num_threads()
        );
        let differ = ours_all.iter().zip(&theirs).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "files whose ids differ");
    }
}
