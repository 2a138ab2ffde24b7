//! Exactly once through Kafka, on a real Kafka-API broker (tansu) with the real binary:
//! a processor killed with SIGKILL again and again, and processors joining a running
//! group, leave the lake exactly as one uninterrupted processor does, row for row; the
//! output topics are readable by an independent client (kafka-python); a broker that
//! goes away mid-run is waited for; an unreachable one is a clear error at start.

mod common;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::util::display::{ArrayFormatter, FormatOptions};
use common::{Broker, count, rows};
use pitwall_lake::{Lake, LakeConfig};
use pitwall_query::Query;

fn pitwall() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pitwall"))
}

/// A config file for these runs: faults and malformed payloads on, quick commits, a 6 s
/// group session so a killed processor's partitions move on soon, and one sliding window
/// (the 5 s / 1 s car window) plus the sensor window instead of the three defaults: a
/// sliding window's replay is what needs proving, and a third of the window rows keeps the
/// million-event run (and its row-by-row comparison) short in a debug build. Idle ticks
/// are off: they are sent after 30 s of wall-clock quiet, so a processor slowed down by a
/// busy machine could tick a partition it had caught up on while its twin did not, and
/// the lakes compared row for row would differ by windows closed early (ticks have their
/// own test below).
fn config_file(dir: &Path, commit_interval: &str) -> PathBuf {
    config_with_session(dir, commit_interval, "6000", "4000")
}

fn config_with_session(
    dir: &Path,
    commit_interval: &str,
    session_ms: &str,
    socket_ms: &str,
) -> PathBuf {
    let path = dir.join(format!("pitwall-{commit_interval}-{session_ms}.toml"));
    std::fs::write(
        &path,
        format!(
            "[sim]\nseed = 11\ncorrupt-per-minute = 6.0\n\n[sim.race]\nfaults-per-car-minute = 0.2\n\n\
             [lake]\ncommit-interval = \"{commit_interval}\"\n\n[processor]\nidle-timeout = \"0s\"\n\n[kafka.properties]\n\"socket.timeout.ms\" = \"{socket_ms}\"\n\
             \"session.timeout.ms\" = \"{session_ms}\"\n\n\
             [[processor.windows]]\nname = \"car_5s\"\nmeasurements = [\"car\"]\nsize = \"5s\"\nslide = \"1s\"\n\
             fields = [\"speed_kph\", \"rpm\", \"throttle_pct\", \"brake\"]\n\n\
             [[processor.windows]]\nname = \"sensor_10s\"\nmeasurements = [\"sensor\"]\nsize = \"10s\"\n\
             fields = [\"temperature_c\"]\n"
        ),
    )
    .unwrap();
    path
}

