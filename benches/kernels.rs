//! Criterion benchmarks of every kernel this CPU runs: GEMV (batch 1) and GEMM (batch 4 and 16) at
//! 2048x2048 and 4096x4096, one thread. `cargo bench -p benches`; the full matrix of shapes,
//! threads and memory bandwidth is tools/gemv-bench.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ternary::{kernels, Kernel, PlanarWeights, QuantizedBatch};

fn weights(rows: usize, cols: usize) -> PlanarWeights {
    let values = ternary::synthetic::uniform_values(rows * cols, 1);
    PlanarWeights::from_f32(rows, cols, &values).expect("valid shape")
}

fn bench_kernels(c: &mut Criterion) {
    for (rows, cols) in [(2048, 2048), (4096, 4096)] {
        let w = weights(rows, cols);
        let mut group = c.benchmark_group(format!("gemm_{rows}x{cols}"));
        for batch in [1usize, 4, 16] {
            let x: Vec<f32> = (0..cols * batch)
                .map(|i| (i % 255) as f32 - 127.0)
                .collect();
            let x = QuantizedBatch::quantize(&x, cols);
            let mut y = vec![0f32; rows * batch];
            group.throughput(Throughput::Elements((2 * rows * cols * batch) as u64));
            for kernel in Kernel::available() {
                if kernel == Kernel::Reference && rows > 2048 {
                    continue; // minutes per sample, and not a kernel anyone runs for speed
                }
                let w = w.clone().into_layout(kernel.code_layout());
                let id = BenchmarkId::new(kernel.name(), format!("batch{batch}"));
                group.bench_function(id, |b| {
                    b.iter(|| kernels::gemm(kernel, &w, &x, &mut y).expect("checked shapes"))
                });
            }
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench_kernels
}
criterion_main!(benches);
