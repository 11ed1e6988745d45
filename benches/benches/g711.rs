//! G.711 encode and decode of one 20 ms frame (160 samples).
//!
//!     cargo bench -p switchboard-benches --bench g711

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchboard_media::g711::Law;

fn g711(c: &mut Criterion) {
    let pcm: Vec<i16> = (0..160)
        .map(|i| ((f64::from(i) * 0.39).sin() * 12_000.0) as i16)
        .collect();
    let mut encoded = [0u8; 160];
    let mut decoded = [0i16; 160];
    let mut group = c.benchmark_group("g711");
    group.throughput(Throughput::Elements(160));
    for law in [Law::Ulaw, Law::Alaw] {
        group.bench_function(format!("encode/{law:?}"), |b| {
            b.iter(|| law.encode(black_box(&pcm), &mut encoded));
        });
        law.encode(&pcm, &mut encoded);
        group.bench_function(format!("decode/{law:?}"), |b| {
            b.iter(|| law.decode(black_box(&encoded), &mut decoded));
        });
    }
    group.finish();
}

criterion_group!(benches, g711);
criterion_main!(benches);
