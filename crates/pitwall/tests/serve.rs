//! The write API in the real binary: `pitwall up` takes what Telegraf's influxdb_v2
//! output sends (gzip line protocol, token, its headers) over HTTP, and after Ctrl-C the
//! points are in the lake: raw, clean, windows; a bad line is named and the rest kept.

use std::io::Write;
use std::time::Duration;

use pitwall_lake::{Lake, LakeConfig};
use pitwall_query::Query;

mod common;
use common::{Up, count, rows};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegraf_writes_to_pitwall_up_land_in_the_lake() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("lake");
    // No simulators: only what is written over HTTP.
    let config = dir.path().join("pitwall.toml");
    std::fs::write(
        &config,
        "[sim]\nrace-enabled = false\niot-enabled = false\n\n[server]\ntokens = [\"t0ken\"]\n",
    )
    .unwrap();
    let up = Up::start(
        &[
            "--status-interval",
            "1s",
            "--config",
            config.to_str().unwrap(),
        ],
        &data,
    );
    let url = up.url.clone();

    // 10 sensors, 1 Hz, 60 s: 600 points in batches of 100, as Telegraf flushes them.
    const T0: i64 = 1_767_225_600_000_000_000;
    let client = reqwest::Client::new();
    for batch in 0..6 {
        let mut lp = String::new();
        for i in batch * 10..(batch + 1) * 10 {
            for s in 0..10 {
                lp.push_str(&format!(
                    "sensor,sensor_id=s-{s},site=plant-a temperature_c={},pressure_hpa={} {}\n",
                    20.0 + (i % 7) as f64 * 0.1 + s as f64,
                    1010.0 + (i % 5) as f64 * 0.1,
                    T0 + i as i64 * 1_000_000_000
                ));
            }
        }
        let r = client
            .post(format!(
                "{url}/api/v2/write?bucket=telegraf&org=pitwall&precision=ns"
            ))
            .header("Authorization", "Token t0ken")
            .header("Content-Type", "text/plain; charset=utf-8")
            .header("Content-Encoding", "gzip")
            .header("User-Agent", "Telegraf/1.32.0 Go/1.23.2")
            .body(gzip(lp.as_bytes()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    }
    // A body with one bad line: 400 naming it, the other line kept.
    let r = client
        .post(format!("{url}/api/v2/write"))
        .header("Authorization", "Bearer t0ken")
        .body(format!("sensor,sensor_id=s-0 temperature_c=oops {T0}\nsensor,sensor_id=s-99 temperature_c=1.5 {}\n", T0 + 59_000_000_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json_or_text().await;
    assert_eq!(
        (body["line"].as_u64(), body["accepted"].as_u64()),
        (Some(1), Some(1)),
        "{body}"
    );
    // Without the token: 401, nothing lands.
    let r = client
        .post(format!("{url}/api/v2/write"))
        .body(format!("sensor,sensor_id=s-0 temperature_c=1 {T0}\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    std::thread::sleep(Duration::from_millis(500));
    let (status, log) = up.stop();
    eprintln!("{log}");
    assert!(status.success(), "pitwall up failed:\n{log}");

    let lake = Lake::open(LakeConfig::test_config(&data)).await.unwrap();
    let q = Query::new(&lake).await.unwrap();
    assert_eq!(count(&q, "raw.events").await, 601, "{log}");
    assert_eq!(count(&q, "clean.sensor").await, 601);
    let per_sensor = rows(&q, "SELECT sensor_id, count(*) AS n, min(temperature_c) AS lo FROM clean.sensor GROUP BY sensor_id ORDER BY sensor_id").await;
    assert_eq!(per_sensor.len(), 11);
    assert_eq!(
        per_sensor[0],
        serde_json::json!({"sensor_id": "s-0", "n": 60, "lo": 20.0})
    );
    // The sensor windows (10 s tumbling) cover them: six per sensor.
    let windows = rows(&q, "SELECT count(*) AS n FROM metrics.windows WHERE \"window\" = 'sensor_10s' AND source_id = 's-3'").await;
    assert_eq!(windows[0]["n"], 6);
}

trait JsonOrText {
    async fn json_or_text(self) -> serde_json::Value;
}

impl JsonOrText for reqwest::Response {
    async fn json_or_text(self) -> serde_json::Value {
        let bytes = self.bytes().await.unwrap();
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
        })
    }
}

/// The SQL API of `pitwall up`: JSON rows, CSV and Arrow IPC; the row limit says when it
/// cut; DDL, DML and SET are refused in words; bad SQL is 400; a query past the time
/// limit is stopped with 408; a token is needed like for writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_api_answers_read_only_within_limits() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pitwall.toml");
    std::fs::write(
        &config,
        "[sim]\nrace-enabled = false\niot-enabled = false\n\n[server]\ntokens = [\"t0ken\"]\nquery-max-rows = 100\nquery-timeout = \"2s\"\n",
    )
    .unwrap();
    let up = Up::start(
        &["--config", config.to_str().unwrap()],
        &dir.path().join("lake"),
    );
    let url = up.url.clone();
    let client = reqwest::Client::new();
    let auth = ("Authorization", "Token t0ken");
    const T0: i64 = 1_767_225_600_000_000_000;
    let lp: String = (0..600)
        .map(|i| {
            format!(
                "sensor,sensor_id=s-{},site=plant-a temperature_c={} {}\n",
                i % 10,
                20 + i % 7,
                T0 + (i / 10) * 1_000_000_000
            )
        })
        .collect();
    let r = client
        .post(format!("{url}/api/v2/write"))
        .header(auth.0, auth.1)
        .body(lp)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    let query = |sql: &str, format: Option<&str>, accept: Option<&str>| {
        let mut req = client
            .post(format!("{url}/api/v1/query"))
            .header(auth.0, auth.1);
        if let Some(f) = format {
            req = req.query(&[("format", f)]);
        }
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        req.body(sql.to_owned()).send()
    };
    let per_sensor =
        "SELECT sensor_id, count(*) AS n FROM clean.sensor GROUP BY sensor_id ORDER BY sensor_id";
    // The lake commits every few seconds: wait until every point is there.
    let mut answer = serde_json::Value::Null;
    for _ in 0..120 {
        let r = query(per_sensor, None, None).await.unwrap();
        if r.status() == 200 {
            answer = r.json().await.unwrap();
            if answer["rows"]
                .as_array()
                .is_some_and(|rows| rows.len() == 10 && rows.iter().all(|r| r["n"] == 60))
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        answer["rows"][0],
        serde_json::json!({"sensor_id": "s-0", "n": 60}),
        "{answer}"
    );
    assert_eq!(
        answer["columns"][1],
        serde_json::json!({"name": "n", "type": "Int64"})
    );
    assert_eq!(
        (answer["row_count"].as_u64(), answer["truncated"].as_bool()),
        (Some(10), Some(false))
    );

    // CSV by Accept header; JSON body with a format.
    let csv = query(per_sensor, None, Some("text/csv"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        csv.lines().take(2).collect::<Vec<_>>(),
        ["sensor_id,n", "s-0,60"]
    );
    let r = client
        .post(format!("{url}/api/v1/query"))
        .header(auth.0, auth.1)
        .json(&serde_json::json!({"sql": per_sensor, "format": "csv"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), csv);

    // Arrow IPC stream, read back with arrow's own reader.
    let r = query(per_sensor, Some("arrow"), None).await.unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.apache.arrow.stream"
    );
    let bytes = r.bytes().await.unwrap();
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes.to_vec()), None)
            .unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 10);
    assert_eq!(batches[0].schema().field(0).name(), "sensor_id");

    // The row limit: 100 of 600, and the answer says so.
    let r = query("SELECT * FROM clean.sensor", None, None)
        .await
        .unwrap();
    assert_eq!(r.headers()["x-pitwall-truncated"], "true");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (v["row_count"].as_u64(), v["truncated"].as_bool()),
        (Some(100), Some(true))
    );
    assert_eq!(v["rows"].as_array().unwrap().len(), 100);

    // Read-only.
    for sql in [
        "INSERT INTO clean.sensor (time, sensor_id) VALUES (now(), 'x')",
        "CREATE TABLE t AS SELECT 1",
        "DROP TABLE clean.sensor",
        "COPY (SELECT 1) TO 'copied.csv'",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let r = query(sql, None, None).await.unwrap();
        assert_eq!(r.status(), 403, "{sql}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("only reading is allowed"),
            "{sql}: {v}"
        );
    }
    assert!(
        !dir.path().join("copied.csv").exists() && !std::path::Path::new("copied.csv").exists()
    );
    let r = query("SELEC 1", None, None).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = query("SELECT nope FROM clean.sensor", None, None)
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("nope"));

    // The time limit stops a query that would run for minutes.
    let started = std::time::Instant::now();
    let r = query("SELECT count(*) FROM range(100000000000)", None, None)
        .await
        .unwrap();
    assert_eq!(r.status(), 408);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "stopped at the 2 s limit, not at the end"
    );
    assert!(r.text().await.unwrap().contains("time limit of 2s"));

    // The server still answers, and a query without the token is refused.
    let r = client
        .post(format!("{url}/api/v1/query"))
        .body("SELECT 1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        query("SELECT 1 AS one", None, None).await.unwrap().status(),
        200
    );

    let (status, log) = up.stop();
    assert!(status.success(), "pitwall up failed:\n{log}");
}

