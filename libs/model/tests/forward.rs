//! The forward pass on real files: random-weight models written through the GGUF and .mhc writers
//! and loaded by the real loader. KV-cache decode against full recomputation, batched decode
//! against separate decodes, a batch on 1, 2 and 3 threads, the loaded mHC matrices, and the size
//! estimates against the files.

use std::path::{Path, PathBuf};

use model::testmodel::{write_random_model, write_random_model_with, EmbeddingType};
use model::{KvCache, KvPrecision, Logits, Model, ModelConfig, SeqInput};

/// The tiny preset, shortened so the tests stay fast: 2 layers, context 96.
fn tiny(streams: usize, tied: bool) -> ModelConfig {
    ModelConfig {
        n_layers: 2,
        context_length: 96,
        mhc_streams: streams,
        tied_embeddings: tied,
        ..ModelConfig::preset("tiny").unwrap()
    }
}

fn load(dir: &Path, config: &ModelConfig, seed: u64) -> Model {
    let (gguf, mhc) = write_random_model(dir, "m", config, seed).unwrap();
    Model::load(&gguf, mhc.as_deref()).unwrap().0
}

/// [`load`] with the embedding stored as `embedding`.
fn load_with(dir: &Path, config: &ModelConfig, seed: u64, embedding: EmbeddingType) -> Model {
    let (gguf, mhc) = write_random_model_with(dir, "m", config, seed, embedding).unwrap();
    Model::load(&gguf, mhc.as_deref()).unwrap().0
}

fn tokens(len: usize, seed: u32, vocab: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)) % vocab as u32)
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn new_cache(m: &Model) -> KvCache {
    KvCache::new(m.config.n_layers, m.config.kv_dim())
}

/// Logits of every position of `seq`, in one forward pass from an empty cache.
fn full_recompute(m: &Model, seq: &[u32], precision: KvPrecision) -> Vec<f32> {
    let mut cache = KvCache::with_precision(m.config.n_layers, m.config.kv_dim(), precision);
    m.forward(&mut [SeqInput {
        cache: &mut cache,
        tokens: seq,
        logits: Logits::All,
    }])
    .remove(0)
}

/// Logits of every position of `seq`: a prefill of `prefill` tokens, then one token at a time.
fn incremental(m: &Model, seq: &[u32], prefill: usize, precision: KvPrecision) -> Vec<f32> {
    let mut cache = KvCache::with_precision(m.config.n_layers, m.config.kv_dim(), precision);
    let mut out = m
        .forward(&mut [SeqInput {
            cache: &mut cache,
            tokens: &seq[..prefill],
            logits: Logits::All,
        }])
        .remove(0);
    for t in &seq[prefill..] {
        out.extend(
            m.forward(&mut [SeqInput {
                cache: &mut cache,
                tokens: std::slice::from_ref(t),
                logits: Logits::Last,
            }])
            .remove(0),
        );
    }
    assert_eq!(cache.len(), seq.len());
    out
}

#[test]
fn kv_cache_decode_matches_full_recomputation() {
    for (streams, tied) in [(2, false), (4, false), (1, true), (4, true)] {
        let dir = tempfile::tempdir().unwrap();
        let config = tiny(streams, tied);
        let m = load(dir.path(), &config, 11);
        let seq = tokens(40, 3, config.vocab_size);
        for precision in [KvPrecision::F16, KvPrecision::F32] {
            let full = full_recompute(&m, &seq, precision);
            assert_eq!(full.len(), 40 * config.vocab_size);
            assert!(full.iter().all(|v| v.is_finite()));
            let range = full.iter().copied().fold(f32::MIN, f32::max)
                - full.iter().copied().fold(f32::MAX, f32::min);
            assert!(range > 1.0, "logits must not be flat (range {range})");
            for prefill in [1, 17] {
                let inc = incremental(&m, &seq, prefill, precision);
                let diff = max_abs_diff(&full, &inc);
                assert!(
                    diff <= 1e-4,
                    "N={streams} tied={tied} prefill={prefill} {precision}: max |Δ| {diff}"
                );
            }
        }
    }
}

