//! The command line of verify-triangle (clap derive): raw flags only. Validation (does the kernel
//! exist, does this CPU run it) happens in [`crate::Config::from_args`], so that every usage error
//! is one line and exit code 2.

use clap::Parser;
use std::path::PathBuf;

/// Seeds per case when `--seeds` is not given.
pub const DEFAULT_SEEDS: u64 = 8;
/// Seeds per tensor with `--model` when `--seeds` is not given.
pub const DEFAULT_MODEL_SEEDS: u64 = 1;
/// First seed when `--seed` is not given.
pub const DEFAULT_SEED: u64 = 1;

const ABOUT: &str = "Checks every kernel path compiled into this binary against the Rust \
reference GEMV/GEMM, bit for bit";

const LONG_ABOUT: &str = "\
Checks every kernel path compiled into this binary against the Rust reference GEMV/GEMM
(ternary::reference::gemv and gemm), bit for bit: f32 bits are compared, not closeness, so -0.0
differs from 0.0 and NaNs differ by payload.

Paths: gemv (one vector, one thread), par_gemv (rows split across threads), gemm and par_gemm
(batches of 1..=16, 17 and 33 vectors). Cases: M in {1, 31, 127, 128, 4096} x K in {128, 256,
300, 1000, 4096, 11008} with random weights and activations, plus invalid codes (10) injected into
the packed form, all-zero activations, extreme scales (1e-30, 1e30, MIN_POSITIVE, subnormal, MAX)
and activations with a huge absmax, activations of +-127 everywhere, and weights all +1 or all -1.

With --model FILE.gguf the generated cases are not run: every ternary tensor of the file (an I8
tensor NAME with an F32 sibling NAME.scale, the pair convention of libs/gguf) is loaded into
planar form and verified on the same four paths, with activations generated from the seed(s):
a random vector, one of +-127 and one of zeros (gemv, par_gemv) and batches of 4 and 17 (gemm,
par_gemm). The file records only ceil(K/4) bytes per row, so K is taken as 4 x that.

Kernels compiled in but not runnable on this CPU are listed as \"compiled, NOT verified on this
CPU (needs ...)\", never skipped silently.

Output: a table on stdout (or --json), progress on stderr when it is a terminal, and on a
mismatch one line per failure naming kernel, path, shape (MxK), batch, seed, case, output index
and both values (decimal and hex bits); at most 5 failures per kernel, after which that kernel
is not run again.";

const AFTER_HELP: &str = "\
Exit codes: 0 every runnable kernel matches the reference; 1 a mismatch (or a kernel refused a
call); 2 bad usage (unknown flag or kernel, or --kernel names one this CPU does not run), or a
--model file that cannot be read or holds no ternary tensors.

Examples:
  verify-triangle                          every kernel, 8 seeds
  verify-triangle --kernel avx2 --seeds 64 one kernel, more seeds
  verify-triangle --seed 1234 --seeds 1    rebuild exactly the cases of seed 1234
  verify-triangle --json | jq .ok          machine-readable summary
  verify-triangle --model model.gguf       every ternary tensor of a model file, 1 seed
  verify-triangle --model model.gguf --seeds 4 --kernel avx2 --json";