/// `pitwall ingest` of `sim_seconds` of simulated telemetry, as fast as the broker takes
/// it; returns how many events were sent.
fn ingest(broker: &Broker, config: &Path, sim_seconds: u64) -> u64 {
    let out = pitwall()
        .args([
            "ingest",
            "--brokers",
            &broker.addr,
            "--speed",
            "0",
            "--status-interval",
            "30s",
        ])
        .arg("--config")
        .arg(config)
        .args(["--sim-duration", &format!("{sim_seconds}s")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ingest failed:\n{stderr}");
    let sent = stderr
        .split("ingest: sent ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in:\n{stderr}"));
    assert!(stderr.contains("all acknowledged"), "{stderr}");
    sent
}

/// Starts `pitwall process` in `group` on the lake in `data_dir`, logging to `log`.
fn process(
    broker: &Broker,
    config: &Path,
    group: &str,
    data_dir: &Path,
    log: &Path,
    idle_exit: Option<&str>,
) -> Child {
    process_with(broker, config, group, data_dir, log, idle_exit, &[])
}

/// [`process`] with more arguments.
fn process_with(
    broker: &Broker,
    config: &Path,
    group: &str,
    data_dir: &Path,
    log: &Path,
    idle_exit: Option<&str>,
    more: &[&str],
) -> Child {
    let mut c = pitwall();
    c.args([
        "process",
        "--brokers",
        &broker.addr,
        "--group",
        group,
        "--status-interval",
        "5s",
    ])
    .args(more)
    .arg("--config")
    .arg(config)
    .arg("--data-dir")
    .arg(data_dir)
    .env("RUST_LOG", "info")
    .stdout(Stdio::null())
    .stderr(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap(),
    );
    if let Some(idle) = idle_exit {
        c.args(["--exit-when-idle", idle]);
    }
    c.spawn().unwrap()
}

fn wait(mut child: Child, limit: Duration, log: &Path) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            assert!(
                status.success(),
                "pitwall process failed ({status}):\n{}",
                tail(&text)
            );
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "pitwall process did not finish in {limit:?}:\n{}",
                tail(&std::fs::read_to_string(log).unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The warnings and partition moves in `logs`, for failure messages.
fn notable(logs: &[&Path]) -> String {
    let mut out = String::new();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        out.push_str(&format!("== {}\n", log.display()));
        for l in text.lines().filter(|l| {
            l.contains("WARN")
                || l.contains("ERROR")
                || l.contains("rebalance")
                || l.contains("taking up")
                || l.contains("seeking")
        }) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

async fn query(data_dir: &Path) -> Query {
    let lake = Lake::open(LakeConfig::test_config(data_dir)).await.unwrap();
    Query::new(&lake).await.unwrap()
}

/// Every table of the lake with its row count and an order-independent fingerprint of
/// its rows (the sum of a hash of each row, columns in name order).
async fn fingerprints(q: &Query) -> Vec<(String, usize, u64)> {
    let tables = rows(
        q,
        "SELECT table_schema || '.' || table_name AS t FROM information_schema.tables
         WHERE table_catalog = 'pitwall' AND table_schema <> 'information_schema'
           AND strpos(table_name, '$') = 0 ORDER BY 1",
    )
    .await;
    let mut out = Vec::new();
    for t in tables {
        let table = t["t"].as_str().unwrap().to_owned();
        let df = q
            .context()
            .sql(&format!("SELECT * FROM {table}"))
            .await
            .unwrap();
        let mut names: Vec<String> = df
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        names.sort();
        let cols: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        let batches = q
            .sql(&format!("SELECT {} FROM {table}", cols.join(", ")))
            .await
            .unwrap();
        let (mut n, mut sum) = (0usize, 0u64);
        let options = FormatOptions::default().with_null("<null>");
        for b in &batches {
            let cells: Vec<ArrayFormatter<'_>> = b
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
                .collect();
            for row in 0..b.num_rows() {
                let mut h = std::hash::DefaultHasher::new();
                for c in &cells {
                    c.value(row).to_string().hash(&mut h);
                }
                sum = sum.wrapping_add(h.finish());
                n += 1;
            }
        }
        out.push((table, n, sum));
    }
    out
}

/// No (partition, offset) twice in a table that keeps them, and no window or anomaly twice.
async fn assert_no_duplicates(q: &Query) {
    for (table, key) in [
        ("raw.events", "\"partition\", \"offset\""),
        ("quarantine.rejects", "\"partition\", \"offset\""),
        ("quarantine.late", "\"partition\", \"offset\""),
        (
            "metrics.windows",
            "source_id, \"window\", window_start, field",
        ),
        ("anomalies.events", "id, phase"),
    ] {
        let dup = rows(q, &format!("SELECT count(*) AS n FROM (SELECT {key} FROM {table} GROUP BY {key} HAVING count(*) > 1)")).await;
        assert_eq!(dup[0]["n"], 0, "{table} has rows twice");
    }
}

/// The crash test: over a million events, a processor SIGKILLed at least three times
/// mid-stream (commits happen every second, so kills land between and inside the
/// per-table commits) and restarted each time; the lake it leaves equals, row for row,
/// the lake of a processor that ran once without interruption.
#[test]
fn a_processor_killed_again_and_again_writes_exactly_what_an_uninterrupted_one_writes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let config = config_file(dir.path(), "1s");
    // 20 cars at 10 Hz and 20 sensors at 1 Hz: 220 events per simulated second, less
    // what silent-sensor faults leave out.
    let sent = ingest(&broker, &config, 4_600);
    assert!(sent >= 1_000_000, "only {sent} events");

    let (reference, crashed) = (dir.path().join("reference"), dir.path().join("crashed"));
    let ref_log = dir.path().join("reference.log");
    let crash_log = dir.path().join("crashed.log");
    let uninterrupted = process(
        &broker,
        &config,
        "reference",
        &reference,
        &ref_log,
        Some("5s"),
    );

    let mut kills = 0;
    for run_seconds in [14, 17, 12, 23, 15] {
        let mut p = process(&broker, &config, "crashed", &crashed, &crash_log, None);
        std::thread::sleep(Duration::from_secs(run_seconds));
        if p.try_wait().unwrap().is_some() {
            panic!(
                "the processor exited early:\n{}",
                tail(&std::fs::read_to_string(&crash_log).unwrap())
            );
        }
        p.kill().unwrap(); // SIGKILL: no shutdown, no final commit
        p.wait().unwrap();
        kills += 1;
    }
    let last = process(
        &broker,
        &config,
        "crashed",
        &crashed,
        &crash_log,
        Some("5s"),
    );
    wait(last, Duration::from_secs(1800), &crash_log);
    wait(uninterrupted, Duration::from_secs(1800), &ref_log);
    assert!(kills >= 3);
    let crash_text = std::fs::read_to_string(&crash_log).unwrap();
    // A run may be killed before the group assigns it anything (it waits for the killed
    // member's session to end); at least three of the killed runs must have been working.
    let taken = crash_text
        .matches("taking up the partition from the lake")
        .count();
    assert!(
        taken >= 3 * 4,
        "only {taken} partition take-ups over six runs:\n{}",
        notable(&[&crash_log])
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (a, b) = (query(&reference).await, query(&crashed).await);
        assert_eq!(
            count(&a, "raw.events").await as u64,
            sent,
            "the reference has every event"
        );
        assert!(
            count(&a, "anomalies.events").await > 0,
            "the run should raise anomalies"
        );
        assert!(
            count(&a, "quarantine.rejects").await > 0,
            "the run should reject something"
        );
        assert_no_duplicates(&b).await;
        assert_eq!(
            count(&b, "raw.events").await as u64,
            sent,
            "logs:\n{}",
            notable(&[&crash_log])
        );
        let (fa, fb) = (fingerprints(&a).await, fingerprints(&b).await);
        assert!(fa.len() >= 7, "{fa:?}");
        assert_eq!(
            fa, fb,
            "the crashed processor's lake differs from the uninterrupted one"
        );
    });
}

/// Scale-out: a second processor joins the group while the first is busy (a cooperative
/// rebalance moves partitions under load), the two share the lake, then the second is
/// killed (SIGKILL) and the first takes its partitions over once the group notices;
/// together they write exactly what one processor writes.
#[test]
fn processors_joining_and_dying_in_a_busy_group_write_each_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let config = config_file(dir.path(), "1s");
    let sent = ingest(&broker, &config, 900);

    let (reference, shared) = (dir.path().join("reference"), dir.path().join("shared"));
    let (ref_log, a_log, b_log) = (
        dir.path().join("ref.log"),
        dir.path().join("a.log"),
        dir.path().join("b.log"),
    );
    let single = process(&broker, &config, "single", &reference, &ref_log, Some("5s"));
    // Idle long enough to outlast the group's session timeout (6 s here) after the kill.
    let a = process(&broker, &config, "pair", &shared, &a_log, Some("15s"));
    std::thread::sleep(Duration::from_secs(8));
    let mut b = process(&broker, &config, "pair", &shared, &b_log, None);
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        b.try_wait().unwrap().is_none(),
        "the second processor exited early:\n{}",
        notable(&[&b_log])
    );
    b.kill().unwrap();
    b.wait().unwrap();
    wait(a, Duration::from_secs(900), &a_log);
    wait(single, Duration::from_secs(900), &ref_log);

    let (a_text, b_text) = (
        std::fs::read_to_string(&a_log).unwrap(),
        std::fs::read_to_string(&b_log).unwrap(),
    );
    assert!(
        a_text.contains("Revoked"),
        "the first processor gave partitions up when the second joined:\n{}",
        notable(&[&a_log])
    );
    assert!(
        b_text.contains("taking up the partition"),
        "the second processor took partitions:\n{}",
        notable(&[&b_log])
    );
    assert!(
        a_text.matches("taking up the partition").count() > 3,
        "the first processor took the dead one's partitions over:\n{}",
        notable(&[&a_log])
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (r, s) = (query(&reference).await, query(&shared).await);
        assert_eq!(
            count(&s, "raw.events").await as u64,
            sent,
            "logs:\n{}",
            notable(&[&a_log, &b_log])
        );
        assert_no_duplicates(&s).await;
        assert_eq!(
            fingerprints(&r).await,
            fingerprints(&s).await,
            "two processors wrote something else than one"
        );
    });
}