#[test]
fn batched_decode_of_four_sequences_equals_separate_decodes() {
    // A ternary head, and a tied Q8_0 one (read for two sequences at once when batched).
    for (streams, tied, embedding) in [
        (2, false, EmbeddingType::F16),
        (4, false, EmbeddingType::F16),
        (2, true, EmbeddingType::Q8_0),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = tiny(streams, tied);
        let m = load_with(dir.path(), &config, 5, embedding);
        // Four sequences of different lengths and contents.
        let seqs: Vec<Vec<u32>> = (0..4)
            .map(|s| tokens(12 + 5 * s, 100 + s as u32, config.vocab_size))
            .collect();
        let separate: Vec<Vec<f32>> = seqs
            .iter()
            .map(|s| incremental(&m, s, 8, KvPrecision::default()))
            .collect();

        // Together: prefill all four in one pass, then decode them in lockstep while they last.
        let mut caches: Vec<KvCache> = (0..4).map(|_| new_cache(&m)).collect();
        let mut together: Vec<Vec<f32>> = {
            let mut inputs: Vec<SeqInput> = caches
                .iter_mut()
                .zip(&seqs)
                .map(|(cache, s)| SeqInput {
                    cache,
                    tokens: &s[..8],
                    logits: Logits::All,
                })
                .collect();
            m.forward(&mut inputs)
        };
        for pos in 8.. {
            let mut inputs: Vec<SeqInput> = Vec::new();
            let mut which = Vec::new();
            for (i, (cache, s)) in caches.iter_mut().zip(&seqs).enumerate() {
                if pos < s.len() {
                    which.push(i);
                    inputs.push(SeqInput {
                        cache,
                        tokens: &s[pos..pos + 1],
                        logits: Logits::Last,
                    });
                }
            }
            if inputs.is_empty() {
                break;
            }
            for (i, logits) in which.into_iter().zip(m.forward(&mut inputs)) {
                together[i].extend(logits);
            }
        }
        for (i, (a, b)) in separate.iter().zip(&together).enumerate() {
            let diff = max_abs_diff(a, b);
            assert!(
                diff <= 1e-4,
                "N={streams} {embedding:?} sequence {i}: max |Δ| {diff}"
            );
        }
    }
}

/// Eight sequences prefilled and decoded together: the per-row work splits over the threads of
/// a 2- and a 3-thread pool, and must give the same bits as one thread.
#[test]
fn a_batch_gives_the_same_bits_on_any_number_of_threads() {
    for (tied, embedding) in [(false, EmbeddingType::F16), (true, EmbeddingType::Q8_0)] {
        a_batch_on_any_number_of_threads(tied, embedding);
    }
}

fn a_batch_on_any_number_of_threads(tied: bool, embedding: EmbeddingType) {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny(4, tied);
    let m = load_with(dir.path(), &config, 21, embedding);
    let seqs: Vec<Vec<u32>> = (0..8)
        .map(|s| tokens(8 + s, 300 + s as u32, config.vocab_size))
        .collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut caches: Vec<KvCache> = (0..8).map(|_| new_cache(&m)).collect();
            let mut logits = Vec::new();
            for step in 0..3 {
                let mut inputs: Vec<SeqInput> = caches
                    .iter_mut()
                    .zip(&seqs)
                    .map(|(cache, s)| SeqInput {
                        cache,
                        tokens: if step == 0 {
                            &s[..5]
                        } else {
                            &s[4 + step..5 + step]
                        },
                        logits: Logits::All,
                    })
                    .collect();
                logits.extend(m.forward(&mut inputs).into_iter().flatten());
            }
            logits
        })
    };
    let one = run(1);
    assert!(one.iter().all(|v| v.is_finite()));
    for threads in [2, 3] {
        assert!(
            run(threads) == one,
            "{embedding:?}: {threads} threads differ from one"
        );
    }
}

#[test]
fn every_loaded_h_res_is_doubly_stochastic() {
    for streams in [2, 4] {
        let dir = tempfile::tempdir().unwrap();
        let config = tiny(streams, false);
        let m = load(dir.path(), &config, 9);
        assert_eq!(m.mixings.len(), 2 * config.n_layers);
        for (i, mixing) in m.mixings.iter().enumerate() {
            let h = mixing.h_res();
            let n = streams;
            let mut off_identity = 0.0f32;
            for r in 0..n {
                let row: f32 = (0..n).map(|c| h.get(r, c)).sum();
                let col: f32 = (0..n).map(|c| h.get(c, r)).sum();
                assert!(
                    (row - 1.0).abs() <= 1e-6 && (col - 1.0).abs() <= 1e-6,
                    "module {i}"
                );
                assert!((0..n).all(|c| h.get(r, c) >= 0.0));
                off_identity += 1.0 - h.get(r, r);
            }
            assert!(off_identity > 1e-3, "random modules really mix streams");
        }
    }
}

fn tensor_bytes(path: &Path) -> (u64, u64) {
    let file = gguf::GgufFile::open(path).unwrap();
    let tensors = file.tensor_infos().iter().map(|t| t.n_bytes()).sum();
    (tensors, std::fs::metadata(path).unwrap().len())
}

