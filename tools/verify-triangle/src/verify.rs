//! The comparison engine: runs candidate kernels on given weights and activations, compares every
//! output with the Rust reference (`ternary::reference::gemv` / `gemm`) bit for bit, and tallies
//! what was compared and what failed.
//!
//! [`verify_weights`] is the one entry point for anything that holds a [`PlanarWeights`]: the
//! generated cases of [`crate::cases`] today, the tensors of a model file tomorrow. It knows nothing
//! about how the weights were made. Owns: the [`Candidate`] abstraction (a real [`Kernel`], or a
//! closure in the tests), the four [`Path`]s, the [`Tally`] and the failure lines.

use crate::compare::{describe, first_mismatch, unwritten, Mismatch};
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use ternary::{
    kernels, quantize_activations, reference, Kernel, KernelError, PlanarWeights,
    QuantizedActivations, QuantizedBatch,
};

/// Failures reported per kernel; after this many failing comparisons the kernel is not run again.
pub const MAX_FAILURES_PER_KERNEL: usize = 5;

/// One way of calling a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Path {
    /// `kernels::gemv`: one vector, the calling thread.
    Gemv,
    /// `kernels::par_gemv`: one vector, rows split across the rayon pool.
    ParGemv,
    /// `kernels::gemm`: a batch of vectors, the calling thread.
    Gemm,
    /// `kernels::par_gemm`: a batch, rows split across the rayon pool.
    ParGemm,
}

impl Path {
    pub const ALL: [Path; 4] = [Path::Gemv, Path::ParGemv, Path::Gemm, Path::ParGemm];

    pub fn name(self) -> &'static str {
        match self {
            Path::Gemv => "gemv",
            Path::ParGemv => "par_gemv",
            Path::Gemm => "gemm",
            Path::ParGemm => "par_gemm",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Something that computes `y = W · x` the way the kernels do: a real [`Kernel`] through the
/// checked entry points of `ternary::kernels`, or (in tests) a deliberately wrong closure.
pub trait Candidate: Sync {
    /// The name printed in the table and the failure lines.
    fn name(&self) -> &str;
    /// `w` as this candidate runs it (a kernel's own code layout); by default `w` itself.
    fn weights<'w>(&self, w: &'w PlanarWeights) -> Cow<'w, PlanarWeights> {
        Cow::Borrowed(w)
    }
    /// `y = W · x` (`kernels::gemv`, or `kernels::par_gemv` when `parallel`).
    fn gemv(
        &self,
        parallel: bool,
        w: &PlanarWeights,
        x: &QuantizedActivations,
        y: &mut [f32],
    ) -> Result<(), KernelError>;
    /// `y[b] = W · x[b]`, `y` is `[batch, rows]` (`kernels::gemm`, or `kernels::par_gemm`).
    fn gemm(
        &self,
        parallel: bool,
        w: &PlanarWeights,
        x: &QuantizedBatch,
        y: &mut [f32],
    ) -> Result<(), KernelError>;
}

impl Candidate for Kernel {
    fn name(&self) -> &str {
        Kernel::name(*self)
    }

    /// `w` converted when the kernel reads another code layout: each kernel is checked on the
    /// weights as it runs them, conversion included, against the reference on `w` itself.
    fn weights<'w>(&self, w: &'w PlanarWeights) -> Cow<'w, PlanarWeights> {
        if w.layout() == self.code_layout() {
            Cow::Borrowed(w)
        } else {
            Cow::Owned(w.clone().into_layout(self.code_layout()))
        }
    }

    fn gemv(
        &self,
        parallel: bool,
        w: &PlanarWeights,
        x: &QuantizedActivations,
        y: &mut [f32],
    ) -> Result<(), KernelError> {
        if parallel {
            kernels::par_gemv(*self, w, x, y)
        } else {
            kernels::gemv(*self, w, x, y)
        }
    }

    fn gemm(
        &self,
        parallel: bool,
        w: &PlanarWeights,
        x: &QuantizedBatch,
        y: &mut [f32],
    ) -> Result<(), KernelError> {
        if parallel {
            kernels::par_gemm(*self, w, x, y)
        } else {
            kernels::gemm(*self, w, x, y)
        }
    }
}

