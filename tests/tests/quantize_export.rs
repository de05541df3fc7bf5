//! Cross-tool tests of `quantize-export`: checkpoint folders written here in the format `train`
//! writes (random F32 values in safetensors, mHC N = 1, 2, 4, tied and untied heads), run through
//! the real binary and loaded back with `model::Model::load`: the configuration, every dequantized
//! ternary row (bit for bit against `PlanarWeights::from_f32` of the checkpoint values, through the
//! loader's q|k|v and gate|up stacking), the norms, the embedding and the mHC matrices are the
//! checkpoint's; gguf-inspect accepts the files. Inconsistent checkpoints exit 2 with one line
//! naming the file and the tensor, and leave no output behind (nor touch an existing pair).

use std::collections::BTreeMap;
use std::path::Path;

use assert_cmd::Command;
use half::f16;
use mhc::{Mhc2, Mhc4, MhcParams, Mixing};
use model::export::{source_tensors, TensorRole};
use model::model::{Embedding, Head};
use model::{Model, ModelConfig};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::Value as Json;
use ternary::synthetic::uniform_values;
use ternary::PlanarWeights;

fn command(bin: &str) -> Command {
    Command::cargo_bin(bin).unwrap_or_else(|_| panic!("the {bin} binary is built"))
}

/// Runs quantize-export with `args`; returns (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = command("quantize-export")
        .args(args)
        .output()
        .expect("quantize-export runs");
    (
        out.status.code().expect("exit code, not a signal"),
        String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// The small model of these tests: every row a whole number of 128-weight groups.
fn config(mhc_streams: usize, tied_embeddings: bool) -> ModelConfig {
    ModelConfig {
        vocab_size: 300,
        dim: 128,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        ffn_dim: 256,
        context_length: 64,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        mhc_streams,
        tied_embeddings,
        moe: None,
        variant: Default::default(),
    }
}

/// A tensor of a checkpoint: shape and values (stored as F32 unless `dtype` says otherwise).
#[derive(Clone)]
struct Tensor {
    shape: Vec<usize>,
    values: Vec<f32>,
    dtype: Dtype,
}

/// A checkpoint folder as train writes it, built in memory and written by [`Ckpt::write`].
#[derive(Clone)]
struct Ckpt {
    config: ModelConfig,
    tokenizer_json: String,
    tensors: BTreeMap<String, Tensor>,
    state: Json,
}

impl Ckpt {
    /// Random values for every tensor of the model, plus two training-only `mtp.*` tensors.
    fn new(config: ModelConfig) -> Ckpt {
        let mut tensors = BTreeMap::new();
        for (i, t) in source_tensors(&config).into_iter().enumerate() {
            let u = uniform_values(t.shape.iter().product(), 100 + i as u64);
            let values = match t.role {
                TensorRole::Norm => u.iter().map(|x| 1.0 + x).collect(),
                // Logits and biases in [-2, 2): mixing far from the identity.
                TensorRole::Mhc { .. } => u.iter().map(|x| 4.0 * x).collect(),
                TensorRole::Embedding | TensorRole::Ternary => u,
            };
            tensors.insert(t.name, f32_tensor(t.shape, values));
        }
        for (name, shape) in [("mtp.0.proj.weight", vec![4, 128]), ("mtp.0.norm", vec![4])] {
            let values = uniform_values(shape.iter().product(), 7);
            tensors.insert(name.to_string(), f32_tensor(shape, values));
        }
        let state = serde_json::json!({"step": 1200, "weights": "ternary", "data_position": 5});
        Ckpt {
            tokenizer_json: model::tokenizer::byte_level_json(config.vocab_size),
            config,
            tensors,
            state,
        }
    }

    fn values(&self, name: &str) -> &[f32] {
        &self.tensors[name].values
    }

    fn write(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&self.config).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.join("tokenizer.json"), &self.tokenizer_json).unwrap();
        std::fs::write(dir.join("trainer_state.json"), self.state.to_string()).unwrap();
        let bytes: Vec<(String, Vec<u8>, &Tensor)> = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let data = match t.dtype {
                    Dtype::F16 => t
                        .values
                        .iter()
                        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                        .collect(),
                    _ => t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                };
                (name.clone(), data, t)
            })
            .collect();
        let views = bytes.iter().map(|(name, data, t)| {
            (
                name.clone(),
                TensorView::new(t.dtype, t.shape.clone(), data).unwrap(),
            )
        });
        safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
        // Files of the folder that export ignores.
        std::fs::write(dir.join("optimizer.safetensors"), b"not read").unwrap();
        std::fs::write(dir.join("metrics.jsonl"), "{\"step\": 1}\n").unwrap();
    }
}

