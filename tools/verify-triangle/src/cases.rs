//! The generated cases: which shapes, which kinds of weights and activations and how many seeds
//! ([`plan`]), and how one case's weights and activations are rebuilt from its seed ([`build`]).
//!
//! Every case is a pure function of `(kind, op, rows, cols, seed)`, so `--seed S --seeds 1`
//! rebuilds exactly the case a failure line names. Does not run or compare anything
//! ([`crate::verify`] does).
//!
//! Shapes: a weight matrix is `[M, K]` (rows × cols). Every listed M meets every listed K on the
//! GEMV paths; the special kinds and the GEMM paths (batch sizes 1..=16, 17 and 33, which crosses
//! the kernels' 16-vector split twice) run on a smaller set of shapes that still has partial
//! groups (K not a multiple of 128), partial row tiles (M not a multiple of 8) and M = 1.

use crate::rng::Rng;
use crate::verify::Inputs;
use ternary::trit::{self, INVALID_CODE};
use ternary::{groups_for, quantize_activations, PlanarWeights, QuantizedActivations, GROUP_SIZE};

/// Row counts (M) of the GEMV sweep.
pub const GEMV_ROWS: [usize; 5] = [1, 31, 127, 128, 4096];
/// Column counts (K) of the GEMV sweep; 300 and 1000 end in a partial group.
pub const GEMV_COLS: [usize; 6] = [128, 256, 300, 1000, 4096, 11008];
/// Shapes of the special kinds on the GEMV paths.
pub const SPECIAL_SHAPES: [(usize, usize); 7] = [
    (1, 128),
    (31, 300),
    (127, 1000),
    (128, 256),
    (4096, 128),
    (8, 4096),
    (31, 11008),
];
/// Shapes of the GEMM paths (smaller M where K is large: every batch size runs on each).
pub const GEMM_SHAPES: [(usize, usize); 6] = [
    (1, 128),
    (31, 1000),
    (127, 300),
    (128, 256),
    (8, 4096),
    (5, 11008),
];
/// Batch sizes of the GEMM paths: 1..=16, then 17 and 33 (one and two 16-vector splits).
pub const GEMM_BATCHES: [usize; 18] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 33,
];
/// GEMV shapes with more weights than this run only the first `ceil(seeds / 8)` seeds.
pub const LARGE_SHAPE_WEIGHTS: usize = 1 << 20;
/// See [`LARGE_SHAPE_WEIGHTS`].
pub const LARGE_SHAPE_SEED_DIVISOR: u64 = 8;
/// GEMM cases run the first `ceil(seeds / 4)` seeds: each already runs 18 batch sizes (186
/// vectors), and the patterns of the data are covered by the GEMV cases.
pub const GEMM_SEED_DIVISOR: u64 = 4;

/// Weight scales at the edges of f32: tiny, huge, the smallest normal, the smallest subnormal,
/// the largest finite, zero and one.
pub const EXTREME_SCALES: [f32; 8] = [
    1e-30,
    1e30,
    f32::MIN_POSITIVE,
    1e-45,
    f32::MAX,
    0.0,
    1.0,
    1e-38,
];

/// Activation scales given directly (bypassing the quantizer) on the GEMV paths.
pub const EXTREME_ACT_SCALES: [f32; 3] = [1e-30, 1e30, f32::MIN_POSITIVE];

/// What the weights and activations of a case look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CaseKind {
    /// Random f32 weights through the absmean quantizer, random f32 activations.
    RandomF32,
    /// Random trits of random density, log-uniform scales, random int8 activations.
    RandomTrits,
    /// Invalid code 10 injected into the packed form (`to_packed` → `from_packed`).
    InvalidCodes,
    /// All-zero activations (output +0.0 exactly, never NaN).
    ZeroActivations,
    /// Scales 1e-30, 1e30, MIN_POSITIVE, subnormal, MAX; activations with a huge absmax.
    ExtremeScales,
    /// Activations ±127 everywhere (largest integer sums).
    SaturatedActivations,
    /// Every weight +1.
    AllPlusOne,
    /// Every weight -1.
    AllMinusOne,
}