/// The activations one weight matrix is verified with.
#[derive(Clone, Debug)]
pub struct Inputs {
    cols: usize,
    /// Vectors for the GEMV paths, each compared on its own.
    vectors: Vec<QuantizedActivations>,
    /// Row-major f32 `[max batch, cols]`: the GEMM batch of size `n` is its first `n` rows,
    /// quantized with `QuantizedBatch::quantize` (each vector its own absmax scale).
    batch_source: Vec<f32>,
    /// The batch sizes the GEMM paths run, in order.
    batches: Vec<usize>,
}

impl Inputs {
    /// No activations yet for weights with `cols` columns.
    pub fn new(cols: usize) -> Self {
        Self {
            cols,
            vectors: Vec::new(),
            batch_source: Vec::new(),
            batches: Vec::new(),
        }
    }

    /// Adds a vector for the GEMV paths.
    pub fn with_vector(mut self, x: QuantizedActivations) -> Self {
        assert_eq!(x.len(), self.cols, "Inputs::with_vector: length");
        self.vectors.push(x);
        self
    }

    /// Sets the GEMM source (`[n, cols]` row-major f32) and the batch sizes (each at most `n`).
    pub fn with_batches(mut self, source: Vec<f32>, batches: &[usize]) -> Self {
        let n = source.len() / self.cols;
        assert_eq!(
            source.len(),
            n * self.cols,
            "Inputs::with_batches: source shape"
        );
        assert!(batches.iter().all(|&b| (1..=n).contains(&b)), "batch sizes");
        self.batch_source = source;
        self.batches = batches.to_vec();
        self
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn vectors(&self) -> &[QuantizedActivations] {
        &self.vectors
    }

    pub fn batches(&self) -> &[usize] {
        &self.batches
    }

    /// The first `n` vectors of the GEMM source, quantized.
    pub fn batch(&self, n: usize) -> QuantizedBatch {
        QuantizedBatch::quantize(&self.batch_source[..n * self.cols], self.cols)
    }

    /// Vector `b` of the GEMM source quantized on its own (what the GEMV paths would get).
    pub fn batch_vector(&self, b: usize) -> QuantizedActivations {
        quantize_activations(&self.batch_source[b * self.cols..(b + 1) * self.cols])
    }
}

/// What a comparison was about, for the failure lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    /// The case name (`random-f32`, `invalid-codes`, ...; `model-activations` for a model).
    pub case: String,
    /// The seed that rebuilds the case (or a model tensor's activations), when it was generated.
    pub seed: Option<u64>,
    /// The tensor of a model file (`--model`) the weights came from.
    pub tensor: Option<String>,
}

/// What went wrong in one comparison.
#[derive(Clone, Debug, PartialEq)]
pub enum FailureKind {
    /// Outputs differ; `vector` and `row` locate `mismatch.index` in the `[batch, rows]` output.
    Mismatch {
        mismatch: Mismatch,
        vector: usize,
        row: usize,
    },
    /// The kernel refused the call (`KernelError`), although this CPU runs it.
    Error(String),
    /// A self-check that is not a comparison of outputs failed; says what was wrong.
    Check(String),
}

/// One failing comparison, printed as one line.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// The kernel, or `reference` for the self-checks.
    pub kernel: String,
    /// A [`Path`] name, or `self-check:<name>`.
    pub path: String,
    pub rows: usize,
    pub cols: usize,
    pub batch: usize,
    pub label: Label,
    pub kind: FailureKind,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = match self.kind {
            FailureKind::Mismatch { .. } => "MISMATCH",
            FailureKind::Error(_) => "ERROR",
            FailureKind::Check(_) => "FAILED",
        };
        write!(
            f,
            "{head} kernel={} path={} shape={}x{} batch={}",
            self.kernel, self.path, self.rows, self.cols, self.batch
        )?;
        if let Some(seed) = self.label.seed {
            write!(f, " seed={seed}")?;
        }
        if let Some(tensor) = &self.label.tensor {
            write!(f, " tensor={tensor}")?;
        }
        write!(f, " case={}", self.label.case)?;
        match &self.kind {
            FailureKind::Mismatch {
                mismatch,
                vector,
                row,
            } => write!(
                f,
                " index={} (vector {vector}, row {row}): got {}, reference {}; {} of {} outputs differ",
                mismatch.index,
                describe(mismatch.got),
                describe(mismatch.expected),
                mismatch.differing,
                mismatch.total
            ),
            FailureKind::Error(message) => write!(f, ": the kernel refused the call: {message}"),
            FailureKind::Check(message) => write!(f, ": {message}"),
        }
    }
}

