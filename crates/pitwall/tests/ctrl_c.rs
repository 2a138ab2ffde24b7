//! Ctrl-C on `pitwall up` stops the simulators, drains the bus, closes the windows and
//! commits: every event it produced is in the lake afterwards.

use std::process::{Command, Stdio};
use std::time::Duration;

use pitwall_lake::{Lake, LakeConfig};
use pitwall_query::{Format, Query, render};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_commits_everything_produced() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("lake");
    let child = Command::new(env!("CARGO_BIN_EXE_pitwall"))
        .args([
            "up",
            "--speed",
            "0",
            "--status-interval",
            "1s",
            "--listen",
            "127.0.0.1:0",
            "--pg-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let it run flat out long enough to have uncommitted rows in flight.
    std::thread::sleep(Duration::from_secs(6));
    let status = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pitwall up failed after Ctrl-C:\n{stderr}"
    );
    assert!(stderr.contains("stopping: draining the bus"), "{stderr}");
    let produced: i64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("done: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no final summary line:\n{stderr}"));
    assert!(
        produced > 1000,
        "it should have produced a good number of events: {stderr}"
    );

    let lake = Lake::open(LakeConfig::test_config(&data)).await.unwrap();
    let q = Query::new(&lake).await.unwrap();
    let count = |sql: &'static str| {
        let q = &q;
        async move {
            let b = q.sql(sql).await.unwrap();
            let json = render(&b, Format::Json).unwrap();
            let v: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
            v["n"].as_i64().unwrap()
        }
    };
    assert_eq!(
        count("SELECT count(*) AS n FROM raw.events").await,
        produced
    );
    let clean = count("SELECT count(*) AS n FROM clean.car").await
        + count("SELECT count(*) AS n FROM clean.sensor").await;
    let rejected = count("SELECT count(*) AS n FROM quarantine.rejects").await;
    let late = count("SELECT count(*) AS n FROM quarantine.late").await;
    assert_eq!(
        clean + rejected + late,
        produced,
        "every produced event is clean, rejected or late"
    );
    // The open windows were closed at the end, not dropped: the windows holding a car's
    // last event are present.
    let last_window = count(
        "SELECT count(*) AS n FROM metrics.windows w
         JOIN (SELECT driver, max(time) AS t FROM clean.car GROUP BY driver) c
           ON w.source_id = c.driver AND w.window_start <= c.t AND c.t < w.window_end
         WHERE w.field = 'speed_kph' AND w.\"window\" = 'car_5s'",
    )
    .await;
    // 5 s windows every second: five of them hold each car's last event.
    assert_eq!(last_window, 20 * 5, "each car's last windows are committed");
}

/// `pitwall up` with maintenance every second compacts while it streams; afterwards
/// `pitwall lake compact|expire|clean-orphans|retention|maintain` change files and
/// snapshots but never what a query returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lake_maintenance_on_a_schedule_and_by_hand_keeps_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("lake");
    let config = dir.path().join("pitwall.toml");
    std::fs::write(
        &config,
        "[lake]\ncommit-interval = \"200ms\"\n\n[lake.maintenance]\ninterval = \"1s\"\nexpire-after = \"2s\"\norphan-age = \"1h\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pitwall"))
        .args([
            "up",
            "--speed",
            "10",
            "--duration",
            "20s",
            "--listen",
            "127.0.0.1:0",
            "--pg-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("lake maintenance: raw.events: compacted"),
        "maintenance should have run while streaming:\n{stderr}"
    );

    let lake = |cmd: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pitwall"))
            .arg("lake")
            .args(cmd)
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "pitwall lake {cmd:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let snapshot = || async {
        let lake = Lake::open(LakeConfig::test_config(&data)).await.unwrap();
        let q = Query::new(&lake).await.unwrap();
        let mut out = Vec::new();
        for sql in [
            "SELECT count(*) AS n, sum(\"offset\") AS o FROM raw.events",
            "SELECT count(*) AS n, round(sum(rpm), 3) AS s, max(speed_kph) AS m FROM clean.car",
            "SELECT count(*) AS n, round(sum(temperature_c), 3) AS s FROM clean.sensor", // summation order varies
            "SELECT count(*) AS n, sum(\"count\") AS c FROM metrics.windows",
            "SELECT count(*) AS n FROM anomalies.events",
        ] {
            let b = q.sql(sql).await.unwrap();
            out.push(render(&b, Format::Json).unwrap());
        }
        out
    };
    let before = snapshot().await;
    // Append a stray file to clean up, then every command by hand.
    let stray = data.join("warehouse/raw/events/data/stray.parquet");
    std::fs::write(&stray, b"left by a crash").unwrap();
    let compact = lake(&["compact", "--target-size", "1000000000"]);
    assert!(
        compact.contains("raw.events: compacted") || compact.contains("raw.events: nothing to do"),
        "{compact}"
    );
    assert_eq!(
        snapshot().await,
        before,
        "compaction changed what queries return"
    );
    let expire = lake(&["expire", "--older-than", "0s"]);
    assert!(expire.contains("raw.events: expired"), "{expire}");
    assert_eq!(
        snapshot().await,
        before,
        "expiry changed what queries return"
    );
    let orphans = lake(&[
        "clean-orphans",
        "--table",
        "raw.events",
        "--older-than",
        "0s",
    ]);
    assert!(orphans.contains("raw.events: removed"), "{orphans}");
    assert!(!stray.exists(), "the stray file is gone");
    assert_eq!(
        snapshot().await,
        before,
        "orphan cleaning changed what queries return"
    );
    let retention = lake(&["retention", "--keep", "2d"]);
    assert!(
        retention.lines().all(|l| l.ends_with("nothing to do")),
        "today's data is kept: {retention}"
    );
    let all = lake(&["maintain"]);
    assert!(all.contains("raw.events:"), "{all}");
    assert_eq!(snapshot().await, before);
    // A table that does not exist is named.
    let out = Command::new(env!("CARGO_BIN_EXE_pitwall"))
        .args(["lake", "compact", "--table", "raw.nope", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--table raw.nope: no such table"));
}

/// `pitwall bench lake` runs end to end on a small lake and prints each figure. A
/// minute of telemetry at 10x, a commit per simulated second: commits run beside the
/// stream, which keeps its pace, so their number is the stream's 6 s over a commit's
/// latency (a few hundred ms in a debug build on a busy machine).
#[test]
fn the_lake_bench_prints_its_figures() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pitwall"))
        .args([
            "bench",
            "lake",
            "--sim-duration",
            "60s",
            "--speed",
            "10",
            "--commit-every",
            "1s",
            "--maintenance",
            "10s",
            "--runs",
            "1",
            "--data-dir",
        ])
        .arg(dir.path().join("lake"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "commit latency p50",
        "full-scan aggregate on clean.car",
        "storage: raw JSON",
        "raw.events:",
    ] {
        assert!(stdout.contains(want), "no {want:?} in\n{stdout}");
    }
    let commits: u64 = stdout
        .split(" commits; ")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no commit count in\n{stdout}"));
    assert!(
        commits >= 10,
        "the stream should commit many times: {commits}\n{stdout}"
    );
}