#[test]
fn size_estimates_match_the_written_files() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (config, embedding, bytes)) in [
        (tiny(2, false), EmbeddingType::F16, 2),
        (tiny(4, true), EmbeddingType::F32, 4),
        (ModelConfig::preset("tiny").unwrap(), EmbeddingType::F16, 2),
    ]
    .into_iter()
    .enumerate()
    {
        let stem = format!("m{i}");
        let (gguf, mhc) =
            write_random_model_with(dir.path(), &stem, &config, 1, embedding).unwrap();
        let (tensors, file_len) = tensor_bytes(&gguf);
        assert_eq!(tensors, config.bytes_gguf_tensors(bytes), "{stem}");
        // Header, metadata (mostly the tokenizer) and alignment padding come on top.
        assert!(file_len > tensors && file_len < tensors + 200_000, "{stem}");
        assert_eq!(
            std::fs::metadata(mhc.unwrap()).unwrap().len(),
            config.bytes_mhc_file()
        );
        let (m, _) = Model::load(&gguf, None).unwrap();
        let planar: u64 = m
            .blocks
            .iter()
            .flat_map(|b| [&b.qkv, &b.attn_output, &b.gate_up, &b.ffn_down])
            .chain(match &m.head {
                model::model::Head::Ternary(w) => Some(w),
                model::model::Head::Tied | model::model::Head::Dense(_) => None,
            })
            .map(|w| (w.codes().len() + 4 * w.scales().len()) as u64)
            .sum();
        let norms = 4 * (2 * config.n_layers + 1) * config.dim;
        assert_eq!(
            planar + (m.embedding.bytes() + norms) as u64,
            config.bytes_runtime_weights(bytes),
            "{stem}"
        );
    }
}

/// A copy of `src` with tensors dropped or metadata changed, for loader error tests.
fn rewrite(
    src: &Path,
    dst: &Path,
    drop_tensor: Option<&str>,
    set: Option<(&str, gguf::Value)>,
    extra_tensor: bool,
) {
    let file = gguf::GgufFile::open(src).unwrap();
    let mut layout = gguf::Layout::new();
    for kv in file.metadata() {
        if kv.key != gguf::ALIGNMENT_KEY {
            layout.set(kv.key.as_str(), kv.value.clone()).unwrap();
        }
    }
    if let Some((k, v)) = set {
        layout.set(k, v).unwrap();
    }
    let kept: Vec<_> = file
        .tensors()
        .filter(|t| Some(t.info.name()) != drop_tensor)
        .collect();
    for t in &kept {
        layout
            .add_tensor(t.info.name(), t.info.ggml_type(), &t.info.shape())
            .unwrap();
    }
    if extra_tensor {
        layout
            .add_tensor("blk.0.surprise.weight", gguf::GgmlType::F32, &[4])
            .unwrap();
    }
    let mut w = gguf::GgufWriter::create(dst, &layout).unwrap();
    for t in &kept {
        w.write_tensor(t.info.name(), t.data).unwrap();
    }
    if extra_tensor {
        w.write_f32("blk.0.surprise.weight", &[0.0; 4]).unwrap();
    }
    w.finish().unwrap();
}

fn load_error(gguf: &Path, mhc: Option<&Path>) -> String {
    match Model::load(gguf, mhc) {
        Ok(_) => panic!("{} loaded", gguf.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny(2, false);
    let (gguf, mhc) = write_random_model(dir.path(), "m", &config, 2).unwrap();
    let mhc = mhc.unwrap();
    let bad = |name: &str| -> PathBuf { dir.path().join(name) };

    rewrite(
        &gguf,
        &bad("a.gguf"),
        Some("blk.1.ffn_up.weight"),
        None,
        false,
    );
    let e = load_error(&bad("a.gguf"), Some(&mhc));
    assert!(
        e.contains("a.gguf") && e.contains("blk.1.ffn_up.weight"),
        "{e}"
    );

    rewrite(&gguf, &bad("b.gguf"), None, None, true);
    let e = load_error(&bad("b.gguf"), Some(&mhc));
    assert!(
        e.contains("unexpected tensor") && e.contains("surprise"),
        "{e}"
    );

    // A wider FFN in the metadata than in the tensors.
    rewrite(
        &gguf,
        &bad("c.gguf"),
        None,
        Some(("nanochat.feed_forward_length", gguf::Value::U32(1024))),
        false,
    );
    let e = load_error(&bad("c.gguf"), Some(&mhc));
    assert!(e.contains("ffn_gate") && e.contains("shape"), "{e}");

    // No .mhc beside the file, and a .mhc of the wrong stream count.
    std::fs::copy(&gguf, bad("lonely.gguf")).unwrap();
    let e = load_error(&bad("lonely.gguf"), None);
    assert!(e.contains("lonely.mhc"), "{e}");
    let four = model::testmodel::random_mhc(mhc::NStreams::Four, 2, 1);
    four.write(bad("four.mhc")).unwrap();
    let e = load_error(&gguf, Some(&bad("four.mhc")));
    assert!(e.contains("4 streams") && e.contains("four.mhc"), "{e}");

    // Not a GGUF at all.
    std::fs::write(bad("junk.gguf"), b"hello").unwrap();
    let e = load_error(&bad("junk.gguf"), None);
    assert!(e.contains("junk.gguf"), "{e}");
}