/// The output topics, read by kafka-python (an independent client): JSON keyed by
/// source id, placed by the Java client's murmur2, as many clean messages as clean rows.
/// And a broker frozen mid-run (shorter than the group session, 45 s here: tansu 0.6
/// keeps a member whose session expired as the group's leader, so a rejoin after a
/// longer outage never completes on it) is waited for, with a log line saying so: the
/// processor carries on afterwards and loses nothing.
///
/// The clients' socket timeout outlasts the freeze here. With a shorter one librdkafka
/// gives up on the produce requests in flight and retries them on a new connection,
/// while the frozen broker still holds the first copies; tansu 0.6 then stores both
/// and its high watermark ends up below offsets it serves (seen here: kafka-python read
/// 38,381 distinct offsets from a partition whose end offset tansu gave as 36,846, and
/// ~300 clean messages were missing). The idempotent producer's sequence numbers are
/// there for exactly that case; Apache Kafka drops the second copy. Even without
/// retries, tansu's end offsets after a freeze can lag records it serves (seen here:
/// every clean message was there, but up to 230 past the end offset it reported), so
/// kafka_check.py reads on past the end offsets until nothing more comes.
#[test]
fn outputs_are_readable_by_kafka_python_and_a_frozen_broker_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let config = config_with_session(dir.path(), "1s", "45000", "60000");
    let data = dir.path().join("data");
    let log = dir.path().join("process.log");
    // Ingest (10 minutes of telemetry at 60x: 10 s) and process at once; freeze the
    // broker for 15 s while both are busy (ingest is about half way through then, and
    // stops to wait once 50,000 messages are unacknowledged).
    let ingest_log = dir.path().join("ingest.log");
    let ingesting = pitwall()
        .args([
            "ingest",
            "--brokers",
            &broker.addr,
            "--speed",
            "60",
            "--status-interval",
            "1s",
            "--sim-duration",
            "600s",
        ])
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&ingest_log).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let p = process(&broker, &config, "g", &data, &log, Some("20s"));
    std::thread::sleep(Duration::from_secs(3));
    broker.pause();
    std::thread::sleep(Duration::from_secs(15));
    broker.resume();
    wait(ingesting, Duration::from_secs(600), &ingest_log);
    let ingest_text = std::fs::read_to_string(&ingest_log).unwrap();
    let sent: u64 = ingest_text
        .split("ingest: sent ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in:\n{ingest_text}"));
    assert_eq!(
        sent,
        600 * 220,
        "ingest waited for the broker and sent everything:\n{ingest_text}"
    );
    wait(p, Duration::from_secs(600), &log);
    // Ingest sends all through the freeze, so it waits for acknowledgements (the
    // processor may have had nothing unacknowledged when the broker stopped).
    assert!(
        ingest_text.contains("waiting for the brokers to acknowledge"),
        "no log line says the broker was away:\n{}",
        notable(&[&ingest_log, &log])
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (clean, rejects, (fires, windows), anomalies) = rt.block_on(async {
        let q = query(&data).await;
        assert_eq!(
            count(&q, "raw.events").await as u64,
            sent,
            "nothing lost while the broker was away"
        );
        assert_no_duplicates(&q).await;
        (
            count(&q, "clean.car").await + count(&q, "clean.sensor").await,
            count(&q, "quarantine.rejects").await,
            window_fires(&q).await,
            count(&q, "anomalies.events").await,
        )
    });
    kafka_python_agrees(
        &broker,
        &format!(
            r#"{{"telemetry.clean": {clean}, "telemetry.dlq": {rejects}, "telemetry.metrics": [{fires}, {windows}], "telemetry.anomalies": {anomalies}}}"#
        ),
        &[&log, &ingest_log],
    );
}

