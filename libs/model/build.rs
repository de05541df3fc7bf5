//! Compiles the Q8_0 head kernels (csrc/q8.c) as libs/ternary compiles its own: no -march flag
//! (each SIMD function carries its target attribute and runs only after runtime CPU detection,
//! so the library runs on any x86-64 and builds elsewhere with the Rust reference only), and
//! -ffp-contract=off so the compiler neither fuses nor splits a multiply-add (every FMA is
//! written out: the kernels give the reference's bits).

fn main() {
    println!("cargo:rerun-if-changed=csrc/q8.c");
    cc::Build::new()
        .file("csrc/q8.c")
        .opt_level(3)
        .flag_if_supported("-ffp-contract=off")
        .flag_if_supported("-std=c11")
        .warnings(true)
        .extra_warnings(true)
        .compile("nanochat_q8_kernels");
}
