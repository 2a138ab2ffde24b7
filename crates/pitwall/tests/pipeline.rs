//! The embedded pipeline end to end, on the real libraries: simulators, in-process bus,
//! processors, Iceberg tables in a SQLite catalog (and in a PostgreSQL catalog on an S3
//! server), DataFusion, and PyIceberg and DuckDB as independent readers.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Broker, START, Transport, config, count, rows, rule_for, s3_config};
use pitwall_lake::{Lake, LakeConfig};
use pitwall_query::Query;
use pitwall_runtime::{SimRun, Stats};
use pitwall_sim::FaultKind;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

async fn run(config: pitwall_runtime::config::Config, minutes: u64) -> pitwall_runtime::Summary {
    common::run(&Transport::InProcess, config, minutes).await
}

/// Declares a test on the in-process bus and its twin on a real Kafka-API broker.
macro_rules! on_both_buses {
    ($name:ident, $kafka:ident, $body:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let dir = tempfile::tempdir().unwrap();
            $body(&Transport::InProcess, dir.path()).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $kafka() {
            let dir = tempfile::tempdir().unwrap();
            let broker = Broker::start(dir.path());
            $body(&Transport::Kafka(&broker), dir.path()).await;
        }
    };
}

on_both_buses!(
    every_injected_fault_is_caught_and_nothing_else,
    over_kafka_every_injected_fault_is_caught_and_nothing_else,
    faults_are_caught
);
on_both_buses!(
    a_fault_free_race_fills_every_table_and_raises_nothing,
    over_kafka_a_fault_free_race_fills_every_table_and_raises_nothing,
    fault_free_race
);
on_both_buses!(
    malformed_payloads_land_in_rejects_with_their_reason_and_lose_nothing_else,
    over_kafka_malformed_payloads_land_in_rejects_with_their_reason_and_lose_nothing_else,
    malformed_payloads
);

async fn faults_are_caught(t: &Transport<'_>, dir: &Path) {
    let summary = common::run(t, config(dir, 0.4, 0.0), 10).await;
    let faults = &summary.faults;
    for kind in FaultKind::ALL {
        assert!(
            faults.iter().filter(|f| f.kind == kind).count() >= 2,
            "too few {kind:?} faults injected for a meaningful test: {faults:?}"
        );
    }
    let lake = Lake::open(config(dir, 0.0, 0.0).lake).await.unwrap();
    let q = Query::new(&lake).await.unwrap();
    let anomalies = rows(
        &q,
        "SELECT id, rule, source_id, CAST(time AS BIGINT) AS t_us FROM anomalies.events WHERE phase = 'start' ORDER BY t_us",
    )
    .await;
    let ends = rows(
        &q,
        "SELECT id, CAST(end_time AS BIGINT) AS end_us FROM anomalies.events WHERE phase = 'end' ORDER BY id",
    )
    .await;
    let matches = |a: &Value, f: &pitwall_sim::InjectedFault| {
        let t = a["t_us"].as_i64().unwrap() * 1000;
        a["rule"] == rule_for(f.kind)
            && a["source_id"] == f.source_id.as_str()
            && t >= f.start
            && t <= f.end.unwrap_or(i64::MAX)
    };
    const SECOND: i64 = 1_000_000_000;
    for f in faults {
        let caught: Vec<&Value> = anomalies.iter().filter(|a| matches(a, f)).collect();
        assert_eq!(
            caught.len(),
            1,
            "fault {f:?} should be one anomaly episode, found {caught:?}"
        );
        // The episode ends once, when the fault is over (an RPM drop stops being a drop
        // once the fall is older than the rule's span, so it ends early).
        let id = &caught[0]["id"];
        let end: Vec<i64> = ends
            .iter()
            .filter(|e| &e["id"] == id)
            .map(|e| e["end_us"].as_i64().unwrap() * 1000)
            .collect();
        match f.end {
            Some(fault_end) => {
                assert_eq!(
                    end.len(),
                    1,
                    "fault {f:?} should have one end row, found {end:?}"
                );
                let from = if f.kind == FaultKind::RpmDrop {
                    f.start
                } else {
                    fault_end - 2 * SECOND
                };
                assert!(
                    end[0] > from && end[0] <= fault_end + SECOND,
                    "fault {f:?} ended at {fault_end}, its episode at {}",
                    end[0]
                );
            }
            None => assert!(end.len() <= 1, "{f:?}: {end:?}"),
        }
    }
    for a in &anomalies {
        assert!(
            faults.iter().any(|f| matches(a, f)),
            "anomaly {a} matches no injected fault (a false positive)"
        );
    }
    assert_eq!(anomalies.len(), faults.len());
    assert!(ends.len() <= anomalies.len(), "an end row without a start");
    assert_eq!(
        summary.anomalies as usize,
        anomalies.len(),
        "the status counts episodes"
    );
}

