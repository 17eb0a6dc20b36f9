//! Motion detector time per analysed frame: the Xueliang detector and the Frigate baseline on
//! 720p and 1080p luma planes rendered by the simulator (a person crossing the street, so
//! the detector does its full work: candidates, components, tracks).
//!
//! `cargo bench -p xueliang-benches --bench motion`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use xueliang_motion::detector::{Detector, DetectorConfig};
use xueliang_motion::frigate::{FrigateConfig, FrigateDetector};
use xueliang_sim::scene::{Renderer, SceneSpec, YuvFrame};

/// Frames rendered per size: more than one, so the plane is not always hot in cache, and
/// taken while the person is in view.
const FRAMES: u64 = 8;

fn frames(w: u32, h: u32) -> Vec<YuvFrame> {
    let spec = SceneSpec::preset("person_crossing", w, h, 5).expect("preset exists");
    let mut r = Renderer::new(&spec).expect("preset is valid");
    (20..20 + FRAMES).map(|i| r.render(i)).collect()
}

fn detectors(c: &mut Criterion) {
    for (w, h, name) in [(1280u32, 720u32, "720p"), (1920, 1080, "1080p")] {
        let planes = frames(w, h);
        let stride = w as usize;
        let mut group = c.benchmark_group(format!("motion_{name}"));
        let mut ours = Detector::new(DetectorConfig::default(), w, h);
        let mut i = 0u64;
        group.bench_function("xueliang", |b| {
            b.iter(|| {
                let f = &planes[(i % FRAMES) as usize];
                i += 1;
                black_box(ours.analyse(black_box(&f.y), stride, i as i64 * 200))
            })
        });
        let mut base = FrigateDetector::new(FrigateConfig::default(), w, h);
        let mut i = 0u64;
        group.bench_function("frigate_baseline", |b| {
            b.iter(|| {
                let f = &planes[(i % FRAMES) as usize];
                i += 1;
                black_box(base.analyse(black_box(&f.y), stride, i as i64 * 200))
            })
        });
        group.finish();
    }
}

criterion_group!(benches, detectors);
criterion_main!(benches);
