//! Cross-tool tests of gguf-inspect and libs/gguf: the real binary on files written by libs/gguf
//! (and on .mhc files written by libs/mhc, `--mhc`),
//! on malformed files and bad usage (exit 2, one line), its `--json` output, and interoperability
//! with the reference Python package `gguf` (tests/fixtures/gguf_interop.py): it must read every
//! file we write, and we must read what its GGUFWriter writes. That test needs the package in the
//! project's venv (`make venv`, which `make test` runs) and fails, saying so, where it is missing.

use assert_cmd::Command;
use cross_tool_tests::PYTHON_SETUP;
use gguf::{Array, GgmlType, GgufFile, GgufWriter, Layout, Value};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use ternary::PlanarWeights;

fn inspect() -> Command {
    Command::cargo_bin("gguf-inspect")
        .expect("the gguf-inspect binary is built (cargo test --workspace builds it)")
}

/// Runs gguf-inspect with `args`; returns (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = inspect().args(args).output().expect("gguf-inspect runs");
    (
        out.status.code().expect("exit code, not a signal"),
        String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    )
}

/// Asserts exit 2 with exactly one line on stderr and nothing on stdout; returns that line.
fn assert_fails_with_one_line(args: &[&str]) -> String {
    let (code, stdout, stderr) = run(args);
    assert_eq!(code, 2, "args {args:?}: stderr {stderr:?}");
    assert_eq!(stdout, "", "args {args:?}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "one line expected, got {stderr:?}"
    );
    assert!(stderr.starts_with("gguf-inspect: "), "{stderr:?}");
    stderr.trim_end().to_string()
}

fn json(args: &[&str]) -> Json {
    let (code, stdout, stderr) = run(args);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).expect("--json prints one JSON document")
}

fn weights(rows: usize, cols: usize, seed: u32) -> PlanarWeights {
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
            x as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect();
    PlanarWeights::from_f32(rows, cols, &w).expect("valid shape")
}

/// A small model file: metadata (a long tokenizer JSON string, a long vocabulary array), an F16
/// embedding, two ternary weights and an F32 norm with a NaN and an infinity.
fn write_model(path: &Path, q: &PlanarWeights, o: &PlanarWeights) {
    let mut layout = Layout::new();
    layout.set("general.architecture", "nanochat").unwrap();
    layout.set("nanochat.n_layer", 1u32).unwrap();
    layout.set("nanochat.rope_theta", 10000.0f32).unwrap();
    let tokenizer = format!("{{\"model\": \"{}\"}}", "x".repeat(10_000));
    layout.set("tokenizer.huggingface.json", tokenizer).unwrap();
    let vocab: Vec<String> = (0..100).map(|i| format!("tok{i}")).collect();
    layout
        .set("tokenizer.ggml.tokens", Array::from(vocab))
        .unwrap();
    layout
        .add_tensor("token_embd.weight", GgmlType::F16, &[16, 8])
        .unwrap();
    layout
        .add_ternary("blk.0.attn_q.weight", q.rows(), q.cols())
        .unwrap();
    layout
        .add_ternary("blk.0.attn_output.weight", o.rows(), o.cols())
        .unwrap();
    layout
        .add_tensor("output_norm.weight", GgmlType::F32, &[8])
        .unwrap();
    let mut w = GgufWriter::create(path, &layout).unwrap();
    // f16 1.0 = 0x3c00, -2.0 = 0xc000.
    let embd: Vec<u8> = (0..128)
        .flat_map(|i| if i % 2 == 0 { 0x3c00u16 } else { 0xc000 }.to_le_bytes())
        .collect();
    w.write_tensor("token_embd.weight", &embd).unwrap();
    w.write_ternary("blk.0.attn_q.weight", q).unwrap();
    w.write_ternary("blk.0.attn_output.weight", o).unwrap();
    let norm = [1.0, 2.0, 3.0, f32::NAN, f32::INFINITY, 4.0, 5.0, 6.0];
    w.write_f32("output_norm.weight", &norm).unwrap();
    w.finish().unwrap();
}

struct Model {
    _dir: tempfile::TempDir,
    path: PathBuf,
    q: PlanarWeights,
    o: PlanarWeights,
}

impl Model {
    fn new() -> Model {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.gguf");
        let (q, o) = (weights(8, 256, 1), weights(8, 200, 2));
        write_model(&path, &q, &o);
        Model {
            _dir: dir,
            path,
            q,
            o,
        }
    }

