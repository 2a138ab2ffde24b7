//! `pitwall up --replay`: a FastF1 car data file replayed into the embedded pipeline
//! gives the same tables as `pitwall replay` to Kafka (tansu) and `pitwall process`
//! from it: every clean row, every window and every episode but the deadman's (whose
//! time follows the wall clock's idle ticks). Its bad line is counted and kept with its
//! reason, and the simulators stay off.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{Broker, Up};

/// 120 s of one car at 4 Hz, as FastF1's `car_data` CSV; an RPM drop under full
/// throttle at 60 s (rule rpm_drop) and a line with a bad gear.
fn fastf1_csv() -> String {
    let mut csv =
        String::from(",Date,SessionTime,Time,RPM,Speed,nGear,Throttle,Brake,DRS,Source\n");
    let start = chrono::NaiveDate::from_ymd_opt(2023, 3, 5)
        .unwrap()
        .and_hms_milli_opt(15, 3, 52, 466)
        .unwrap();
    for i in 0..480i64 {
        let t = i as f64 / 4.0;
        let speed = 150.0 + 100.0 * (t / 10.0).sin();
        let gear = (1 + (speed / 45.0) as i64).min(8);
        let mut rpm = 9000.0 + 2500.0 * ((t / 3.0).sin());
        if (240..244).contains(&i) {
            rpm = 5200.0;
        }
        let throttle = if (230..250).contains(&i) {
            100.0
        } else {
            60.0 + 30.0 * (t / 5.0).cos()
        };
        let date = start + chrono::Duration::milliseconds(i * 250);
        let gear = if i == 100 {
            "x".to_string()
        } else {
            gear.to_string()
        };
        csv += &format!(
            "{i},{},0 days 01:02:{:06.3},0 days 00:00:{:06.3},{rpm:.1},{speed:.1},{gear},{throttle:.1},{},{},car\n",
            date.format("%Y-%m-%d %H:%M:%S%.3f"),
            35.0 + t,
            t,
            if i % 40 < 4 { "True" } else { "False" },
            if i % 60 < 10 { 12 } else { 1 },
        );
    }
    csv
}

/// The lake's answer to `sql`, as CSV.
fn query(data: &Path, config: &Path, sql: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pitwall"))
        .args(["query", "--format", "csv", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .arg(sql)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The tables compared, each in one order.
const TABLES: [(&str, &str); 3] = [
    ("clean", "SELECT * FROM clean.car ORDER BY time"),
    (
        "windows",
        "SELECT * FROM metrics.windows ORDER BY window, window_start, field",
    ),
    (
        "episodes",
        "SELECT * FROM anomalies.events WHERE kind <> 'deadman' ORDER BY time, rule, phase",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastf1_replayed_embedded_equals_through_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("VER_car_data.csv");
    std::fs::write(&file, fastf1_csv()).unwrap();
    let config = dir.path().join("pitwall.toml");
    // Idle partitions tick after 1 s, so every window closes in both runs.
    std::fs::write(
        &config,
        "[processor]\nidle-timeout = \"1s\"\n\n[lake]\ncommit-interval = \"500ms\"\n",
    )
    .unwrap();

    // Embedded: pitwall up --replay, until the windows stop changing.
    let embedded = dir.path().join("embedded");
    let up = Up::start(
        &[
            "--replay",
            file.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        &embedded,
    );
    let client = reqwest::Client::new();
    let sql = |q: &'static str| {
        let r = client
            .post(format!("{}/api/v1/query?format=csv", up.url))
            .body(q)
            .send();
        async move { r.await.unwrap().text().await.unwrap() }
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    let mut stable_since = Instant::now();
    loop {
        let now = format!(
            "{}{}",
            sql("SELECT count(*) AS n FROM clean.car").await,
            sql("SELECT count(*) AS n, max(window_end) AS e FROM metrics.windows").await
        );
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else if last.starts_with("n\n479\n") && stable_since.elapsed() > Duration::from_secs(4) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replay never settled: {last}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("replayed 1 files: 479 events sent, 1 lines rejected"),
        "{log}"
    );
    assert!(log.contains("/?range=lake&from=1678028632466&to="), "{log}");
    let rejects = std::fs::read_to_string(embedded.join("replay-rejects.jsonl")).unwrap();
    let reject: serde_json::Value = serde_json::from_str(rejects.trim()).unwrap();
    assert_eq!(reject["line"], 102, "{rejects}");
    assert!(
        reject["reason"].as_str().unwrap().contains("nGear"),
        "{rejects}"
    );
    // The simulators stayed off: one source.
    let config_path = config.as_path();
    assert_eq!(
        query(
            &embedded,
            config_path,
            "SELECT DISTINCT driver FROM clean.car"
        ),
        "driver\nVER\n"
    );

    // Through Kafka: pitwall replay, then pitwall process until idle: long enough for
    // its idle ticks (one a second) to carry event time past the last window's end, as
    // the embedded run's did.
    let broker = Broker::start(dir.path());
    let replayed = Command::new(env!("CARGO_BIN_EXE_pitwall"))
        .args(["replay", "--brokers", &broker.addr, "--config"])
        .arg(&config)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    let kafka = dir.path().join("kafka");
    let processed = Command::new(env!("CARGO_BIN_EXE_pitwall"))
        .args([
            "process",
            "--brokers",
            &broker.addr,
            "--exit-when-idle",
            "12s",
            "--config",
        ])
        .arg(&config)
        .arg("--data-dir")
        .arg(&kafka)
        .output()
        .unwrap();
    assert!(
        processed.status.success(),
        "{}",
        String::from_utf8_lossy(&processed.stderr)
    );

    for (name, sql) in TABLES {
        let a = query(&embedded, config_path, sql);
        let b = query(&kafka, config_path, sql);
        assert!(a.lines().count() > 2, "{name} has rows: {a}");
        let only = |x: &str, y: &str| -> Vec<String> {
            let y: std::collections::BTreeSet<&str> = y.lines().collect();
            x.lines()
                .filter(|l| !y.contains(l))
                .take(8)
                .map(str::to_owned)
                .collect()
        };
        assert!(
            a == b,
            "{name} differs between up --replay ({} lines) and Kafka ({} lines)\nonly embedded: {:#?}\nonly Kafka: {:#?}",
            a.lines().count(),
            b.lines().count(),
            only(&a, &b),
            only(&b, &a)
        );
    }
    let episodes = query(&embedded, config_path, "SELECT rule FROM anomalies.events");
    assert!(episodes.contains("rpm_drop"), "{episodes}");
}
