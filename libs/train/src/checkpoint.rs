//! The checkpoint folder (docs/formats.md "Checkpoint folder"): `model.safetensors`,
//! `optimizer.safetensors`, `config.json`, `tokenizer.json` and `trainer_state.json`.
//!
//! Atomic replacement of a set of files: the new files are written and flushed into a staging
//! folder inside the checkpoint folder, a `COMPLETE` marker is written last, and only then are
//! the files renamed over the old ones (each rename is atomic). A crash before the marker leaves
//! the old checkpoint untouched (the staging folder is discarded); a crash between the renames
//! leaves a complete staging folder that the next [`load`] or [`save`] finishes moving. Both
//! safetensors files carry the step in their metadata, so a torn folder is detected, never loaded.
//! Other files of the folder (`metrics.jsonl`, `loss.png`) are left alone.
//!
//! Tensors are stored as F32 bit for bit, so a resumed run continues exactly.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use model::ModelConfig;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const STATE_FILE: &str = "trainer_state.json";
const FILES: [&str; 5] = [
    MODEL_FILE,
    OPTIMIZER_FILE,
    CONFIG_FILE,
    TOKENIZER_FILE,
    STATE_FILE,
];
const STAGING: &str = ".checkpoint-staging";
const COMPLETE: &str = "COMPLETE";
const STEP_KEY: &str = "step";

/// How the weights were trained: through the ternary straight-through estimator, or in full
/// precision (the ablation; `quantize-export` refuses it unless told otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightMode {
    Ternary,
    FullPrecision,
}

/// `trainer_state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: u64,
    pub tokens_seen: u64,
    /// The data loader's state: its generator's (`data::Rng`), or for fine-tuning the count of
    /// example batches drawn (`sft::ExampleBatcher`).
    pub data_rng: u64,
    pub weights: WeightMode,
    /// The run's settings (`trainer::RunSpec` as JSON).
    pub run: serde_json::Value,
    /// What reinforcement learning (maxrl) did to these weights after the run; absent for a
    /// checkpoint train wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rl: Option<serde_json::Value>,
}

/// What [`save`] writes, borrowed.
pub struct CheckpointRef<'a> {
    pub model: &'a [(String, Tensor)],
    pub optimizer: &'a [(String, Tensor)],
    pub config: &'a ModelConfig,
    pub tokenizer_json: &'a str,
    pub state: &'a TrainerState,
}

/// What [`load`] reads.
pub struct Checkpoint {
    pub model: Vec<(String, Tensor)>,
    pub optimizer: Vec<(String, Tensor)>,
    pub config: ModelConfig,
    pub tokenizer_json: String,
    pub state: TrainerState,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, message: impl Into<String>) -> CheckpointError {
    CheckpointError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Writes the checkpoint into `dir` (created if missing), replacing the one there atomically.
pub fn save(dir: &Path, ckpt: &CheckpointRef) -> Result<(), CheckpointError> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    finish_staged(dir)?;
    let staging = dir.join(STAGING);
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io_error(&staging))?;
    }
    fs::create_dir(&staging).map_err(io_error(&staging))?;

    let step = ckpt.state.step.to_string();
    let contents: [(&str, Vec<u8>); 5] = [
        (MODEL_FILE, safetensors_bytes(ckpt.model, &step, dir)?),
        (
            OPTIMIZER_FILE,
            safetensors_bytes(ckpt.optimizer, &step, dir)?,
        ),
        (
            CONFIG_FILE,
            pretty_json(ckpt.config, &dir.join(CONFIG_FILE))?,
        ),
        (TOKENIZER_FILE, ckpt.tokenizer_json.as_bytes().to_vec()),
        (STATE_FILE, pretty_json(ckpt.state, &dir.join(STATE_FILE))?),
    ];
    for (name, bytes) in &contents {
        write_synced(&staging.join(name), bytes)?;
    }
    write_synced(&staging.join(COMPLETE), b"")?;
    sync_dir(&staging)?;
    finish_staged(dir)
}

/// Moves a complete staging folder's files into place (after a crash mid-rename, or as the last
/// step of [`save`]); discards an incomplete one.
fn finish_staged(dir: &Path) -> Result<(), CheckpointError> {
    let staging = dir.join(STAGING);
    if !staging.exists() {
        return Ok(());
    }
    if staging.join(COMPLETE).exists() {
        for name in FILES {
            let from = staging.join(name);
            if from.exists() {
                fs::rename(&from, dir.join(name)).map_err(io_error(&from))?;
            }
        }
        sync_dir(dir)?;
    }
    fs::remove_dir_all(&staging).map_err(io_error(&staging))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut file = fs::File::create(path).map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    // Makes the renames durable; opening a folder to sync it works on Unix.
    #[cfg(unix)]
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_error(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn pretty_json(value: &impl Serialize, path: &Path) -> Result<Vec<u8>, CheckpointError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| invalid(path, e.to_string()))?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn safetensors_bytes(
    tensors: &[(String, Tensor)],
    step: &str,
    dir: &Path,
) -> Result<Vec<u8>, CheckpointError> {
    let mut data = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let values = tensor
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.push((name.clone(), tensor.dims().to_vec(), bytes));
    }
    let views = data
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|view| (name.as_str(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(dir, e.to_string()))?;
    let metadata = HashMap::from([(STEP_KEY.to_string(), step.to_string())]);
    safetensors::serialize(views, Some(metadata)).map_err(|e| invalid(dir, e.to_string()))
}

/// Reads the checkpoint in `dir` (finishing an interrupted [`save`] first).
pub fn load(dir: &Path, device: &Device) -> Result<Checkpoint, CheckpointError> {
    if !dir.is_dir() {
        return Err(invalid(dir, "not a checkpoint folder"));
    }
    finish_staged(dir)?;
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read(&path).map_err(io_error(&path))
    };
    let json_error = |name: &str, e: serde_json::Error| invalid(&dir.join(name), e.to_string());
    let state: TrainerState =
        serde_json::from_slice(&read(STATE_FILE)?).map_err(|e| json_error(STATE_FILE, e))?;
    let config: ModelConfig =
        serde_json::from_slice(&read(CONFIG_FILE)?).map_err(|e| json_error(CONFIG_FILE, e))?;
    let tokenizer_json = String::from_utf8(read(TOKENIZER_FILE)?)
        .map_err(|_| invalid(&dir.join(TOKENIZER_FILE), "not UTF-8"))?;
    let model = read_tensors(&dir.join(MODEL_FILE), state.step, device)?;
    let optimizer = read_tensors(&dir.join(OPTIMIZER_FILE), state.step, device)?;
    Ok(Checkpoint {
        model,
        optimizer,
        config,
        tokenizer_json,
        state,
    })
}

