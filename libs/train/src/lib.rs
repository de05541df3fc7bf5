//! Quantization-aware training of the nanochat model with candle (DESIGN.md "Training").
//!
//! Owns: the differentiable operations of the training graph with their straight-through
//! estimators ([`ops`]). The graph follows libs/model's forward definition (libs/model/src/model.rs)
//! and libs/mhc's mixing formulas exactly, and quantizes with libs/ternary's functions, so an
//! exported checkpoint runs the same numbers in the inference model.

pub mod ops;
