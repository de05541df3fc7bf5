//! Loading a model from GGUF + .mhc: every tensor name, type and shape checked against the
//! hyper-parameters in the file's metadata, ternary weights repacked once into planar form (q/k/v
//! and gate/up stacked), the .mhc matrices checked doubly stochastic, the file unmapped afterwards.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use gguf::{GgmlType, GgufFile};
use half::{bf16, f16};
use ternary::{Kernel, PlanarWeights};

use crate::config::{ModelConfig, ScaleGranularity};
use crate::engine::{Engine, EngineOptions};
use crate::metadata;
use crate::model::{Block, Embedding, Head, Model, SubNorms};
use crate::q8::Q8Table;
use crate::tokenizer::Tokenizer;

/// Largest deviation of an H_res row or column sum from 1 that loading accepts.
pub const DOUBLY_STOCHASTIC_TOLERANCE: f64 = 1e-5;

/// Why a model could not be loaded; the message names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: {source}", path.display())]
    Gguf {
        path: PathBuf,
        source: gguf::GgufError,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error(transparent)]
    Mhc(#[from] mhc::MhcFileError),
    #[error("kernel: {0}")]
    Kernel(#[from] ternary::KernelError),
}

/// The .mhc file that goes with `gguf` by default: the same path with the extension `.mhc`.
pub fn default_mhc_path(gguf: &Path) -> PathBuf {
    gguf.with_extension("mhc")
}

impl Model {
    /// Loads `gguf` and, for a model with 2 or 4 residual streams, `mhc` (default: beside the GGUF,
    /// see [`default_mhc_path`]); also returns the embedded tokenizer.
    pub fn load(
        gguf_path: &Path,
        mhc_path: Option<&Path>,
    ) -> Result<(Model, Tokenizer), LoadError> {
        let invalid = |message: String| LoadError::Invalid {
            path: gguf_path.to_path_buf(),
            message,
        };
        let file = GgufFile::open(gguf_path).map_err(|source| LoadError::Gguf {
            path: gguf_path.to_path_buf(),
            source,
        })?;
        let config = metadata::read_config(&file).map_err(invalid)?;
        if config.moe.is_some() {
            return Err(invalid(
                "mixture-of-experts models are not supported by this inference engine".into(),
            ));
        }
        let json = metadata::read_tokenizer_json(&file).map_err(invalid)?;
        let tokenizer = match metadata::read_chat(&file).map_err(invalid)? {
            Some(chat) => Tokenizer::with_chat(json, chat),
            None => Tokenizer::from_json(json),
        }
        .map_err(|e| invalid(e.to_string()))?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(invalid(format!(
                "the tokenizer has {} tokens, more than the model's vocabulary of {}",
                tokenizer.vocab_size(),
                config.vocab_size
            )));
        }
        let reader = TensorReader {
            file: &file,
            expected: Default::default(),
            kernel: Kernel::selected()?,
            scale_granularity: config.variant.weight_scales,
        };
        let mut model = reader.model(config).map_err(invalid)?;
        reader.check_no_extra_tensors().map_err(invalid)?;

        if model.config.mhc_streams > 1 {
            let path = mhc_path
                .map(Path::to_path_buf)
                .unwrap_or_else(|| default_mhc_path(gguf_path));
            let mhc_invalid = |message: String| LoadError::Invalid {
                path: path.clone(),
                message,
            };
            let params = mhc::MhcFile::read(&path)?;
            if params.n_streams().count() != model.config.mhc_streams
                || params.n_layers() != model.config.n_layers
            {
                return Err(mhc_invalid(format!(
                    "{} streams × {} layers, the model has {} × {}",
                    params.n_streams().count(),
                    params.n_layers(),
                    model.config.mhc_streams,
                    model.config.n_layers
                )));
            }
            params
                .check_doubly_stochastic(DOUBLY_STOCHASTIC_TOLERANCE)
                .map_err(|e| mhc_invalid(e.to_string()))?;
            model.mixings = params.mixings();
        } else if let Some(path) = mhc_path {
            return Err(LoadError::Invalid {
                path: path.to_path_buf(),
                message: "the model has plain residuals (1 stream): no .mhc file is used".into(),
            });
        }
        Ok((model, tokenizer))
    }
}