async fn fault_free_race(t: &Transport<'_>, dir: &Path) {
    let summary = common::run(t, config(dir, 0.0, 0.0), 10).await;
    assert!(summary.faults.is_empty());
    let lake = Lake::open(config(dir, 0.0, 0.0).lake).await.unwrap();
    let q = Query::new(&lake).await.unwrap();
    // 20 cars at 10 Hz and 20 sensors at 1 Hz for 600 simulated seconds.
    assert_eq!(count(&q, "clean.car").await, 20 * 10 * 600);
    assert_eq!(count(&q, "clean.sensor").await, 20 * 600);
    assert_eq!(count(&q, "raw.events").await, 20 * 10 * 600 + 20 * 600);
    assert_eq!(summary.produced, 20 * 10 * 600 + 20 * 600);
    let raised = rows(&q, "SELECT rule, source_id, phase, CAST(time AS BIGINT) AS t, message FROM anomalies.events ORDER BY t").await;
    assert!(
        raised.is_empty(),
        "a fault-free race must raise no anomaly: {raised:#?}"
    );
    assert_eq!(count(&q, "quarantine.rejects").await, 0);
    assert_eq!(count(&q, "quarantine.late").await, 0);

    // Windows agree with a batch GROUP BY over the clean table, both ways, for the
    // default sliding car windows (5 s every 1 s and 1 s every 500 ms, so each event is in
    // 5 or 2 windows) and the 10 s tumbling sensor window. The in-process run closes
    // every window when its input ends; Kafka's input never ends, so only windows that
    // end well before the last event (past the watermark) are compared.
    let until = START / 1000 + 590 * 1_000_000;
    for (window, measurement, source, field, value, size_ms, slide_ms) in [
        (
            "car_5s",
            "car",
            "driver",
            "speed_kph",
            "speed_kph",
            5000,
            1000,
        ),
        (
            "car_1s",
            "car",
            "driver",
            "brake",
            "CASE WHEN brake THEN 1.0 ELSE 0.0 END",
            1000,
            500,
        ),
        (
            "sensor_10s",
            "sensor",
            "sensor_id",
            "temperature_c",
            "temperature_c",
            10_000,
            10_000,
        ),
    ] {
        let windowed = format!(
            "SELECT source_id AS s, window_start AS ws, count AS n, min AS lo, max AS hi, round(mean, 6) AS avg
             FROM metrics.windows
             WHERE \"window\" = '{window}' AND measurement = '{measurement}' AND field = '{field}'
               AND window_end <= to_timestamp_micros({until})"
        );
        let offsets = (0..size_ms / slide_ms)
            .map(|i| format!("(INTERVAL '{} milliseconds')", i * slide_ms))
            .collect::<Vec<_>>()
            .join(", ");
        let batch = format!(
            "SELECT * FROM (
               SELECT s, ws, count(*) AS n, min(v) AS lo, max(v) AS hi, round(avg(v), 6) AS avg FROM (
                 SELECT {source} AS s, {value} AS v,
                        date_bin(INTERVAL '{slide_ms} milliseconds', time, TIMESTAMP '1970-01-01T00:00:00Z')
                          - o.back AS ws
                 FROM clean.{measurement} CROSS JOIN (VALUES {offsets}) AS o(back))
               GROUP BY 1, 2)
             WHERE ws + INTERVAL '{size_ms} milliseconds' <= to_timestamp_micros({until})"
        );
        let n_windows = rows(&q, &format!("SELECT count(*) AS n FROM ({windowed})")).await[0]["n"]
            .as_i64()
            .unwrap();
        // Every window ending in (START, START + 590 s] holds data: one per slide per source.
        assert_eq!(
            n_windows,
            20 * 590 * 1000 / slide_ms,
            "{window}: one window per source per slide"
        );
        for (a, b) in [(&windowed, &batch), (&batch, &windowed)] {
            let diff = rows(
                &q,
                &format!("SELECT count(*) AS n FROM (({a}) EXCEPT ({b}))"),
            )
            .await;
            assert_eq!(
                diff[0]["n"], 0,
                "{window}: windows and GROUP BY differ:\n{a}\nEXCEPT\n{b}"
            );
        }
    }
    // Only the configured fields are windowed, with percentiles.
    let fields = rows(
        &q,
        "SELECT DISTINCT field FROM metrics.windows WHERE measurement = 'car' ORDER BY field",
    )
    .await;
    let fields: Vec<&str> = fields
        .iter()
        .map(|r| r["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["brake", "rpm", "speed_kph", "throttle_pct"]);
    let no_p95 = count(
        &q,
        "metrics.windows WHERE p95 IS NULL OR p50 > p99 OR first < min OR last > max",
    )
    .await;
    assert_eq!(
        no_p95, 0,
        "every window has ordered percentiles and first/last inside [min, max]"
    );
}

async fn malformed_payloads(t: &Transport<'_>, dir: &Path) {
    let summary = common::run(t, config(dir, 0.0, 30.0), 2).await;
    assert!(
        summary.corrupted >= 20,
        "expected a few dozen corrupted payloads, got {}",
        summary.corrupted
    );
    let lake = Lake::open(config(dir, 0.0, 0.0).lake).await.unwrap();
    let q = Query::new(&lake).await.unwrap();
    assert_eq!(
        count(&q, "quarantine.rejects").await,
        summary.corrupted as i64
    );
    assert_eq!(summary.rejects, summary.corrupted);
    let total = summary.produced as i64;
    assert_eq!(
        count(&q, "raw.events").await,
        total,
        "raw keeps every payload, good or bad"
    );
    assert_eq!(
        count(&q, "clean.car").await + count(&q, "clean.sensor").await,
        total - summary.corrupted as i64,
        "every good payload is clean"
    );
    let reasons = rows(
        &q,
        "SELECT reason, topic, \"partition\", \"offset\" FROM quarantine.rejects",
    )
    .await;
    let has = |needle: &str| {
        reasons
            .iter()
            .any(|r| r["reason"].as_str().unwrap().contains(needle))
    };
    assert!(has("EOF while parsing"), "truncated JSON: {reasons:?}");
    assert!(
        has("tag, which identifies its source"),
        "missing source tag: {reasons:?}"
    );
    assert!(
        has("before the year 2000"),
        "seconds for nanoseconds: {reasons:?}"
    );
    assert!(has("expected value"), "not JSON: {reasons:?}");
    assert!(
        reasons
            .iter()
            .all(|r| r["topic"] == "telemetry.raw" && r["offset"].as_i64().unwrap() >= 0)
    );
    // The rejected payload is kept as it was: its raw.events row holds the same bytes.
    let same = rows(
        &q,
        "SELECT count(*) AS n FROM quarantine.rejects r JOIN raw.events e
           ON r.\"partition\" = e.\"partition\" AND r.\"offset\" = e.\"offset\" AND r.payload = e.payload",
    )
    .await;
    assert_eq!(same[0]["n"].as_i64().unwrap(), summary.corrupted as i64);
}

/// PyIceberg reads the lake on its own and must agree with DataFusion on counts,
/// values, snapshot summaries and partitioning; DuckDB reads the Parquet data files and
/// agrees on counts and sums.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyiceberg_reads_what_pitwall_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let summary = run(config(dir.path(), 0.4, 10.0), 3).await;
    let lake = Lake::open(config(dir.path(), 0.0, 0.0).lake).await.unwrap();
    let catalog = serde_json::json!({
        "uri": format!("sqlite:///{}", lake.config().data_dir.join("catalog.db").display()),
        "warehouse": lake.warehouse(),
        "schema_queries": schema_queries(dir.path()),
    });
    independent_readers_agree(&lake, summary.produced, dir.path(), catalog).await;
}

