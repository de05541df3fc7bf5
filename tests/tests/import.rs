//! Cross-tool tests of `quantize-export --hf` / `--gguf` (libs/import): ternary models made
//! elsewhere, imported and run by this project's engine, against the reference implementations.
//!
//! - Hugging Face transformers' `BitNetForCausalLM`: a random tiny model in two folders (packed
//!   2-bit weights, bf16 master weights) with transformers' own logits and greedy continuations,
//!   committed under tests/fixtures/bitnet-tiny/ (`scripts/bitnet_reference.sh` regenerates it;
//!   it needs torch, so `make test` only reads it).
//! - llama.cpp's TQ2_0 / TQ1_0: a random tiny Llama written by the reference `gguf` package and
//!   its numpy quantizers (tests/fixtures/tq_llama.py, run here with the project venv's Python),
//!   with a numpy forward of the dequantized model as the reference; the same script checks the
//!   import bit for bit.
//! - Bad input: exit 2, one line naming the problem, nothing written.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use model::{Logits, Model, SeqInput};
use serde_json::{json, Value as Json};

fn quantize_export() -> Command {
    Command::cargo_bin("quantize-export").expect("quantize-export is built")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn read_json(path: &Path) -> Json {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Runs tests/fixtures/tq_llama.py with the venv's Python; its stdout.
fn tq_script(args: &[&str]) -> String {
    cross_tool_tests::fixture_script("tq_llama.py", args)
}

/// Every position's logits of `tokens` run as one prompt. The KV cache is f32, as the references
/// keep keys and values: the engine's default f16 cache moves these random models' logits by
/// about 1 % of their range.
fn all_logits(model: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = model::KvCache::with_precision(
        model.config.n_layers,
        model.config.kv_dim(),
        model::KvPrecision::F32,
    );
    let mut batch = [SeqInput {
        cache: &mut cache,
        tokens,
        logits: Logits::All,
    }];
    let flat = model.forward(&mut batch).remove(0);
    flat.chunks_exact(model.config.vocab_size)
        .map(<[f32]>::to_vec)
        .collect()
}

/// `count` greedy tokens after `prompt` (prefill, then one token at a time through an f32 cache).
fn greedy(model: &Model, prompt: &[u32], count: usize) -> Vec<u32> {
    let mut cache = model::KvCache::with_precision(
        model.config.n_layers,
        model.config.kv_dim(),
        model::KvPrecision::F32,
    );
    let mut next = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < count {
        let mut batch = [SeqInput {
            cache: &mut cache,
            tokens: &next,
            logits: Logits::Last,
        }];
        let logits = model.forward(&mut batch).remove(0);
        let best = (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap() as u32;
        out.push(best);
        next = vec![best];
    }
    out
}

fn ids(value: &Json) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// The largest |ours − theirs| over every position, relative to that position's logit range.
fn worst_relative_gap(ours: &[Vec<f32>], theirs: &Json) -> f64 {
    let theirs = theirs.as_array().unwrap();
    assert_eq!(ours.len(), theirs.len(), "positions");
    let mut worst = 0.0f64;
    for (row, reference) in ours.iter().zip(theirs) {
        let reference: Vec<f64> = reference
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(row.len(), reference.len(), "vocabulary");
        let (lo, hi) = reference
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        for (&a, &b) in row.iter().zip(&reference) {
            worst = worst.max((f64::from(a) - b).abs() / (hi - lo));
        }
    }
    worst
}

#[test]
fn llama_cpp_tq_files_import_bit_for_bit_and_run_like_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    // TQ1_0 with one scale per matrix in every block, as llama.cpp's conversion of a BitNet model
    // gives: imported with that granularity (stored in fewer bytes at load); and llama.cpp's
    // bitnet architecture (sub-layer norms, rotate-half RoPE, tied) with its embedding in Q8_0
    // (kept block for block, and run as the head).
    for (ggml_type, tied, arch, tables) in [
        ("TQ2_0", false, "llama", "F16"),
        ("TQ1_0", true, "llama", "F16"),
        ("TQ2_0", true, "bitnet", "Q8_0"),
    ] {
        let source_dir = dir.path().join(format!("{arch}-{ggml_type}"));
        let source_dir = source_dir.to_str().unwrap();
        let mut args = vec![
            "write", "--type", ggml_type, "--out", source_dir, "--arch", arch, "--tables", tables,
        ];
        if tied && arch == "llama" {
            args.extend(["--tied", "--per-tensor-scales"]);
        }
        tq_script(&args);
        let source = format!("{source_dir}/model.gguf");
        let ours = dir.path().join(format!("{arch}-{ggml_type}.gguf"));
        quantize_export()
            .args(["--gguf", &source, "--out", ours.to_str().unwrap(), "--json"])
            .assert()
            .success();
        // Every trit and block scale, after the q/k row reordering, equals the source's.
        let check = tq_script(&[
            "check",
            "--source",
            &source,
            "--ours",
            ours.to_str().unwrap(),
        ]);
        let check: Json = serde_json::from_str(&check).unwrap();
        assert_eq!(check["mismatches"], 0, "{check}");
        assert!(
            check["weights_compared"].as_u64().unwrap() > 1_000_000,
            "{check}"
        );

        let (model, tokenizer) = Model::load(&ours, None).unwrap();
        assert_eq!(model.config.tied_embeddings, tied);
        assert_eq!(
            matches!(model.embedding, model::model::Embedding::Q8_0(_)),
            tables == "Q8_0"
        );
        let granularity = match tied && arch == "llama" {
            true => model::ScaleGranularity::Tensor,
            false => model::ScaleGranularity::Block256,
        };
        assert_eq!(model.config.variant.weight_scales, granularity);
        assert_eq!(model.config.variant.sub_norms, arch == "bitnet");
        let reference = read_json(&Path::new(source_dir).join("reference.json"));
        for prompt in reference["prompts"].as_array().unwrap() {
            let tokens = ids(&prompt["tokens"]);
            let logits = all_logits(&model, &tokens);
            // The reference quantizes activations as this engine does (per row, absmax int8):
            // what is left is f32 against f64 arithmetic, and the rare int8 rounding it flips.
            let int8 = worst_relative_gap(&logits, &prompt["logits_int8"]);
            assert!(
                int8 < 2e-3,
                "{ggml_type}: {int8} of the range from the int8 reference"
            );
            // Against the float forward, the int8 activations' own error (2-3 % measured).
            let float = worst_relative_gap(&logits, &prompt["logits_float"]);
            assert!(
                float < 0.05,
                "{ggml_type}: {float} of the range from the float reference"
            );
            assert_eq!(
                greedy(&model, &tokens, 16),
                ids(&prompt["greedy"]),
                "{ggml_type}"
            );
        }
        if (ggml_type, arch) == ("TQ2_0", "llama") {
            the_tools_run_it_with_no_other_flags(&ours);
        }
        // The file's own chat template and BOS.
        let chat = tokenizer
            .encode_chat(&[model::ChatMessage {
                role: "user".into(),
                content: "Hi".into(),
            }])
            .unwrap();
        let bos = reference["meta"]["bos"].as_u64().unwrap() as u32;
        assert_eq!(chat.first(), Some(&bos));
        assert_eq!(tokenizer.encode_prompt("Hi").unwrap()[0], bos);
    }
}

/// serve (a completion and a chat), eval-compile and gguf-inspect take an imported file as it is.
fn the_tools_run_it_with_no_other_flags(model: &Path) {
    let model = model.to_str().unwrap();
    for chat in [false, true] {
        let mut serve = Command::cargo_bin("serve").unwrap();
        serve.args([
            "--model",
            model,
            "--prompt",
            "fn main() {",
            "--max-tokens",
            "4",
        ]);
        if chat {
            serve.arg("--chat");
        }
        let out = serve.assert().success().get_output().stderr.clone();
        let stderr = String::from_utf8_lossy(&out);
        assert!(stderr.contains("completion tokens"), "{stderr}");
    }
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("eval.json");
    Command::cargo_bin("eval-compile")
        .unwrap()
        .args([
            "--model",
            model,
            "--limit",
            "1",
            "--max-tokens",
            "8",
            "--out",
        ])
        .arg(&summary)
        .arg("--prompts")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/prompts/rust_tasks.jsonl"))
        .assert()
        .success();
    assert_eq!(read_json(&summary)["samples"], 1, "{}", read_json(&summary));
    let inspect = Command::cargo_bin("gguf-inspect")
        .unwrap()
        .args([model, "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let inspect: Json = serde_json::from_slice(&inspect).unwrap();
    assert_eq!(inspect["tensors"].as_array().unwrap().len(), 35);
}

#[test]
fn hugging_face_bitnet_folders_run_like_transformers() {
    let fixture = fixtures().join("bitnet-tiny");
    let reference = read_json(&fixture.join("reference.json"));
    let dir = tempfile::tempdir().unwrap();
    for variant in ["packed", "master"] {
        let ours = dir.path().join(format!("{variant}.gguf"));
        quantize_export()
            .arg("--hf")
            .arg(fixture.join(variant))
            .args(["--out", ours.to_str().unwrap()])
            .assert()
            .success();
        let (model, tokenizer) = Model::load(&ours, None).unwrap();
        assert_eq!(
            model.config.variant.ffn_activation,
            model::FfnActivation::Relu2
        );
        assert!(model.config.variant.sub_norms && model.config.tied_embeddings);
        for prompt in reference["prompts"].as_array().unwrap() {
            let tokens = ids(&prompt["ids"]);
            let text = prompt["text"].as_str().unwrap();
            assert_eq!(tokenizer.encode_prompt(text).unwrap(), tokens, "BOS + text");
            let logits = all_logits(&model, &tokens);
            let gap = worst_relative_gap(&logits, &prompt[format!("logits_{variant}")]);
            assert!(
                gap < 1e-2,
                "{variant}: {gap} of the logit range from transformers"
            );
            assert_eq!(
                greedy(&model, &tokens, 16),
                ids(&prompt[format!("greedy_{variant}")]),
                "{variant}: {text:?}"
            );
        }
        let messages: Vec<model::ChatMessage> = reference["chat"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| model::ChatMessage {
                role: m["role"].as_str().unwrap().into(),
                content: m["content"].as_str().unwrap().into(),
            })
            .collect();
        assert_eq!(
            tokenizer.encode_chat(&messages).unwrap(),
            ids(&reference["chat"]["ids"]),
            "the chat template renders as transformers' apply_chat_template"
        );
    }
}

/// Copies the packed BitNet fixture into `dir` for a broken variant of it.
fn copy_fixture(dir: &Path) -> PathBuf {
    let source = fixtures().join("bitnet-tiny/packed");
    let target = dir.join("model");
    std::fs::create_dir_all(&target).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
    }
    target
}

/// Rewrites the folder's model.safetensors with `edit` applied to its tensors.
fn edit_safetensors(
    folder: &Path,
    edit: impl Fn(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) {
    let path = folder.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            )
        })
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap();
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

#[test]
fn bad_imports_exit_2_naming_the_problem_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let expect_refusal = |folder: &Path, needle: &str| {
        let assert = quantize_export()
            .arg("--hf")
            .arg(folder)
            .args(["--out", out.to_str().unwrap()])
            .assert()
            .code(2);
        let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
        assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(!out.exists(), "nothing is written");
    };
    let q_proj = "model.layers.1.self_attn.q_proj.weight";

    let folder = copy_fixture(&dir.path().join("missing"));
    edit_safetensors(&folder, |t| t.retain(|(name, ..)| name != q_proj));
    expect_refusal(&folder, &format!("tensor {q_proj:?} is missing"));

    let folder = copy_fixture(&dir.path().join("shape"));
    edit_safetensors(&folder, |t| {
        let (_, _, shape, data) = t.iter_mut().find(|(name, ..)| name == q_proj).unwrap();
        shape[0] /= 2;
        data.truncate(data.len() / 2);
    });
    expect_refusal(&folder, "blk.1.attn_q.weight");

    let folder = copy_fixture(&dir.path().join("dtype"));
    edit_safetensors(&folder, |t| {
        let (_, dtype, shape, data) = t
            .iter_mut()
            .find(|(name, ..)| name == "model.norm.weight")
            .unwrap();
        *dtype = safetensors::Dtype::F64;
        data.resize(shape[0] * 8, 0);
    });
    expect_refusal(&folder, "\"model.norm.weight\" is F64");

    let folder = copy_fixture(&dir.path().join("arch"));
    let config = std::fs::read_to_string(folder.join("config.json")).unwrap();
    std::fs::write(
        folder.join("config.json"),
        config.replace("\"bitnet\"", "\"mamba\""),
    )
    .unwrap();
    expect_refusal(&folder, "model_type \"mamba\" is not supported");

    let folder = copy_fixture(&dir.path().join("truncated"));
    let weights = folder.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 1000]).unwrap();
    expect_refusal(&folder, "model.safetensors");

    // A llama.cpp file whose matrices are not ternary, or whose embedding is in a block type
    // other than Q8_0: refused by name.
    tq_script(&[
        "write",
        "--type",
        "TQ2_0",
        "--out",
        dir.path().join("tq").to_str().unwrap(),
    ]);
    let gguf = gguf::GgufFile::open(dir.path().join("tq/model.gguf")).unwrap();
    for (replaced, ggml_type, needle) in [
        (
            "blk.0.attn_q.weight",
            gguf::GgmlType::F32,
            "\"blk.0.attn_q.weight\" is F32: weight matrices must be TQ1_0 or TQ2_0",
        ),
        (
            "token_embd.weight",
            gguf::GgmlType::Q4_0,
            "\"token_embd.weight\" is Q4_0: supported types here: F32, F16, BF16, Q8_0",
        ),
    ] {
        let source = dir.path().join("replaced.gguf");
        let mut layout = gguf::Layout::new();
        for kv in gguf.metadata() {
            if kv.key != gguf::ALIGNMENT_KEY {
                layout.set(&kv.key, kv.value.clone()).unwrap();
            }
        }
        for t in gguf.tensors() {
            let (name, shape) = (t.info.name(), t.info.shape());
            let t_type = match name {
                _ if name == replaced => ggml_type,
                _ => t.info.ggml_type(),
            };
            layout.add_tensor(name, t_type, &shape).unwrap();
        }
        let mut writer = gguf::GgufWriter::create(&source, &layout).unwrap();
        for t in gguf.tensors() {
            let name = t.info.name();
            if name == replaced {
                let bytes = ggml_type.bytes_for(t.info.n_elements()).unwrap();
                writer.write_tensor(name, &vec![0; bytes as usize])
            } else {
                writer.write_tensor(name, t.data)
            }
            .unwrap();
        }
        writer.finish().unwrap();
        let assert = quantize_export()
            .arg("--gguf")
            .arg(&source)
            .args(["--out", out.to_str().unwrap()])
            .assert()
            .code(2);
        let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
        assert!(stderr.contains(needle), "{stderr}");
        assert!(!out.exists());
    }
}