/// Reads tensors, remembering which were used.
struct TensorReader<'a> {
    file: &'a GgufFile,
    expected: std::cell::RefCell<HashSet<String>>,
    /// The kernel the model will run: ternary weights are laid out for it.
    kernel: Kernel,
    /// How many weights share a scale in this model.
    scale_granularity: ScaleGranularity,
}

impl TensorReader<'_> {
    fn model(&self, config: ModelConfig) -> Result<Model, String> {
        let (c, kv, f) = (config.dim, config.kv_dim(), config.ffn_dim);
        let embedding = self.embedding(&config)?;
        let mut blocks = Vec::with_capacity(config.n_layers);
        for l in 0..config.n_layers {
            let name = |t: &str| format!("blk.{l}.{t}.weight");
            blocks.push(Block {
                attn_norm: self.vector(&name("attn_norm"), c)?,
                qkv: self.ternary_stack(
                    &[
                        (name("attn_q"), c),
                        (name("attn_k"), kv),
                        (name("attn_v"), kv),
                    ],
                    c,
                )?,
                attn_output: self.ternary_stack(&[(name("attn_output"), c)], c)?,
                ffn_norm: self.vector(&name("ffn_norm"), c)?,
                gate_up: self.ternary_stack(&[(name("ffn_gate"), f), (name("ffn_up"), f)], c)?,
                ffn_down: self.ternary_stack(&[(name("ffn_down"), c)], f)?,
                sub_norms: match config.variant.sub_norms {
                    true => Some(SubNorms {
                        attn: self.vector(&name("attn_sub_norm"), c)?,
                        ffn: self.vector(&name("ffn_sub_norm"), f)?,
                    }),
                    false => None,
                },
            });
        }
        let output_norm = self.vector("output_norm.weight", c)?;
        let head = if config.tied_embeddings {
            Head::Tied
        } else if config.variant.dense_head {
            Head::Dense(self.table("output.weight", &config)?)
        } else {
            Head::Ternary(self.ternary_stack(&[("output.weight".into(), config.vocab_size)], c)?)
        };
        Ok(Model {
            embedding,
            blocks,
            output_norm,
            head,
            mixings: Vec::new(),
            kernel: self.kernel,
            config,
        })
    }

    fn tensor(&self, name: &str) -> Result<gguf::Tensor<'_>, String> {
        self.expected.borrow_mut().insert(name.to_string());
        self.file
            .tensor(name)
            .ok_or_else(|| format!("tensor {name:?} is missing"))
    }

    fn embedding(&self, config: &ModelConfig) -> Result<Embedding, String> {
        self.table("token_embd.weight", config)
    }

    /// A `[V, C]` table (the embedding or a dense head) in the type the file has: F32, F16,
    /// BF16 or Q8_0.
    fn table(&self, name: &str, config: &ModelConfig) -> Result<Embedding, String> {
        let t = self.tensor(name)?;
        let expected = [config.vocab_size as u64, config.dim as u64];
        if t.info.shape() != expected {
            return Err(format!(
                "tensor {name:?} has shape {:?}, expected {expected:?}",
                t.info.shape()
            ));
        }
        let table = match t.info.ggml_type() {
            GgmlType::F32 => Embedding::F32(
                self.convert(t.data, 4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            GgmlType::F16 => {
                Embedding::F16(self.convert(t.data, 2, |b| f16::from_le_bytes([b[0], b[1]])))
            }
            GgmlType::Bf16 => {
                Embedding::Bf16(self.convert(t.data, 2, |b| bf16::from_le_bytes([b[0], b[1]])))
            }
            GgmlType::Q8_0 => Embedding::Q8_0(
                Q8Table::from_blocks(config.vocab_size, config.dim, t.data, |piece| {
                    self.file.release(piece)
                })
                .map_err(|e| format!("tensor {name:?}: {e}"))?,
            ),
            other => {
                return Err(format!(
                    "tensor {name:?} is {other}, expected F32, F16, BF16 or Q8_0"
                ))
            }
        };
        Ok(table)
    }

    /// Decodes little-endian values of `size` bytes from the mapped `data`, a piece at a time,
    /// each piece's pages released once decoded: a 128K-token f16 table (657 MB) no longer sits
    /// in memory twice, mapped and copied, at the start of loading.
    fn convert<T>(&self, data: &[u8], size: usize, value: impl Fn(&[u8]) -> T) -> Vec<T> {
        const PIECE_BYTES: usize = 16 << 20;
        let mut values = Vec::with_capacity(data.len() / size);
        for piece in data.chunks(PIECE_BYTES - PIECE_BYTES % size) {
            values.extend(piece.chunks_exact(size).map(&value));
            self.file.release(piece);
        }
        values
    }

    /// An F32 vector of `len` values, all finite.
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, String> {
        let t = self.tensor(name)?;
        if t.info.shape() != [len as u64] {
            return Err(format!(
                "tensor {name:?} has shape {:?}, expected [{len}]",
                t.info.shape()
            ));
        }
        let values = t
            .f32_values()
            .ok_or_else(|| format!("tensor {name:?} is {}, expected F32", t.info.ggml_type()))?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(format!("tensor {name:?} has a non-finite value at {i}"));
        }
        let values = values.into_owned();
        self.file.release(t.data);
        Ok(values)
    }

    /// Ternary weights `(name, rows)` of `cols` columns each, stacked row-wise into one planar
    /// matrix in the code layout of the kernel.
    fn ternary_stack(
        &self,
        parts: &[(String, usize)],
        cols: usize,
    ) -> Result<PlanarWeights, String> {
        // The parts are read from the mapped file as they are (scales borrowed where aligned):
        // copying them first left the process larger after loading, glibc keeping the freed
        // copies (a 1.44 B TQ2_0 import: 784.5 MB resident after loading, 753.7 without them).
        let mut found = Vec::with_capacity(parts.len());
        for (name, part_rows) in parts {
            self.expected.borrow_mut().insert(name.clone());
            self.expected
                .borrow_mut()
                .insert(gguf::ternary::scale_name(name));
            let pair = gguf::ternary_pair(self.file, name).map_err(|e| e.to_string())?;
            let [codes_shape, scales_shape] = gguf::ternary::pair_shapes(*part_rows, cols);
            if pair.codes.info.shape() != codes_shape || pair.scales.info.shape() != scales_shape {
                return Err(format!(
                    "ternary weight {name:?} has shape {:?}, expected {codes_shape:?} \
                     (a {part_rows}x{cols} matrix)",
                    pair.codes.info.shape()
                ));
            }
            let scales = pair.scales.f32_values().expect("checked F32");
            found.push((*part_rows, pair.codes.data, scales, pair.scales.data));
        }
        let stacked: Vec<(usize, &[u8], &[f32])> = found
            .iter()
            .map(|(rows, codes, scales, _)| (*rows, *codes, scales.as_ref()))
            .collect();
        let names: Vec<&str> = parts.iter().map(|(n, _)| n.as_str()).collect();
        // Scales that the model's granularity says are shared are stored once (planar.rs): the
        // same results from fewer bytes, and an error if the file's scales are not that uniform.
        let planar = PlanarWeights::from_packed_parts(cols, &stacked)
            .and_then(|w| w.share_scales(self.scale_granularity.scale_shift()))
            .map(|w| w.into_layout(self.kernel.code_layout()))
            .map_err(|e| format!("ternary weight {}: {e}", names.join(" + ")))?;
        for (_, codes, _, scales) in &found {
            self.file.release(codes);
            self.file.release(scales);
        }
        Ok(planar)
    }

    fn check_no_extra_tensors(&self) -> Result<(), String> {
        let expected = self.expected.borrow();
        match self
            .file
            .tensor_infos()
            .iter()
            .find(|t| !expected.contains(t.name()))
        {
            Some(extra) => Err(format!(
                "unexpected tensor {:?} (not part of this configuration)",
                extra.name()
            )),
            None => Ok(()),
        }
    }
}

/// Opens `gguf` (and `mhc`, see [`Model::load`]) and starts an engine on it, named after the file.
pub fn load_engine(
    gguf: &Path,
    mhc: Option<&Path>,
    options: EngineOptions,
) -> Result<Engine, LoadError> {
    let (model, tokenizer) = Model::load(gguf, mhc)?;
    let name = gguf
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "nanochat".into());
    Ok(Engine::start(model, tokenizer, name, options))
}