fn f32_tensor(shape: Vec<usize>, values: Vec<f32>) -> Tensor {
    Tensor {
        shape,
        values,
        dtype: Dtype::F32,
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Asserts that rows `first..` of `loaded` are the quantized checkpoint weight `name`.
fn assert_rows(loaded: &PlanarWeights, first: usize, ckpt: &Ckpt, name: &str) {
    let t = &ckpt.tensors[name];
    let (rows, cols) = (t.shape[0], t.shape[1]);
    assert_eq!(loaded.cols(), cols, "{name}");
    let expected = PlanarWeights::from_f32(rows, cols, &t.values).unwrap();
    for r in 0..rows {
        assert_eq!(
            bits(&loaded.dequantize_row(first + r)),
            bits(&expected.dequantize_row(r)),
            "{name} row {r}"
        );
    }
}

/// Loads `gguf` (+ `mhc`) and checks every tensor against the checkpoint.
/// `embedding`: the table type quantize-export was asked for ("f32", "f16" or "q8_0").
fn assert_model_is_the_checkpoint(gguf: &Path, mhc: Option<&Path>, ckpt: &Ckpt, embedding: &str) {
    let (model, tokenizer) = Model::load(gguf, mhc).expect("the export loads");
    let config = &ckpt.config;
    assert_eq!(model.config, *config);
    assert_eq!(tokenizer.vocab_size(), config.vocab_size);
    let (c, kv, f) = (config.dim, config.kv_dim(), config.ffn_dim);
    for (l, block) in model.blocks.iter().enumerate() {
        let name = |t: &str| format!("blk.{l}.{t}.weight");
        assert_eq!(block.qkv.rows(), c + 2 * kv);
        assert_rows(&block.qkv, 0, ckpt, &name("attn_q"));
        assert_rows(&block.qkv, c, ckpt, &name("attn_k"));
        assert_rows(&block.qkv, c + kv, ckpt, &name("attn_v"));
        assert_rows(&block.attn_output, 0, ckpt, &name("attn_output"));
        assert_eq!(block.gate_up.rows(), 2 * f);
        assert_rows(&block.gate_up, 0, ckpt, &name("ffn_gate"));
        assert_rows(&block.gate_up, f, ckpt, &name("ffn_up"));
        assert_rows(&block.ffn_down, 0, ckpt, &name("ffn_down"));
        assert_eq!(
            bits(&block.attn_norm),
            bits(ckpt.values(&name("attn_norm")))
        );
        assert_eq!(bits(&block.ffn_norm), bits(ckpt.values(&name("ffn_norm"))));
    }
    assert_eq!(
        bits(&model.output_norm),
        bits(ckpt.values("output_norm.weight"))
    );
    let embd = ckpt.values("token_embd.weight");
    match (&model.embedding, embedding) {
        (Embedding::F32(v), "f32") => assert_eq!(bits(v), bits(embd)),
        (Embedding::F16(v), "f16") => {
            let back: Vec<f32> = v.iter().map(|h| h.to_f32()).collect();
            let expected: Vec<f32> = embd.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
            assert_eq!(bits(&back), bits(&expected));
        }
        (Embedding::Q8_0(table), "q8_0") => {
            // llama.cpp's rule (gguf::q8, checked against the Python package in q8_0.rs).
            let (mut blocks, mut expected) = (Vec::new(), Vec::new());
            gguf::q8::quantize_into(embd, &mut blocks);
            gguf::q8::dequantize_into(&blocks, &mut expected);
            let mut row = vec![0.0; config.dim];
            for (r, expected) in expected.chunks_exact(config.dim).enumerate() {
                table.row_into(r, &mut row);
                assert_eq!(bits(&row), bits(expected), "row {r}");
            }
        }
        _ => panic!("embedding stored in the wrong type"),
    }
    match &model.head {
        Head::Tied => assert!(config.tied_embeddings),
        Head::Ternary(w) => {
            assert!(!config.tied_embeddings);
            assert_rows(w, 0, ckpt, "output.weight");
        }
        Head::Dense(_) => panic!("a checkpoint's head is tied or ternary"),
    }
    let expected: Vec<Mixing> = source_tensors(config)
        .iter()
        .filter(|t| matches!(t.role, TensorRole::Mhc { .. }))
        .map(|t| {
            let flat = ckpt.values(&t.name);
            Mixing::from_params(&match config.mhc_streams {
                2 => MhcParams::Two(Mhc2::from_flat(flat.try_into().unwrap())),
                _ => MhcParams::Four(Mhc4::from_flat(flat.try_into().unwrap())),
            })
        })
        .collect();
    assert_eq!(
        model.mixings.len(),
        2 * config.n_layers * (config.mhc_streams > 1) as usize
    );
    assert_eq!(model.mixings, expected);
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn exported_models_load_as_the_checkpoint_for_every_stream_count_and_head() {
    let dir = tempfile::tempdir().unwrap();
    for (streams, tied) in [
        (1, true),
        (1, false),
        (2, false),
        (2, true),
        (4, true),
        (4, false),
    ] {
        let ckpt = Ckpt::new(config(streams, tied));
        let case = format!("n{streams}-{}", if tied { "tied" } else { "untied" });
        let folder = dir.path().join(&case).join("checkpoint");
        ckpt.write(&folder);
        let out = dir.path().join(&case).join("out");
        std::fs::create_dir(&out).unwrap();
        let gguf = out.join("model.gguf");
        let (code, stdout, stderr) =
            run(&["--checkpoint", s(&folder), "--out", s(&gguf), "--json"]);
        assert_eq!(code, 0, "{case}: {stderr}");
        assert_eq!(stderr, "", "{case}");
        let report: Json = serde_json::from_str(&stdout).expect("--json prints one document");
        let mhc = (streams > 1).then(|| out.join("model.mhc"));
        let expected_files = if streams > 1 {
            vec!["model.gguf", "model.mhc"]
        } else {
            vec!["model.gguf"]
        };
        assert_eq!(files_in(&out), expected_files, "{case}");
        assert_model_is_the_checkpoint(&gguf, None, &ckpt, "f32");

        assert_eq!(report["step"], 1200, "{case}");
        assert_eq!(report["weights"], "ternary");
        assert_eq!(report["embedding"], "f32");
        assert_eq!(report["dropped_training_only_tensors"], 2);
        assert_eq!(report["config"]["mhc_streams"], streams);
        // Every row is a whole number of groups: 32 code bytes + one f32 scale per 128 weights.
        assert_eq!(report["bits_per_ternary_weight"], 2.25, "{case}");
        let gguf_bytes = std::fs::metadata(&gguf).unwrap().len();
        assert_eq!(report["gguf_bytes"], gguf_bytes);
        let mhc_bytes = mhc
            .as_ref()
            .map_or(0, |p| std::fs::metadata(p).unwrap().len());
        assert_eq!(report["mhc_bytes"], mhc_bytes);
        assert_eq!(mhc_bytes, ckpt.config.bytes_mhc_file());
        let parameters = ckpt.config.parameter_count();
        assert_eq!(report["parameters"], parameters);
        let bpp = report["bits_per_parameter"].as_f64().unwrap();
        assert_eq!(
            bpp,
            8.0 * (gguf_bytes + mhc_bytes) as f64 / parameters as f64
        );
        let ternary: u64 = ckpt
            .config
            .ternary_weights()
            .iter()
            .map(|(_, r, c)| (r * c) as u64)
            .sum();
        assert_eq!(report["ternary_weights"], ternary);

        // gguf-inspect reads both files.
        let mut inspect = command("gguf-inspect");
        inspect.arg(&gguf);
        if let Some(mhc) = &mhc {
            inspect.arg("--mhc").arg(mhc);
        }
        inspect.assert().success();
    }
}

#[test]
fn text_summary_f16_embedding_name_and_mhc_path() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = Ckpt::new(config(2, true));
    let folder = dir.path().join("ckpt");
    ckpt.write(&folder);
    let gguf = dir.path().join("tiny.gguf");
    let mhc = dir.path().join("elsewhere").join("mixing.mhc");
    std::fs::create_dir(mhc.parent().unwrap()).unwrap();
    let (code, stdout, stderr) = run(&[
        "--checkpoint",
        s(&folder),
        "--out",
        s(&gguf),
        "--mhc-out",
        s(&mhc),
        "--embedding",
        "f16",
        "--name",
        "tiny-v1",
    ]);
    assert_eq!(code, 0, "{stderr}");
    for expected in [
        "step 1200",
        "config: dim 128, 2 layers, 4 heads (2 kv), ffn 256, 2 residual streams, vocab 300, tied LM head",
        &format!("parameters: {}", ckpt.config.parameter_count()),
        &format!("wrote {}", s(&gguf)),
        &format!("wrote {}", s(&mhc)),
        "bits per ternary weight: 2.2500",
        "bits per parameter: ",
        "dropped training-only tensors (mtp.*): 2",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in {stdout}");
    }
    assert!(!dir.path().join("tiny.mhc").exists());
    assert_model_is_the_checkpoint(&gguf, Some(&mhc), &ckpt, "f16");
    let file = gguf::GgufFile::open(&gguf).unwrap();
    assert_eq!(
        file.get("general.name").and_then(|v| v.as_str()),
        Some("tiny-v1")
    );
    assert_eq!(
        file.get(model::metadata::TOKENIZER_KEY)
            .and_then(|v| v.as_str()),
        Some(model::tokenizer::byte_level_json(300).as_str()),
        "the tokenizer is embedded verbatim"
    );
}

#[test]
fn a_q8_0_embedding_is_llama_cpps_blocks_of_the_checkpoint_values() {
    let dir = tempfile::tempdir().unwrap();
    for tied in [true, false] {
        let ckpt = Ckpt::new(config(1, tied));
        let folder = dir.path().join(format!("ckpt-{tied}"));
        ckpt.write(&folder);
        let gguf = dir.path().join(format!("q8-{tied}.gguf"));
        let args = ["--checkpoint", s(&folder), "--out", s(&gguf)];
        let (code, stdout, stderr) = run(&[&args[..], &["--embedding", "q8_0"]].concat());
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("LM head, Q8_0 embedding"), "{stdout}");
        assert_model_is_the_checkpoint(&gguf, None, &ckpt, "q8_0");
        let (code, stdout, stderr) = run(&[&args[..], &["--embedding", "q8_0", "--json"]].concat());
        assert_eq!(code, 0, "{stderr}");
        let report: Json = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["embedding"], "q8_0");
    }
}