impl CaseKind {
    pub const ALL: [CaseKind; 8] = [
        CaseKind::RandomF32,
        CaseKind::RandomTrits,
        CaseKind::InvalidCodes,
        CaseKind::ZeroActivations,
        CaseKind::ExtremeScales,
        CaseKind::SaturatedActivations,
        CaseKind::AllPlusOne,
        CaseKind::AllMinusOne,
    ];
    /// The kinds of the full M × K sweep.
    pub const SWEEP: [CaseKind; 2] = [CaseKind::RandomF32, CaseKind::RandomTrits];

    pub fn name(self) -> &'static str {
        match self {
            CaseKind::RandomF32 => "random-f32",
            CaseKind::RandomTrits => "random-trits",
            CaseKind::InvalidCodes => "invalid-codes",
            CaseKind::ZeroActivations => "zero-activations",
            CaseKind::ExtremeScales => "extreme-scales",
            CaseKind::SaturatedActivations => "saturated-activations",
            CaseKind::AllPlusOne => "all-plus-one",
            CaseKind::AllMinusOne => "all-minus-one",
        }
    }

    /// Number of vectors on the GEMV paths.
    fn gemv_vectors(self) -> usize {
        match self {
            CaseKind::RandomF32 | CaseKind::RandomTrits | CaseKind::ZeroActivations => 1,
            CaseKind::InvalidCodes => 2,
            CaseKind::SaturatedActivations | CaseKind::AllPlusOne | CaseKind::AllMinusOne => 4,
            CaseKind::ExtremeScales => 3 + EXTREME_ACT_SCALES.len(),
        }
    }
}

/// Which paths a job feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `gemv` and `par_gemv`.
    Gemv,
    /// `gemm` and `par_gemm`, every batch size of [`GEMM_BATCHES`].
    Gemm,
}

/// One case to build and verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Job {
    pub kind: CaseKind,
    pub op: Op,
    pub rows: usize,
    pub cols: usize,
    pub seed: u64,
}

impl Job {
    /// Rough cost (weights × vectors through the reference), for the progress bar.
    pub fn work(&self) -> u64 {
        let vectors = match self.op {
            Op::Gemv => self.kind.gemv_vectors(),
            Op::Gemm => GEMM_BATCHES.iter().sum::<usize>() / 4,
        };
        (self.rows * self.cols * vectors) as u64
    }
}

/// Seeds per case of a run with `--seeds N`, by kind of case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeedCounts {
    /// GEMV cases up to [`LARGE_SHAPE_WEIGHTS`] weights: N.
    pub gemv: u64,
    /// GEMV cases over [`LARGE_SHAPE_WEIGHTS`] weights: `ceil(N / 8)`.
    pub gemv_large: u64,
    /// GEMM cases: `ceil(N / 4)`.
    pub gemm: u64,
}

impl SeedCounts {
    pub fn new(seeds: u64) -> Self {
        Self {
            gemv: seeds,
            gemv_large: seeds.div_ceil(LARGE_SHAPE_SEED_DIVISOR),
            gemm: seeds.div_ceil(GEMM_SEED_DIVISOR),
        }
    }

    /// Seeds a case of this op and shape runs (the first ones of the run's seeds).
    pub fn for_case(self, op: Op, rows: usize, cols: usize) -> u64 {
        match op {
            Op::Gemm => self.gemm,
            Op::Gemv if rows * cols > LARGE_SHAPE_WEIGHTS => self.gemv_large,
            Op::Gemv => self.gemv,
        }
    }
}

