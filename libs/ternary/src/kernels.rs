//! CPU kernels and their dispatch: the safe entry points of every GEMV/GEMM path.
//!
//! Kernels, best first: AVX-512 VNNI, AVX-512 BW, AVX2 (all C with per-function target attributes,
//! csrc/kernels.c), portable scalar C, and the Rust reference. [`Kernel::selected`] picks the best
//! one this CPU runs, once, unless the environment variable `NANOCHAT_KERNEL` names another
//! (`reference`, `scalar`, `avx2`, `avx512bw`, `avx512vnni`). Every kernel gives the reference's
//! bits (tools/verify-triangle checks it). AVX2 and AVX-512 BW have a GEMV and a GEMM each;
//! AVX-512 VNNI has one GEMM for any number of vectors, which reads its codes in a layout of its
//! own ([`Kernel::code_layout`]; weights are converted once, [`PlanarWeights::into_layout`]).
//!
//! The entry points check every length, the alignment the C code relies on, and that this CPU runs
//! the kernel, before any foreign call. `par_*` split rows across the current rayon pool.

use crate::planar::{CodeLayout, PlanarWeights, ROW_TILE};
use crate::quant::{QuantizedActivations, QuantizedBatch};
use crate::reference;
use rayon::prelude::*;
use std::sync::OnceLock;

/// Environment variable that overrides the automatic kernel choice.
pub const KERNEL_ENV: &str = "NANOCHAT_KERNEL";

/// Activation vectors per weight pass in the C GEMM (its accumulators live on the stack).
const MAX_GEMM_BATCH: usize = 16;

/// Byte alignment the SIMD kernels load with.
const LOAD_ALIGNMENT: usize = 32;

/// One GEMV/GEMM implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// The Rust scalar reference ([`crate::reference`]): the definition.
    Reference,
    /// Portable C, any CPU.
    Scalar,
    /// x86-64 AVX2 + FMA.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL (maddubs sums).
    Avx512Bw,
    /// x86-64 AVX-512 F/BW/VL + VNNI (vpdpbusd sums).
    Avx512Vnni,
    /// A deliberately wrong kernel (ignores the last weight of every row), for testing the checks.
    #[cfg(feature = "fault-injection")]
    Faulty,
}

