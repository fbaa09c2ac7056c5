//! Criterion benches of every kernel on the real MobileNet shapes, taken from the layer table.
//!
//! `cargo bench -p mobilenet --bench kernels -- <filter>`; `MOBILENET_BENCH_PRESET=0.25_128`
//! picks another model (default 1.0_224). The pointwise layers are also timed with the `gemm`
//! crate, the general-purpose GEMM our packed kernel replaces, so the two can be compared.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mobilenet::{LayerKind, MobileNetConfig, Preset};
use mobilenet_kernels::conv::{conv2d, ConvShape};
use mobilenet_kernels::dwconv::dwconv3x3;
use mobilenet_kernels::gemm::{gemm, PackedB};
use mobilenet_kernels::{ConvGeometry, Epilogue, Isa};

fn config() -> MobileNetConfig {
    let preset: Preset = std::env::var("MOBILENET_BENCH_PRESET")
        .unwrap_or_else(|_| "1.0_224".to_string())
        .parse()
        .expect("MOBILENET_BENCH_PRESET must be a preset like 0.5_160");
    MobileNetConfig::from_preset(preset).expect("valid preset")
}

fn values(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

fn benches(c: &mut Criterion) {
    let config = config();
    let mut seen = std::collections::HashSet::new();
    for layer in config.layers() {
        let [h, w, cin] = layer.input;
        let [oh, ow, cout] = layer.output;
        if !seen.insert((layer.kind, layer.input, layer.output, layer.stride)) {
            continue; // the same shape again (blocks 7–11)
        }
        let macs = layer.cost().mult_adds;
        let epi_bias = values(cout);
        let epi = Epilogue::new(Some(&epi_bias), 0.0, 6.0);
        let id = format!("{}_{h}x{w}x{cin}_{cout}_s{}", layer.kind, layer.stride);
        let mut group = c.benchmark_group(layer.kind.name());
        group.throughput(Throughput::Elements(2 * macs)); // FLOP
        match layer.kind {
            LayerKind::Pointwise | LayerKind::Fc => {
                let m = oh * ow;
                let a = values(m * cin);
                let b = values(cin * cout);
                let mut out = vec![0.0; m * cout];
                for isa in Isa::available() {
                    let packed = PackedB::new(isa, &b, cin, cout);
                    group.bench_function(BenchmarkId::new(format!("packed_{isa}"), &id), |bch| {
                        bch.iter(|| gemm(m, &a, cin, &packed, &mut out, cout, &epi))
                    });
                }
                group.bench_function(BenchmarkId::new("gemm_crate", &id), |bch| {
                    bch.iter(|| {
                        // Safety: the slices hold m·cin, cin·cout and m·cout values.
                        unsafe {
                            gemm::gemm(
                                m,
                                cout,
                                cin,
                                out.as_mut_ptr(),
                                1,
                                cout as isize,
                                false,
                                a.as_ptr(),
                                1,
                                cin as isize,
                                b.as_ptr(),
                                1,
                                cout as isize,
                                0.0,
                                1.0,
                                false,
                                false,
                                false,
                                gemm::Parallelism::None,
                            )
                        }
                    })
                });
            }
            LayerKind::Depthwise => {
                let g = ConvGeometry::tf_same(h, w, 3, layer.stride);
                let input = values(h * w * cin);
                let weights = values(9 * cin);
                let mut out = vec![0.0; oh * ow * cout];
                for isa in Isa::available() {
                    group.bench_function(BenchmarkId::new(isa.name(), &id), |bch| {
                        bch.iter(|| dwconv3x3(isa, &g, cin, &input, &weights, &epi, &mut out, 0))
                    });
                }
            }
            LayerKind::Conv => {
                let g = ConvGeometry::tf_same(h, w, 3, layer.stride);
                let shape = ConvShape { k: 3, cin, cout };
                let input = values(h * w * cin);
                let weights = values(9 * cin * cout);
                let mut out = vec![0.0; oh * ow * cout];
                for isa in Isa::available() {
                    group.bench_function(BenchmarkId::new(isa.name(), &id), |bch| {
                        bch.iter(|| conv2d(isa, &g, shape, &input, &weights, &epi, &mut out, 0))
                    });
                }
            }
            LayerKind::AvgPool => {}
        }
        group.finish();
    }
}

criterion_group! {
    name = kernels;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1));
    targets = benches
}
criterion_main!(kernels);
