//! Cross-tool tests of Q8_0 tables: the token embedding and a tied or dense LM head stored as
//! ggml's 8-bit blocks (`quantize-export --embedding q8_0`).
//!
//! - The bytes are the reference Python package's (`gguf.quants`, llama.cpp's rule bit for bit)
//!   for the same f32 values: from the library on values chosen to hit the rule's corners, and
//!   through the tool on a llama.cpp file's f16 table.
//! - gguf-inspect lists the type.
//! - A model exported with a Q8_0 head serves (`serve --prompt`), and its logits stay close to
//!   those of the same model with its f16 head: [`HEAD_TOLERANCE`] of the logit range with only
//!   the head changed, [`MODEL_TOLERANCE`] with the embedding's rows too.

use std::path::Path;

use assert_cmd::Command;
use cross_tool_tests::fixture_script;
use model::model::{Embedding, Head};
use model::{KvPrecision, Logits, Model, SeqInput};
use serde_json::Value as Json;

/// Largest |Q8_0 logit − f16 logit| allowed with only the head in Q8_0, relative to the
/// position's f16 logit range. Each table value moves by at most half its block's step
/// (max |x| / 254 of its block of 32): over a 256-value row of this random table (std 0.15)
/// about 1e-3 of the range at one standard deviation. Measured: 3.4e-3.
const HEAD_TOLERANCE: f64 = 1e-2;

/// The same with the (tied) embedding's rows in Q8_0 too: the layers carry the input's change
/// on, and an activation near an int8 step flips it (the default f16 KV cache moves these
/// random models' logits by about 1 % of the range for the same reason, tests/tests/import.rs).
/// Measured: 2.6e-2.
const MODEL_TOLERANCE: f64 = 5e-2;

/// `gguf.quants`' Q8_0 bytes of `values` (a multiple of 32), through tests/fixtures/gguf_interop.py.
fn reference_q8_0(dir: &Path, values: &[f32]) -> Vec<u8> {
    let (input, output) = (dir.join("values.f32"), dir.join("blocks.bin"));
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&input, bytes).unwrap();
    fixture_script(
        "gguf_interop.py",
        &["q8_0", input.to_str().unwrap(), output.to_str().unwrap()],
    );
    std::fs::read(output).unwrap()
}

fn ours(values: &[f32]) -> Vec<u8> {
    let mut blocks = Vec::new();
    gguf::q8::quantize_into(values, &mut blocks);
    blocks
}

#[test]
fn our_q8_0_bytes_are_the_reference_packages() {
    let dir = tempfile::tempdir().unwrap();
    let mut values = Vec::new();
    // Largest |x| = 127: d = 1 and x · (1/d) = x, so the halves are ties (away from zero).
    values.extend((0..32).map(|i| if i == 0 { -127.0 } else { i as f32 - 15.5 }));
    values.extend([0.0f32; 32]);
    values.extend((0..32).map(|i| if i == 9 { -0.0 } else { 0.0 }));
    values.extend((0..32).map(|i| if i == 31 { 3e-5 } else { 0.0 }));
    // A scale that rounds to f16 differently from its f32 value, and codes from the f32 one.
    values.extend((0..32).map(|i| (i as f32 - 11.0) / 127.0));
    // Near the largest finite f16 scale, and scales that are f16 subnormals.
    values.extend((0..32).map(|i| 8.2e6 * ((i * 7 % 32) as f32 / 31.0 - 0.5)));
    values.extend((0..32).map(|i| 1e-4 * ((i * 5 % 32) as f32 - 16.0)));
    values.extend((0..32).map(|i| 2e-9 * ((i * 3 % 32) as f32 - 16.0)));
    // And many ordinary blocks.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    values.extend((0..32 * 500).map(|i| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let unit = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        unit * 2f32.powi(i / 32 % 13 - 6)
    }));
    assert_eq!(ours(&values), reference_q8_0(dir.path(), &values));
}

/// Every position's logits of `tokens` run as one prompt through an f32 KV cache.
fn all_logits(model: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    let config = &model.config;
    let mut cache =
        model::KvCache::with_precision(config.n_layers, config.kv_dim(), KvPrecision::F32);
    let mut batch = [SeqInput {
        cache: &mut cache,
        tokens,
        logits: Logits::All,
    }];
    let flat = model.forward(&mut batch).remove(0);
    flat.chunks_exact(config.vocab_size)
        .map(<[f32]>::to_vec)
        .collect()
}

fn quantize_export(args: &[&str]) -> String {
    let out = Command::cargo_bin("quantize-export")
        .unwrap()
        .args(args)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    String::from_utf8(out).unwrap()
}