/// What one path of one kernel was compared on.
#[derive(Clone, Debug, Default)]
pub struct PathStats {
    /// Comparisons (one weight matrix with one vector, or with one batch).
    pub cases: u64,
    /// Outputs compared in all.
    pub outputs: u64,
    /// Comparisons that failed.
    pub failed: u64,
    /// Row counts (M) seen.
    pub rows: BTreeSet<usize>,
    /// Column counts (K) seen.
    pub cols: BTreeSet<usize>,
    /// Batch sizes seen.
    pub batches: BTreeSet<usize>,
}

impl PathStats {
    pub(crate) fn add(
        &mut self,
        rows: usize,
        cols: usize,
        batch: usize,
        outputs: usize,
        failed: bool,
    ) {
        self.cases += 1;
        self.outputs += outputs as u64;
        self.failed += failed as u64;
        self.rows.insert(rows);
        self.cols.insert(cols);
        self.batches.insert(batch);
    }
}

/// Everything compared for one kernel.
#[derive(Clone, Debug)]
pub struct KernelStats {
    pub name: String,
    /// Indexed like [`Path::ALL`].
    pub paths: [PathStats; 4],
    /// The first [`MAX_FAILURES_PER_KERNEL`] failures.
    pub failures: Vec<Failure>,
    /// Whether the kernel was not run any more after its failures.
    pub stopped: bool,
}

impl KernelStats {
    pub fn path(&self, path: Path) -> &PathStats {
        &self.paths[path.index()]
    }

    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Consistency checks of the reference with itself (the definition must hold before kernels are
/// compared with it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfCheck {
    /// `reference::gemv`/`gemm` with invalid codes 10 give the bits they give with those codes
    /// set to 00, and the injected codes survived `PlanarWeights::from_packed`.
    InvalidIsZero,
    /// All-zero activations give +0.0 in every output, never NaN.
    ZeroActivations,
    /// `reference::gemm` gives, for vector `b`, the bits of `reference::gemv` on that vector.
    GemmIsGemv,
}

impl SelfCheck {
    pub const ALL: [SelfCheck; 3] = [
        SelfCheck::InvalidIsZero,
        SelfCheck::ZeroActivations,
        SelfCheck::GemmIsGemv,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SelfCheck::InvalidIsZero => "invalid-code-is-zero",
            SelfCheck::ZeroActivations => "zero-activations-give-zero",
            SelfCheck::GemmIsGemv => "gemm-equals-gemv",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            SelfCheck::InvalidIsZero => "invalid code 10 gives the bits of code 00",
            SelfCheck::ZeroActivations => "all-zero activations give +0.0, never NaN",
            SelfCheck::GemmIsGemv => "reference gemm vector b = reference gemv",
        }
    }
}

/// Counts of one self-check.
#[derive(Clone, Debug, Default)]
pub struct SelfCheckStats {
    pub cases: u64,
    pub failed: u64,
}

/// What was compared so far, for every candidate (same order as the candidates) and self-check.
#[derive(Clone, Debug)]
pub struct Tally {
    pub kernels: Vec<KernelStats>,
    /// Indexed like [`SelfCheck::ALL`].
    pub self_checks: [SelfCheckStats; 3],
    /// The first [`MAX_FAILURES_PER_KERNEL`] self-check failures.
    pub self_check_failures: Vec<Failure>,
}