/// Every query of deploy/trino/schema.sql run by `pitwall query`, with its rows: the
/// independent check runs the same SQL in DuckDB over the same files.
fn schema_queries(data_dir: &Path) -> Value {
    let queries = pitwall::bench::schema_queries();
    assert_eq!(
        queries.len(),
        6,
        "schema.sql holds the seeds' six typical queries"
    );
    let mut out = Vec::new();
    for sql in &queries {
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_pitwall"))
            .args(["query", "--format", "json", "--data-dir"])
            .arg(data_dir)
            .arg(sql)
            .current_dir(data_dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "pitwall query failed on\n{sql}\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let rows: Vec<Value> = stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(!rows.is_empty(), "no rows from\n{sql}");
        out.push(serde_json::json!({"sql": sql, "rows": rows}));
    }
    Value::Array(out)
}

/// The same with the lake shared the way a cluster shares it: the SQL catalog on
/// PostgreSQL and the files on an S3 server (garage), both real, on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyiceberg_and_duckdb_read_the_lake_on_postgresql_and_s3() {
    let dir = tempfile::tempdir().unwrap();
    let pg = pitwall_testkit::Postgres::start();
    let s3 = pitwall_testkit::Garage::start();
    let mut cfg = config(dir.path(), 0.4, 10.0);
    cfg.lake.catalog = pg.database("lake");
    cfg.lake.warehouse = format!("s3://{}/warehouse", s3.bucket);
    cfg.lake.s3 = s3_config(&s3);
    let summary = run(cfg.clone(), 3).await;
    assert!(
        !dir.path().join("warehouse").exists() && !dir.path().join("catalog.db").exists(),
        "nothing local"
    );
    let lake = Lake::open(cfg.lake).await.unwrap();
    assert!(lake.warehouse().starts_with("s3://pitwall/warehouse"));
    maintain_everything(&lake).await;
    let mut catalog = serde_json::json!({
        "uri": pg.url("lake").replace("postgres://", "postgresql+psycopg2://"),
        "warehouse": lake.warehouse(),
    });
    add_s3_properties(&mut catalog, &s3);
    independent_readers_agree(&lake, summary.produced, dir.path(), catalog).await;
}