#[test]
fn a_q8_0_head_serves_and_stays_close_to_the_f16_head() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // A llama.cpp file with a tied f16 embedding (the head), imported as it is and in Q8_0.
    fixture_script(
        "tq_llama.py",
        &[
            "write",
            "--type",
            "TQ2_0",
            "--tied",
            "--out",
            &path("source"),
        ],
    );
    let source = path("source/model.gguf");
    quantize_export(&["--gguf", &source, "--out", &path("f16.gguf")]);
    let report = quantize_export(&[
        "--gguf",
        &source,
        "--out",
        &path("q8.gguf"),
        "--embedding",
        "q8_0",
        "--json",
    ]);
    let report: Json = serde_json::from_str(&report).unwrap();
    assert_eq!(report["embedding"], "q8_0");

    // The table's bytes are the reference package's for the source's (f16) values.
    let table = |file: &str| {
        let gguf = gguf::GgufFile::open(file).unwrap();
        let t = gguf.tensor("token_embd.weight").unwrap();
        (t.info.ggml_type(), t.data.to_vec())
    };
    let (source_type, f16_bytes) = table(&source);
    assert_eq!(source_type, gguf::GgmlType::F16);
    let values: Vec<f32> = f16_bytes
        .chunks_exact(2)
        .map(|b| gguf::types::f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
        .collect();
    let (q8_type, q8_bytes) = table(&path("q8.gguf"));
    assert_eq!(q8_type, gguf::GgmlType::Q8_0);
    assert_eq!(q8_bytes, reference_q8_0(dir.path(), &values));
    assert_eq!(q8_bytes.len() * 32, values.len() * 34);

    // gguf-inspect lists it.
    let inspect = Command::cargo_bin("gguf-inspect")
        .unwrap()
        .args([&path("q8.gguf"), "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let inspect: Json = serde_json::from_slice(&inspect).unwrap();
    let row = inspect["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "token_embd.weight")
        .unwrap();
    assert_eq!(row["type"], "Q8_0", "{row}");
    assert_eq!(row["bytes"], q8_bytes.len());

    // serve runs it.
    let out = Command::cargo_bin("serve")
        .unwrap()
        .args([
            "--model",
            &path("q8.gguf"),
            "--prompt",
            "Hello world",
            "--max-tokens",
            "8",
        ])
        .assert()
        .success()
        .get_output()
        .stderr
        .clone();
    let stderr = String::from_utf8_lossy(&out);
    assert!(stderr.contains("completion tokens"), "{stderr}");

    // Its logits stay close to the f16 head's: with only the head in Q8_0 (the f16 model given
    // the Q8_0 table as a dense head), and as exported (the embedding's rows too, whose change
    // the layers carry on, int8 activation steps included).
    let (f16_model, _) = Model::load(path("f16.gguf").as_ref(), None).unwrap();
    let (q8_model, tokenizer) = Model::load(path("q8.gguf").as_ref(), None).unwrap();
    // 34 bytes per 32 values against 64 (and up to 3 rows of padding, q8.rs).
    let (q8_head, f16_head) = (q8_model.head_table_bytes(), f16_model.head_table_bytes());
    assert!(q8_head * 64 < f16_head * 35, "{q8_head} against {f16_head}");
    let (mut head_only, _) = Model::load(path("f16.gguf").as_ref(), None).unwrap();
    let (Embedding::Q8_0(_), Head::Tied) = (&q8_model.embedding, &q8_model.head) else {
        panic!("a tied Q8_0 table");
    };
    let (q8_table, _) = Model::load(path("q8.gguf").as_ref(), None).unwrap();
    head_only.head = Head::Dense(q8_table.embedding);
    let prompts: Vec<Vec<u32>> = [
        "Hello world! The model",
        "The capital of France is",
        "Thanks",
    ]
    .iter()
    .map(|text| tokenizer.encode_prompt(text).unwrap())
    .collect();
    let worst = |model: &Model| {
        let mut worst = 0.0f64;
        for tokens in &prompts {
            let (a, b) = (all_logits(&f16_model, tokens), all_logits(model, tokens));
            for (a, b) in a.iter().zip(&b) {
                let (lo, hi) = a
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                for (&x, &y) in a.iter().zip(b) {
                    worst = worst.max(f64::from((x - y).abs()) / f64::from(hi - lo));
                }
            }
        }
        worst
    };
    let (head, whole) = (worst(&head_only), worst(&q8_model));
    eprintln!(
        "largest logit gap from the f16 model, of the range: head {head:.2e}, whole {whole:.2e}"
    );
    assert!(
        head > 0.0 && head < HEAD_TOLERANCE,
        "Q8_0 head: {head} of the range from the f16 head's logits"
    );
    assert!(
        whole < MODEL_TOLERANCE,
        "Q8_0 tables: {whole} of the range from the f16 model's logits"
    );
}