/// Every job of a run with seeds `first_seed, first_seed + 1, ...` (`seeds` of them), seed by
/// seed, so a broken kernel shows up in the first seconds.
pub fn plan(first_seed: u64, seeds: u64) -> Vec<Job> {
    let mut shapes = Vec::new();
    for &rows in &GEMV_ROWS {
        for &cols in &GEMV_COLS {
            shapes.extend(CaseKind::SWEEP.map(|kind| (kind, Op::Gemv, rows, cols)));
        }
    }
    for (rows, cols) in SPECIAL_SHAPES {
        for kind in CaseKind::ALL
            .into_iter()
            .filter(|k| !CaseKind::SWEEP.contains(k))
        {
            shapes.push((kind, Op::Gemv, rows, cols));
        }
    }
    for (rows, cols) in GEMM_SHAPES {
        shapes.extend(CaseKind::ALL.map(|kind| (kind, Op::Gemm, rows, cols)));
    }
    let counts = SeedCounts::new(seeds);
    let mut jobs = Vec::new();
    for i in 0..seeds {
        for &(kind, op, rows, cols) in &shapes {
            if i < counts.for_case(op, rows, cols) {
                jobs.push(Job {
                    kind,
                    op,
                    rows,
                    cols,
                    seed: first_seed.wrapping_add(i),
                });
            }
        }
    }
    jobs
}

/// The weights and activations of one job.
pub struct Case {
    pub weights: PlanarWeights,
    /// For [`CaseKind::InvalidCodes`]: the same weights with every injected code set to 00, and
    /// the number of codes injected.
    pub zeroed_twin: Option<(PlanarWeights, u64)>,
    pub inputs: Inputs,
}

/// Builds the case of `job` from its seed.
pub fn build(job: &Job) -> Case {
    let (rows, cols) = (job.rows, job.cols);
    let mut rng = Rng::for_case(job.seed, job.kind.name(), rows, cols);
    let rng = &mut rng;
    let groups = groups_for(cols);
    let n = rows * cols;
    let mut zeroed_twin = None;
    let weights = match job.kind {
        CaseKind::RandomF32 => random_f32_weights(rng, rows, cols),
        CaseKind::RandomTrits => {
            let density = match rng.below(4) {
                0 => 0.1 * rng.unit(),
                1 => 1.0,
                _ => rng.unit(),
            };
            let values = trits(rng, n, density);
            planar(rows, cols, &values, &random_scales(rng, rows * groups))
        }
        CaseKind::InvalidCodes => {
            let values = trits(rng, n, 0.7);
            let base = planar(rows, cols, &values, &random_scales(rng, rows * groups));
            let (invalid, twin, injected) = inject_invalid_codes(rng, &base);
            zeroed_twin = Some((twin, injected));
            invalid
        }
        CaseKind::ZeroActivations => {
            let values = trits(rng, n, 0.7);
            let scales = if rng.chance(0.5) {
                extreme_scales(rng, rows, groups)
            } else {
                random_scales(rng, rows * groups)
            };
            planar(rows, cols, &values, &scales)
        }
        CaseKind::ExtremeScales => {
            let density = rng.unit();
            let values = trits(rng, n, density);
            planar(rows, cols, &values, &extreme_scales(rng, rows, groups))
        }
        CaseKind::SaturatedActivations => {
            let values = trits(rng, n, 1.0);
            planar(
                rows,
                cols,
                &values,
                &unit_or_random_scales(rng, rows * groups),
            )
        }
        CaseKind::AllPlusOne | CaseKind::AllMinusOne => {
            let value = if job.kind == CaseKind::AllPlusOne {
                1
            } else {
                -1
            };
            planar(
                rows,
                cols,
                &vec![value; n],
                &unit_or_random_scales(rng, rows * groups),
            )
        }
    };
    let inputs = match job.op {
        Op::Gemv => gemv_inputs(rng, job.kind, cols),
        Op::Gemm => {
            let largest = *GEMM_BATCHES.iter().max().expect("batch sizes");
            let source = (0..largest)
                .flat_map(|b| activations(rng, cols, batch_pattern(job.kind, b)))
                .collect();
            Inputs::new(cols).with_batches(source, &GEMM_BATCHES)
        }
    };
    Case {
        weights,
        zeroed_twin,
        inputs,
    }
}