#[test]
fn a_full_precision_checkpoint_needs_the_flag_and_gets_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let mut ckpt = Ckpt::new(config(1, false));
    ckpt.state["weights"] = "full_precision".into();
    let folder = dir.path().join("ckpt");
    ckpt.write(&folder);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let gguf = out.join("m.gguf");
    let args = ["--checkpoint", s(&folder), "--out", s(&gguf)];
    let line = fails_with_one_line(&args, &out);
    assert!(
        line.contains("trainer_state.json")
            && line.contains("full precision")
            && line.contains("--allow-full-precision"),
        "{line}"
    );
    let (code, _, stderr) = run(&[&args[..], &["--allow-full-precision"]].concat());
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.starts_with("quantize-export: warning: "), "{stderr}");
    assert_model_is_the_checkpoint(&gguf, None, &ckpt, "f32");
}

/// Runs `args`, asserts exit 2, nothing on stdout, one line on stderr and no file in `out`;
/// returns the line.
fn fails_with_one_line(args: &[&str], out: &Path) -> String {
    let (code, stdout, stderr) = run(args);
    assert_eq!(code, 2, "args {args:?}: stderr {stderr:?}");
    assert_eq!(stdout, "");
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr:?}");
    assert!(stderr.starts_with("quantize-export: "), "{stderr:?}");
    assert!(
        files_in(out)
            .iter()
            .all(|f| f == "model.gguf" || f == "model.mhc"),
        "no staging file left: {:?}",
        files_in(out)
    );
    stderr.trim_end().to_string()
}

