//! Fuzz target: any bytes through the GGUF parser, and everything a parsed file hands out (metadata,
//! tensor data, f32 views, ternary pairs loaded into planar weights). Must never panic, hang or
//! allocate without bound. Run: `cargo +nightly fuzz run parse` in libs/gguf (README, "Fuzzing").

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = gguf::Gguf::parse(data) else {
        return;
    };
    for kv in file.metadata() {
        assert!(kv.offset < file.file_len());
        std::hint::black_box(format!("{:?}", kv.value));
    }
    for t in file.tensors() {
        assert_eq!(t.data.len() as u64, t.info.n_bytes());
        std::hint::black_box(t.f32_values());
        std::hint::black_box(t.info.shape());
    }
    for pair in gguf::ternary_pairs(&file) {
        let (rows, cols) = (pair.rows as usize, pair.max_cols() as usize);
        std::hint::black_box(gguf::read_ternary(&file, pair.name(), rows, cols).ok());
    }
});
