//! Cross-tool tests of `tokenize`: the real binary on a small real corpus (the project's own
//! library sources, copied into a temporary folder, plus edge files written here: empty, Unicode,
//! special-token text, non-UTF-8, a symbolic link, a benchmark folder to exclude).
//! train → encode → the llm.c header read field by field → decode gives back every document
//! byte for byte; the same output for the same input (training twice, encoding with 1 or 2
//! threads); bad inputs exit 2 with one line naming the file.

use assert_cmd::Command;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use tokens::corpus::{is_validation, read_source, walk, Exclude};
use tokens::TokenFile;

fn tokenize() -> Command {
    Command::cargo_bin("tokenize")
        .expect("the tokenize binary is built (make test builds every binary first)")
}

/// Runs tokenize with `args`; returns (exit code, stdout bytes, stderr).
fn run(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = tokenize().args(args).output().expect("tokenize runs");
    (
        out.status.code().expect("exit code, not a signal"),
        out.stdout,
        String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    )
}

fn run_ok(args: &[&str]) -> (Vec<u8>, String) {
    let (code, stdout, stderr) = run(args);
    assert_eq!(code, 0, "args {args:?}: {stderr}");
    (stdout, stderr)
}

fn json(args: &[&str]) -> Json {
    let (stdout, _) = run_ok(args);
    serde_json::from_slice(&stdout).expect("--json prints one JSON document")
}

/// Asserts exit 2, nothing on stdout and exactly one line on stderr; returns that line.
fn fails_with_one_line(args: &[&str]) -> String {
    let (code, stdout, stderr) = run(args);
    assert_eq!(code, 2, "args {args:?}: stderr {stderr:?}");
    assert!(stdout.is_empty(), "args {args:?}");
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr:?}");
    assert!(stderr.starts_with("tokenize: "), "{stderr:?}");
    stderr.trim_end().to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// A corpus folder: libs/*/src/**/*.rs of this repository plus the edge files.
struct Corpus {
    dir: tempfile::TempDir,
}