/// Why a kernel call was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("kernel {0} is not supported on this CPU (needs {1})")]
    Unsupported(&'static str, &'static str),
    #[error("kernel {0:?} is not compiled into this binary")]
    NotCompiled(&'static str),
    #[error("unknown kernel {0:?} in {KERNEL_ENV} (known: reference, scalar, avx2, avx512bw, avx512vnni)")]
    UnknownName(String),
    #[error("activations have {actual} values, the weights have {expected} columns")]
    InputLength { expected: usize, actual: usize },
    #[error("output has {actual} values, expected {expected}")]
    OutputLength { expected: usize, actual: usize },
    #[error("{0} buffer is not {LOAD_ALIGNMENT}-byte aligned")]
    Misaligned(&'static str),
    #[error("kernel {kernel} reads {expected:?} codes, these weights are {found:?} (PlanarWeights::into_layout)")]
    Layout {
        kernel: &'static str,
        expected: CodeLayout,
        found: CodeLayout,
    },
}

impl Kernel {
    /// Every kernel compiled into this binary, best first (runnable or not on this CPU).
    pub fn compiled() -> Vec<Kernel> {
        let mut kernels = Vec::new();
        if ffi::has_x86_kernels() {
            kernels.extend([Kernel::Avx512Vnni, Kernel::Avx512Bw, Kernel::Avx2]);
        }
        kernels.extend([Kernel::Scalar, Kernel::Reference]);
        kernels
    }

    /// The compiled kernels this CPU runs, best first.
    pub fn available() -> Vec<Kernel> {
        Self::compiled()
            .into_iter()
            .filter(|k| k.is_supported())
            .collect()
    }

    /// The best kernel this CPU runs.
    pub fn best() -> Kernel {
        Self::available()[0]
    }

    /// The kernel for this process: `NANOCHAT_KERNEL` if set (an error if it names a kernel this
    /// CPU does not run), otherwise [`Kernel::best`]. Decided once.
    pub fn selected() -> Result<Kernel, KernelError> {
        static SELECTED: OnceLock<Result<Kernel, KernelError>> = OnceLock::new();
        SELECTED
            .get_or_init(|| match std::env::var(KERNEL_ENV) {
                Ok(name) if !name.is_empty() => {
                    let kernel = Kernel::from_name(&name)?;
                    kernel.check_supported()?;
                    Ok(kernel)
                }
                _ => Ok(Kernel::best()),
            })
            .clone()
    }

    /// Short name used by the tools and `NANOCHAT_KERNEL`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Reference => "reference",
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512Bw => "avx512bw",
            Kernel::Avx512Vnni => "avx512vnni",
            #[cfg(feature = "fault-injection")]
            Kernel::Faulty => "faulty",
        }
    }

    /// The kernel with this name.
    pub fn from_name(name: &str) -> Result<Kernel, KernelError> {
        let all = [
            Kernel::Reference,
            Kernel::Scalar,
            Kernel::Avx2,
            Kernel::Avx512Bw,
            Kernel::Avx512Vnni,
            #[cfg(feature = "fault-injection")]
            Kernel::Faulty,
        ];
        let kernel = all
            .into_iter()
            .find(|k| k.name() == name.trim())
            .ok_or_else(|| KernelError::UnknownName(name.to_string()))?;
        if kernel.is_compiled() {
            Ok(kernel)
        } else {
            Err(KernelError::NotCompiled(kernel.name()))
        }
    }

    /// The code layout the kernel reads ([`CodeLayout`]): interleaved for AVX-512 VNNI, rows for
    /// the others; the reference reads either. Weights go to it once, with
    /// [`PlanarWeights::into_layout`].
    pub fn code_layout(self) -> CodeLayout {
        match self {
            Kernel::Avx512Vnni => CodeLayout::Interleaved,
            _ => CodeLayout::Rows,
        }
    }

    /// CPU features the kernel needs, as the tools print them.
    pub fn requirements(self) -> &'static str {
        match self {
            Kernel::Avx2 => "avx2, fma",
            Kernel::Avx512Bw => "avx512f, avx512bw, avx512vl",
            Kernel::Avx512Vnni => "avx512f, avx512bw, avx512vl, avx512vnni",
            _ => "nothing",
        }
    }

    fn is_compiled(self) -> bool {
        match self {
            Kernel::Avx2 | Kernel::Avx512Bw | Kernel::Avx512Vnni => ffi::has_x86_kernels(),
            _ => true,
        }
    }

    /// Whether this CPU runs the kernel.
    pub fn is_supported(self) -> bool {
        self.is_compiled() && cpu_supports(self)
    }

    fn check_supported(self) -> Result<(), KernelError> {
        if !self.is_compiled() {
            Err(KernelError::NotCompiled(self.name()))
        } else if !cpu_supports(self) {
            Err(KernelError::Unsupported(self.name(), self.requirements()))
        } else {
            Ok(())
        }
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(target_arch = "x86_64")]
fn cpu_supports(kernel: Kernel) -> bool {
    let avx512 = || {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
    };
    match kernel {
        Kernel::Avx2 => {
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
        }
        Kernel::Avx512Bw => avx512(),
        Kernel::Avx512Vnni => avx512() && std::is_x86_feature_detected!("avx512vnni"),
        _ => true,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_supports(kernel: Kernel) -> bool {
    !matches!(kernel, Kernel::Avx2 | Kernel::Avx512Bw | Kernel::Avx512Vnni)
}

/// Activation vectors as the kernels read them: vector `b` at `values[b * stride..]`.
#[derive(Clone, Copy)]
struct Acts<'a> {
    values: &'a [i8],
    stride: usize,
    len: usize,
    group_sums: &'a [i32],
    scales: &'a [f32],
}

impl<'a> Acts<'a> {
    fn single(x: &'a QuantizedActivations) -> Self {
        Acts {
            values: x.padded_values(),
            stride: x.padded_values().len(),
            len: x.len(),
            group_sums: x.group_sums(),
            scales: x.scale_slice(),
        }
    }

    fn batch(x: &'a QuantizedBatch) -> Self {
        Acts {
            values: x.padded_values(),
            stride: x.padded_len(),
            len: x.len(),
            group_sums: x.group_sums(),
            scales: x.scales(),
        }
    }

    fn batch_size(&self) -> usize {
        self.scales.len()
    }

    /// Vectors `[start, start + count)`.
    fn sub_batch(&self, start: usize, count: usize, groups: usize) -> Self {
        Acts {
            values: &self.values[start * self.stride..(start + count) * self.stride],
            group_sums: &self.group_sums[start * groups..(start + count) * groups],
            scales: &self.scales[start..start + count],
            ..*self
        }
    }
}

fn check_shapes(
    kernel: Kernel,
    w: &PlanarWeights,
    acts: &Acts,
    y_len: usize,
) -> Result<(), KernelError> {
    kernel.check_supported()?;
    if acts.len != w.cols() {
        return Err(KernelError::InputLength {
            expected: w.cols(),
            actual: acts.len,
        });
    }
    let expected = w.rows() * acts.batch_size();
    if y_len != expected {
        return Err(KernelError::OutputLength {
            expected,
            actual: y_len,
        });
    }
    if kernel != Kernel::Reference && w.layout() != kernel.code_layout() {
        return Err(KernelError::Layout {
            kernel: kernel.name(),
            expected: kernel.code_layout(),
            found: w.layout(),
        });
    }
    // Shapes of the buffers against each other: guaranteed by the constructors, checked again
    // here because the C code trusts them.
    let padded = w.groups() * crate::GROUP_SIZE;
    assert!(acts.stride >= padded && acts.stride % LOAD_ALIGNMENT == 0);
    assert!(acts.values.len() >= acts.stride * (acts.batch_size() - 1) + padded);
    assert_eq!(acts.group_sums.len(), w.groups() * acts.batch_size());
    assert_eq!(w.codes().len(), w.padded_rows() * w.code_row_stride());
    assert_eq!(
        w.scales().len(),
        w.padded_rows() / ROW_TILE * w.scale_tile_stride()
    );
    for (what, ptr) in [
        ("codes", w.codes().as_ptr() as usize),
        ("scales", w.scales().as_ptr() as usize),
        ("activations", acts.values.as_ptr() as usize),
    ] {
        if ptr % LOAD_ALIGNMENT != 0 {
            return Err(KernelError::Misaligned(what));
        }
    }
    Ok(())
}

/// Output pointer shared by the workers of a parallel call; each writes a disjoint set of rows.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
impl OutPtr {
    /// The pointer `count` elements further.
    ///
    /// # Safety
    /// The result must stay inside the output slice (as `pointer::add` requires).
    unsafe fn add(self, count: usize) -> OutPtr {
        // SAFETY: forwarded to the caller.
        OutPtr(unsafe { self.0.add(count) })
    }
}

// SAFETY: the pointer is only used by `run_rows` on row ranges that never overlap between workers.
unsafe impl Send for OutPtr {}
// SAFETY: as above; no two threads touch the same element.
unsafe impl Sync for OutPtr {}

/// Rows `[row_begin, row_begin + row_count)` for every vector of `acts` (at most
/// [`MAX_GEMM_BATCH`]); output of vector `b`, row `row_begin + i` at `y[b * y_stride + i]`.
///
/// # Safety
/// `check_shapes` passed for these arguments, `row_begin` is a multiple of [`ROW_TILE`],
/// `row_begin + row_count <= w.rows()`, `y` is valid for writes at every index above, and no other
/// thread accesses those elements during the call.
unsafe fn run_rows(
    kernel: Kernel,
    w: &PlanarWeights,
    acts: &Acts,
    row_begin: usize,
    row_count: usize,
    y: OutPtr,
    y_stride: usize,
) {
    debug_assert!(row_begin % ROW_TILE == 0 && row_begin + row_count <= w.rows());
    debug_assert!(acts.batch_size() <= MAX_GEMM_BATCH);
    if kernel == Kernel::Reference {
        for b in 0..acts.batch_size() {
            let x = &acts.values[b * acts.stride..b * acts.stride + acts.len];
            for r in 0..row_count {
                let value = reference::gemv_row(w, row_begin + r, x, acts.scales[b]);
                // SAFETY: in bounds and unshared by this function's contract.
                unsafe { *y.0.add(b * y_stride + r) = value };
            }
        }
        return;
    }
    let weights = ffi::NtkWeights {
        codes: w.codes().as_ptr(),
        code_row_stride: w.code_row_stride(),
        scales: w.scales().as_ptr(),
        scale_tile_stride: w.scale_tile_stride(),
        groups: w.groups(),
        scale_shift: w.scale_shift(),
    };
    let ffi_acts = ffi::NtkActs {
        x: acts.values.as_ptr(),
        x_stride: acts.stride,
        x_sums: acts.group_sums.as_ptr(),
        act_scales: acts.scales.as_ptr(),
        batch: acts.batch_size(),
    };
    let (wp, ap) = (&weights as *const _, &ffi_acts as *const _);
    // SAFETY: check_shapes verified lengths and alignment of every buffer the C code reads (whole
    // tiles of codes and scales, groups * 128 activation bytes per vector) and that the CPU runs
    // the kernel; the output range is valid and exclusive by this function's contract.
    unsafe {
        match (kernel, acts.batch_size()) {
            (Kernel::Scalar, 1) => ffi::ntk_gemv_i2p_i8_scalar(wp, ap, row_begin, row_count, y.0),
            (Kernel::Scalar, _) => {
                ffi::ntk_gemm_i2p_i8_scalar(wp, ap, row_begin, row_count, y.0, y_stride)
            }
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2, 1) => ffi::ntk_gemv_i2p_i8_avx2(wp, ap, row_begin, row_count, y.0),
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512Bw, 1) => {
                ffi::ntk_gemv_i2p_i8_avx512bw(wp, ap, row_begin, row_count, y.0)
            }
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2, _) => {
                ffi::ntk_gemm_i2p_i8_avx2(wp, ap, row_begin, row_count, y.0, y_stride)
            }
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512Bw, _) => {
                ffi::ntk_gemm_i2p_i8_avx512bw(wp, ap, row_begin, row_count, y.0, y_stride)
            }
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512Vnni, _) => {
                ffi::ntk_gemm_i2p_i8_avx512vnni(wp, ap, row_begin, row_count, y.0, y_stride)
            }
            #[cfg(feature = "fault-injection")]
            (Kernel::Faulty, _) => {
                for b in 0..acts.batch_size() {
                    let one = acts.sub_batch(b, 1, w.groups());
                    let one_ffi = ffi::NtkActs {
                        x: one.values.as_ptr(),
                        x_sums: one.group_sums.as_ptr(),
                        act_scales: one.scales.as_ptr(),
                        batch: 1,
                        ..ffi_acts
                    };
                    let out = y.0.add(b * y_stride);
                    ffi::ntk_gemv_i2p_i8_faulty(wp, &one_ffi, row_begin, row_count, out);
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            (Kernel::Avx2 | Kernel::Avx512Bw | Kernel::Avx512Vnni, _) => {
                unreachable!("check_shapes refuses x86 kernels on other architectures")
            }
            (Kernel::Reference, _) => unreachable!("handled above"),
        }
    }
}