/// A field that appears later becomes a column (Iceberg add-column) that queries see,
/// with nulls in the rows written before it; a field whose type conflicts with its
/// column is refused at once (400 with the reason: the write API asks the processors'
/// schema registry), and the rest of the point's batch is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_fields_evolve_the_table_and_conflicting_types_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("lake");
    let config = dir.path().join("pitwall.toml");
    std::fs::write(
        &config,
        "[sim]\nrace-enabled = false\niot-enabled = false\n\n[lake]\ncommit-interval = \"100ms\"\n",
    )
    .unwrap();
    let up = Up::start(&["--config", config.to_str().unwrap()], &data);
    let client = reqwest::Client::new();
    const T0: i64 = 1_767_225_600;
    let write_answer = |body: String| {
        let (client, url) = (client.clone(), up.url.clone());
        async move {
            let r = client
                .post(format!("{url}/api/v2/write?precision=s"))
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let write = |body: String| {
        let answer = write_answer(body);
        async move { answer.await.0 }
    };
    let sql = |q: &'static str| {
        let (client, url) = (client.clone(), up.url.clone());
        async move {
            let v: serde_json::Value = client
                .post(format!("{url}/api/v1/query"))
                .body(q)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v
        }
    };
    assert_eq!(
        write(format!("press,host=p1 temp=81.5,cycles=10i {T0}\n")).await,
        204
    );
    // Wait until it is committed, so the next field arrives in a later commit.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sql("SELECT count(*) AS n FROM clean.press").await["rows"][0]["n"] != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first point never landed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        write(format!(
            "press,host=p1 temp=82.0,cycles=11i,vibration_mm_s=0.7 {}\n",
            T0 + 1
        ))
        .await,
        204
    );
    let (status, answer) = write_answer(format!(
        "press,host=p1 temp=\"hot\",cycles=12i {}\n",
        T0 + 2
    ))
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("\\\"temp\\\"") && answer.contains("string") && answer.contains("float"),
        "{answer}"
    );
    assert_eq!(
        write(format!("press,host=p1 temp=83.0,cycles=13.0 {}\n", T0 + 3)).await,
        204
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = sql("SELECT count(*) AS n FROM clean.press").await;
        if v["rows"][0]["n"] == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the later points never landed: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let v = sql("SELECT temp, cycles, vibration_mm_s FROM clean.press ORDER BY time").await;
    assert_eq!(
        v["rows"],
        serde_json::json!([
            {"temp": 81.5, "cycles": 10, "vibration_mm_s": null},
            {"temp": 82.0, "cycles": 11, "vibration_mm_s": 0.7},
            {"temp": 83.0, "cycles": 13, "vibration_mm_s": null}
        ]),
        "{v}"
    );
    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
    let lake = Lake::open(LakeConfig::test_config(&data)).await.unwrap();
    let q = Query::new(&lake).await.unwrap();
    // Refused before it was taken: nothing to quarantine.
    let rejects = rows(&q, "SELECT count(*) AS n FROM quarantine.rejects").await;
    assert!(rejects.is_empty() || rejects[0]["n"] == 0, "{rejects:?}");
    let table = lake
        .table(&pitwall_lake::tables::clean_ident("press"))
        .await
        .unwrap();
    assert!(
        table
            .metadata()
            .current_schema()
            .field_by_name("vibration_mm_s")
            .is_some()
    );
}

