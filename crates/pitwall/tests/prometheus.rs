//! `/metrics` scraped by a real Prometheus (Debian's package; scripts/test.sh installs
//! it) started on loopback: the series pitwall exposes are queried back through
//! Prometheus's own HTTP API.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{Up, program};
use pitwall_testkit::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_pitwall_up() {
    let prometheus = program("PITWALL_PROMETHEUS", "/usr/bin/prometheus", "prometheus");
    let dir = tempfile::tempdir().unwrap();
    let pitwall = Up::start(&["--speed", "5"], &dir.path().join("lake"));
    let target = pitwall.url.trim_start_matches("http://");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pitwall\n    static_configs:\n      - targets: ['{target}']\n"),
    )
    .unwrap();
    let port = free_port();
    let mut prom = Command::new(&prometheus)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let query = |q: &str| {
        let req = client
            .get(format!("http://127.0.0.1:{port}/api/v1/query"))
            .query(&[("query", q)]);
        async move {
            let v: serde_json::Value = req.send().await.ok()?.json().await.ok()?;
            let value = v["data"]["result"][0]["value"][1]
                .as_str()?
                .parse::<f64>()
                .ok()?;
            Some(value)
        }
    };
    // Each series, queried back from Prometheus once it has a value above zero.
    let wanted = [
        r#"pitwall_events_in_total{job="pitwall",stage="process"}"#,
        r#"sum(pitwall_events_out_total{stream="clean"})"#,
        r#"sum(pitwall_lake_rows_total)"#,
        r#"sum(pitwall_lake_bytes_total{table="clean.car"})"#,
        r#"pitwall_lake_commit_seconds_count"#,
        r#"sum(pitwall_http_requests_total{route="/metrics",status="200"})"#,
        r#"count(pitwall_watermark_lag_seconds)"#,
        r#"count(pitwall_consumer_lag_messages)"#,
        r#"rate(pitwall_events_in_total{stage="process"}[5s])"#,
    ];
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut found = Vec::new();
    for q in wanted {
        loop {
            if let Some(v) = query(q).await.filter(|v| *v > 0.0) {
                found.push(format!("{q} = {v}"));
                break;
            }
            if Instant::now() > deadline {
                Command::new("kill")
                    .arg(prom.id().to_string())
                    .status()
                    .ok();
                let mut err = String::new();
                std::io::Read::read_to_string(prom.stderr.as_mut().unwrap(), &mut err).ok();
                panic!(
                    "Prometheus has no {q} > 0 after 90 s; found so far: {found:#?}\nPrometheus said:\n{err}"
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    eprintln!("{}", found.join("\n"));
    // The partition gauges carry their partition.
    let per_partition = query(r#"count(pitwall_watermark_lag_seconds{partition=~"0|1|2"})"#).await;
    assert_eq!(per_partition, Some(3.0));

    // Every query of the shipped Grafana dashboard is valid PromQL and, but for rejects
    // (none in a clean run), has data.
    let grafana: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/grafana/pitwall.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in grafana["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().replace("$job", ".*");
            // Rates need a few scrapes: wait for data a while.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let v: serde_json::Value = client
                    .get(format!("http://127.0.0.1:{port}/api/v1/query"))
                    .query(&[("query", expr.as_str())])
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_eq!(v["status"], "success", "{}: {expr}: {v}", panel["title"]);
                let empty = v["data"]["result"].as_array().unwrap().is_empty();
                if !empty || expr.contains("rejects") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{}: {expr} has no data",
                    panel["title"]
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            checked += 1;
        }
    }
    assert!(checked >= 10);
    Command::new("kill")
        .arg(prom.id().to_string())
        .status()
        .unwrap();
    prom.wait().unwrap();
    let (status, log) = pitwall.stop();
    assert!(status.success(), "pitwall up failed:\n{log}");
}