/// Splits rows into tile-aligned chunks (several per worker, for balance) and runs every chunk for
/// every vector, `MAX_GEMM_BATCH` vectors per weight pass.
fn run(
    kernel: Kernel,
    w: &PlanarWeights,
    acts: Acts,
    y: &mut [f32],
    parallel: bool,
) -> Result<(), KernelError> {
    check_shapes(kernel, w, &acts, y.len())?;
    let rows = w.rows();
    let chunk_rows = if parallel {
        let chunks = rayon::current_num_threads() * 4;
        rows.div_ceil(chunks).next_multiple_of(ROW_TILE)
    } else {
        rows.next_multiple_of(ROW_TILE)
    };
    let out = OutPtr(y.as_mut_ptr());
    for start in (0..acts.batch_size()).step_by(MAX_GEMM_BATCH) {
        let count = MAX_GEMM_BATCH.min(acts.batch_size() - start);
        let sub = acts.sub_batch(start, count, w.groups());
        // SAFETY: y has rows * batch elements (checked); this sub-batch writes rows of vectors
        // [start, start + count) only.
        let sub_out = unsafe { out.add(start * rows) };
        let chunk = |row_begin: usize| {
            let row_count = chunk_rows.min(rows - row_begin);
            // SAFETY: shapes checked above; row_begin is a multiple of chunk_rows (itself a
            // multiple of ROW_TILE); chunks are disjoint row ranges, so no two workers write the
            // same element, and row_begin < rows keeps the offset pointer inside y.
            unsafe {
                let chunk_out = sub_out.add(row_begin);
                run_rows(kernel, w, &sub, row_begin, row_count, chunk_out, rows)
            };
        };
        if parallel {
            (0..rows)
                .into_par_iter()
                .step_by(chunk_rows)
                .for_each(chunk);
        } else {
            (0..rows).step_by(chunk_rows).for_each(chunk);
        }
    }
    Ok(())
}