fn planar(rows: usize, cols: usize, values: &[i8], scales: &[f32]) -> PlanarWeights {
    PlanarWeights::from_trits(rows, cols, values, scales)
        .expect("generated shapes, trits and scales are valid")
}

/// `n` trits, each non-zero with probability `density`, signs even.
fn trits(rng: &mut Rng, n: usize, density: f32) -> Vec<i8> {
    let threshold = (density.clamp(0.0, 1.0) as f64 * (1u64 << 32) as f64) as u64;
    (0..n)
        .map(|_| {
            let bits = rng.next_u64();
            if (bits >> 32) < threshold {
                if bits & 1 == 0 {
                    1
                } else {
                    -1
                }
            } else {
                0
            }
        })
        .collect()
}

/// Log-uniform scales over six orders of magnitude, 2% of them exactly zero.
fn random_scales(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            if rng.chance(0.02) {
                0.0
            } else {
                rng.log_uniform(1e-4, 1e2)
            }
        })
        .collect()
}

/// All scales 1.0 (exact integer sums all the way) or random ones, half the time each.
fn unit_or_random_scales(rng: &mut Rng, n: usize) -> Vec<f32> {
    if rng.chance(0.5) {
        vec![1.0; n]
    } else {
        random_scales(rng, n)
    }
}

/// Row by row (from a random start): all 1e-30, all 1e30, all MIN_POSITIVE, or each scale drawn
/// from [`EXTREME_SCALES`].
fn extreme_scales(rng: &mut Rng, rows: usize, groups: usize) -> Vec<f32> {
    let start = rng.below(4);
    let mut scales = Vec::with_capacity(rows * groups);
    for r in 0..rows {
        for _ in 0..groups {
            scales.push(match (start + r) % 4 {
                0 => 1e-30,
                1 => 1e30,
                2 => f32::MIN_POSITIVE,
                _ => rng.pick(&EXTREME_SCALES),
            });
        }
    }
    scales
}

/// Random f32 weights (a magnitude per row over three orders), sometimes with an all-zero group
/// (its scale is the quantizer's epsilon), through `PlanarWeights::from_f32`.
fn random_f32_weights(rng: &mut Rng, rows: usize, cols: usize) -> PlanarWeights {
    let mut weights = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let magnitude = rng.log_uniform(1e-3, 1.0);
        weights.extend((0..cols).map(|_| rng.signed_unit() * magnitude));
    }
    if rng.chance(0.5) {
        let (row, group) = (rng.below(rows), rng.below(groups_for(cols)));
        let start = row * cols + group * GROUP_SIZE;
        let end = (start + GROUP_SIZE).min((row + 1) * cols);
        weights[start..end].fill(0.0);
    }
    PlanarWeights::from_f32(rows, cols, &weights).expect("generated shapes are valid")
}

/// Injects the invalid code 10 into the packed (file) form of `base` and repacks with
/// `PlanarWeights::from_packed`: one whole row, the first and last weight of every group and
/// of every row, and a random 5–50% of the rest. Returns the weights with invalid codes, the
/// same weights with those codes set to 00, and the number injected.
fn inject_invalid_codes(
    rng: &mut Rng,
    base: &PlanarWeights,
) -> (PlanarWeights, PlanarWeights, u64) {
    let (rows, cols) = (base.rows(), base.cols());
    let (mut packed, scales) = base.to_packed();
    let mut zeroed = packed.clone();
    let row_bytes = trit::packed_len(cols);
    let fraction = 0.05 + 0.45 * rng.unit();
    let whole_row = rng.below(rows);
    let mut injected = 0;
    for r in 0..rows {
        for j in 0..cols {
            let edge = j == cols - 1 || j % GROUP_SIZE == 0 || j % GROUP_SIZE == GROUP_SIZE - 1;
            if r == whole_row || edge || rng.chance(fraction) {
                let (byte, shift) = (r * row_bytes + j / 4, 2 * (j % 4));
                packed[byte] = (packed[byte] & !(0b11 << shift)) | (INVALID_CODE << shift);
                zeroed[byte] &= !(0b11 << shift);
                injected += 1;
            }
        }
    }
    let repack = |codes: &[u8]| {
        PlanarWeights::from_packed(rows, cols, codes, &scales)
            .expect("packed form of valid weights")
    };
    (repack(&packed), repack(&zeroed), injected)
}