/// Flags of verify-triangle.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "verify-triangle",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP
)]
pub struct Args {
    /// Seeds per case (default 8; 1 with --model).
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..=1_000_000),
        help = "Seeds per case (S, S+1, ..., S+N-1; default 8, 1 with --model). Example: --seeds 64",
        long_help = "\
How many seeds every case runs with: S, S+1, ..., S+N-1 (default 8).
GEMV shapes with more than 2^20 weights (4096x4096, 4096x11008, ...) run
only the first ceil(N/8), and GEMM cases (18 batch sizes each) the first
ceil(N/4). The default run takes seconds.
With --model: how many sets of activations every tensor runs (default 1).
Example: --seeds 64"
    )]
    pub seeds: Option<u64>,

    /// The first seed.
    #[arg(
        long,
        value_name = "S",
        default_value_t = DEFAULT_SEED,
        help = "First seed, for reproducing a run. Example: --seed 1234",
        long_help = "\
The first seed S. A failure line names the seed of its case, and
`--seed S --seeds 1` rebuilds exactly that case.
Example: --seed 1234"
    )]
    pub seed: u64,

    /// Only this kernel.
    #[arg(
        long,
        value_name = "NAME",
        help = "Verify only this kernel. Example: --kernel avx2",
        long_help = "\
Verify only this kernel: reference, scalar, avx2, avx512bw or avx512vnni.
It must be compiled in and runnable on this CPU (exit code 2 otherwise).
Example: --kernel avx2"
    )]
    pub kernel: Option<String>,

    /// Verify the ternary tensors of this GGUF model file instead of the generated cases.
    #[arg(
        long,
        value_name = "FILE.gguf",
        help = "Verify every ternary tensor of a GGUF model instead of the generated cases. Example: --model model.gguf",
        long_help = "\
Verify every ternary tensor of this GGUF file (I8 NAME + F32 NAME.scale)
instead of the generated cases: each one on gemv, par_gemv, gemm and
par_gemm against the reference, with activations from the seed(s).
The table lists every tensor (name, shape, result). A file that cannot
be read, or holds no ternary tensors, is exit code 2.
Example: --model model.gguf"
    )]
    pub model: Option<PathBuf>,

    /// JSON instead of the table.
    #[arg(
        long,
        help = "JSON summary on stdout instead of the table. Example: --json",
        long_help = "\
Print a machine-readable JSON summary on stdout instead of the table
(same exit codes; the failures are in its \"failures\" list).
Example: --json"
    )]
    pub json: bool,

    /// Also verify ternary's deliberately wrong kernel (tests of this tool only).
    #[cfg(feature = "fault-injection")]
    #[arg(long, hide = true)]
    pub include_faulty_kernel: bool,
}

impl Args {
    /// Whether the deliberately wrong kernel is to be verified too.
    pub fn include_faulty_kernel(&self) -> bool {
        #[cfg(feature = "fault-injection")]
        {
            self.include_faulty_kernel
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_parse_and_defaults_hold() {
        Args::command().debug_assert();
        let args = Args::try_parse_from(["verify-triangle"]).unwrap();
        assert_eq!(
            (args.seeds, args.seed, args.json),
            (None, DEFAULT_SEED, false)
        );
        assert!(args.kernel.is_none() && args.model.is_none() && !args.include_faulty_kernel());
        let args = Args::try_parse_from([
            "verify-triangle",
            "--seeds",
            "3",
            "--seed",
            "99",
            "--kernel",
            "avx2",
            "--json",
            "--model",
            "m.gguf",
        ])
        .unwrap();
        assert_eq!((args.seeds, args.seed, args.json), (Some(3), 99, true));
        assert_eq!(args.kernel.as_deref(), Some("avx2"));
        assert_eq!(args.model, Some(PathBuf::from("m.gguf")));
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for bad in [
            vec!["verify-triangle", "--seeds", "0"],
            vec!["verify-triangle", "--seeds", "many"],
            vec!["verify-triangle", "--no-such-flag"],
        ] {
            let error = Args::try_parse_from(bad).unwrap_err();
            assert_eq!(error.exit_code(), 2);
        }
    }

    #[test]
    fn help_explains_every_flag_and_hides_the_faulty_kernel() {
        let help = Args::command().render_long_help().to_string();
        for flag in [
            "--seeds",
            "--seed",
            "--kernel",
            "--json",
            "--model",
            "--model model.gguf",
            "--version",
            "Example",
        ] {
            assert!(help.contains(flag), "help lacks {flag}");
        }
        assert!(!help.contains("faulty"));
    }
}
