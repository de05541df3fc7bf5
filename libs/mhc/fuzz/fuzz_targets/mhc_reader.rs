//! Fuzz target for the `.mhc` reader: any byte string must give `Ok` or a `FormatError`, never a
//! panic; whatever is accepted must re-encode to the same bytes and hold the mHC invariants.
//!
//! The same property runs on stable in `cargo test -p mhc` (`file::tests::fuzz_property`, replayed
//! over `fuzz/seeds/` and by proptest). Run: `cargo +nightly fuzz run mhc_reader fuzz/seeds`
//! from libs/mhc (README.md).

#![no_main]

use libfuzzer_sys::fuzz_target;
use mhc::MhcFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = MhcFile::from_bytes(data) {
        assert_eq!(
            file.to_bytes(),
            data,
            "accepted bytes must re-encode identically"
        );
        if let Err(e) = file.check_doubly_stochastic(1e-5) {
            panic!("accepted file breaks the invariant: {e}");
        }
        assert!(file.composite_gain() <= 1.0 + 1e-3);
    }
});
