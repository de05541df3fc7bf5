//! Bit-for-bit comparison of a kernel's outputs with the reference's (docs/ARCHITECTURE.md,
//! "Numerics": the triangle of truth asserts equality, not closeness).
//!
//! Two f32 are equal here when their bit patterns are: `-0.0` differs from `0.0`, and two NaNs
//! with different payloads or signs differ. Owns only the comparison; which outputs are compared,
//! and what a failure is reported as, is [`crate::verify`]'s business.

/// Bits every output buffer is filled with before a kernel runs, so an output the kernel never
/// writes is caught (a NaN with a payload that no arithmetic produces).
pub const UNWRITTEN: u32 = 0x7fc0_dead;

/// The first output that differs, and how many differ in all.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mismatch {
    /// Index of the first differing output.
    pub index: usize,
    /// The kernel's value there.
    pub got: f32,
    /// The reference's value there.
    pub expected: f32,
    /// Number of differing outputs.
    pub differing: usize,
    /// Number of outputs compared.
    pub total: usize,
}

/// Compares `got` with `expected` bit for bit; `None` when every bit matches.
///
/// Panics if the lengths differ (the caller allocates both; a difference is a bug of this tool).
pub fn first_mismatch(got: &[f32], expected: &[f32]) -> Option<Mismatch> {
    assert_eq!(got.len(), expected.len(), "compare: output lengths differ");
    let mut differing = got
        .iter()
        .zip(expected)
        .enumerate()
        .filter(|(_, (g, e))| g.to_bits() != e.to_bits());
    let (index, (&got_value, &expected_value)) = differing.next()?;
    Some(Mismatch {
        index,
        got: got_value,
        expected: expected_value,
        differing: 1 + differing.count(),
        total: got.len(),
    })
}

/// A value as the failure lines print it: shortest decimal that reads back exactly, and its bits.
pub fn describe(value: f32) -> String {
    format!("{value:?} (0x{:08x})", value.to_bits())
}

/// A buffer of `len` outputs, every one [`UNWRITTEN`].
pub fn unwritten(len: usize) -> Vec<f32> {
    vec![f32::from_bits(UNWRITTEN); len]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_bits_match() {
        let v = [0.0, 1.5, -2.25, f32::INFINITY, f32::MIN_POSITIVE, 1e-45];
        assert_eq!(first_mismatch(&v, &v), None);
        assert_eq!(first_mismatch(&[], &[]), None);
        // The same NaN (same bits) is a match: bits, not IEEE equality, decide.
        assert_eq!(first_mismatch(&[f32::NAN], &[f32::NAN]), None);
    }

    #[test]
    fn negative_zero_is_not_zero() {
        let m = first_mismatch(&[1.0, -0.0], &[1.0, 0.0]).expect("-0.0 vs 0.0 must differ");
        assert_eq!((m.index, m.differing, m.total), (1, 1, 2));
        assert_eq!(m.got.to_bits(), 0x8000_0000);
    }

    #[test]
    fn nans_with_different_bits_differ() {
        let quiet = f32::from_bits(0x7fc0_0000);
        let negative_quiet = f32::from_bits(0xffc0_0000);
        let payload = f32::from_bits(0x7fc0_0001);
        assert!(first_mismatch(&[quiet], &[negative_quiet]).is_some());
        assert!(first_mismatch(&[quiet], &[payload]).is_some());
        // A NaN where the reference has a number is of course a mismatch too.
        assert!(first_mismatch(&[quiet], &[0.0]).is_some());
    }

    #[test]
    fn one_ulp_is_a_mismatch_and_all_differences_are_counted() {
        let expected = [1.0f32, 2.0, 3.0, 4.0];
        let got = [1.0f32, f32::from_bits(2.0f32.to_bits() + 1), 3.0, 4.5];
        let m = first_mismatch(&got, &expected).unwrap();
        assert_eq!((m.index, m.differing, m.total), (1, 2, 4));
        assert_eq!(m.expected, 2.0);
    }

    #[test]
    fn unwritten_outputs_are_caught() {
        let got = unwritten(3);
        assert!(first_mismatch(&got, &[0.0, 0.0, 0.0]).is_some());
        assert_eq!(describe(1.0), "1.0 (0x3f800000)");
        assert_eq!(describe(-0.0), "-0.0 (0x80000000)");
    }
}