    fn arg(&self) -> &str {
        self.path.to_str().expect("UTF-8 temp path")
    }
}

#[test]
fn lists_header_metadata_tensors_and_totals() {
    let m = Model::new();
    let (code, stdout, stderr) = run(&[m.arg()]);
    assert_eq!(code, 0, "{stderr}");
    for expected in [
        "GGUF v3, alignment 32",
        "general.architecture",
        "\"nanochat\"",
        "nanochat.rope_theta",
        "10000",
        // The tokenizer JSON is summarized by its length, the vocabulary by its first 8 items.
        "(10013 bytes)",
        "[\"tok0\", \"tok1\", \"tok2\", \"tok3\", \"tok4\", \"tok5\", \"tok6\", \"tok7\", …] (100 items)",
        "array[string]",
        "token_embd.weight",
        "F16",
        "[16, 8]",
        "blk.0.attn_q.weight.scale",
        "[8, 64]",
        "[8, 2]",
        "ternary   2 weights",
        // 2 bits a weight plus 32 bits a group: 2.25 at 256 cols, more for 200 (2 groups).
        "ternary: 3648 parameters, 1040 bytes, 2.281 bits per weight",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
    assert!(
        !stdout.contains(&"x".repeat(100)),
        "the tokenizer JSON is not printed in full"
    );
    // 128 + 8·256 + 8·200 + 8 parameters.
    assert!(stdout.contains("totals    3784 parameters"), "{stdout}");
}

#[test]
fn json_listing_parses_and_agrees_with_the_file() {
    let m = Model::new();
    let report = json(&[m.arg(), "--json"]);
    let file = GgufFile::open(&m.path).unwrap();
    assert_eq!(report["version"], 3);
    assert_eq!(report["file_bytes"], file.file_len());
    let tensors = report["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), file.tensor_infos().len());
    for (row, t) in tensors.iter().zip(file.tensor_infos()) {
        assert_eq!(row["name"], t.name());
        assert_eq!(row["type"], t.ggml_type().name());
        assert_eq!(row["shape"], serde_json::json!(t.shape()));
        assert_eq!(row["ne"], serde_json::json!(t.ne()));
        assert_eq!(row["bytes"], t.n_bytes());
        assert_eq!(row["file_offset"], t.file_range().start);
    }
    assert_eq!(tensors[1]["ternary_of"], "blk.0.attn_q.weight");
    let totals = &report["totals"];
    assert_eq!(totals["parameters"], 128 + 8 * 256 + 8 * 200 + 8);
    assert_eq!(totals["ternary_parameters"], 8 * 256 + 8 * 200);
    assert_eq!(
        totals["ternary_bytes"],
        8 * 64 + 8 * 2 * 4 + 8 * 50 + 8 * 2 * 4
    );
    assert_eq!(totals["ternary_bits_per_weight"], 1040.0 * 8.0 / 3648.0);
    let ternary = report["ternary"].as_array().unwrap();
    assert_eq!(ternary[1]["name"], "blk.0.attn_output.weight");
    assert_eq!(ternary[1]["cols"], 200);
    let meta = report["metadata"].as_array().unwrap();
    let entry = |key: &str| meta.iter().find(|e| e["key"] == key).unwrap().clone();
    let tokenizer = entry("tokenizer.huggingface.json");
    assert_eq!(
        (tokenizer["type"].as_str(), tokenizer["length"].as_u64()),
        (Some("string"), Some(10013))
    );
    assert_eq!(tokenizer["truncated"], true);
    let tokens = entry("tokenizer.ggml.tokens");
    assert_eq!(tokens["value"].as_array().unwrap().len(), 8);
    assert_eq!(
        (tokens["length"].as_u64(), tokens["truncated"].as_bool()),
        (Some(100), Some(true))
    );
    assert_eq!(entry("general.alignment")["value"], 32);
    assert_eq!(entry("nanochat.rope_theta")["value"], 10000.0);
}

#[test]
fn tensor_statistics_of_ternary_and_float_tensors() {
    let m = Model::new();
    for (name, w) in [
        ("blk.0.attn_q.weight", &m.q),
        ("blk.0.attn_output.weight", &m.o),
    ] {
        let report = json(&[m.arg(), "--tensor", name, "--json"]);
        let stats = &report["stats"];
        assert_eq!(stats["kind"], "ternary");
        let h = w.histogram();
        // cols is a multiple of 4 in both, so no padding code is counted.
        assert_eq!(stats["minus_one"], h.minus_one);
        assert_eq!(stats["zero"], h.zero);
        assert_eq!(stats["plus_one"], h.plus_one);
        assert_eq!(stats["invalid"], 0);
        let total = (w.rows() * w.cols()) as f64;
        assert_eq!(stats["share_zero"], h.zero as f64 / total);
        let (_, scales) = w.to_packed();
        let max = scales.iter().copied().fold(f32::MIN, f32::max);
        assert_eq!(stats["scales"]["max"].as_f64(), Some(f64::from(max)));
        assert_eq!(stats["scales"]["count"], scales.len());
    }
    let text = run(&[m.arg(), "--tensor", "blk.0.attn_q.weight"]).1;
    assert!(
        text.contains("codes     -1: ") && text.contains("invalid: 0 (0.00%)"),
        "{text}"
    );
    assert!(text.contains("scales    min "), "{text}");

    let norm = json(&[m.arg(), "--tensor", "output_norm.weight", "--json"]);
    let stats = &norm["stats"];
    assert_eq!(stats["kind"], "values");
    assert_eq!(
        (stats["nan"].as_u64(), stats["inf"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        (stats["min"].as_f64(), stats["max"].as_f64()),
        (Some(1.0), Some(6.0))
    );
    assert_eq!(stats["mean"].as_f64(), Some(3.5));
    let embd = json(&[m.arg(), "--tensor", "token_embd.weight", "--json"]);
    assert_eq!(embd["stats"]["mean"].as_f64(), Some(-0.5));
    assert_eq!(embd["tensor"]["shape"], serde_json::json!([16, 8]));
}

#[test]
fn malformed_files_exit_2_with_one_line_naming_file_and_problem() {
    let m = Model::new();
    let bytes = std::fs::read(&m.path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 1]).unwrap();
    let line = assert_fails_with_one_line(&[cut.to_str().unwrap()]);
    assert!(
        line.contains("cut.gguf: tensor \"output_norm.weight\""),
        "{line}"
    );
    assert!(line.contains("runs past the end of the file"), "{line}");

    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"PK\x03\x04 not a model").unwrap();
    let line = assert_fails_with_one_line(&[garbage.to_str().unwrap(), "--json"]);
    assert!(line.contains("garbage.gguf: not a GGUF file"), "{line}");

    let mut huge = bytes.clone();
    huge[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let absurd = dir.path().join("absurd.gguf");
    std::fs::write(&absurd, &huge).unwrap();
    let line = assert_fails_with_one_line(&[absurd.to_str().unwrap()]);
    assert!(
        line.contains("tensor count 1152921504606846976 at byte 8 is impossible"),
        "{line}"
    );

    let line = assert_fails_with_one_line(&[dir.path().join("missing.gguf").to_str().unwrap()]);
    assert!(
        line.contains("missing.gguf: cannot read the file"),
        "{line}"
    );
}

#[test]
fn bad_usage_exits_2_with_one_line() {
    let m = Model::new();
    let line = assert_fails_with_one_line(&[]);
    assert_eq!(
        line,
        "gguf-inspect: the following required arguments were not provided: <FILE|--mhc <MHC>> (see gguf-inspect --help)"
    );
    let line = assert_fails_with_one_line(&["--json"]);
    assert!(line.contains("<FILE|--mhc <MHC>>"), "{line}");
    let line = assert_fails_with_one_line(&[m.arg(), "--frobnicate"]);
    assert!(line.contains("--frobnicate"), "{line}");
    let line = assert_fails_with_one_line(&[m.arg(), "--tensor", "nope"]);
    assert!(
        line.contains("model.gguf: no tensor named \"nope\""),
        "{line}"
    );
}

#[test]
fn help_explains_every_flag_with_an_example_and_version_prints() {
    let (code, help, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--tensor <NAME>",
        "--mhc <MHC>",
        "--json",
        "[FILE]",
        "Usage: gguf-inspect [OPTIONS] <FILE|--mhc <MHC>>",
        "--version",
        "Exit status",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    assert!(help.matches("Example: gguf-inspect").count() >= 4, "{help}");
    assert!(
        help.contains("Example: gguf-inspect --mhc model.mhc"),
        "{help}"
    );
    let (code, version, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        version.trim(),
        format!("gguf-inspect {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Writes the initial .mhc of `n_layers` layers with `n` streams into `dir`; returns its path.
fn write_mhc(dir: &Path, n: usize, n_layers: usize) -> PathBuf {
    let path = dir.join(format!("model{n}.mhc"));
    let streams = mhc::NStreams::from_count(n).expect("2 or 4");
    mhc::MhcFile::init(streams, n_layers)
        .expect("valid layer count")
        .write(&path)
        .expect("writes");
    path
}

#[test]
fn mhc_file_lists_every_module_its_check_and_the_composite_gain() {
    let dir = tempfile::tempdir().unwrap();
    for (n, n_layers) in [(2, 3), (4, 2)] {
        let path = write_mhc(dir.path(), n, n_layers);
        let file = mhc::MhcFile::read(&path).unwrap();
        let (code, text, stderr) = run(&["--mhc", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{stderr}");
        assert!(
            text.contains(&format!(
                "n_layers {n_layers}, n_streams {n}, {} modules",
                2 * n_layers
            )),
            "{text}"
        );
        for layer in 0..n_layers {
            for (i, kind) in [(2 * layer, "attention"), (2 * layer + 1, "ffn")] {
                assert!(
                    text.contains(&format!("module {i} (layer {layer} {kind})")),
                    "{text}"
                );
            }
        }
        assert_eq!(
            text.matches("\n  doubly stochastic: yes (").count(),
            2 * n_layers,
            "{text}"
        );
        // H_res rows, h_pre and h_post at 4 decimals, as libs/mhc computes them.
        let mixings = file.mixings();
        let h = mixings[1].h_res();
        let row0: Vec<String> = (0..n).map(|j| format!("{:.4}", h.get(0, j))).collect();
        assert!(text.contains(&format!("[{}]", row0.join(", "))), "{text}");
        let pre: Vec<String> = mixings[1]
            .h_pre()
            .iter()
            .map(|v| format!("{v:.4}"))
            .collect();
        assert!(
            text.contains(&format!("h_pre     [{}]", pre.join(", "))),
            "{text}"
        );
        assert!(text.contains("h_post    ["), "{text}");
        assert!(
            text.contains(&format!("composite gain {:.6}", file.composite_gain())),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "all modules doubly stochastic: yes ({0}/{0} passed)",
                2 * n_layers
            )),
            "{text}"
        );

        let j = json(&["--mhc", path.to_str().unwrap(), "--json"]);
        let m = &j["mhc"];
        assert_eq!(m["n_layers"].as_u64(), Some(n_layers as u64));
        assert_eq!(m["n_streams"].as_u64(), Some(n as u64));
        assert_eq!(m["all_doubly_stochastic"], Json::Bool(true));
        let gain = m["composite_gain"].as_f64().unwrap();
        assert!((gain - file.composite_gain()).abs() < 1e-12, "{gain}");
        assert!((gain - 1.0).abs() < 1e-5, "{gain}");
        let modules = m["module_reports"].as_array().unwrap();
        assert_eq!(modules.len(), 2 * n_layers);
        for (i, (module, mixing)) in modules.iter().zip(&mixings).enumerate() {
            assert_eq!(module["index"].as_u64(), Some(i as u64));
            assert_eq!(module["layer"].as_u64(), Some(i as u64 / 2));
            let kind = if i % 2 == 0 { "attention" } else { "ffn" };
            assert_eq!(module["kind"].as_str(), Some(kind));
            assert_eq!(module["doubly_stochastic"], Json::Bool(true));
            assert!(module["max_deviation"].as_f64().unwrap() <= 1e-6);
            let rows = module["h_res"].as_array().unwrap();
            assert_eq!(rows.len(), n);
            for (r, row) in rows.iter().enumerate() {
                let row = row.as_array().unwrap();
                assert_eq!(row.len(), n);
                for (c, v) in row.iter().enumerate() {
                    assert_eq!(v.as_f64().unwrap() as f32, mixing.h_res().get(r, c));
                }
            }
            assert_eq!(module["h_pre"].as_array().unwrap().len(), n);
            assert_eq!(module["h_post"].as_array().unwrap().len(), n);
        }
        assert_eq!(m["composite"].as_array().unwrap().len(), n);
    }
}

#[test]
fn malformed_mhc_exits_2_with_one_line_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_mhc(dir.path(), 4, 2);
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.mhc");
    std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
    let line = assert_fails_with_one_line(&["--mhc", cut.to_str().unwrap()]);
    assert!(line.starts_with("gguf-inspect: "), "{line}");
    assert!(line.contains("cut.mhc: truncated"), "{line}");
    // Also with --json and next to a valid GGUF file: nothing is printed.
    let m = Model::new();
    let line = assert_fails_with_one_line(&[m.arg(), "--mhc", cut.to_str().unwrap(), "--json"]);
    assert!(line.contains("cut.mhc: truncated"), "{line}");

    let magic = dir.path().join("magic.mhc");
    let mut bad = bytes.clone();
    bad[0] ^= 0xFF;
    std::fs::write(&magic, &bad).unwrap();
    let line = assert_fails_with_one_line(&["--mhc", magic.to_str().unwrap()]);
    assert!(line.contains("magic.mhc: bad magic at byte 0"), "{line}");

    let line =
        assert_fails_with_one_line(&["--mhc", dir.path().join("missing.mhc").to_str().unwrap()]);
    assert!(line.contains("missing.mhc"), "{line}");

    // --tensor needs the GGUF file.
    let line = assert_fails_with_one_line(&["--mhc", good.to_str().unwrap(), "--tensor", "x"]);
    assert!(line.contains("<FILE>"), "{line}");
}

#[test]
fn gguf_and_mhc_together_print_both() {
    let m = Model::new();
    let dir = tempfile::tempdir().unwrap();
    let path = write_mhc(dir.path(), 2, 1);
    let (code, text, stderr) = run(&[m.arg(), "--mhc", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(text.contains("format    GGUF v3"), "{text}");
    assert!(text.contains("blk.0.attn_q.weight"), "{text}");
    assert!(
        text.contains("n_layers 1, n_streams 2, 2 modules"),
        "{text}"
    );
    assert!(text.contains("composite gain"), "{text}");
    let gguf_at = text.find("format    GGUF").unwrap();
    assert!(gguf_at < text.find("mhc file").unwrap(), "{text}");

    let j = json(&[m.arg(), "--mhc", path.to_str().unwrap(), "--json"]);
    assert_eq!(j["tensors"].as_array().unwrap().len(), 6);
    assert_eq!(j["mhc"]["module_reports"].as_array().unwrap().len(), 2);

    let j = json(&[
        m.arg(),
        "--tensor",
        "output_norm.weight",
        "--mhc",
        path.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(j["tensor"]["name"].as_str(), Some("output_norm.weight"));
    assert_eq!(j["mhc"]["all_doubly_stochastic"], Json::Bool(true));
}

/// Runs the interop script with python3; fails (never skips) when the package is missing.
fn python(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gguf_interop.py");
    let interpreter = cross_tool_tests::python();
    let probe = std::process::Command::new(&interpreter)
        .args(["-c", "import gguf, numpy"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the Python package `gguf` is missing from {}: run {PYTHON_SETUP} ({})",
            interpreter.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "{} cannot be run ({e}): install python3, then {PYTHON_SETUP}",
            interpreter.display()
        ),
    }
    let out = std::process::Command::new(&interpreter)
        .arg(&script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "gguf_interop.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn python_gguf_package_reads_our_files_and_we_read_its_files() {
    let dir = tempfile::tempdir().unwrap();

    // (a) The Python GGUFWriter's file, read by libs/gguf and listed by gguf-inspect.
    let theirs = dir.path().join("python.gguf");
    python(&["write", theirs.to_str().unwrap()]);
    let file = GgufFile::open(&theirs).unwrap();
    let get = |key: &str| {
        file.get(key)
            .unwrap_or_else(|| panic!("{key} missing"))
            .clone()
    };
    assert_eq!(get("general.architecture"), Value::from("nanochat"));
    assert_eq!(get("test.u8"), Value::U8(200));
    assert_eq!(get("test.i8"), Value::I8(-100));
    assert_eq!(get("test.u16"), Value::U16(60000));
    assert_eq!(get("test.i16"), Value::I16(-30000));
    assert_eq!(get("test.u32"), Value::U32(4_000_000_000));
    assert_eq!(get("test.i32"), Value::I32(-2_000_000_000));
    assert_eq!(get("test.f32"), Value::F32(0.25));
    assert_eq!(get("test.u64"), Value::U64(u64::MAX));
    assert_eq!(get("test.i64"), Value::I64(i64::MIN));
    assert_eq!(get("test.f64"), Value::F64(3.5));
    assert_eq!(get("test.bool"), Value::Bool(true));
    assert_eq!(get("test.string"), Value::from("héllo ✓"));
    assert_eq!(
        get("test.arr.i32"),
        Value::Array(Array::I32(vec![1, -2, 3]))
    );
    assert_eq!(
        get("test.arr.f32"),
        Value::Array(Array::F32(vec![0.5, 1.5]))
    );
    assert_eq!(
        get("test.arr.string"),
        Value::Array(Array::from(vec!["a", "bc", "ü"]))
    );
    let nested = Array::from(vec![Array::I32(vec![1, 2]), Array::I32(vec![3])]);
    assert_eq!(get("test.arr.nested"), Value::Array(nested));
    let m = file.tensor("f32.matrix").unwrap();
    assert_eq!(
        (m.info.ggml_type(), m.info.shape()),
        (GgmlType::F32, vec![3, 4])
    );
    let expected: Vec<f32> = (0..12).map(|i| i as f32 / 4.0).collect();
    assert_eq!(m.f32_values().unwrap().as_ref(), expected.as_slice());
    let v = file.tensor("f16.vector").unwrap();
    assert_eq!(
        (v.info.ggml_type(), v.info.shape()),
        (GgmlType::F16, vec![4])
    );
    let halves: Vec<f32> = v
        .data
        .chunks_exact(2)
        .map(|c| gguf::types::f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    assert_eq!(halves, [1.0, -2.0, 0.5, 65504.0]);
    let i8s = file.tensor("i8.matrix").unwrap();
    assert_eq!(
        (i8s.info.ggml_type(), i8s.info.shape()),
        (GgmlType::I8, vec![2, 5])
    );
    assert_eq!(i8s.data, [251, 252, 253, 254, 255, 0, 1, 2, 3, 4]);
    let q8 = file.tensor("q8_0.matrix").unwrap();
    assert_eq!(
        (q8.info.ggml_type(), q8.info.shape()),
        (GgmlType::Q8_0, vec![2, 32])
    );
    assert_eq!(q8.data.len(), 2 * 34);
    let listing = json(&[theirs.to_str().unwrap(), "--json"]);
    assert_eq!(listing["tensors"].as_array().unwrap().len(), 4);
    assert_eq!(listing["tensors"][3]["type"], "Q8_0");
    assert_eq!(listing["totals"]["parameters"], 12 + 4 + 10 + 64);
    let q8_stats = json(&[
        theirs.to_str().unwrap(),
        "--tensor",
        "q8_0.matrix",
        "--json",
    ]);
    assert_eq!(q8_stats["stats"]["kind"], "unavailable");

    // (b) Our file, read by the Python GGUFReader: every tensor with its type and shape.
    let m = Model::new();
    let printed = python(&["read", m.arg()]);
    let ours = GgufFile::open(&m.path).unwrap();
    let tensor_lines: Vec<&str> = printed
        .lines()
        .filter(|l| l.starts_with("tensor "))
        .collect();
    assert_eq!(tensor_lines.len(), ours.tensor_infos().len(), "{printed}");
    for (line, t) in tensor_lines.iter().zip(ours.tensor_infos()) {
        let fields: Vec<&str> = line.split(' ').collect();
        let ne: Vec<String> = t.ne().iter().map(u64::to_string).collect();
        assert_eq!(fields[1], t.name(), "{line}");
        assert_eq!(fields[2], t.ggml_type().name(), "{line}");
        assert_eq!(fields[3], ne.join("x"), "{line}");
        assert_eq!(fields[4], t.n_bytes().to_string(), "{line}");
    }
    let sum_of = |name: &str| -> f64 {
        let line = tensor_lines
            .iter()
            .find(|l| l.split(' ').nth(1) == Some(name))
            .unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(sum_of("token_embd.weight"), -64.0);
    let codes = ours.tensor("blk.0.attn_q.weight").unwrap();
    let code_sum: f64 = codes.data.iter().map(|&b| f64::from(b as i8)).sum();
    assert_eq!(sum_of("blk.0.attn_q.weight"), code_sum);
    for key in [
        "general.architecture",
        "tokenizer.huggingface.json",
        "general.alignment",
    ] {
        assert!(
            printed.contains(&format!("key {key} ")),
            "{key} missing:\n{printed}"
        );
    }
    assert!(
        printed.contains("key tokenizer.ggml.tokens ARRAY"),
        "{printed}"
    );
}