#[test]
fn a_sentencepiece_vocabulary_tokenizes_as_sentencepiece_does() {
    // A SentencePiece BPE model (byte fallback) trained by the sentencepiece package, written
    // into a llama.cpp file as its converter does; our rebuilt tokenizer.json must give the same
    // ids for every text and decode them back.
    let dir = tempfile::tempdir().unwrap();
    let source_dir = dir.path().join("spm");
    cross_tool_tests::fixture_script("spm_vocab.py", &["--out", source_dir.to_str().unwrap()]);
    let ours = dir.path().join("spm.gguf");
    quantize_export()
        .arg("--gguf")
        .arg(source_dir.join("model.gguf"))
        .arg("--out")
        .arg(&ours)
        .assert()
        .success();
    let (_, tokenizer) = Model::load(&ours, None).unwrap();
    let reference = read_json(&source_dir.join("reference.json"));
    for case in reference["texts"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = tokenizer.encode(text).unwrap();
        assert_eq!(ids, self::ids(&case["ids"]), "{text:?}");
        assert_eq!(tokenizer.decode(&ids).unwrap(), text);
        let bos = reference["bos"].as_u64().unwrap() as u32;
        assert_eq!(tokenizer.encode_prompt(text).unwrap()[0], bos);
    }
}

/// A projection's GGUF name, rows, columns and values.
type Projection = (String, usize, usize, Vec<f32>);