#[test]
fn inconsistent_checkpoints_exit_2_naming_file_and_tensor_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let n2 = Ckpt::new(config(2, false));
    let n1 = Ckpt::new(config(1, true));
    let edit = |base: &Ckpt, f: &dyn Fn(&mut Ckpt)| {
        let mut c = base.clone();
        f(&mut c);
        c
    };
    let st = "model.safetensors";
    let cases: Vec<(&str, Ckpt, Vec<&str>)> = vec![
        (
            "missing",
            edit(&n2, &|c| {
                c.tensors.remove("blk.1.ffn_down.weight");
            }),
            vec![st, "\"blk.1.ffn_down.weight\" is missing"],
        ),
        (
            "shape",
            edit(&n2, &|c| {
                c.tensors.get_mut("blk.0.attn_k.weight").unwrap().shape = vec![128, 64];
            }),
            vec![st, "blk.0.attn_k.weight", "[128, 64]", "expected [64, 128]"],
        ),
        (
            "extra",
            edit(&n1, &|c| {
                c.tensors.insert(
                    "output.weight".into(),
                    f32_tensor(vec![300, 128], vec![0.0; 38400]),
                );
            }),
            vec![st, "unexpected tensor \"output.weight\""],
        ),
        (
            "nan",
            edit(&n2, &|c| {
                c.tensors.get_mut("blk.1.ffn_norm.weight").unwrap().values[5] = f32::NAN;
            }),
            vec![st, "blk.1.ffn_norm.weight", "non-finite", "index 5"],
        ),
        (
            "inf-mhc",
            edit(&n2, &|c| {
                c.tensors.get_mut("blk.0.ffn_mhc").unwrap().values[0] = f32::INFINITY;
            }),
            vec![st, "blk.0.ffn_mhc", "non-finite"],
        ),
        (
            "dtype",
            edit(&n2, &|c| {
                c.tensors.get_mut("output_norm.weight").unwrap().dtype = Dtype::F16;
            }),
            vec![st, "output_norm.weight", "F16", "expected F32"],
        ),
        (
            "mhc-length",
            edit(&n2, &|c| {
                c.tensors
                    .insert("blk.1.attn_mhc".into(), f32_tensor(vec![40], vec![0.0; 40]));
            }),
            vec![st, "blk.1.attn_mhc", "[40]", "expected [9]"],
        ),
        (
            "mhc-missing",
            edit(&n2, &|c| {
                c.tensors.remove("blk.1.ffn_mhc");
            }),
            vec![st, "\"blk.1.ffn_mhc\" is missing"],
        ),
        (
            "mhc-for-1-stream",
            edit(&n1, &|c| {
                c.tensors
                    .insert("blk.0.attn_mhc".into(), f32_tensor(vec![9], vec![0.0; 9]));
            }),
            vec![st, "blk.0.attn_mhc", "mhc_streams 1"],
        ),
        (
            "state",
            edit(&n2, &|c| {
                c.state = serde_json::json!({"weights": "ternary"})
            }),
            vec!["trainer_state.json", "\"step\""],
        ),
        (
            "tokenizer-too-big",
            edit(&n2, &|c| c.config.vocab_size = 299),
            // The embedding no longer fits either, but the tokenizer is checked first.
            vec!["tokenizer.json", "300 tokens"],
        ),
    ];
    for (case, ckpt, expected) in cases {
        let folder = dir.path().join(case);
        ckpt.write(&folder);
        let gguf = out.join("model.gguf");
        let line = fails_with_one_line(&["--checkpoint", s(&folder), "--out", s(&gguf)], &out);
        assert!(line.contains(s(&folder)), "{case}: {line}");
        for e in expected {
            assert!(line.contains(e), "{case}: {e:?} in {line}");
        }
        assert!(files_in(&out).is_empty(), "{case}: {:?}", files_in(&out));
    }

    // Files that are missing or do not parse.
    let folder = dir.path().join("files");
    n2.write(&folder);
    let gguf = out.join("model.gguf");
    let args = ["--checkpoint", s(&folder), "--out", s(&gguf)];
    std::fs::write(folder.join("config.json"), "{\"dim\": 128").unwrap();
    let line = fails_with_one_line(&args, &out);
    assert!(line.contains("config.json: bad JSON"), "{line}");
    n2.write(&folder);
    std::fs::remove_file(folder.join("tokenizer.json")).unwrap();
    let line = fails_with_one_line(&args, &out);
    assert!(line.contains("tokenizer.json: cannot read"), "{line}");
    n2.write(&folder);
    std::fs::write(folder.join("model.safetensors"), b"junk").unwrap();
    let line = fails_with_one_line(&args, &out);
    assert!(
        line.contains("model.safetensors: not a safetensors file"),
        "{line}"
    );
    let missing = dir.path().join("no-such-folder");
    let line = fails_with_one_line(&["--checkpoint", s(&missing), "--out", s(&gguf)], &out);
    assert!(
        line.contains("no-such-folder: no such checkpoint folder"),
        "{line}"
    );
    assert!(files_in(&out).is_empty());

    // Bad output paths and flags.
    n2.write(&folder);
    let line = fails_with_one_line(&["--checkpoint", s(&folder), "--out", s(&out)], &out);
    assert!(line.contains("--out is a folder"), "{line}");
    let nowhere = dir.path().join("nowhere/m.gguf");
    let line = fails_with_one_line(&["--checkpoint", s(&folder), "--out", s(&nowhere)], &out);
    assert!(line.contains("does not exist"), "{line}");
    let plain = dir.path().join("plain");
    n1.write(&plain);
    let mhc = out.join("model.mhc");
    let line = fails_with_one_line(
        &[
            "--checkpoint",
            s(&plain),
            "--out",
            s(&gguf),
            "--mhc-out",
            s(&mhc),
        ],
        &out,
    );
    assert!(line.contains("plain residuals"), "{line}");
    let line = fails_with_one_line(&["--checkpoint", s(&folder)], &out);
    assert!(line.contains("--out"), "{line}");
    let line = fails_with_one_line(&[&args[..], &["--embedding", "q4"]].concat(), &out);
    assert!(line.contains("q4"), "{line}");
    assert!(files_in(&out).is_empty());
}

