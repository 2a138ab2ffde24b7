//! Codec throughput on one core: line protocol and JSON, parse and encode, on batches
//! shaped like the simulators' telemetry (a car: 4 tags, 17 fields; a sensor: 2 tags,
//! 3 fields; one sensor line per ten car lines). Criterion prints lines/s.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pitwall_core::{Point, Precision, json, line_protocol};

const T0: i64 = 1_767_225_600_000_000_000;

fn batch(n: usize) -> String {
    let drivers = [
        "VER", "HAM", "LEC", "NOR", "PIA", "RUS", "SAI", "ALO", "PER", "GAS",
    ];
    let mut out = String::new();
    for i in 0..n {
        let t = T0 + i as i64 * 10_000_000;
        if i % 11 == 10 {
            out.push_str(&format!(
                "sensor,sensor_id=sensor-{:03},site=plant-a humidity_pct={:.1},pressure_hpa={:.2},temperature_c={:.2} {t}\n",
                i % 20,
                40.0 + (i % 17) as f64 * 0.3,
                1013.0 + (i % 13) as f64 * 0.07,
                21.0 + (i % 23) as f64 * 0.11
            ));
        } else {
            let f = i as f64;
            out.push_str(&format!(
                "car,driver={},session=sim-race,team=Red\\ Bull,track=pitwall-park brake={},distance_m={:.1},drs={},engine_temp_c={:.1},ers_pct={:.1},gear={}i,lap={}i,oil_temp_c={:.1},rpm={}i,speed_kph={:.1},throttle_pct={:.1},tyre_temp_fl_c={:.1},tyre_temp_fr_c={:.1},tyre_temp_rl_c={:.1},tyre_temp_rr_c={:.1},x={:.1},y={:.1} {t}\n",
                drivers[i % drivers.len()],
                i % 7 == 0,
                (f * 7.3) % 4446.5,
                i % 5 == 0,
                95.0 + (f * 0.37) % 10.0,
                (f * 1.7) % 100.0,
                1 + i % 8,
                i / 500,
                100.0 + (f * 0.13) % 8.0,
                9000 + (i * 37) % 3500,
                80.0 + (f * 3.1) % 240.0,
                (f * 9.7) % 100.0,
                85.0 + (f * 0.11) % 20.0,
                85.5 + (f * 0.13) % 20.0,
                84.0 + (f * 0.17) % 20.0,
                84.5 + (f * 0.19) % 20.0,
                (f * 1.3) % 900.0 - 450.0,
                (f * 0.7) % 600.0 - 300.0
            ));
        }
    }
    out
}

fn codec(c: &mut Criterion) {
    const N: usize = 10_000;
    let text = batch(N);
    let points: Vec<Point> = line_protocol::parse(&text, Precision::Ns, 0)
        .map(Result::unwrap)
        .collect();
    assert_eq!(points.len(), N);
    let payloads: Vec<Vec<u8>> = points.iter().map(|p| json::encode(p).unwrap()).collect();
    eprintln!(
        "{N} lines: {:.0} bytes per line-protocol line, {:.0} bytes per JSON payload",
        text.len() as f64 / N as f64,
        payloads.iter().map(Vec::len).sum::<usize>() as f64 / N as f64
    );

    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("line-protocol parse", |b| {
        b.iter(|| {
            line_protocol::parse(&text, Precision::Ns, 0)
                .map(|p| p.unwrap().fields.len())
                .sum::<usize>()
        })
    });
    g.bench_function("line-protocol encode", |b| {
        let mut out = String::with_capacity(text.len());
        b.iter(|| {
            out.clear();
            for p in &points {
                line_protocol::encode(p, &mut out).unwrap();
            }
            out.len()
        })
    });
    g.bench_function("json decode", |b| {
        b.iter(|| {
            payloads
                .iter()
                .map(|p| json::decode(p, 0, Precision::S).unwrap().fields.len())
                .sum::<usize>()
        })
    });
    g.bench_function("json encode", |b| {
        let mut out = Vec::with_capacity(512);
        b.iter(|| {
            let mut n = 0;
            for p in &points {
                out.clear();
                json::encode_into(p, &mut out).unwrap();
                n += out.len();
            }
            n
        })
    });
    g.bench_function("line-protocol to JSON (write API)", |b| {
        let mut out = Vec::with_capacity(512);
        b.iter(|| {
            let mut n = 0;
            for p in line_protocol::parse(&text, Precision::Ns, 0) {
                out.clear();
                json::encode_into(&p.unwrap(), &mut out).unwrap();
                n += out.len();
            }
            n
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    targets = codec
}
criterion_main!(benches);