/// A partition that goes quiet gets watermark ticks through the raw topic: its last
/// windows close with no data and no shutdown (a `pitwall process` keeps open windows
/// open when it stops); the ticks are not data and make no source silent.
#[test]
fn idle_partitions_are_ticked_so_their_windows_close() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let config = dir.path().join("idle.toml");
    std::fs::write(
        &config,
        "[sim]\nseed = 5\n\n[sim.race]\nfaults-per-car-minute = 0.0\n\n[sim.iot]\nfaults-per-sensor-minute = 0.0\n\n\
         [lake]\ncommit-interval = \"1s\"\n\n[processor]\nidle-timeout = \"2s\"\n\n\
         [kafka]\noutputs = [\"metrics\"]\n",
    )
    .unwrap();
    let sent = ingest(&broker, &config, 30);
    let (data, log) = (dir.path().join("data"), dir.path().join("process.log"));
    // Ticks every 2 s of idleness; 12 s of it moves event time past every window's end.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let p = process_with(
        &broker,
        &config,
        "idle",
        &data,
        &log,
        Some("16s"),
        &["--metrics-listen", &listen],
    );
    // Its /metrics, while it runs: everything processed, each partition's lag, commits.
    let scrape = || {
        let mut s = std::net::TcpStream::connect(&listen).ok()?;
        use std::io::{Read, Write};
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(text)
    };
    let value = |text: &str, series: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last = None;
    let text = loop {
        let text = scrape();
        if text.is_some() {
            last.clone_from(&text);
        }
        // (Watermark ticks are raw messages too, so at least what was sent.)
        if let Some(text) = text
            && value(&text, r#"pitwall_events_in_total{stage="process"}"#)
                .is_some_and(|n| n >= sent as f64)
            && value(&text, "pitwall_lake_commit_seconds_count").is_some_and(|c| c > 0.0)
            && (0..3).all(|p| {
                value(
                    &text,
                    &format!(
                        r#"pitwall_consumer_lag_messages{{topic="telemetry.raw",partition="{p}"}}"#
                    ),
                ) == Some(0.0)
            })
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "/metrics never showed all {sent} events processed and no lag; last scrape:\n{last:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        text.contains("pitwall_watermark_lag_seconds{partition="),
        "{text}"
    );
    wait(p, Duration::from_secs(600), &log);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let q = query(&data).await;
        assert_eq!(count(&q, "raw.events").await as u64, sent, "ticks are not raw events");
        assert_no_duplicates(&q).await;
        // The windows holding the last events closed (without ticks the watermark stops
        // 2 s short of the last event and they stay open).
        for (window, table) in [("car_1s", "clean.car"), ("car_5s", "clean.car"), ("sensor_10s", "clean.sensor")] {
            let r = rows(
                &q,
                &format!(
                    "SELECT CAST((SELECT max(window_end) FROM metrics.windows WHERE \"window\" = '{window}') AS BIGINT) AS w,
                            CAST((SELECT max(time) FROM {table}) AS BIGINT) AS t"
                ),
            )
            .await;
            assert!(r[0]["w"].as_i64().unwrap() > r[0]["t"].as_i64().unwrap(), "{window}: {r:?}");
        }
        // The stream ended for every source at once: nobody is silent next to others.
        assert_eq!(count(&q, "anomalies.events").await, 0, "{}", notable(&[&log]));
        // kafka.outputs = ["metrics"]: the lake has every stream, Kafka only the metrics
        // (one message per window fire).
        assert!(count(&q, "clean.car").await > 0);
        let (fires, windows) = window_fires(&q).await;
        kafka_python_agrees(
            &broker,
            &format!(
                r#"{{"telemetry.clean": 0, "telemetry.dlq": 0, "telemetry.late": 0, "telemetry.anomalies": 0, "telemetry.metrics": [{fires}, {windows}]}}"#
            ),
            &[&log],
        );
    });
}

/// The window fires in metrics.windows (one per source, window and span), and its rows.
async fn window_fires(q: &Query) -> (i64, i64) {
    let fires = rows(
        q,
        "SELECT count(*) AS n FROM (SELECT DISTINCT measurement, source_id, \"window\", window_start FROM metrics.windows)",
    )
    .await;
    (
        fires[0]["n"].as_i64().unwrap(),
        count(q, "metrics.windows").await,
    )
}

/// Runs tests/kafka_check.py (kafka-python) with `expected`; fails with its words and
/// the logs if it disagrees.
fn kafka_python_agrees(broker: &Broker, expected: &str, logs: &[&Path]) {
    let python = std::env::var("PITWALL_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/kafka_check.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&broker.addr)
        .arg(expected)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}; scripts/test.sh installs kafka-python and sets PITWALL_PYTHON"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kafka-python disagrees:\n{stdout}\n{stderr}\nlogs:\n{}",
        notable(logs)
    );
    assert!(stdout.contains("kafka-python agrees"), "{stdout}\n{stderr}");
}

/// An unreachable broker is an error at start that names the brokers and the setting.
#[test]
fn an_unreachable_broker_is_a_clear_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let out = pitwall()
        .args(["process", "--brokers", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("kafka.brokers"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}