/// How one activation vector looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pattern {
    /// Uniform in ±m, m log-uniform over six orders; a quarter of the time half the values 0.
    Random,
    /// Random int8 values (one of them ±127) times a power of two: quantizes exactly to them.
    ExactI8,
    Zero,
    /// All +127 after quantization.
    Plus,
    /// All -127.
    Minus,
    /// ±127, the sign flipping every group.
    GroupAlternating,
    /// ±127 with random signs.
    RandomSign,
    /// Uniform in ±1e30: activation scale around 7.9e27.
    Huge,
    /// Small values and one ±f32::MAX: activation scale f32::MAX / 127.
    MaxSpike,
    /// Uniform in ±1e-38: subnormal values, tiny scale.
    Tiny,
}

fn activations(rng: &mut Rng, cols: usize, pattern: Pattern) -> Vec<f32> {
    let sign = |rng: &mut Rng| if rng.chance(0.5) { 1.0 } else { -1.0 };
    match pattern {
        Pattern::Random => {
            let magnitude = rng.log_uniform(1e-3, 1e3);
            let sparse = rng.chance(0.25);
            (0..cols)
                .map(|_| {
                    let value = rng.signed_unit() * magnitude;
                    if sparse && rng.chance(0.5) {
                        0.0
                    } else {
                        value
                    }
                })
                .collect()
        }
        Pattern::ExactI8 => {
            let unit = 2f32.powi(rng.int_in(-20, 20));
            let mut q: Vec<f32> = (0..cols).map(|_| rng.int_in(-127, 127) as f32).collect();
            q[rng.below(cols)] = 127.0 * sign(rng);
            q.into_iter().map(|v| v * unit).collect()
        }
        Pattern::Zero => vec![0.0; cols],
        Pattern::Plus => vec![1.0; cols],
        Pattern::Minus => vec![-1.0; cols],
        Pattern::GroupAlternating => (0..cols)
            .map(|j| if (j / GROUP_SIZE) % 2 == 0 { 1.0 } else { -1.0 })
            .collect(),
        Pattern::RandomSign => (0..cols).map(|_| sign(rng)).collect(),
        Pattern::Huge => (0..cols).map(|_| rng.signed_unit() * 1e30).collect(),
        Pattern::MaxSpike => {
            let mut x: Vec<f32> = (0..cols).map(|_| rng.signed_unit()).collect();
            x[rng.below(cols)] = f32::MAX * sign(rng);
            x
        }
        Pattern::Tiny => (0..cols).map(|_| rng.signed_unit() * 1e-38).collect(),
    }
}

/// Random int8 values (one of them ±127) with an activation scale given directly.
fn exact_scale_vector(rng: &mut Rng, cols: usize, scale: f32) -> QuantizedActivations {
    let mut q: Vec<i8> = (0..cols).map(|_| rng.int_in(-127, 127) as i8).collect();
    q[rng.below(cols)] = if rng.chance(0.5) { 127 } else { -127 };
    QuantizedActivations::from_quantized(&q, scale)
}