/// `y = W · x` on the calling thread.
pub fn gemv(
    kernel: Kernel,
    w: &PlanarWeights,
    x: &QuantizedActivations,
    y: &mut [f32],
) -> Result<(), KernelError> {
    run(kernel, w, Acts::single(x), y, false)
}

/// `y = W · x` with rows split across the current rayon pool.
pub fn par_gemv(
    kernel: Kernel,
    w: &PlanarWeights,
    x: &QuantizedActivations,
    y: &mut [f32],
) -> Result<(), KernelError> {
    run(kernel, w, Acts::single(x), y, true)
}

/// `y[b] = W · x[b]` for every vector of the batch, on the calling thread; `y` is `[batch, rows]`.
/// Each weight is decoded once per [`MAX_GEMM_BATCH`] vectors.
pub fn gemm(
    kernel: Kernel,
    w: &PlanarWeights,
    x: &QuantizedBatch,
    y: &mut [f32],
) -> Result<(), KernelError> {
    run(kernel, w, Acts::batch(x), y, false)
}

/// [`gemm`] with rows split across the current rayon pool.
pub fn par_gemm(
    kernel: Kernel,
    w: &PlanarWeights,
    x: &QuantizedBatch,
    y: &mut [f32],
) -> Result<(), KernelError> {
    run(kernel, w, Acts::batch(x), y, true)
}

