//! mHC-lite: residual stream mixing for N = 2 and N = 4 streams, with exactly doubly-stochastic
//! H_res (docs/ARCHITECTURE.md, "mHC-lite": the formulas and the papers they come from).
//!
//! Owns: the stream count and per-module parameters with their initialisation ([`params`]), the
//! fixed order of the 24 permutations of S4 ([`perm`]), the matrices and the four batch
//! operations on residual streams ([`mixing`]), the stable sigmoid/softmax they use ([`numerics`]),
//! the invariant checks ([`check`]) and `.mhc` files ([`mod@file`]). Everything is f32: mHC matrices are
//! never ternary. Does not own any model code (libs/model) or training graph (libs/train); both
//! follow the formulas written down here.
//!
//! Shapes: B = batch rows, C = hidden size, n = streams; activations `[B, C]`, streams `[B, n·C]`
//! (stream-major inside a row, element (b, s, j) at `b·n·C + s·C + j`).
//!
//! One model, in order: `x = expand(embedding)`; for each sub-layer (attention, then FFN, per block)
//! with its module's [`Mixing`] `m`: `u = m.prepare_input(x)`, `y = F(u)`, `m.apply(x, y)`; finally
//! `out = collapse(x)`.

pub mod check;
pub mod file;
pub mod mixing;
pub mod numerics;
pub mod params;
pub mod perm;

pub use check::{composite_gain, StochasticError};
pub use file::{FormatError, MhcFile, MhcFileError, ModuleCheckError};
pub use mixing::{collapse, expand, Mixing, ResMatrix};
pub use params::{Mhc2, Mhc4, MhcParams, NStreams};
pub use perm::S4;