fn gemv_inputs(rng: &mut Rng, kind: CaseKind, cols: usize) -> Inputs {
    use Pattern::*;
    let patterns: &[Pattern] = match kind {
        CaseKind::RandomF32 => &[Random],
        CaseKind::RandomTrits => &[ExactI8],
        CaseKind::InvalidCodes => &[Random, RandomSign],
        CaseKind::ZeroActivations => &[Zero],
        CaseKind::ExtremeScales => &[Huge, MaxSpike, Tiny],
        CaseKind::SaturatedActivations => &[Plus, Minus, GroupAlternating, RandomSign],
        CaseKind::AllPlusOne | CaseKind::AllMinusOne => &[Plus, Minus, ExactI8, Random],
    };
    let mut inputs = Inputs::new(cols);
    for &pattern in patterns {
        inputs = inputs.with_vector(quantize_activations(&activations(rng, cols, pattern)));
    }
    if kind == CaseKind::ExtremeScales {
        for scale in EXTREME_ACT_SCALES {
            inputs = inputs.with_vector(exact_scale_vector(rng, cols, scale));
        }
    }
    debug_assert_eq!(inputs.vectors().len(), kind.gemv_vectors());
    inputs
}

/// Name of the activations a model tensor is verified with (the `case=` of its failure lines).
pub const MODEL_CASE: &str = "model-activations";
/// GEMM batch sizes of a model tensor: 4 (inside one 16-vector block) and 17 (crosses it).
pub const MODEL_BATCHES: [usize; 2] = [4, 17];

/// The activations tensor `name` (`cols` columns) of a model file is verified with for `seed`:
/// on the GEMV paths one random vector, one of ±127 with random signs and one of zeros; on the
/// GEMM paths batches of [`MODEL_BATCHES`] mixing random, ±127 and zero vectors. A pure function
/// of `(seed, name, cols)`, so `--seed S --seeds 1` rebuilds what a failure line names.
pub fn model_inputs(seed: u64, name: &str, cols: usize) -> Inputs {
    use Pattern::*;
    let mut rng = Rng::for_case(seed, name, 0, cols);
    let rng = &mut rng;
    let mut inputs = Inputs::new(cols);
    for pattern in [Random, RandomSign, Zero] {
        inputs = inputs.with_vector(quantize_activations(&activations(rng, cols, pattern)));
    }
    let largest = *MODEL_BATCHES.iter().max().expect("batch sizes");
    let source = (0..largest)
        .flat_map(|b| {
            let pattern = match b {
                2 => Zero,
                _ if b % 3 == 1 => RandomSign,
                _ => Random,
            };
            activations(rng, cols, pattern)
        })
        .collect();
    inputs.with_batches(source, &MODEL_BATCHES)
}

