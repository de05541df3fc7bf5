//! Compiles the C kernels (csrc/kernels.c). No -march flag: every SIMD function carries its own
//! target attribute and is only called after runtime CPU detection, so the library runs on any
//! x86-64 and builds elsewhere with the portable kernel only. -ffp-contract=off keeps the compiler
//! from fusing or splitting multiply-adds (docs/ARCHITECTURE.md, "Numerics": every FMA is written
//! out).

fn main() {
    println!("cargo:rerun-if-changed=csrc/kernels.c");
    let mut build = cc::Build::new();
    build
        .file("csrc/kernels.c")
        .opt_level(3)
        .flag_if_supported("-ffp-contract=off")
        .flag_if_supported("-std=c11")
        .warnings(true)
        .extra_warnings(true);
    if std::env::var_os("CARGO_FEATURE_FAULT_INJECTION").is_some() {
        build.define("NTK_FAULT_INJECTION", None);
    }
    build.compile("nanochat_ternary_kernels");
}