/// The same through an Iceberg REST catalog (rustberg, an API key required) whose
/// warehouse is on the S3 server: pitwall streams, commits and maintains through the
/// REST commit endpoint, and PyIceberg's own REST client reads every table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyiceberg_and_duckdb_read_the_lake_through_a_rest_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = pitwall_testkit::Garage::start();
    let server = pitwall_testkit::Rustberg::start_on(&s3);
    let mut cfg = config(dir.path(), 0.4, 10.0);
    cfg.lake.catalog = server.uri.clone();
    cfg.lake.rest.token = server.token.clone();
    cfg.lake.s3 = s3_config(&s3);
    let summary = run(cfg.clone(), 3).await;
    assert!(
        !dir.path().join("warehouse").exists() && !dir.path().join("catalog.db").exists(),
        "nothing local"
    );
    let lake = Lake::open(cfg.lake).await.unwrap();
    let raw = lake.table(&pitwall_lake::Fixed::Raw.ident()).await.unwrap();
    assert!(
        raw.metadata().location().starts_with(&server.warehouse),
        "{}",
        raw.metadata().location()
    );
    maintain_everything(&lake).await;
    let mut catalog = serde_json::json!({
        "type": "rest",
        "uri": server.uri,
        "token": server.token,
    });
    add_s3_properties(&mut catalog, &s3);
    independent_readers_agree(&lake, summary.produced, dir.path(), catalog).await;
}

/// PyIceberg's properties for reading from the test's garage server, added to `catalog`.
fn add_s3_properties(catalog: &mut Value, s3: &pitwall_testkit::Garage) {
    let props = serde_json::json!({
        "s3.endpoint": s3.endpoint,
        "s3.region": s3.region,
        "s3.access-key-id": s3.access_key_id,
        "s3.secret-access-key": s3.secret_access_key,
        "s3.force-virtual-addressing": "false",
    });
    for (k, v) in props.as_object().unwrap() {
        catalog[k] = v.clone();
    }
}