/// Ctrl-C with a dashboard open: the live feed's connection is ended with the server
/// (it kept `pitwall up` running until the browser closed, 46 s after Ctrl-C), and the
/// browser sees the stream end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_ends_open_live_feeds() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(&["--status-interval", "1s"], &dir.path().join("lake"));
    let mut feeds = Vec::new();
    for _ in 0..3 {
        let r = reqwest::Client::new()
            .get(format!("{}/api/v1/live", up.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        feeds.push(r);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = std::time::Instant::now();
    let stop = tokio::task::spawn_blocking(move || up.stop());
    // Each feed ends (its body finishes or breaks) instead of hanging on.
    for mut f in feeds {
        let ended = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(_)) = f.chunk().await {}
        })
        .await;
        assert!(
            ended.is_ok(),
            "a live feed was still open 20 s after Ctrl-C"
        );
    }
    let (status, log) = stop.await.unwrap();
    let took = started.elapsed();
    assert!(status.success(), "{log}");
    assert!(
        took < Duration::from_secs(20),
        "Ctrl-C took {took:?} with live feeds open"
    );
    eprintln!("pitwall up stopped {took:?} after Ctrl-C with 3 live feeds open");
}

/// Telegraf re-sends a batch after a timeout: the same batch sent three times gives the
/// clean rows and window aggregates of one send; the copies stay in `raw.events` and
/// are counted as duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_three_times_lands_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("lake");
    let config = dir.path().join("pitwall.toml");
    std::fs::write(
        &config,
        "[sim]\nrace-enabled = false\niot-enabled = false\n",
    )
    .unwrap();
    let up = Up::start(
        &[
            "--status-interval",
            "1s",
            "--config",
            config.to_str().unwrap(),
        ],
        &data,
    );
    let mut metrics = Vec::new();
    for i in 0..30 {
        metrics.push(format!(
            r#"{{"name":"sensor","tags":{{"sensor_id":"s-{}","site":"plant-a"}},"fields":{{"temperature_c":{}.5}},"timestamp":{}}}"#,
            i % 3,
            20 + i % 4,
            1_767_225_600 + i / 3
        ));
    }
    let body = format!(r#"{{"metrics":[{}]}}"#, metrics.join(","));
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let r = client
            .post(format!("{}/api/v1/telegraf", up.url))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("| 60 duplicates"),
        "the status line counts the copies:\n{log}"
    );
    let lake = Lake::open(LakeConfig::test_config(&data)).await.unwrap();
    let q = Query::new(&lake).await.unwrap();
    let n = |sql: &'static str| {
        let q = &q;
        async move { rows(q, sql).await[0]["n"].as_i64().unwrap() }
    };
    assert_eq!(n("SELECT count(*) AS n FROM clean.sensor").await, 30);
    assert_eq!(
        n("SELECT count(*) AS n FROM raw.events").await,
        90,
        "every copy as received"
    );
    assert_eq!(
        n("SELECT CAST(sum(count) AS BIGINT) AS n FROM metrics.windows WHERE \"window\" = 'sensor_10s' AND field = 'temperature_c'").await,
        30
    );
}
