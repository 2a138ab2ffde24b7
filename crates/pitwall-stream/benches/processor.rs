//! Processor throughput: where an event's time goes between the raw topic and the lake.
//! Inputs are a simulated race (20 cars at 10 Hz, the default rules and windows).
//! Run: cargo bench -p pitwall-stream --bench processor

use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pitwall_bus::Message;
use pitwall_core::{Point, Precision, json, line_protocol};
use pitwall_sim::{Race, RaceConfig, Simulator};
use pitwall_stream::{Outputs, Processor, ProcessorConfig, SchemaRegistry};

const T0: i64 = 1_767_225_600_000_000_000;

fn race_points(n: usize) -> Vec<Point> {
    let mut sim = Race::new(RaceConfig::default(), 1, T0);
    let mut points = Vec::with_capacity(n + 20);
    while points.len() < n {
        sim.step(&mut points);
    }
    points.truncate(n);
    points
}

fn messages(points: &[Point]) -> Vec<Message> {
    points
        .iter()
        .enumerate()
        .map(|(i, p)| Message {
            partition: 0,
            offset: i as i64,
            key: Some(Bytes::copy_from_slice(p.tags["driver"].as_bytes())),
            payload: Bytes::from(json::encode(p).unwrap()),
            timestamp: p.time,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    const N: usize = 20_000;
    let points = race_points(N);
    let msgs = messages(&points);
    let lp = line_protocol::encode_all(&points).unwrap();

    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("json_decode", |b| {
        b.iter(|| {
            for m in &msgs {
                std::hint::black_box(json::decode(&m.payload, 0, Precision::Ns).unwrap());
            }
        })
    });
    g.bench_function("json_encode", |b| {
        let mut buf = Vec::with_capacity(512);
        b.iter(|| {
            for p in &points {
                buf.clear();
                json::encode_into(p, &mut buf).unwrap();
                std::hint::black_box(&buf);
            }
        })
    });
    g.bench_function("line_protocol_parse", |b| {
        b.iter(|| {
            for p in line_protocol::parse(&lp, Precision::Ns, 0) {
                std::hint::black_box(p.unwrap());
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("processor");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(20);
    g.bench_function("process_race_events", |b| {
        let config = Arc::new(ProcessorConfig::default());
        b.iter(|| {
            let mut p = Processor::new(Arc::clone(&config), SchemaRegistry::default(), "telemetry.raw", 0);
            let mut out = Outputs::default();
            for m in &msgs {
                p.process(m, &mut out);
            }
            std::hint::black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