/// Maintenance first (compaction, expiry of every older snapshot, orphan cleaning): the
/// independent readers must see the same rows in the rewritten tables.
async fn maintain_everything(lake: &Lake) {
    let maintenance = pitwall_lake::MaintenanceConfig {
        expire_after: Duration::ZERO,
        orphan_age: Duration::ZERO,
        ..Default::default()
    };
    let done = lake.maintain(&maintenance).await.unwrap();
    assert!(
        done.iter().any(|l| l.starts_with("raw.events: compacted")),
        "{done:?}"
    );
    assert!(done.iter().any(|l| l.contains("expired")), "{done:?}");
}

/// Runs tests/pyiceberg_check.py against what DataFusion reads from `lake`.
async fn independent_readers_agree(lake: &Lake, produced: u64, dir: &Path, catalog: Value) {
    let q = Query::new(lake).await.unwrap();
    let mut counts = serde_json::Map::new();
    for t in [
        "raw.events",
        "clean.car",
        "clean.sensor",
        "metrics.windows",
        "anomalies.events",
        "quarantine.rejects",
        "quarantine.late",
    ] {
        counts.insert(t.into(), count(&q, t).await.into());
    }
    assert!(
        counts["anomalies.events"].as_i64().unwrap() > 0,
        "the run should raise anomalies"
    );
    assert!(
        counts["quarantine.rejects"].as_i64().unwrap() > 0,
        "the run should reject something"
    );
    let expected = serde_json::json!({
        "catalog": catalog,
        "counts": counts,
        "car_by_driver": rows(&q, "SELECT driver, count(*) AS n, sum(rpm) AS rpm_sum, max(engine_temp_c) AS temp_max
                                   FROM clean.car GROUP BY driver ORDER BY driver").await,
        "anomalies": rows(&q, "SELECT id, phase, rule, source_id, CAST(time AS BIGINT) AS time_us, observed
                               FROM anomalies.events ORDER BY id, phase").await,
        "rejects": rows(&q, "SELECT \"partition\", \"offset\", reason FROM quarantine.rejects
                             ORDER BY \"partition\", \"offset\"").await,
        "raw_next_offsets": rows(&q, "SELECT \"partition\", max(\"offset\") + 1 AS next FROM raw.events
                                      GROUP BY 1 ORDER BY 1").await,
        "window_sums": rows(&q, "SELECT window, field, count(*) AS n, sum(count) AS count_sum, sum(\"sum\") AS sum_sum
                                 FROM metrics.windows GROUP BY 1, 2 ORDER BY 1, 2").await,
        "produced": produced,
    });
    let expected_path = dir.join("expected.json");
    std::fs::write(
        &expected_path,
        serde_json::to_vec_pretty(&expected).unwrap(),
    )
    .unwrap();
    let python = std::env::var("PITWALL_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/pyiceberg_check.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(&expected_path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}; the test command (scripts/test.sh) installs PyIceberg and sets PITWALL_PYTHON"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "PyIceberg or DuckDB disagrees:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("pyiceberg agrees") && stdout.contains("duckdb agrees"),
        "{stdout}\n{stderr}"
    );
    if let Some(q) = expected["catalog"]["schema_queries"].as_array() {
        assert!(
            stdout.contains(&format!(
                "duckdb agrees on the {} queries of schema.sql",
                q.len()
            )),
            "{stdout}"
        );
    }
}

/// Live readers of the output topics see the same records the lake gets, as JSON keyed
/// by source id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_go_back_onto_the_bus_for_live_readers() {
    use pitwall_bus::InProcessBus;
    use pitwall_runtime::{bus_config, run_on_bus};

    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 0.5, 10.0);
    let bus = InProcessBus::new(bus_config(&config));
    let topics = bus.config().topics.clone();
    let mut readers = Vec::new();
    for topic in [
        &topics.clean,
        &topics.metrics,
        &topics.anomalies,
        &topics.dlq,
    ] {
        for mut part in bus.subscribe(topic).unwrap() {
            readers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(m) = part.recv().await {
                    let v: Value =
                        serde_json::from_slice(&m.payload).expect("output payloads are JSON");
                    got.push((part.topic.clone(), m.key, v));
                }
                got
            }));
        }
    }
    let summary = run_on_bus(
        bus,
        config,
        SimRun {
            start_time: START,
            sim_duration: Some(Duration::from_secs(120)),
            serve: None,
            hold_open: false,
            replay: None,
        },
        CancellationToken::new(),
        Arc::new(Stats::default()),
    )
    .await
    .unwrap();
    let mut seen: std::collections::BTreeMap<String, Vec<(Option<bytes::Bytes>, Value)>> =
        Default::default();
    for r in readers {
        for (topic, key, v) in r.await.unwrap() {
            seen.entry(topic).or_default().push((key, v));
        }
    }
    let lake = Lake::open(LakeConfig::test_config(dir.path()))
        .await
        .unwrap();
    let q = Query::new(&lake).await.unwrap();
    let n = |t: &str| seen.get(t).map_or(0, Vec::len) as i64;
    assert_eq!(
        n("telemetry.clean"),
        count(&q, "clean.car").await + count(&q, "clean.sensor").await
    );
    // One metrics message per source and window fire, holding each field's row.
    let fires = rows(
        &q,
        "SELECT count(*) AS n FROM (SELECT DISTINCT measurement, source_id, \"window\", window_start FROM metrics.windows)",
    )
    .await;
    assert_eq!(n("telemetry.metrics"), fires[0]["n"].as_i64().unwrap());
    let fields: usize = seen["telemetry.metrics"]
        .iter()
        .map(|(_, v)| v["fields"].as_object().map_or(0, serde_json::Map::len))
        .sum();
    assert_eq!(fields as i64, count(&q, "metrics.windows").await);
    assert!(
        fields > seen["telemetry.metrics"].len(),
        "a car's fire holds several fields"
    );
    for (key, v) in &seen["telemetry.metrics"] {
        assert_eq!(
            key.as_deref(),
            Some(v["source_id"].as_str().unwrap().as_bytes())
        );
        assert!(v["window_end"].as_i64() > v["window_start"].as_i64(), "{v}");
    }
    assert_eq!(
        n("telemetry.anomalies"),
        count(&q, "anomalies.events").await
    );
    assert_eq!(n("telemetry.dlq"), summary.corrupted as i64);
    assert!(n("telemetry.anomalies") > 0 && n("telemetry.dlq") > 0);
    for (key, v) in &seen["telemetry.anomalies"] {
        assert_eq!(
            key.as_deref(),
            Some(v["source_id"].as_str().unwrap().as_bytes()),
            "keyed by source id"
        );
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    for (_, v) in &seen["telemetry.dlq"] {
        assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
    }
    let (key, car) = seen["telemetry.clean"]
        .iter()
        .find(|(_, v)| v["measurement"] == "car")
        .unwrap();
    assert_eq!(
        key.as_deref(),
        Some(car["tags"]["driver"].as_str().unwrap().as_bytes())
    );
}