fn read_tensors(
    path: &Path,
    step: u64,
    device: &Device,
) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    let (_, metadata) =
        SafeTensors::read_metadata(&bytes).map_err(|e| invalid(path, e.to_string()))?;
    let saved_step = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STEP_KEY))
        .and_then(|s| s.parse::<u64>().ok());
    if saved_step != Some(step) {
        return Err(invalid(
            path,
            format!(
                "written at step {saved_step:?}, trainer_state.json says step {step} \
                 (a torn checkpoint)"
            ),
        ));
    }
    let file = SafeTensors::deserialize(&bytes).map_err(|e| invalid(path, e.to_string()))?;
    let mut tensors = Vec::new();
    for (name, view) in file.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(invalid(
                path,
                format!("{name} is {:?}, expected F32", view.dtype()),
            ));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.push((name, Tensor::from_vec(values, view.shape(), device)?));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ModelConfig {
        ModelConfig::preset("tiny").expect("tiny preset")
    }

    fn state(step: u64) -> TrainerState {
        TrainerState {
            step,
            tokens_seen: 10 * step,
            data_rng: 0xDEAD_BEEF,
            weights: WeightMode::Ternary,
            run: serde_json::json!({"any": "settings"}),
            rl: None,
        }
    }

    fn save_step(dir: &Path, step: u64, value: f32) {
        let dev = Device::Cpu;
        let model = vec![(
            "w".to_string(),
            Tensor::from_vec(vec![value, -0.0, f32::MIN_POSITIVE, 1e-42], (2, 2), &dev).unwrap(),
        )];
        let optimizer = vec![(
            "w.m".to_string(),
            Tensor::from_vec(vec![value; 3], 3, &dev).unwrap(),
        )];
        save(
            dir,
            &CheckpointRef {
                model: &model,
                optimizer: &optimizer,
                config: &config(),
                tokenizer_json: "{}",
                state: &state(step),
            },
        )
        .unwrap();
    }

    #[test]
    fn round_trip_is_bit_exact_and_keeps_other_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("metrics.jsonl"), "{}\n").unwrap();
        save_step(dir.path(), 3, 0.1);
        save_step(dir.path(), 7, 0.3);
        let ckpt = load(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(ckpt.state, state(7));
        assert_eq!(ckpt.config, config());
        assert_eq!(ckpt.tokenizer_json, "{}");
        let w = ckpt.model[0]
            .1
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let bits: Vec<u32> = w.iter().map(|v| v.to_bits()).collect();
        let want: Vec<u32> = [0.3f32, -0.0, f32::MIN_POSITIVE, 1e-42]
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(bits, want);
        assert_eq!(ckpt.optimizer[0].0, "w.m");
        assert!(dir.path().join("metrics.jsonl").exists());
        assert!(!dir.path().join(STAGING).exists());
    }

    #[test]
    fn interrupted_saves_leave_a_loadable_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        save_step(dir.path(), 3, 0.1);
        // A crash before the marker: the staging folder is discarded, step 3 stays.
        let staging = dir.path().join(STAGING);
        fs::create_dir(&staging).unwrap();
        fs::write(staging.join(MODEL_FILE), b"half a file").unwrap();
        assert_eq!(load(dir.path(), &Device::Cpu).unwrap().state.step, 3);
        assert!(!staging.exists());

        // A crash after the marker, midway through the renames: the load finishes them.
        let other = tempfile::tempdir().unwrap();
        save_step(other.path(), 9, 0.5);
        fs::create_dir(&staging).unwrap();
        for name in FILES {
            fs::copy(other.path().join(name), staging.join(name)).unwrap();
        }
        fs::write(staging.join(COMPLETE), b"").unwrap();
        fs::rename(staging.join(MODEL_FILE), dir.path().join(MODEL_FILE)).unwrap();
        assert_eq!(load(dir.path(), &Device::Cpu).unwrap().state.step, 9);
    }

    #[test]
    fn a_torn_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        save_step(dir.path(), 3, 0.1);
        let other = tempfile::tempdir().unwrap();
        save_step(other.path(), 4, 0.2);
        fs::copy(other.path().join(MODEL_FILE), dir.path().join(MODEL_FILE)).unwrap();
        let err = load(dir.path(), &Device::Cpu).err().expect("torn");
        assert!(err.to_string().contains("torn"), "{err}");
        assert!(load(&dir.path().join("missing"), &Device::Cpu).is_err());
    }
}
