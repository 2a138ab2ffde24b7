//! `pitwall replay` sends files to the raw topic and bad lines to the DLQ with their
//! reason; `pitwall ingest` sends the simulators' telemetry; `pitwall serve` sends what
//! is written to it over HTTP. Replay and ingest run the real binary against librdkafka's
//! mock cluster (real TCP on loopback), a quick check; serve runs against tansu, as the
//! pipeline tests with `pitwall process` do.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use pitwall_bus::kafka::{KafkaConfig, KafkaConsumer};
use rdkafka::mocking::MockCluster;

const CSV: &str = "\
,Date,SessionTime,Time,RPM,Speed,nGear,Throttle,Brake,DRS,Source
0,2023-03-05 15:03:52.466,0 days 01:02:35.201000,0 days 00:00:00.061000,10115.0,0.0,1,16.0,False,1,car
1,2023-03-05 15:03:52.706,0 days 01:02:35.441000,0 days 00:00:00.301000,10833.0,12.0,1,22.0,True,12,car
2,2023-03-05 15:03:52.8,0 days 01:02:35.535000,0 days 00:00:00.395000,11002.0,14.0,x,28.0,False,1,car
";
const JSONL: &str = r#"{"measurement":"sensor","tags":{"sensor_id":"s-1","site":"a"},"fields":{"temperature_c":21.5},"time":1767225600000000000}
{"measurement":"sensor","tags":{"sensor_id":"s-2","site":"a"},"fields":{"temperature_c":"#;
const LP: &str = "\
machine,host=press-7 temp=81.5,rpm=1200i 1767225600000000000
machine,host=press-7 temp=oops 1767225601000000000
machine,host=press-8 temp=79.0,rpm=1180i 1767225602000000000
";

async fn drain(config: &KafkaConfig, topic: &str, n: usize) -> Vec<pitwall_bus::Message> {
    // A group per topic: a second member of one group would wait for a rebalance.
    let config = KafkaConfig {
        group_id: format!("replay-test-{topic}"),
        ..config.clone()
    };
    let c = KafkaConsumer::subscribe(&config, &[topic]).unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        out.push(
            tokio::time::timeout(Duration::from_secs(20), c.recv())
                .await
                .expect("message")
                .unwrap(),
        );
    }
    // Nothing more arrives.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), c.recv())
            .await
            .is_err(),
        "more than {n} messages on {topic}"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_sends_good_lines_and_dead_letters_bad_ones() {
    let cluster = MockCluster::new(1).unwrap();
    // The mock cluster has no CreateTopics; replay must then use topics that exist.
    cluster.create_topic("telemetry.raw", 3, 1).unwrap();
    cluster.create_topic("telemetry.dlq", 1, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("in");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(files.join("VER_car_data.csv"), CSV).unwrap();
    std::fs::write(files.join("sensors.jsonl"), JSONL).unwrap();
    std::fs::write(files.join("factory.lp"), LP).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pitwall"))
        .args(["replay", "--brokers", &cluster.bootstrap_servers()])
        .arg(&files)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("replayed 3 files: 5 events sent, 3 lines rejected"),
        "{stderr}"
    );
    assert!(
        stderr.contains("column nGear: expected a number, found \"x\""),
        "{stderr}"
    );

    let config = KafkaConfig {
        brokers: cluster.bootstrap_servers(),
        group_id: "replay-test".into(),
        ..KafkaConfig::default()
    };
    let raw = drain(&config, "telemetry.raw", 5).await;
    let mut keys: BTreeMap<String, usize> = BTreeMap::new();
    for m in &raw {
        let key = String::from_utf8(m.key.clone().unwrap().to_vec()).unwrap();
        *keys.entry(key).or_default() += 1;
        let p = pitwall_core::json::decode(&m.payload, 0, pitwall_core::Precision::S).unwrap();
        assert!(p.time >= 1_678_028_632_466_000_000);
    }
    assert_eq!(
        keys,
        BTreeMap::from([
            ("VER".into(), 2),
            ("press-7".into(), 1),
            ("press-8".into(), 1),
            ("s-1".into(), 1)
        ])
    );

    let dlq = drain(&config, "telemetry.dlq", 3).await;
    let reasons: Vec<serde_json::Value> = dlq
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    let find = |file: &str| {
        reasons
            .iter()
            .find(|r| r["file"].as_str().unwrap().ends_with(file))
            .unwrap()
    };
    assert_eq!(find("factory.lp")["line"], 2);
    assert!(
        find("factory.lp")["reason"]
            .as_str()
            .unwrap()
            .starts_with("line 2, column 27: field \"temp\"")
    );
    assert_eq!(
        find("factory.lp")["payload"],
        "machine,host=press-7 temp=oops 1767225601000000000"
    );
    assert_eq!(find("VER_car_data.csv")["line"], 4);
    assert_eq!(find("sensors.jsonl")["line"], 2);
}

/// `pitwall ingest` sends the simulators' telemetry to the raw topic, keyed by source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_sends_every_simulated_event_keyed_by_source() {
    let cluster = MockCluster::new(1).unwrap();
    for t in ["raw", "clean", "metrics", "anomalies", "dlq", "late"] {
        cluster
            .create_topic(&format!("telemetry.{t}"), 3, 1)
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pitwall"))
        .args([
            "ingest",
            "--speed",
            "0",
            "--sim-duration",
            "10s",
            "--brokers",
            &cluster.bootstrap_servers(),
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // 20 cars at 10 Hz and 20 sensors at 1 Hz for 10 simulated seconds.
    assert!(stderr.contains("ingest: sent 2200 events"), "{stderr}");
    let config = KafkaConfig {
        brokers: cluster.bootstrap_servers(),
        ..KafkaConfig::default()
    };
    let raw = drain(&config, "telemetry.raw", 2200).await;
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for m in &raw {
        let key = String::from_utf8(m.key.clone().unwrap().to_vec()).unwrap();
        assert_eq!(
            m.partition,
            pitwall_bus::partition_for(key.as_bytes(), 3),
            "{key}"
        );
        *per_key.entry(key).or_default() += 1;
    }
    assert_eq!(per_key.len(), 40, "20 drivers and 20 sensors");
    assert_eq!(per_key["VER"], 100);
    assert_eq!(per_key["sensor-000"], 10);
}

/// `pitwall serve` in front of Kafka (a real Kafka-API broker, tansu, which it creates
/// the topics on): a line-protocol write is on the raw topic, keyed by source, when the
/// answer comes; a bad line is named and the good one still sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_puts_written_points_on_the_raw_topic_before_answering() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::Broker::start(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_pitwall"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--pg-listen",
            "127.0.0.1:0",
            "--brokers",
            &broker.addr,
        ])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (url, _stderr, _) = common::write_api_url(&mut child);
    let r = reqwest::Client::new()
        .post(format!("{url}/write?db=telegraf&precision=ms"))
        .body("machine,host=press-7 temp=81.5 1767225600000\nmachine,host=press-8 temp=oops 1767225600000\nmachine,host=press-9 temp=79.0 1767225600001\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(
        (v["line"].as_u64(), v["accepted"].as_u64()),
        (Some(2), Some(2)),
        "{v}"
    );
    let config = KafkaConfig {
        brokers: broker.addr.clone(),
        ..KafkaConfig::default()
    };
    // The live feed follows the output topics: an anomaly put on telemetry.anomalies
    // (as `pitwall process` does) reaches an SSE client.
    let mut live = reqwest::Client::new()
        .get(format!("{url}/api/v1/live?stream=anomalies&source=press-7"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let anomaly = r#"{"id":"hot:press-7:1","rule":"hot","measurement":"machine","source_id":"press-7","phase":"start","time":1}"#;
    let producer = pitwall_bus::kafka::KafkaProducer::new(
        &KafkaConfig {
            brokers: broker.addr.clone(),
            ..KafkaConfig::default()
        },
        "telemetry.anomalies",
    )
    .unwrap();
    let mut got = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // The live consumers join their groups from the topic's end: send until one arrives.
    while !got.contains("hot:press-7:1") {
        producer
            .send(Some(b"press-7"), anomaly.as_bytes(), 1)
            .await
            .unwrap();
        while let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_millis(500), live.chunk()).await
        {
            got.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no anomaly on the live feed after 60 s: {got}"
        );
    }
    assert!(got.contains("event: anomalies"), "{got}");

    let raw = drain(&config, "telemetry.raw", 2).await;
    let mut keys: Vec<String> = raw
        .iter()
        .map(|m| String::from_utf8(m.key.clone().unwrap().to_vec()).unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys, ["press-7", "press-9"]);
    for m in &raw {
        let key = m.key.as_deref().unwrap();
        assert_eq!(
            m.partition,
            pitwall_bus::partition_for(key, 3),
            "placed by the Java client's murmur2"
        );
        let p = pitwall_core::json::decode(&m.payload, 0, pitwall_core::Precision::Ns).unwrap();
        assert_eq!(p.measurement, "machine");
    }
    let _ = child.kill();
    let _ = child.wait();
}
