//! Quantization-aware training of the nanochat model with candle (docs/ARCHITECTURE.md, "Training
//! methods").
//!
//! Owns: the differentiable operations of the training graph with their straight-through estimators
//! ([`ops`]), the training model ([`model`]), the optimizers ([`optim`]: Muon and Lion, gradient
//! clipping), the learning-rate schedule ([`schedule`]), the data loader ([`data`]), fine-tuning
//! examples ([`sft`]), the checkpoint folder ([`checkpoint`]) and the loss-curve chart of a run
//! ([`plot`]). The graph follows libs/model's forward definition (libs/model/src/model.rs) and
//! libs/mhc's mixing formulas exactly, and quantizes with libs/ternary's functions, so an exported
//! checkpoint runs the same numbers in the inference model.
//!
//! No printing, no exiting: `tools/train` is the command-line face.

mod attention;
pub mod checkpoint;
pub mod data;
mod fused;
mod matmul;
pub mod model;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod policy;
pub mod schedule;
pub mod sft;
mod sublayer;
pub mod trainer;