/// The master BitNet fixture turned into a Llama folder whose projections hold ternary values
/// (`a · t`, a different `a` per matrix, stored F32) and whose head is its own BF16 matrix:
/// returns the folder and, by GGUF name, each projection's values.
fn ternary_llama_folder(dir: &Path) -> (PathBuf, Vec<Projection>) {
    let folder = copy_fixture(dir);
    let master = fixtures().join("bitnet-tiny/master/model.safetensors");
    std::fs::copy(&master, folder.join("model.safetensors")).unwrap();
    let mut config = read_json(&folder.join("config.json"));
    config["model_type"] = json!("llama");
    config["architectures"] = json!(["LlamaForCausalLM"]);
    config["hidden_act"] = json!("silu");
    config["tie_word_embeddings"] = json!(false);
    config
        .as_object_mut()
        .unwrap()
        .remove("quantization_config");
    std::fs::write(folder.join("config.json"), config.to_string()).unwrap();
    let expected = std::cell::RefCell::new(Vec::new());
    edit_safetensors(&folder, |tensors| {
        tensors.retain(|(name, ..)| !name.contains("sub_norm"));
        let embedding = tensors
            .iter()
            .find(|(name, ..)| name == "model.embed_tokens.weight")
            .unwrap()
            .clone();
        tensors.push((
            "lm_head.weight".into(),
            embedding.1,
            embedding.2,
            embedding.3,
        ));
        let projections = import::hf::PROJECTIONS;
        for (index, (name, dtype, shape, data)) in tensors.iter_mut().enumerate() {
            let Some((layer, ours)) = projections.iter().find_map(|(theirs, ours)| {
                let layer = name.strip_prefix("model.layers.")?.split('.').next()?;
                name.ends_with(&format!("{theirs}.weight"))
                    .then(|| (layer.to_string(), *ours))
            }) else {
                continue;
            };
            let magnitude = 0.03125 * (1 + index % 5) as f32;
            let values: Vec<f32> = (0..shape[0] * shape[1])
                .map(|i| magnitude * ((i * 7 + index) % 3) as f32 - magnitude)
                .collect();
            *dtype = safetensors::Dtype::F32;
            *data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let gguf_name = format!("blk.{layer}.{ours}.weight");
            expected
                .borrow_mut()
                .push((gguf_name, shape[0], shape[1], values));
        }
    });
    (folder, expected.into_inner())
}