impl Tally {
    /// An empty tally for candidates with these names, in this order.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            kernels: names
                .into_iter()
                .map(|name| KernelStats {
                    name: name.to_string(),
                    paths: Default::default(),
                    failures: Vec::new(),
                    stopped: false,
                })
                .collect(),
            self_checks: Default::default(),
            self_check_failures: Vec::new(),
        }
    }

    /// No failure anywhere.
    pub fn ok(&self) -> bool {
        self.self_check_failures.is_empty() && self.kernels.iter().all(KernelStats::ok)
    }

    pub fn self_check(&self, check: SelfCheck) -> &SelfCheckStats {
        &self.self_checks[check as usize]
    }

    /// An empty tally for the same candidates, with their `stopped` state: what a job that runs
    /// beside others records into before [`Tally::merge`].
    pub fn fresh(&self) -> Self {
        let mut fresh = Tally::new(self.kernels.iter().map(|k| k.name.as_str()));
        for (new, old) in fresh.kernels.iter_mut().zip(&self.kernels) {
            new.stopped = old.stopped;
        }
        fresh
    }

    /// Adds what `other` (a [`Tally::fresh`] of this one) recorded: counts and shapes add up,
    /// failures are kept up to [`MAX_FAILURES_PER_KERNEL`] per kernel, in merge order.
    pub fn merge(&mut self, other: Tally) {
        assert_eq!(
            self.kernels.len(),
            other.kernels.len(),
            "merge: same candidates"
        );
        for (mine, theirs) in self.kernels.iter_mut().zip(other.kernels) {
            for (path, add) in mine.paths.iter_mut().zip(theirs.paths) {
                path.cases += add.cases;
                path.outputs += add.outputs;
                path.failed += add.failed;
                path.rows.extend(add.rows);
                path.cols.extend(add.cols);
                path.batches.extend(add.batches);
            }
            let room = MAX_FAILURES_PER_KERNEL.saturating_sub(mine.failures.len());
            mine.failures.extend(theirs.failures.into_iter().take(room));
            let failed: u64 = mine.paths.iter().map(|p| p.failed).sum();
            mine.stopped |= failed >= MAX_FAILURES_PER_KERNEL as u64;
        }
        for (mine, theirs) in self.self_checks.iter_mut().zip(other.self_checks) {
            mine.cases += theirs.cases;
            mine.failed += theirs.failed;
        }
        let room = MAX_FAILURES_PER_KERNEL.saturating_sub(self.self_check_failures.len());
        self.self_check_failures
            .extend(other.self_check_failures.into_iter().take(room));
    }

    /// Records one comparison of candidate `c`.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        c: usize,
        path: Path,
        w: &PlanarWeights,
        batch: usize,
        label: &Label,
        result: Result<(), KernelError>,
        got: &[f32],
        expected: &[f32],
    ) {
        let kind = match result {
            Err(error) => Some(FailureKind::Error(error.to_string())),
            Ok(()) => first_mismatch(got, expected).map(|mismatch| FailureKind::Mismatch {
                mismatch,
                vector: mismatch.index / w.rows(),
                row: mismatch.index % w.rows(),
            }),
        };
        let stats = &mut self.kernels[c];
        stats.paths[path.index()].add(w.rows(), w.cols(), batch, expected.len(), kind.is_some());
        if let Some(kind) = kind {
            stats.failures.push(Failure {
                kernel: stats.name.clone(),
                path: path.name().to_string(),
                rows: w.rows(),
                cols: w.cols(),
                batch,
                label: label.clone(),
                kind,
            });
            stats.stopped = stats.failures.len() >= MAX_FAILURES_PER_KERNEL;
        }
    }

    /// Records one self-check of the reference: `got` must equal `expected` bit for bit.
    pub fn record_self_check(
        &mut self,
        check: SelfCheck,
        w: &PlanarWeights,
        batch: usize,
        label: &Label,
        got: &[f32],
        expected: &[f32],
    ) {
        let kind = first_mismatch(got, expected).map(|mismatch| FailureKind::Mismatch {
            mismatch,
            vector: mismatch.index / w.rows(),
            row: mismatch.index % w.rows(),
        });
        self.record_self_check_outcome(check, w, batch, label, kind);
    }

    /// Records one self-check whose outcome the caller decided (`None`: passed).
    pub fn record_self_check_outcome(
        &mut self,
        check: SelfCheck,
        w: &PlanarWeights,
        batch: usize,
        label: &Label,
        failure: Option<FailureKind>,
    ) {
        let stats = &mut self.self_checks[check as usize];
        stats.cases += 1;
        if let Some(kind) = failure {
            stats.failed += 1;
            if self.self_check_failures.len() < MAX_FAILURES_PER_KERNEL {
                self.self_check_failures.push(Failure {
                    kernel: "reference".to_string(),
                    path: format!("self-check:{}", check.name()),
                    rows: w.rows(),
                    cols: w.cols(),
                    batch,
                    label: label.clone(),
                    kind,
                });
            }
        }
    }
}