impl Corpus {
    fn new() -> Corpus {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("corpus");
        let libs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../libs");
        let own = walk(&[libs], &Exclude::new(["/fuzz/"])).unwrap();
        assert!(own.files.len() > 20, "the project's own sources");
        for f in &own.files {
            let to = root.join("libs").join(&f.rel);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&f.path, &to).unwrap();
        }
        let edge = root.join("edge");
        std::fs::create_dir_all(&edge).unwrap();
        std::fs::write(edge.join("empty.rs"), "").unwrap();
        std::fs::write(
            edge.join("unicode.rs"),
            "// héllo wörld 日本語 ✓ 🦀\nfn größe() -> &'static str { \"\u{a0}\u{3000}½①\" }\n\n\n   \n",
        )
        .unwrap();
        std::fs::write(
            edge.join("special.rs"),
            "const EOT: &str = \"<|endoftext|>\"; // <|user|>hi<|end|><|endoftext|\n",
        )
        .unwrap();
        std::fs::write(edge.join("latin1.rs"), b"// caf\xe9\n").unwrap();
        std::fs::write(edge.join("notes.txt"), "not Rust").unwrap();
        let bench = root.join("benchmarks");
        std::fs::create_dir_all(&bench).unwrap();
        std::fs::write(bench.join("humaneval_0.rs"), "fn has_close_elements() {}\n").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(root.join("libs"), edge.join("link")).unwrap();
        Corpus { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("corpus")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn train(&self, out: &str, vocab: &str) -> Json {
        json(&[
            "train",
            "--input",
            s(&self.root()),
            "--vocab-size",
            vocab,
            "--exclude",
            "benchmarks",
            "--out",
            s(&self.path(out)),
            "--json",
        ])
    }

    fn encode(&self, tokenizer: &str, train: &str, val: &str, extra: &[&str]) -> Json {
        let (tokenizer, root) = (self.path(tokenizer), self.root());
        let (train, val) = (self.path(train), self.path(val));
        let mut args = vec![
            "encode",
            "--tokenizer",
            s(&tokenizer),
            "--input",
            s(&root),
            "--out",
            s(&train),
            "--val-out",
            s(&val),
            "--val-fraction",
            "0.2",
            "--exclude",
            "benchmarks",
            "--json",
        ];
        args.extend_from_slice(extra);
        json(&args)
    }
}

/// The llm.c header, read as llm.c does: 256 little-endian i32 from the start of the file.
fn header(path: &Path) -> Vec<i32> {
    let bytes = std::fs::read(path).unwrap();
    assert!(bytes.len() >= 1024, "{}: header", path.display());
    bytes[..1024]
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn train_encode_decode_round_trip() {
    let c = Corpus::new();
    let summary = c.train("tok.json", "1000");
    assert_eq!(summary["vocab_size"], 1000);
    assert_eq!(summary["skipped"], 1, "latin1.rs");
    assert_eq!(summary["excluded"], 1, "benchmarks/");
    let files = summary["files"].as_u64().unwrap();

    let tokenizer = std::fs::read_to_string(c.path("tok.json")).unwrap();
    let encoder = tokens::Encoder::from_json(&tokenizer).unwrap();
    assert!(encoder.is_fast());
    for (i, t) in [
        "<|endoftext|>",
        "<|system|>",
        "<|user|>",
        "<|assistant|>",
        "<|end|>",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(encoder.token_to_id(t), Some(i as u32), "{t}");
    }

    let e = c.encode("tok.json", "train.bin", "val.bin", &[]);
    assert_eq!(e["files"].as_u64(), Some(files));
    assert_eq!(e["skipped"], 1);
    assert_eq!(e["excluded"], 1);
    assert_eq!(e["fast_path"], true);
    assert!(e["val_files"].as_u64().unwrap() > 0, "{e}");
    assert!(e["mb_per_s"].as_f64().unwrap() > 0.0);

    // The header, field by field, and the length it implies.
    for (name, key) in [("train.bin", "train_tokens"), ("val.bin", "val_tokens")] {
        let path = c.path(name);
        let h = header(&path);
        assert_eq!(h[0], 20240520, "{name}: magic");
        assert_eq!(h[1], 1, "{name}: u16 tokens");
        assert_eq!(i64::from(h[2]), e[key].as_i64().unwrap(), "{name}: count");
        assert!(h[3..].iter().all(|&x| x == 0), "{name}: the rest is zero");
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len, 1024 + 2 * h[2] as u64, "{name}: length");
        let file = TokenFile::open(&path).unwrap();
        assert_eq!(file.len(), h[2] as usize);
        assert!(file.tokens().iter().all(|&t| t < 1000));
        assert_eq!(
            file.tokens()[0],
            0,
            "{name}: a document starts with <|endoftext|>"
        );
    }

    // Decoding gives back every document, in walk order, each after <|endoftext|>.
    let corpus = walk(&[c.root()], &Exclude::new(["benchmarks"])).unwrap();
    let (mut want_train, mut want_val) = (Vec::new(), Vec::new());
    for f in &corpus.files {
        let Ok(text) = read_source(&f.path) else {
            continue;
        };
        let want = if is_validation(&f.rel, 0.2) {
            &mut want_val
        } else {
            &mut want_train
        };
        want.extend_from_slice(b"<|endoftext|>");
        want.extend_from_slice(text.as_bytes());
    }
    for (name, want) in [("train.bin", want_train), ("val.bin", want_val)] {
        let (text, _) = run_ok(&[
            "decode",
            "--tokenizer",
            s(&c.path("tok.json")),
            "--input",
            s(&c.path(name)),
        ]);
        assert!(text == want, "{name}: decode is not the corpus");
    }

    // A range: the first token is the separator; a count past the end stops there.
    let (first, _) = run_ok(&[
        "decode",
        "--tokenizer",
        s(&c.path("tok.json")),
        "--input",
        s(&c.path("val.bin")),
        "--count",
        "1",
    ]);
    assert_eq!(first, b"<|endoftext|>");
    let n = e["val_tokens"].as_u64().unwrap();
    let (tail, _) = run_ok(&[
        "decode",
        "--tokenizer",
        s(&c.path("tok.json")),
        "--input",
        s(&c.path("val.bin")),
        "--start",
        &n.to_string(),
        "--count",
        "10",
    ]);
    assert!(tail.is_empty());
}

#[test]
fn same_input_same_output() {
    let c = Corpus::new();
    c.train("a.json", "700");
    c.train("b.json", "700");
    let a = std::fs::read(c.path("a.json")).unwrap();
    assert_eq!(
        a,
        std::fs::read(c.path("b.json")).unwrap(),
        "training twice"
    );
    c.encode("a.json", "t2.bin", "v2.bin", &[]);
    c.encode("a.json", "t1.bin", "v1.bin", &["--threads", "1"]);
    for (x, y) in [("t1.bin", "t2.bin"), ("v1.bin", "v2.bin")] {
        let x = std::fs::read(c.path(x)).unwrap();
        assert!(x == std::fs::read(c.path(y)).unwrap(), "1 and 2 threads");
    }
    // No temporary file left beside the outputs.
    let leftovers: Vec<String> = std::fs::read_dir(c.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn max_bytes_samples_deterministically() {
    let c = Corpus::new();
    let run = |out: &str, seed: &str| {
        json(&[
            "train",
            "--input",
            s(&c.root()),
            "--vocab-size",
            "400",
            "--max-bytes",
            "20K",
            "--seed",
            seed,
            "--out",
            s(&c.path(out)),
            "--json",
        ])
    };
    let a = run("a.json", "3");
    let b = run("b.json", "3");
    assert!(a["bytes"].as_u64().unwrap() < a["corpus_bytes"].as_u64().unwrap());
    assert!(a["bytes"].as_u64().unwrap() >= 20 << 10);
    assert_eq!(a["files"], b["files"]);
    assert_eq!(
        std::fs::read(c.path("a.json")).unwrap(),
        std::fs::read(c.path("b.json")).unwrap()
    );
}

#[test]
fn bad_inputs_exit_2_with_one_line() {
    let c = Corpus::new();
    let root = c.root();
    let tok = c.path("tok.json");
    let missing = c.path("no-such-dir");
    let train = |input: &Path, vocab: &str| {
        fails_with_one_line(&[
            "train",
            "--input",
            s(input),
            "--vocab-size",
            vocab,
            "--out",
            s(&tok),
        ])
    };
    let line = train(&missing, "500");
    assert!(
        line.contains("no-such-dir") && line.contains("does not exist"),
        "{line}"
    );
    let line = train(&root, "100");
    assert!(line.contains("too small") && line.contains("261"), "{line}");
    let line = train(&root, "70000");
    assert!(
        line.contains("too large") && line.contains("65536"),
        "{line}"
    );
    let line = fails_with_one_line(&[
        "train",
        "--input",
        s(&root),
        "--vocab-size",
        "500",
        "--out",
        s(&c.path("no/such/folder/tok.json")),
    ]);
    assert!(line.contains("does not exist"), "{line}");
    let empty = c.path("empty-dir");
    std::fs::create_dir(&empty).unwrap();
    let line = train(&empty, "500");
    assert!(line.contains("no .rs files"), "{line}");
    let line = fails_with_one_line(&["train", "--input", s(&root), "--out", s(&tok)]);
    assert!(line.contains("--vocab-size"), "{line}");
    assert!(!tok.exists(), "nothing written on failure");

    // A tokenizer that is not one, and one too big for u16 token files.
    std::fs::write(c.path("bad.json"), "{ not json").unwrap();
    let t_bin = c.path("t.bin");
    let encode = |tokenizer: &Path, extra: &[&str]| {
        let mut args = vec![
            "encode",
            "--tokenizer",
            s(tokenizer),
            "--input",
            s(&root),
            "--out",
            s(&t_bin),
        ];
        args.extend_from_slice(extra);
        fails_with_one_line(&args)
    };
    let line = encode(&c.path("bad.json"), &["--val-fraction", "0"]);
    assert!(line.contains("bad.json"), "{line}");
    let line = encode(&c.path("missing.json"), &["--val-fraction", "0"]);
    assert!(line.contains("missing.json"), "{line}");
    run_ok(&[
        "train",
        "--input",
        s(&root),
        "--vocab-size",
        "300",
        "--out",
        s(&tok),
    ]);
    let mut big: Json = serde_json::from_str(&std::fs::read_to_string(&tok).unwrap()).unwrap();
    let vocab = big["model"]["vocab"].as_object_mut().unwrap();
    for i in 0..65536 {
        vocab.insert(format!("<|filler{i}|>"), Json::from(300 + i));
    }
    std::fs::write(c.path("big.json"), big.to_string()).unwrap();
    let line = encode(&c.path("big.json"), &["--val-fraction", "0"]);
    assert!(line.contains("big.json") && line.contains("u16"), "{line}");
    let line = encode(&tok, &[]);
    assert!(line.contains("--val-out"), "{line}");
    let line = encode(&tok, &["--val-fraction", "1.5", "--val-out", "v.bin"]);
    assert!(line.contains("between 0 and 1"), "{line}");
    assert!(!t_bin.exists(), "nothing written on failure");

    // Corrupt token files.
    let good = c.path("good.bin");
    run_ok(&[
        "encode",
        "--tokenizer",
        s(&tok),
        "--input",
        s(&root),
        "--out",
        s(&good),
        "--val-fraction",
        "0",
    ]);
    let bytes = std::fs::read(&good).unwrap();
    let decode = |name: &str, data: &[u8]| {
        let p = c.path(name);
        std::fs::write(&p, data).unwrap();
        fails_with_one_line(&["decode", "--tokenizer", s(&tok), "--input", s(&p)])
    };
    let line = decode("short.bin", &bytes[..bytes.len() - 3]);
    assert!(
        line.contains("short.bin") && line.contains("header says"),
        "{line}"
    );
    let mut magic = bytes.clone();
    magic[0] ^= 0xff;
    let line = decode("magic.bin", &magic);
    assert!(
        line.contains("magic.bin") && line.contains("20240520"),
        "{line}"
    );
    let line = decode("tiny.bin", &bytes[..10]);
    assert!(
        line.contains("tiny.bin") && line.contains("header"),
        "{line}"
    );
    let mut foreign = bytes.clone();
    foreign[1024..1026].copy_from_slice(&60000u16.to_le_bytes());
    let line = decode("foreign.bin", &foreign);
    assert!(
        line.contains("foreign.bin") && line.contains("60000"),
        "{line}"
    );
    let line = fails_with_one_line(&[
        "decode",
        "--tokenizer",
        s(&tok),
        "--input",
        s(&good),
        "--start",
        "999999999",
    ]);
    assert!(line.contains("past the end"), "{line}");
}

#[test]
fn help_and_version() {
    for args in [&["--help"][..], &["encode", "--help"], &["--version"]] {
        let (out, _) = run_ok(args);
        assert!(!out.is_empty());
    }
    let (out, _) = run_ok(&["--help"]);
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("20240520") && out.contains("Examples"),
        "{out}"
    );
}