/// A second `pitwall up` on the same lake continues the first run's offsets, so its
/// fenced commits hold and the snapshot offsets add up over both runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_the_same_lake_continues_its_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let first = run(config(dir.path(), 0.0, 0.0), 1).await;
    let second = run(config(dir.path(), 0.0, 0.0), 1).await;
    let lake = Lake::open(config(dir.path(), 0.0, 0.0).lake).await.unwrap();
    let q = Query::new(&lake).await.unwrap();
    let total = (first.produced + second.produced) as i64;
    assert_eq!(count(&q, "raw.events").await, total);
    let offsets = pitwall_lake::committed_offsets(
        &lake.table(&pitwall_lake::Fixed::Raw.ident()).await.unwrap(),
    )
    .unwrap();
    assert_eq!(
        offsets.values().sum::<i64>(),
        total,
        "offsets continue across runs: {offsets:?}"
    );
    let distinct = rows(
        &q,
        "SELECT count(*) AS n FROM (SELECT DISTINCT \"partition\", \"offset\" FROM raw.events)",
    )
    .await;
    assert_eq!(
        distinct[0]["n"].as_i64().unwrap(),
        total,
        "no offset is reused"
    );
}

/// Backfill with a changed rule (the seeds' batch ETL): the anomalies of the backfilled
/// day become exactly those a fresh run with the new rule finds in the same data; the
/// other day, the raw table and the clean rows stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_with_a_changed_rule_changes_exactly_that_range() {
    use pitwall_runtime::run_embedded;
    const DAY: i64 = 86_400_000_000_000;
    async fn run_at(config: pitwall_runtime::config::Config, start: i64) {
        let run = SimRun {
            start_time: start,
            sim_duration: Some(Duration::from_secs(180)),
            serve: None,
            hold_open: false,
            replay: None,
        };
        run_embedded(
            config,
            run,
            CancellationToken::new(),
            Arc::new(Stats::default()),
        )
        .await
        .expect("pipeline run");
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("lake");
    let mut cfg = config(&data, 1.0, 0.0);
    cfg.processor.idle_timeout = Duration::ZERO;
    run_at(cfg.clone(), START).await; // 2026-01-01
    run_at(cfg.clone(), START + 2 * DAY).await; // 2026-01-03

    // The same rules with engine_overheat from 120 °C down to 104 °C.
    let defaults =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pitwall.toml"))
            .unwrap();
    let at = defaults.find("name = \"engine_overheat\"").unwrap();
    let mut changed_text = defaults.clone();
    let above = at + defaults[at..].find("above = 120.0").unwrap();
    changed_text.replace_range(above..above + "above = 120.0".len(), "above = 104.0");
    let changed_file = dir.path().join("changed.toml");
    std::fs::write(&changed_file, &changed_text).unwrap();

    let anomalies = |data: std::path::PathBuf, day: i64| async move {
        let lake = Lake::open(LakeConfig::test_config(&data)).await.unwrap();
        let q = Query::new(&lake).await.unwrap();
        let lo = (START + day * DAY) / 1000;
        rows(
            &q,
            &format!(
                "SELECT rule, source_id, phase, CAST(\"time\" AS BIGINT) AS t, CAST(end_time AS BIGINT) AS e, observed, expected
                 FROM anomalies.events WHERE \"time\" >= to_timestamp_micros({lo}) AND \"time\" < to_timestamp_micros({})
                 ORDER BY rule, source_id, t, phase",
                lo + DAY / 1000
            ),
        )
        .await
    };
    let summary = |data: std::path::PathBuf| async move {
        let lake = Lake::open(LakeConfig::test_config(&data)).await.unwrap();
        let q = Query::new(&lake).await.unwrap();
        let mut out = Vec::new();
        for sql in [
            "SELECT count(*) AS n, sum(\"offset\") AS o FROM raw.events",
            "SELECT CAST(\"time\" AS DATE) AS d, count(*) AS n, round(sum(rpm), 3) AS s FROM clean.car GROUP BY 1 ORDER BY 1",
            "SELECT CAST(\"time\" AS DATE) AS d, count(*) AS n FROM clean.sensor GROUP BY 1 ORDER BY 1",
            "SELECT CAST(window_start AS DATE) AS d, \"window\", count(*) AS n, sum(\"count\") AS c, round(sum(\"sum\"), 3) AS s FROM metrics.windows GROUP BY 1, 2 ORDER BY 1, 2",
        ] {
            out.push(rows(&q, sql).await);
        }
        out
    };
    let day1_before = anomalies(data.clone(), 0).await;
    let day3_before = anomalies(data.clone(), 2).await;
    let tables_before = summary(data.clone()).await;
    assert!(
        !day1_before.is_empty() && !day3_before.is_empty(),
        "faults should raise anomalies on both days"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pitwall"))
        .args([
            "backfill",
            "--from",
            "2026-01-03",
            "--to",
            "2026-01-04",
            "--config",
        ])
        .arg(&changed_file)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("backfilled 2026-01-03 from "),
        "{stdout}"
    );
    assert!(stdout.contains("anomalies.events:"), "{stdout}");

    // What a run with the new rule from the start finds in the same day's data.
    let fresh = dir.path().join("fresh");
    let mut fresh_cfg = pitwall_runtime::config::Config::load(Some(&changed_file)).unwrap();
    fresh_cfg.lake = cfg.lake.clone();
    fresh_cfg.lake.data_dir = fresh.clone();
    fresh_cfg.sim = cfg.sim.clone();
    fresh_cfg.processor.idle_timeout = Duration::ZERO;
    run_at(fresh_cfg, START + 2 * DAY).await;
    let expected_day3 = anomalies(fresh.clone(), 2).await;

    let day3_after = anomalies(data.clone(), 2).await;
    assert_eq!(
        day3_after, expected_day3,
        "the backfilled day holds what the new rule finds"
    );
    assert_ne!(
        day3_after, day3_before,
        "the lower threshold must find more"
    );
    let overheat = |rows: &[Value]| {
        rows.iter()
            .filter(|r| r["rule"] == "engine_overheat")
            .count()
    };
    assert!(
        overheat(&day3_after) > overheat(&day3_before),
        "more engine_overheat episodes after the change"
    );
    assert_eq!(
        anomalies(data.clone(), 0).await,
        day1_before,
        "the other day is untouched"
    );
    assert_eq!(
        summary(data.clone()).await,
        tables_before,
        "raw, clean and window rows are the same data recomputed"
    );
}