/// Verifies every candidate on `w` with `inputs`, on every path the inputs feed: each GEMV
/// vector through `gemv` and `par_gemv` against `reference::gemv`, each batch size through `gemm`
/// and `par_gemm` against `reference::gemm`. Candidates stopped by earlier failures are skipped.
///
/// The reference of the largest batch is computed once; the batch of size `n` is its first `n`
/// vectors, so its expected output is the first `n · rows` values (`reference::gemm` computes
/// every vector on its own, by definition). The [`SelfCheck::GemmIsGemv`] check confirms that
/// for the first and last vector.
pub fn verify_weights(
    candidates: &[&dyn Candidate],
    w: &PlanarWeights,
    inputs: &Inputs,
    label: &Label,
    tally: &mut Tally,
) {
    assert_eq!(
        candidates.len(),
        tally.kernels.len(),
        "one tally entry per candidate"
    );
    assert_eq!(inputs.cols(), w.cols(), "inputs and weights disagree on K");
    let rows = w.rows();
    // Each candidate's weights, converted once for all its calls.
    let laid_out: Vec<Cow<'_, PlanarWeights>> = candidates.iter().map(|c| c.weights(w)).collect();
    for x in inputs.vectors() {
        let mut expected = vec![0f32; rows];
        reference::gemv(w, x, &mut expected);
        for (c, candidate) in candidates.iter().enumerate() {
            for path in [Path::Gemv, Path::ParGemv] {
                if tally.kernels[c].stopped {
                    break;
                }
                let mut y = unwritten(rows);
                let result = candidate.gemv(path == Path::ParGemv, &laid_out[c], x, &mut y);
                tally.record(c, path, w, 1, label, result, &y, &expected);
            }
        }
    }
    let Some(&largest) = inputs.batches().iter().max() else {
        return;
    };
    let mut expected = vec![0f32; rows * largest];
    reference::gemm(w, &inputs.batch(largest), &mut expected);
    for b in [0, largest - 1] {
        let mut single = vec![0f32; rows];
        reference::gemv(w, &inputs.batch_vector(b), &mut single);
        let from_gemm = &expected[b * rows..(b + 1) * rows];
        tally.record_self_check(SelfCheck::GemmIsGemv, w, largest, label, from_gemm, &single);
    }
    for &n in inputs.batches() {
        let x = inputs.batch(n);
        let expected = &expected[..n * rows];
        for (c, candidate) in candidates.iter().enumerate() {
            for path in [Path::Gemm, Path::ParGemm] {
                if tally.kernels[c].stopped {
                    break;
                }
                let mut y = unwritten(n * rows);
                let result = candidate.gemm(path == Path::ParGemm, &laid_out[c], &x, &mut y);
                tally.record(c, path, w, n, label, result, &y, expected);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type GemvFn = dyn Fn(&PlanarWeights, &QuantizedActivations, &mut [f32]) + Sync;
    type GemmFn = dyn Fn(&PlanarWeights, &QuantizedBatch, &mut [f32]) + Sync;

    /// A candidate made of closures (single- and multi-threaded paths share them).
    struct Closures {
        name: &'static str,
        gemv: Box<GemvFn>,
        gemm: Box<GemmFn>,
    }

    impl Candidate for Closures {
        fn name(&self) -> &str {
            self.name
        }
        fn gemv(
            &self,
            _: bool,
            w: &PlanarWeights,
            x: &QuantizedActivations,
            y: &mut [f32],
        ) -> Result<(), KernelError> {
            (self.gemv)(w, x, y);
            Ok(())
        }
        fn gemm(
            &self,
            _: bool,
            w: &PlanarWeights,
            x: &QuantizedBatch,
            y: &mut [f32],
        ) -> Result<(), KernelError> {
            (self.gemm)(w, x, y);
            Ok(())
        }
    }

    /// The reference itself, then `damage` applied to the outputs.
    fn damaged(name: &'static str, damage: fn(&mut [f32])) -> Closures {
        Closures {
            name,
            gemv: Box::new(move |w, x, y| {
                reference::gemv(w, x, y);
                damage(y);
            }),
            gemm: Box::new(move |w, x, y| {
                reference::gemm(w, x, y);
                damage(y);
            }),
        }
    }

    fn fixture(rows: usize, cols: usize) -> (PlanarWeights, Inputs) {
        let weights: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 300.0)
            .collect();
        let w = PlanarWeights::from_f32(rows, cols, &weights).unwrap();
        // Vector b is scaled by b + 1, so every vector of a batch has its own activation scale.
        let source: Vec<f32> = (0..cols * 17)
            .map(|i| ((i * 104_729 % 2001) as f32 - 1000.0) / 10.0 * (1 + i / cols) as f32)
            .collect();
        let inputs = Inputs::new(cols)
            .with_vector(quantize_activations(&source[..cols]))
            .with_batches(source, &[1, 2, 16, 17]);
        (w, inputs)
    }

    fn label() -> Label {
        Label {
            case: "unit".into(),
            seed: Some(9),
            tensor: None,
        }
    }

    fn run(candidates: &[&dyn Candidate], rows: usize, cols: usize) -> Tally {
        let (w, inputs) = fixture(rows, cols);
        let mut tally = Tally::new(candidates.iter().map(|c| c.name()));
        verify_weights(candidates, &w, &inputs, &label(), &mut tally);
        tally
    }

    #[test]
    fn the_reference_and_the_kernels_pass() {
        let honest = damaged("honest", |_| {});
        let kernels: Vec<Kernel> = Kernel::available();
        let mut candidates: Vec<&dyn Candidate> = vec![&honest];
        candidates.extend(kernels.iter().map(|k| k as &dyn Candidate));
        let tally = run(&candidates, 19, 300);
        assert!(tally.ok(), "{:?}", tally.kernels[0].failures);
        for stats in &tally.kernels {
            assert_eq!(stats.path(Path::Gemv).cases, 1);
            assert_eq!(stats.path(Path::ParGemv).cases, 1);
            assert_eq!(stats.path(Path::Gemm).cases, 4);
            assert_eq!(stats.path(Path::ParGemm).cases, 4);
            assert_eq!(stats.path(Path::Gemm).outputs, 19 * (1 + 2 + 16 + 17));
            let batches: Vec<usize> = stats.path(Path::ParGemm).batches.iter().copied().collect();
            assert_eq!(batches, [1, 2, 16, 17]);
        }
        assert_eq!(tally.self_check(SelfCheck::GemmIsGemv).cases, 2);
    }

    #[test]
    fn a_wrong_closure_kernel_is_caught_with_its_location() {
        let one_ulp = damaged("one-ulp", |y| {
            let last = y.len() - 1;
            y[last] = f32::from_bits(y[last].to_bits() ^ 1);
        });
        let tally = run(&[&one_ulp], 19, 300);
        assert!(!tally.ok());
        let stats = &tally.kernels[0];
        assert!(stats.stopped);
        assert_eq!(stats.failures.len(), MAX_FAILURES_PER_KERNEL);
        let first = &stats.failures[0];
        assert_eq!((first.path.as_str(), first.batch), ("gemv", 1));
        let FailureKind::Mismatch {
            mismatch,
            vector,
            row,
        } = first.kind
        else {
            panic!("expected a mismatch");
        };
        assert_eq!(
            (mismatch.index, vector, row, mismatch.differing),
            (18, 0, 18, 1)
        );
        let line = first.to_string();
        for part in [
            "MISMATCH kernel=one-ulp",
            "path=gemv",
            "shape=19x300",
            "batch=1",
            "seed=9",
            "case=unit",
            "index=18",
            "(0x",
        ] {
            assert!(line.contains(part), "{line:?} lacks {part:?}");
        }
        // Second failure: par_gemv; then the GEMM batches until the cap.
        assert_eq!(stats.failures[1].path, "par_gemv");
        assert_eq!(stats.failures[2].path, "gemm");
        assert_eq!(stats.failures[4].batch, 2);
    }

    #[test]
    fn sign_of_zero_and_nan_bits_count() {
        let negative_zero = damaged("negative-zero", |y| {
            for v in y.iter_mut() {
                if v.to_bits() == 0 {
                    *v = -0.0;
                }
            }
        });
        let (rows, cols) = (8, 128);
        let w =
            PlanarWeights::from_trits(rows, cols, &vec![1; rows * cols], &vec![1.0; rows]).unwrap();
        let inputs = Inputs::new(cols).with_vector(quantize_activations(&[0.0; 128]));
        let mut tally = Tally::new(["negative-zero"]);
        verify_weights(&[&negative_zero], &w, &inputs, &label(), &mut tally);
        assert_eq!(
            tally.kernels[0].failures.len(),
            2,
            "-0.0 must not pass for +0.0"
        );

        let other_nan = damaged("other-nan", |y| y.fill(f32::from_bits(0x7fc0_0000)));
        let nan_everywhere = damaged("nan", |y| y.fill(f32::from_bits(0xffc0_0000)));
        let mut tally = Tally::new(["other-nan"]);
        // Compare two NaN-producing candidates through the engine's comparison: different bits.
        let (mut a, mut b) = (vec![0f32; rows], vec![0f32; rows]);
        other_nan
            .gemv(false, &w, &inputs.vectors()[0], &mut a)
            .unwrap();
        nan_everywhere
            .gemv(false, &w, &inputs.vectors()[0], &mut b)
            .unwrap();
        tally.record(0, Path::Gemv, &w, 1, &label(), Ok(()), &a, &b);
        assert_eq!(tally.kernels[0].failures.len(), 1);
    }

    #[test]
    fn merged_tallies_add_up_and_keep_the_first_failures() {
        let one_ulp = damaged("one-ulp", |y| y[0] = f32::from_bits(y[0].to_bits() ^ 1));
        let (w, inputs) = fixture(19, 300);
        let mut total = Tally::new(["one-ulp"]);
        for seed in 0..3 {
            let mut part = total.fresh();
            let label = Label {
                case: "unit".into(),
                seed: Some(seed),
                tensor: None,
            };
            verify_weights(&[&one_ulp], &w, &inputs, &label, &mut part);
            total.merge(part);
        }
        let stats = &total.kernels[0];
        assert!(stats.stopped);
        assert_eq!(stats.failures.len(), MAX_FAILURES_PER_KERNEL);
        assert!(stats.failures.iter().all(|f| f.label.seed == Some(0)));
        // The first part stopped the kernel; the later ones, made fresh from it, ran nothing.
        assert_eq!(stats.path(Path::Gemv).cases, 1);
        assert_eq!(total.self_check(SelfCheck::GemmIsGemv).cases, 6);
    }

    #[test]
    fn a_refused_call_is_a_failure() {
        let mut tally = Tally::new(["refuser"]);
        let w = PlanarWeights::from_trits(1, 4, &[1, 0, -1, 1], &[1.0]).unwrap();
        let error = KernelError::Misaligned("codes");
        tally.record(
            0,
            Path::ParGemm,
            &w,
            3,
            &label(),
            Err(error),
            &[],
            &[0.0; 3],
        );
        assert!(!tally.ok());
        let line = tally.kernels[0].failures[0].to_string();
        assert!(line.starts_with("ERROR kernel=refuser path=par_gemm shape=1x4 batch=3"));
        assert!(line.contains("refused"));
    }

    #[test]
    fn a_wrong_gemm_only_kernel_is_caught_on_the_gemm_paths() {
        let wrong_gemm = Closures {
            name: "wrong-gemm",
            gemv: Box::new(reference::gemv),
            // Uses the first vector's scale for every vector: right for batch 1 only.
            gemm: Box::new(|w, x, y| {
                let first = x.scales()[0];
                for (b, out) in y.chunks_mut(w.rows()).enumerate() {
                    for (r, v) in out.iter_mut().enumerate() {
                        *v = reference::gemv_row(w, r, x.values(b), first);
                    }
                }
            }),
        };
        let tally = run(&[&wrong_gemm], 19, 300);
        let stats = &tally.kernels[0];
        assert_eq!(
            stats.path(Path::Gemv).failed + stats.path(Path::ParGemv).failed,
            0
        );
        assert_eq!(stats.failures[0].path, "gemm");
        assert_eq!(stats.failures[0].batch, 2);
    }
}
