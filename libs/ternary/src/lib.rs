//! Ternary weights as the whole pipeline sees them (docs/ARCHITECTURE.md, "Numerics").
//!
//! Owns: the 2-bit trit codes ([`trit`]), absmean group quantization of weights and absmax int8
//! quantization of activations ([`quant`]), planar runtime weights ([`planar`]), the Rust reference
//! GEMV that defines every result bit for bit ([`reference`]), the CPU kernels with their runtime
//! dispatch ([`kernels`]), and the two yardsticks the benchmarks compare them with: the memory read
//! bandwidth ([`bandwidth`]) and the arithmetic peak of each kernel's multiply instruction
//! ([`peak`]). Does not own file formats (libs/gguf) or any I/O policy.
//!
//! Shapes: a weight matrix is `[rows, cols]` = `[M, K]` (output features × input features); groups of
//! [`GROUP_SIZE`] weights run along K.

pub mod aligned;
pub mod bandwidth;
pub mod kernels;
pub mod peak;
pub mod planar;
pub mod quant;
pub mod reference;
pub mod synthetic;
pub mod trit;

pub use kernels::{Kernel, KernelError};
pub use planar::{CodeLayout, PlanarWeights};
pub use quant::{quantize_activations, QuantizedActivations, QuantizedBatch, QuantizedRowMut};

/// Weights per quantization group along the input dimension; one f32 scale per group.
pub const GROUP_SIZE: usize = 128;

/// Bytes of 2-bit codes per group (4 codes a byte).
pub const GROUP_CODE_BYTES: usize = GROUP_SIZE / 4;

/// Alignment of every planar buffer and of every row inside it, in bytes.
pub const ALIGNMENT: usize = 128;

/// Number of groups needed for `cols` weights (the last one may be partial).
pub const fn groups_for(cols: usize) -> usize {
    cols.div_ceil(GROUP_SIZE)
}
