//! Loading a model from GGUF + .mhc.

use std::path::Path;

use crate::engine::{Engine, EngineOptions};

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Invalid(String),
}

/// Opens `gguf` (and `mhc`, required when the model has 2 or 4 streams; by default the .mhc file
/// beside the GGUF) and starts an engine on it.
pub fn load_engine(
    gguf: &Path,
    mhc: Option<&Path>,
    options: EngineOptions,
) -> Result<Engine, LoadError> {
    let _ = (gguf, mhc, options);
    todo!("loader")
}
