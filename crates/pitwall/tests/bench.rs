//! The flow scenarios of `pitwall bench` (process, latency, freshness, ingest-kafka) run
//! end to end, small, in-process and on a real Kafka-API broker, and print figures
//! that account for every event and probe. (The figures themselves are measured with
//! the release build by bench/run.sh, never asserted here.)

mod common;

use std::path::Path;
use std::process::Command;

fn bench(dir: &Path, args: &[&str]) -> String {
    bench_env(dir, args, &[])
}

fn bench_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pitwall"))
        .arg("bench")
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pitwall bench {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The number before `after` on the first line that starts with `line` and holds `after`.
fn number_before(stdout: &str, line: &str, after: &str) -> f64 {
    let l = stdout
        .lines()
        .find(|l| l.trim_start().starts_with(line) && l.contains(after))
        .unwrap_or_else(|| panic!("no line {line:?}…{after:?} in\n{stdout}"));
    let head = l.split(after).next().unwrap();
    head.rsplit(' ')
        .find(|w| !w.is_empty())
        .and_then(|w| w.trim_start_matches('(').parse().ok())
        .unwrap_or_else(|| panic!("no number before {after:?} in {l:?}"))
}

/// "N of M probes; p50 …": every probe sent was seen, and there were some.
fn all_probes_seen(stdout: &str, line: &str) {
    let l = stdout
        .lines()
        .find(|l| l.starts_with(line))
        .unwrap_or_else(|| panic!("no line {line:?} in\n{stdout}"));
    let rest = &l[line.len()..];
    let words: Vec<&str> = rest.split_whitespace().collect();
    let (seen, of): (u64, u64) = (words[0].parse().unwrap(), words[2].parse().unwrap());
    assert!(of >= 3, "too few probes went out: {l}\n{stdout}");
    assert_eq!(seen, of, "probes were lost: {l}\n{stdout}");
    assert!(l.contains("p99 ") && !l.contains("NaN"), "{l}");
}

#[test]
fn process_and_latency_in_process() {
    let dir = tempfile::tempdir().unwrap();
    // The pipeline processes every event the simulators made.
    let out = bench(
        dir.path(),
        &["process", "--sim-duration", "30s", "--runs", "1"],
    );
    let made = number_before(&out, "process: 30s of simulated telemetry", " events)");
    let produced = number_before(&out, "", " events, ");
    let processed = number_before(&out, "run 1:", " events in ");
    assert!(produced > 0.9 * made && produced > 1000.0, "{out}");
    assert_eq!(processed, produced, "{out}");
    assert!(
        out.contains("process: median of 1:") && out.contains("events/s per core used"),
        "{out}"
    );

    let out = bench(
        dir.path(),
        &[
            "latency",
            "--rate",
            "300",
            "--duration",
            "3s",
            "--warmup",
            "1s",
            "--probes",
            "5",
        ],
    );
    all_probes_seen(&out, "event -> anomalies topic");
    all_probes_seen(&out, "event -> live feed (SSE)");
    assert!(out.contains("peak memory"), "{out}");
}

#[test]
fn freshness_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench_env(
        dir.path(),
        &[
            "freshness",
            "--rate",
            "300",
            "--duration",
            "3s",
            "--warmup",
            "1s",
            "--probes",
            "2",
        ],
        &[("PITWALL_LAKE__COMMIT_INTERVAL", "1s")],
    );
    all_probes_seen(&out, "event -> visible in a query");
}

#[test]
fn kafka_scenarios_on_a_real_broker() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::Broker::start(dir.path());
    let out = bench(
        dir.path(),
        &[
            "ingest-kafka",
            "--brokers",
            &broker.addr,
            "--sim-duration",
            "20s",
            "--runs",
            "1",
        ],
    );
    let made = number_before(
        &out,
        "ingest-kafka: 20s of simulated telemetry",
        " events, JSON)",
    );
    let sent = number_before(&out, "run 1:", " events in ");
    assert!(sent > 1000.0 && (sent - made).abs() <= 0.01 * made, "{out}");
    assert!(out.contains("run 1 wrote topic "), "{out}");

    let out = bench(
        dir.path(),
        &[
            "process",
            "--brokers",
            &broker.addr,
            "--sim-duration",
            "20s",
            "--runs",
            "1",
            "--kafka-floor",
        ],
    );
    let sent = number_before(&out, "run 1:", " events sent to");
    assert!(sent > 1000.0, "{out}");
    // Every event sent was processed.
    assert_eq!(number_before(&out, "run 1:", " events in "), sent, "{out}");
    // The Kafka work alone read every raw event again and wrote at least the clean
    // message of each (plus window rows and anomalies).
    assert_eq!(
        number_before(&out, "run 1:", " events read while"),
        sent,
        "{out}"
    );
    let written = number_before(&out, "run 1:", " output messages");
    assert!(written > sent, "{out}");
    assert!(out.contains("kafka floor: median of 1: "), "{out}");

    let out = bench(
        dir.path(),
        &[
            "latency",
            "--brokers",
            &broker.addr,
            "--rate",
            "300",
            "--duration",
            "3s",
            "--warmup",
            "6s",
            "--probes",
            "2",
        ],
    );
    all_probes_seen(&out, "event -> anomalies topic");
    all_probes_seen(&out, "event -> live feed (SSE)");
}