mod ffi {
    /// Mirror of `ntk_weights` in csrc/kernels.c.
    #[repr(C)]
    pub struct NtkWeights {
        pub codes: *const u8,
        pub code_row_stride: usize,
        pub scales: *const f32,
        pub scale_tile_stride: usize,
        pub groups: usize,
        pub scale_shift: u32,
    }

    /// Mirror of `ntk_acts` in csrc/kernels.c.
    #[repr(C)]
    pub struct NtkActs {
        pub x: *const i8,
        pub x_stride: usize,
        pub x_sums: *const i32,
        pub act_scales: *const f32,
        pub batch: usize,
    }

    extern "C" {
        fn ntk_has_x86_kernels() -> i32;
        pub fn ntk_gemv_i2p_i8_scalar(
            w: *const NtkWeights,
            a: *const NtkActs,
            row_begin: usize,
            row_count: usize,
            y: *mut f32,
        );
        pub fn ntk_gemm_i2p_i8_scalar(
            w: *const NtkWeights,
            a: *const NtkActs,
            row_begin: usize,
            row_count: usize,
            y: *mut f32,
            y_stride: usize,
        );
        #[cfg(feature = "fault-injection")]
        pub fn ntk_gemv_i2p_i8_faulty(
            w: *const NtkWeights,
            a: *const NtkActs,
            row_begin: usize,
            row_count: usize,
            y: *mut f32,
        );
    }