#[test]
fn a_llama_folder_with_ternary_weights_imports_exactly_and_refuses_other_values() {
    let dir = tempfile::tempdir().unwrap();
    let (folder, expected) = ternary_llama_folder(&dir.path().join("ok"));
    assert_eq!(expected.len(), 14);
    let out = dir.path().join("llama.gguf");
    quantize_export()
        .arg("--hf")
        .arg(&folder)
        .args(["--out", out.to_str().unwrap()])
        .assert()
        .success();
    let file = gguf::GgufFile::open(&out).unwrap();
    for (name, rows, cols, values) in &expected {
        let w = gguf::read_ternary(&file, name, *rows, *cols).unwrap();
        for (row, source) in values.chunks_exact(*cols).enumerate() {
            assert_eq!(&w.dequantize_row(row), source, "{name} row {row}");
        }
    }
    let (model, _) = Model::load(&out, None).unwrap();
    assert!(model.config.variant.dense_head && !model.config.variant.sub_norms);
    assert_eq!(
        model.config.variant.weight_scales,
        model::ScaleGranularity::Tensor
    );
    // The dense BF16 head runs: a completion through serve.
    Command::cargo_bin("serve")
        .unwrap()
        .args([
            "--model",
            out.to_str().unwrap(),
            "--prompt",
            "fn",
            "--max-tokens",
            "4",
        ])
        .assert()
        .success();

    // One value that is neither 0 nor ± the magnitude: refused, naming the tensor and index.
    let (bad, _) = ternary_llama_folder(&dir.path().join("bad"));
    edit_safetensors(&bad, |tensors| {
        let (_, _, _, data) = tensors
            .iter_mut()
            .find(|(name, ..)| name == "model.layers.0.mlp.up_proj.weight")
            .unwrap();
        let half = f32::from_le_bytes(data[12..16].try_into().unwrap()) * 0.5;
        data[12..16].copy_from_slice(&(if half == 0.0 { 0.01f32 } else { half }).to_le_bytes());
    });
    let assert = quantize_export()
        .arg("--hf")
        .arg(&bad)
        .args(["--out", dir.path().join("bad.gguf").to_str().unwrap()])
        .assert()
        .code(2);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(
        stderr.contains("model.layers.0.mlp.up_proj.weight") && stderr.contains("index 3"),
        "{stderr}"
    );
}