/// A partition that goes quiet gets watermark ticks while other partitions keep the one
/// processing loop busy: the quiet source's windows close and reach the metrics topic
/// with no shutdown and no data of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_partition_is_ticked_while_another_stays_busy() {
    use bytes::Bytes;
    use pitwall_bus::{InProcessBus, partition_for};
    use pitwall_runtime::{bus_config, run_on_bus};

    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 0.0, 0.0);
    config.sim.race_enabled = false;
    config.sim.iot_enabled = false;
    config.processor.idle_timeout = Duration::from_millis(500);
    let bus = InProcessBus::new(bus_config(&config));
    let topics = bus.config().topics.clone();
    let partitions = bus.config().partitions;
    // Two drivers on different partitions.
    let drivers = ["VER", "HAM", "LEC", "NOR", "PIA", "RUS", "ALO", "SAI"];
    let busy = drivers[0];
    let quiet = *drivers
        .iter()
        .find(|d| {
            partition_for(d.as_bytes(), partitions) != partition_for(busy.as_bytes(), partitions)
        })
        .expect("two drivers on different partitions");
    let (fires_tx, mut fires) = tokio::sync::mpsc::unbounded_channel();
    for mut part in bus.subscribe(&topics.metrics).unwrap() {
        let fires_tx = fires_tx.clone();
        tokio::spawn(async move {
            while let Some(m) = part.recv().await {
                let _ = fires_tx.send(m.key);
            }
        });
    }
    let raw = bus.producer(&topics.raw).unwrap();
    let cancel = CancellationToken::new();
    let pipeline = tokio::spawn(run_on_bus(
        bus,
        config,
        SimRun {
            start_time: START,
            sim_duration: Some(Duration::ZERO),
            serve: None,
            hold_open: true,
            replay: None,
        },
        cancel.clone(),
        Arc::new(Stats::default()),
    ));
    let point = |driver: &str, time: i64| {
        Bytes::from(format!(
            r#"{{"measurement":"car","tags":{{"driver":"{driver}"}},"fields":{{"speed_kph":200.5}},"time":{time}}}"#
        ))
    };
    for i in 0..5 {
        let t = START + i * 100_000_000;
        raw.send(Some(Bytes::from(quiet)), point(quiet, t), t)
            .await
            .unwrap();
    }
    // The busy driver sends every millisecond or so (the loop never waits long enough
    // for its own idle check), its event time following the wall clock, until
    // the quiet driver's window is seen (or 30 s pass).
    let started = std::time::Instant::now();
    let mut quiet_fired = false;
    let mut busy_fired = false;
    while !quiet_fired && started.elapsed() < Duration::from_secs(30) {
        let t = START + i64::try_from(started.elapsed().as_nanos()).unwrap();
        raw.send(Some(Bytes::from(busy)), point(busy, t), t)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        while let Ok(key) = fires.try_recv() {
            let key = key.unwrap_or_default();
            quiet_fired |= key == quiet.as_bytes();
            busy_fired |= key == busy.as_bytes();
        }
    }
    let waited = started.elapsed();
    cancel.cancel();
    pipeline.await.unwrap().unwrap();
    assert!(
        quiet_fired,
        "{quiet}'s windows never closed in {waited:?} while {busy} kept its own partition busy"
    );
    assert!(busy_fired, "{busy}'s windows close on its own data");
}