    #[cfg(target_arch = "x86_64")]
    extern "C" {
        pub fn ntk_gemv_i2p_i8_avx2(
            w: *const NtkWeights,
            a: *const NtkActs,
            row_begin: usize,
            row_count: usize,
            y: *mut f32,
        );
        pub fn ntk_gemm_i2p_i8_avx2(
            w: *const NtkWeights,
            a: *const NtkActs,
            row_begin: usize,
            row_count: usize,
            y: *mut f32,
            y_stride: usize,
        );
        pub fn ntk_gemm_i2p_i8_avx512bw(
            w: *const NtkWeights,
            a: *const NtkActs,
            row_begin: usize,
            row_count: usize,
            y: *mut f32,
            y_stride: usize,
        );
        pub fn ntk_gemm_i2p_i8_avx512vnni(
            w: *const NtkWeights,
            a: *const NtkActs,
            row_begin: usize,
            row_count: usize,
            y: *mut f32,
            y_stride: usize,
        );
        pub fn ntk_gemv_i2p_i8_avx512bw(
            w: *const NtkWeights,
            a: *const NtkActs,
            row_begin: usize,
            row_count: usize,
            y: *mut f32,
        );
    }

    pub fn has_x86_kernels() -> bool {
        // SAFETY: takes no arguments and returns a constant.
        unsafe { ntk_has_x86_kernels() != 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize_activations;

    fn random_weights(rows: usize, cols: usize, seed: u64) -> PlanarWeights {
        let weights = crate::synthetic::uniform_values(rows * cols, seed);
        PlanarWeights::from_f32(rows, cols, &weights).unwrap()
    }

    fn activations(cols: usize, batch: usize, seed: u64) -> Vec<f32> {
        (0..cols * batch)
            .map(|i| ((i as u64 * 7919 + seed * 104729) % 2001) as f32 / 100.0 - 10.0)
            .collect()
    }

    #[test]
    fn every_available_kernel_matches_the_reference_bit_for_bit() {
        for (rows, cols) in [
            (1, 1),
            (7, 130),
            (8, 128),
            (33, 300),
            (64, 1024),
            (13, 11008),
        ] {
            let w = random_weights(rows, cols, rows as u64);
            let x = quantize_activations(&activations(cols, 1, 3));
            let mut expected = vec![0f32; rows];
            reference::gemv(&w, &x, &mut expected);
            for kernel in Kernel::available() {
                let w = w.clone().into_layout(kernel.code_layout());
                for parallel in [false, true] {
                    let mut y = vec![f32::NAN; rows];
                    run(kernel, &w, Acts::single(&x), &mut y, parallel).unwrap();
                    let same = y
                        .iter()
                        .zip(&expected)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{kernel} {rows}x{cols} parallel={parallel}");
                }
            }
        }
    }

    #[test]
    fn gemm_matches_per_vector_reference_for_every_batch_size() {
        type GemmFn =
            fn(Kernel, &PlanarWeights, &QuantizedBatch, &mut [f32]) -> Result<(), KernelError>;
        // 19 rows: on one thread a block of two full tiles and one of a partial tile alone (the
        // VNNI GEMM's 16-row blocks); split across threads, tiles one by one. Batches: every
        // count of vectors left after the VNNI GEMM's chunks of 8, and calls of more than 16.
        let (rows, cols) = (19, 520);
        let w = random_weights(rows, cols, 5);
        for batch in (1..=9).chain([15, 16, 17, 23, 33]) {
            let x = QuantizedBatch::quantize(&activations(cols, batch, batch as u64), cols);
            let mut expected = vec![0f32; rows * batch];
            reference::gemm(&w, &x, &mut expected);
            for kernel in Kernel::available() {
                let w = w.clone().into_layout(kernel.code_layout());
                for (split, run) in [("gemm", gemm as GemmFn), ("par_gemm", par_gemm)] {
                    let mut y = vec![f32::NAN; rows * batch];
                    run(kernel, &w, &x, &mut y).unwrap();
                    let same = y
                        .iter()
                        .zip(&expected)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{kernel} {split} batch {batch}");
                }
            }
        }
    }

    /// Weights whose scales are shared as `shift` says, built with per-group scales.
    fn shared_scale_weights(rows: usize, cols: usize, shift: u32) -> PlanarWeights {
        let groups = crate::groups_for(cols);
        let trits: Vec<i8> = crate::synthetic::uniform_values(rows * cols, 9)
            .iter()
            .map(|v| (v * 3.0).round().clamp(-1.0, 1.0) as i8)
            .collect();
        let scales: Vec<f32> = (0..rows * groups)
            .map(|i| {
                let (row, group) = (i / groups, i % groups);
                let entry = group.checked_shr(shift).unwrap_or(0);
                0.01 + (row * 31 + entry * 7) as f32 * 1e-3
            })
            .collect();
        PlanarWeights::from_trits(rows, cols, &trits, &scales).unwrap()
    }

    #[test]
    fn shared_scales_give_every_kernel_the_same_bits_from_fewer_bytes() {
        let (rows, cols) = (19, 1300);
        for shift in [1, crate::planar::ROW_SCALE_SHIFT] {
            let per_group = shared_scale_weights(rows, cols, shift);
            let shared = per_group.clone().share_scales(shift).unwrap();
            let entries = per_group
                .groups()
                .div_ceil(1usize.checked_shl(shift).unwrap_or(usize::MAX));
            assert_eq!(shared.scales().len(), rows.div_ceil(8) * 8 * entries);
            for row in 0..rows {
                assert_eq!(shared.dequantize_row(row), per_group.dequantize_row(row));
            }
            for batch in [1, 3, 8, 17] {
                let x = QuantizedBatch::quantize(&activations(cols, batch, 4), cols);
                let mut expected = vec![0f32; rows * batch];
                reference::gemm(&per_group, &x, &mut expected);
                for kernel in Kernel::available() {
                    let w = shared.clone().into_layout(kernel.code_layout());
                    for parallel in [false, true] {
                        let mut y = vec![f32::NAN; rows * batch];
                        run(kernel, &w, Acts::batch(&x), &mut y, parallel).unwrap();
                        let same = y
                            .iter()
                            .zip(&expected)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(
                            same,
                            "{kernel} shift {shift} batch {batch} parallel={parallel}"
                        );
                    }
                }
            }
        }
        // Scales that differ inside a shared run are refused, naming the place.
        let err = shared_scale_weights(3, 300, 0).share_scales(1).unwrap_err();
        assert!(
            matches!(
                err,
                crate::planar::PlanarError::UnsharedScale {
                    group: 1,
                    first: 0,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn bad_lengths_are_errors_not_panics() {
        let w = random_weights(4, 256, 1);
        let x = quantize_activations(&activations(255, 1, 1));
        let mut y = vec![0f32; 4];
        assert!(matches!(
            gemv(Kernel::best(), &w, &x, &mut y),
            Err(KernelError::InputLength {
                expected: 256,
                actual: 255
            })
        ));
        let x = quantize_activations(&activations(256, 1, 1));
        let mut short = vec![0f32; 3];
        assert!(matches!(
            gemv(Kernel::Scalar, &w, &x, &mut short),
            Err(KernelError::OutputLength {
                expected: 4,
                actual: 3
            })
        ));
    }

    #[test]
    fn weights_in_another_layout_are_refused() {
        let w = random_weights(8, 128, 2);
        let x = quantize_activations(&activations(128, 1, 1));
        let mut y = vec![0f32; 8];
        for kernel in Kernel::available() {
            for layout in [CodeLayout::Rows, CodeLayout::Interleaved] {
                let w = w.clone().into_layout(layout);
                let result = gemv(kernel, &w, &x, &mut y);
                if kernel == Kernel::Reference || layout == kernel.code_layout() {
                    assert!(result.is_ok(), "{kernel} {layout:?}");
                } else {
                    assert!(
                        matches!(result, Err(KernelError::Layout { found, .. }) if found == layout),
                        "{kernel} {layout:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_errors() {
        for kernel in Kernel::compiled() {
            assert_eq!(Kernel::from_name(kernel.name()).unwrap(), kernel);
        }
        assert!(matches!(
            Kernel::from_name("sse9"),
            Err(KernelError::UnknownName(_))
        ));
        assert!(Kernel::available().contains(&Kernel::Reference));
    }
}
