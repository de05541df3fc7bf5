//! Reading a checkpoint folder as `train` writes it (docs/formats.md, "Checkpoint folder"):
//! `config.json`, `tokenizer.json`, `trainer_state.json` and `model.safetensors`, each checked
//! before anything is exported. Every error is one line naming the file (and the tensor).
//!
//! Read here with the safetensors crate and serde_json rather than through libs/train, so the
//! export step depends only on the file format, not on the training code.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use model::export::{source_tensors, F32Tensor};
use model::ModelConfig;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;

/// Prefix of the training-only tensors (multi-token-prediction heads), dropped on export.
pub const TRAINING_ONLY_PREFIX: &str = "mtp.";

/// How the checkpoint's weights were trained (`trainer_state.json`, key `weights`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Weights {
    /// Through the ternary straight-through estimator: export gives the model training saw.
    Ternary,
    /// Without it (an ablation): quantizing to ternary makes a different model.
    FullPrecision,
}

/// A checked checkpoint folder.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub tokenizer_json: String,
    pub step: u64,
    pub weights: Weights,
    /// Tensors named `mtp.*`, not exported.
    pub dropped: usize,
    /// The whole `model.safetensors` file and its parsed header.
    safetensors: Vec<u8>,
    header_len: usize,
    metadata: Metadata,
}

impl Checkpoint {
    /// Reads and checks `dir`: the JSON files parse, every tensor of `model.safetensors` is F32
    /// and either belongs to the model `config.json` describes or is training-only. Shapes and
    /// values are checked by the export as it reads each tensor.
    pub fn open(dir: &Path) -> Result<Checkpoint, String> {
        if !dir.is_dir() {
            return Err(format!(
                "{}: no such checkpoint folder (expected the folder train writes)",
                dir.display()
            ));
        }
        let file = |name: &str| dir.join(name);
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
        };
        let text = |path: &Path| {
            String::from_utf8(read(path)?).map_err(|_| format!("{}: not UTF-8", path.display()))
        };

        let config_path = file("config.json");
        let config: ModelConfig = serde_json::from_str(&text(&config_path)?)
            .map_err(|e| format!("{}: bad JSON: {e}", config_path.display()))?;
        config
            .validate()
            .map_err(|e| format!("{}: {e}", config_path.display()))?;

        let state_path = file("trainer_state.json");
        let state: serde_json::Value = serde_json::from_str(&text(&state_path)?)
            .map_err(|e| format!("{}: bad JSON: {e}", state_path.display()))?;
        let step = state
            .get("step")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| {
                format!(
                    "{}: \"step\" is missing or not an unsigned integer",
                    state_path.display()
                )
            })?;
        let weights = match state.get("weights").and_then(serde_json::Value::as_str) {
            Some("ternary") => Weights::Ternary,
            Some("full_precision") => Weights::FullPrecision,
            _ => {
                return Err(format!(
                    "{}: \"weights\" must be \"ternary\" or \"full_precision\"",
                    state_path.display()
                ))
            }
        };

        // The export checks that the tokenizer loads and fits the vocabulary.
        let tokenizer_json = text(&file("tokenizer.json"))?;

        let weights_path = file("model.safetensors");
        let safetensors = read(&weights_path)?;
        let (header_len, metadata) = SafeTensors::read_metadata(&safetensors)
            .map_err(|e| format!("{}: not a safetensors file: {e}", weights_path.display()))?;
        let dropped = check_names(&config, &metadata)
            .map_err(|e| format!("{}: {e}", weights_path.display()))?;

        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config,
            tokenizer_json,
            step,
            weights,
            dropped,
            safetensors,
            header_len,
            metadata,
        })
    }

    /// The tensor `name` of `model.safetensors` as f32 values (checked F32 by [`Checkpoint::open`]).
    pub fn tensor(&self, name: &str) -> Option<F32Tensor> {
        let info = self.metadata.info(name)?;
        let (start, end) = info.data_offsets;
        // The 8-byte length, the header, then the data the offsets index (validated by
        // `read_metadata` against the file length).
        let base = 8 + self.header_len;
        let values = self.safetensors[base + start..base + end]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Some(F32Tensor {
            shape: info.shape.clone(),
            values,
        })
    }

    /// The path of a file of the folder, for messages.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Every tensor is F32 and is either one the model has or training-only; returns how many are
/// training-only. Checked in name order, so the first problem reported is always the same.
fn check_names(config: &ModelConfig, metadata: &Metadata) -> Result<usize, String> {
    let expected: HashSet<String> = source_tensors(config).into_iter().map(|t| t.name).collect();
    let mut tensors: Vec<_> = metadata.tensors().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut dropped = 0;
    for (name, info) in tensors {
        if info.dtype != Dtype::F32 {
            return Err(format!(
                "tensor {name:?} is {:?}, expected F32 (train saves FP32 shadow weights)",
                info.dtype
            ));
        }
        if name.starts_with(TRAINING_ONLY_PREFIX) {
            dropped += 1;
        } else if !expected.contains(&name) {
            return Err(if name.ends_with("_mhc") && config.mhc_streams == 1 {
                format!(
                    "tensor {name:?} holds mHC parameters, but config.json has mhc_streams 1 \
                     (plain residual)"
                )
            } else {
                format!(
                    "unexpected tensor {name:?}: not part of the model config.json describes \
                     ({} layers, tied_embeddings {}, mhc_streams {})",
                    config.n_layers, config.tied_embeddings, config.mhc_streams
                )
            });
        }
    }
    Ok(dropped)
}