#[test]
fn a_failed_export_leaves_an_existing_pair_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let good = Ckpt::new(config(4, false));
    let folder = dir.path().join("good");
    good.write(&folder);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let gguf = out.join("model.gguf");
    let (code, _, stderr) = run(&["--checkpoint", s(&folder), "--out", s(&gguf)]);
    assert_eq!(code, 0, "{stderr}");
    let before: Vec<Vec<u8>> = ["model.gguf", "model.mhc"]
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();

    // The last ternary weight is broken: the export fails after most of the GGUF was written.
    let mut bad = good.clone();
    bad.tensors.get_mut("output.weight").unwrap().values[0] = f32::NAN;
    let bad_folder = dir.path().join("bad");
    bad.write(&bad_folder);
    let line = fails_with_one_line(&["--checkpoint", s(&bad_folder), "--out", s(&gguf)], &out);
    assert!(line.contains("output.weight"), "{line}");
    assert_eq!(files_in(&out), ["model.gguf", "model.mhc"]);
    for (f, bytes) in ["model.gguf", "model.mhc"].iter().zip(&before) {
        assert_eq!(&std::fs::read(out.join(f)).unwrap(), bytes, "{f} untouched");
    }
}

#[test]
fn help_and_version() {
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--checkpoint",
        "--out",
        "--mhc-out",
        "--embedding",
        "--name",
        "--json",
        "--allow-full-precision",
        "Examples:",
    ] {
        assert!(stdout.contains(flag), "{flag} in --help");
    }
    let (code, stdout, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("quantize-export "), "{stdout}");
}
