//! Test helpers (compiled for tests only): scratch folders, a seeded generator, a small file that
//! uses every value type, and a byte-level builder for files the writer would never produce.

use crate::types::GgmlType;
use crate::value::{Array, Value};
use crate::write::{GgufWriter, Layout};

/// A fresh temporary folder, removed when dropped.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary folder")
}

/// A small seeded generator (SplitMix64), so tests are reproducible.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Metadata with every value type: scalars, strings, arrays of each type (one empty), nested arrays.
pub fn every_value() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", "nanochat".into()),
        ("t.u8", 200u8.into()),
        ("t.i8", (-100i8).into()),
        ("t.u16", 60_000u16.into()),
        ("t.i16", (-30_000i16).into()),
        ("t.u32", 4_000_000_000u32.into()),
        ("t.i32", (-2_000_000_000i32).into()),
        ("t.f32", 0.1f32.into()),
        ("t.bool_true", true.into()),
        ("t.bool_false", false.into()),
        ("t.string", "héllo, wörld ✓".into()),
        ("t.empty_string", "".into()),
        ("t.u64", u64::MAX.into()),
        ("t.i64", i64::MIN.into()),
        ("t.f64", std::f64::consts::PI.into()),
        ("t.arr.u8", Array::from(vec![0u8, 1, 255]).into()),
        ("t.arr.i8", Array::from(vec![-128i8, 0, 127]).into()),
        ("t.arr.u16", Array::from(vec![1u16, 65535]).into()),
        ("t.arr.i16", Array::from(vec![-32768i16, 32767]).into()),
        ("t.arr.u32", Array::from(vec![7u32; 20]).into()),
        ("t.arr.i32", Array::from(vec![-1i32, 1]).into()),
        (
            "t.arr.f32",
            Array::from(vec![1.5f32, -0.0, f32::INFINITY]).into(),
        ),
        ("t.arr.bool", Array::from(vec![true, false, true]).into()),
        ("t.arr.string", Array::from(vec!["a", "", "ünï"]).into()),
        ("t.arr.u64", Array::from(vec![u64::MAX, 0]).into()),
        ("t.arr.i64", Array::from(vec![i64::MIN, i64::MAX]).into()),
        ("t.arr.f64", Array::from(vec![1e300f64, -1e-300]).into()),
        ("t.arr.empty", Array::from(Vec::<f64>::new()).into()),
        (
            "t.arr.nested",
            Array::from(vec![
                Array::from(vec![1u32, 2, 3]),
                Array::from(vec!["x", "y"]),
                Array::from(vec![Array::from(vec![true])]),
                Array::from(Vec::<i16>::new()),
            ])
            .into(),
        ),
        ("general.alignment", 32u32.into()),
    ]
}

/// Deterministic bytes for a tensor of `n` bytes.
pub fn tensor_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

/// The tensors of the sample file: (name, type, shape). The last one is exactly 32 bytes, so the
/// file ends with its data (no trailing padding): every shorter prefix cuts some tensor's data.
pub fn sample_tensors() -> Vec<(&'static str, GgmlType, Vec<u64>)> {
    vec![
        ("token_embd.weight", GgmlType::F16, vec![5, 8]),
        ("blk.0.attn_q.weight", GgmlType::I8, vec![3, 2]),
        ("blk.0.attn_q.weight.scale", GgmlType::F32, vec![3, 1]),
        ("raw.i8", GgmlType::I8, vec![7]),
        ("quant.q8_0", GgmlType::Q8_0, vec![2, 32]),
        ("empty", GgmlType::F32, vec![0, 4]),
        ("output_norm.weight", GgmlType::F32, vec![8]),
    ]
}

/// Writes the sample file (every value type, the sample tensors) and returns its bytes.
pub fn sample_file() -> Vec<u8> {
    let dir = scratch_dir();
    let path = dir.path().join("sample.gguf");
    let mut layout = Layout::new();
    for (key, value) in every_value() {
        layout.set(key, value).expect("valid metadata");
    }
    let tensors = sample_tensors();
    for (name, ty, shape) in &tensors {
        layout.add_tensor(*name, *ty, shape).expect("valid tensor");
    }
    let mut writer = GgufWriter::create(&path, &layout).expect("create");
    for (i, (name, ty, shape)) in tensors.iter().enumerate() {
        let n = ty.bytes_for(shape.iter().product()).expect("size") as usize;
        let mut data = tensor_bytes(n, i as u64);
        if *name == "blk.0.attn_q.weight.scale" {
            data = [0.5f32, 1.0, 2.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
        }
        writer.write_tensor(name, &data).expect("write");
    }
    writer.finish().expect("finish");
    std::fs::read(&path).expect("read back")
}

/// Byte-level builder of (possibly malformed) files.
#[derive(Default)]
pub struct Raw(pub Vec<u8>);

impl Raw {
    /// Magic, version 3 and the two counts.
    pub fn header(tensors: u64, kvs: u64) -> Self {
        Raw::default().bytes(b"GGUF").u32(3).u64(tensors).u64(kvs)
    }

    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }

    pub fn u32(self, v: u32) -> Self {
        self.bytes(&v.to_le_bytes())
    }

    pub fn u64(self, v: u64) -> Self {
        self.bytes(&v.to_le_bytes())
    }

    pub fn string(self, s: &str) -> Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }

    /// A u32 metadata pair.
    pub fn kv_u32(self, key: &str, v: u32) -> Self {
        self.string(key).u32(4).u32(v)
    }

    /// A tensor info record (`ne` innermost first, as stored).
    pub fn tensor(self, name: &str, ne: &[u64], type_id: u32, offset: u64) -> Self {
        let mut raw = self.string(name).u32(ne.len() as u32);
        for &d in ne {
            raw = raw.u64(d);
        }
        raw.u32(type_id).u64(offset)
    }

    /// Zeros up to a multiple of `alignment`.
    pub fn pad(mut self, alignment: usize) -> Self {
        let len = self.0.len().next_multiple_of(alignment);
        self.0.resize(len, 0);
        self
    }

    /// `n` more zero bytes.
    pub fn zeros(mut self, n: usize) -> Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}