/// Pattern of vector `b` of a GEMM batch: the batches mix patterns, so each vector's own scale
/// matters (a kernel that mixes up the vectors' scales fails).
fn batch_pattern(kind: CaseKind, b: usize) -> Pattern {
    use Pattern::*;
    match kind {
        CaseKind::RandomF32 => match b {
            5 => Zero,
            10 => RandomSign,
            _ => Random,
        },
        CaseKind::RandomTrits => {
            if b == 5 {
                Zero
            } else {
                ExactI8
            }
        }
        CaseKind::InvalidCodes => [Random, ExactI8, RandomSign][b % 3],
        CaseKind::ZeroActivations => Zero,
        CaseKind::ExtremeScales => [Huge, MaxSpike, Tiny, Random, Zero][b % 5],
        CaseKind::SaturatedActivations => [Plus, Minus, GroupAlternating, RandomSign][b % 4],
        CaseKind::AllPlusOne | CaseKind::AllMinusOne => [Plus, Minus, ExactI8, Random][b % 4],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_listed_m_meets_every_listed_k_on_the_gemv_paths() {
        let jobs = plan(1, 1);
        let gemv: BTreeSet<(usize, usize)> = jobs
            .iter()
            .filter(|j| j.op == Op::Gemv)
            .map(|j| (j.rows, j.cols))
            .collect();
        for m in GEMV_ROWS {
            for k in GEMV_COLS {
                assert!(gemv.contains(&(m, k)), "{m}x{k}");
            }
        }
        let gemm = jobs.iter().filter(|j| j.op == Op::Gemm).count();
        assert_eq!(gemm, GEMM_SHAPES.len() * CaseKind::ALL.len());
    }

    #[test]
    fn large_shapes_and_gemm_run_fewer_seeds_and_seeds_are_consecutive() {
        let counts = SeedCounts::new(8);
        assert_eq!(counts.for_case(Op::Gemv, 4096, 11008), 1);
        assert_eq!(counts.for_case(Op::Gemv, 127, 1000), 8);
        assert_eq!(counts.for_case(Op::Gemm, 127, 300), 2);
        assert_eq!(SeedCounts::new(9).for_case(Op::Gemv, 4096, 11008), 2);
        assert_eq!(
            SeedCounts::new(1),
            SeedCounts {
                gemv: 1,
                gemv_large: 1,
                gemm: 1
            }
        );
        let jobs = plan(u64::MAX, 2);
        let seeds: BTreeSet<u64> = jobs.iter().map(|j| j.seed).collect();
        assert_eq!(seeds, BTreeSet::from([u64::MAX, 0]));
    }

    #[test]
    fn a_case_is_a_function_of_its_job() {
        let job = Job {
            kind: CaseKind::ExtremeScales,
            op: Op::Gemv,
            rows: 9,
            cols: 300,
            seed: 42,
        };
        let (a, b) = (build(&job), build(&job));
        assert_eq!(a.weights.codes(), b.weights.codes());
        assert_eq!(a.weights.scales(), b.weights.scales());
        let other = build(&Job { seed: 43, ..job });
        assert_ne!(a.weights.codes(), other.weights.codes());
        for (x, y) in a.inputs.vectors().iter().zip(b.inputs.vectors()) {
            assert_eq!((x.values(), x.scale()), (y.values(), y.scale()));
        }
    }

    #[test]
    fn invalid_codes_are_injected_and_survive_repacking() {
        let job = Job {
            kind: CaseKind::InvalidCodes,
            op: Op::Gemv,
            rows: 5,
            cols: 300,
            seed: 3,
        };
        let case = build(&job);
        let (twin, injected) = case.zeroed_twin.expect("twin");
        assert!(injected >= 300, "a whole row at least");
        assert_eq!(case.weights.histogram().invalid, injected);
        assert_eq!(twin.histogram().invalid, 0);
        for r in 0..5 {
            for j in 0..300 {
                let (code, twin_code) = (case.weights.code(r, j), twin.code(r, j));
                assert!(code == twin_code || (code == INVALID_CODE && twin_code == 0));
            }
        }
    }

    #[test]
    fn special_activations_quantize_as_intended() {
        let mut rng = Rng::new(5);
        let plus = quantize_activations(&activations(&mut rng, 300, Pattern::Plus));
        assert!(plus.values().iter().all(|&v| v == 127));
        let alt = quantize_activations(&activations(&mut rng, 300, Pattern::GroupAlternating));
        assert_eq!(
            (alt.values()[0], alt.values()[128], alt.values()[299]),
            (127, -127, 127)
        );
        let zero = quantize_activations(&activations(&mut rng, 300, Pattern::Zero));
        assert_eq!(zero.scale(), 0.0);
        let huge = quantize_activations(&activations(&mut rng, 300, Pattern::Huge));
        assert!(huge.scale() > 1e27);
        let spike = quantize_activations(&activations(&mut rng, 300, Pattern::MaxSpike));
        assert_eq!(spike.scale(), f32::MAX / 127.0);
        let x = activations(&mut rng, 300, Pattern::ExactI8);
        let exact = quantize_activations(&x);
        assert!(
            exact.scale().to_bits().trailing_zeros() >= 23,
            "a power of two"
        );
        for (&q, &v) in exact.values().iter().zip(&x) {
            assert_eq!(q as f32 * exact.scale(), v);
        }
    }

    #[test]
    fn gemm_batches_cross_the_sixteen_vector_split() {
        assert!(GEMM_BATCHES.contains(&17) && GEMM_BATCHES.contains(&33));
        assert!((1..=16).all(|b| GEMM_BATCHES.contains(&b)));
    }
}
