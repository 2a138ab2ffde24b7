//! The HTTP API over real HTTP on loopback. Write API: what Telegraf's influxdb_v2,
//! influxdb and http (JSON) outputs send lands as raw messages keyed by source; bad lines
//! are named and the rest accepted; tokens, body limits and a full pipeline get their
//! status codes. The sink here records what it is given (the pipeline tests publish to
//! the real bus). Live feed: filters, per-series downsampling, reconnects with
//! Last-Event-ID. Metrics: requests by route and status. (The query API needs a lake:
//! its tests run the real binary, in crates/pitwall/tests/serve.rs.)

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pitwall_core::{FieldValue, json};
use pitwall_server::{
    Bound, LiveHub, RawMessage, ServerConfig, Services, Sink, SinkError, SinkFuture, WriteStats,
    router,
};
use pitwall_stream::ProcessorConfig;

#[derive(Default)]
struct Recorder {
    got: Mutex<Vec<RawMessage>>,
    full: bool,
}

impl Sink for Recorder {
    fn publish(&self, messages: Vec<RawMessage>) -> SinkFuture<'_> {
        Box::pin(async move {
            if self.full {
                return Err(SinkError::Full);
            }
            self.got.lock().unwrap().extend(messages);
            Ok(())
        })
    }
}

struct Server {
    url: String,
    sink: Arc<Recorder>,
    live: LiveHub,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start(config: ServerConfig, full: bool) -> Server {
    let sink = Arc::new(Recorder {
        full,
        ..Recorder::default()
    });
    let config = ServerConfig {
        listen: "127.0.0.1:0".into(),
        ..config
    };
    let live = LiveHub::new(64);
    let services = Services {
        sink: Arc::clone(&sink) as Arc<dyn Sink>,
        processor: Arc::new(ProcessorConfig::default()),
        stats: Arc::new(WriteStats::default()),
        lake: None,
        schemas: Some({
            let r = pitwall_stream::SchemaRegistry::default();
            r.seed(
                "car",
                [("speed_kph".to_owned(), pitwall_stream::FieldType::Float)],
            );
            r
        }),
        live: live.clone(),
        health: pitwall_server::Health::default(),
    };
    let r = router(&config, services).unwrap();
    let bound = Bound::bind(&config, r).await.unwrap();
    let url = format!("http://{}", bound.local_addr());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(bound.run(async move {
        let _ = rx.await;
    }));
    Server {
        url,
        sink,
        live,
        stop: Some(tx),
    }
}

/// The event time in a raw message's payload.
fn event_time(m: &RawMessage) -> i64 {
    json::decode(&m.payload, 0, pitwall_core::Precision::Ns)
        .unwrap()
        .time
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

async fn json_body(r: reqwest::Response) -> serde_json::Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

/// Exactly what Telegraf 1.x's outputs.influxdb_v2 sends (content_encoding = "gzip",
/// the default): a gzip batch of line protocol with nanosecond timestamps, its headers.
#[tokio::test]
async fn telegrafs_influxdb_v2_output_lands_keyed_by_source() {
    let s = start(
        ServerConfig {
            tokens: vec!["s3cret".into()],
            ..ServerConfig::default()
        },
        false,
    )
    .await;
    let mut lp = String::new();
    for i in 0..5000 {
        lp.push_str(&format!(
            "sensor,host=telegraf-1,sensor_id=s-{},site=plant-a temperature_c={}.5,humidity_pct=41i,ok=true {}\n",
            i % 7,
            20 + i % 5,
            1_767_225_600_000_000_000i64 + i * 1_000_000
        ));
    }
    let r = reqwest::Client::new()
        .post(format!(
            "{}/api/v2/write?bucket=telegraf&org=pitwall&precision=ns",
            s.url
        ))
        .header("Authorization", "Token s3cret")
        .header("Content-Type", "text/plain; charset=utf-8")
        .header("Content-Encoding", "gzip")
        .header("User-Agent", "Telegraf/1.32.0 Go/1.23.2")
        .body(gzip(lp.as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let got = s.sink.got.lock().unwrap();
    assert_eq!(got.len(), 5000);
    let m = &got[8];
    assert_eq!(
        m.key.as_deref(),
        Some(&b"s-1"[..]),
        "keyed by the sensor's source tag"
    );
    let p = json::decode(&m.payload, 0, pitwall_core::Precision::Ns).unwrap();
    assert_eq!(p.measurement, "sensor");
    assert_eq!(p.time, 1_767_225_600_008_000_000);
    assert_eq!(p.fields["temperature_c"], FieldValue::F64(23.5));
    assert_eq!(p.fields["humidity_pct"], FieldValue::I64(41));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    assert!(
        (now - 60_000_000_000..=now).contains(&m.time),
        "the message is stamped with its receipt time"
    );
}

/// InfluxDB v1 (`/write`, Telegraf's outputs.influxdb) with a precision, and Basic auth
/// carrying the token as the password.
#[tokio::test]
async fn v1_writes_take_their_precision_and_basic_auth() {
    let s = start(
        ServerConfig {
            tokens: vec!["a".into(), "b".into()],
            ..ServerConfig::default()
        },
        false,
    )
    .await;
    let r = reqwest::Client::new()
        .post(format!("{}/write?db=telegraf&precision=s", s.url))
        .basic_auth("telegraf", Some("b"))
        .body("machine,host=press-7 temp=81.5 1767225600\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let got = s.sink.got.lock().unwrap();
    assert_eq!(event_time(&got[0]), 1_767_225_600_000_000_000);
    assert_eq!(
        got[0].key.as_deref(),
        Some(&b"press-7"[..]),
        "measurements without a source tag use host"
    );
}

#[tokio::test]
async fn bad_lines_are_named_and_the_good_ones_still_land() {
    let s = start(ServerConfig::default(), false).await;
    let body = "m,host=a v=1 1767225600000000000\nm,host=a v= 1767225600000000001\nm,host=b v=2 1767225600000000002\n";
    let r = reqwest::Client::new()
        .post(format!("{}/api/v2/write", s.url))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v = json_body(r).await;
    assert_eq!(v["accepted"], 2);
    assert_eq!(v["line"], 2);
    assert_eq!(v["rejected"][0]["line"], 2);
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.starts_with("partial write: 1 lines rejected, the other 2 accepted; first, line 2"),
        "{msg}"
    );
    assert_eq!(s.sink.got.lock().unwrap().len(), 2);

    let r = reqwest::Client::new()
        .post(format!("{}/api/v2/write?precision=d", s.url))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        json_body(r).await["message"],
        "precision \"d\" is not one of ns, us, ms, s, m, h"
    );
}

#[tokio::test]
async fn tokens_are_required_once_set() {
    let s = start(
        ServerConfig {
            tokens: vec!["right".into()],
            ..ServerConfig::default()
        },
        false,
    )
    .await;
    let c = reqwest::Client::new();
    let url = format!("{}/api/v2/write", s.url);
    let line = "m,host=a v=1\n";
    assert_eq!(c.post(&url).body(line).send().await.unwrap().status(), 401);
    let r = c
        .post(&url)
        .header("Authorization", "Token wrong")
        .body(line)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(json_body(r).await["message"], "the token is not valid");
    assert_eq!(
        c.post(&url)
            .header("Authorization", "Bearer right")
            .body(line)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        s.sink.got.lock().unwrap().len(),
        1,
        "only the authorized write landed"
    );
    // Liveness needs no token.
    assert_eq!(
        c.get(format!("{}/ping", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
}

#[tokio::test]
async fn oversized_bodies_are_413_and_a_full_pipeline_is_503() {
    let s = start(
        ServerConfig {
            max_body_bytes: 1024,
            ..ServerConfig::default()
        },
        false,
    )
    .await;
    let c = reqwest::Client::new();
    let big = "m,host=a v=1\n".repeat(200);
    let r = c
        .post(format!("{}/api/v2/write", s.url))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Small compressed, too big once decompressed.
    let r = c
        .post(format!("{}/api/v2/write", s.url))
        .header("Content-Encoding", "gzip")
        .body(gzip(big.as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(
        json_body(r).await["message"]
            .as_str()
            .unwrap()
            .contains("once decompressed")
    );
    assert!(s.sink.got.lock().unwrap().is_empty());

    let full = start(
        ServerConfig {
            publish_timeout: Duration::from_millis(200),
            ..ServerConfig::default()
        },
        true,
    )
    .await;
    let r = c
        .post(format!("{}/api/v2/write", full.url))
        .body("m,host=a v=1\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
}

/// Telegraf's outputs.http with data_format = "json": one metric, or a batch.
#[tokio::test]
async fn telegraf_json_single_and_batched() {
    let s = start(ServerConfig::default(), false).await;
    let c = reqwest::Client::new();
    let one = r#"{"fields":{"usage_idle":91.5},"name":"cpu","tags":{"cpu":"cpu0","host":"edge-1"},"timestamp":1767225600}"#;
    let r = c
        .post(format!("{}/api/v1/telegraf", s.url))
        .body(one)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let batch = format!(r#"{{"metrics":[{one},{one},{{"name":"cpu","fields":"oops"}}]}}"#);
    let r = c
        .post(format!("{}/api/v1/telegraf", s.url))
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v = json_body(r).await;
    assert_eq!(
        (v["accepted"].as_u64(), v["line"].as_u64()),
        (Some(2), Some(3))
    );
    let got = s.sink.got.lock().unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(
        event_time(&got[0]),
        1_767_225_600_000_000_000,
        "Telegraf's JSON timestamps are seconds"
    );
    assert_eq!(got[0].key.as_deref(), Some(&b"edge-1"[..]));
}

/// Server-sent events read off a streaming response: (event, id, data).
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(url: &str, last_id: Option<u64>) -> Events {
        let mut req = reqwest::Client::new().get(url);
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let response = req.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut e = Events {
            response,
            buffer: String::new(),
        };
        // The first event sets the reconnect delay: the subscription is in place.
        let first = e.read_for(Duration::from_secs(5), 1).await;
        assert!(
            first.is_empty(),
            "nothing but the retry line comes first: {first:?}"
        );
        assert!(e.buffer.is_empty() || e.buffer.starts_with(':'));
        e
    }

    /// Events read within `wait` (stopping early once `enough` arrived).
    async fn read_for(&mut self, wait: Duration, enough: usize) -> Vec<(String, u64, String)> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        let mut saw_retry = false;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = (String::from("message"), 0, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().unwrap();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    } else if line.starts_with("retry:") {
                        saw_retry = true;
                    }
                }
                if !data.is_empty() {
                    out.push((event, id, data));
                }
            }
            if out.len() >= enough || (saw_retry && enough == 1 && out.is_empty()) {
                return out;
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buffer.push_str(std::str::from_utf8(&chunk).unwrap()),
                _ => return out,
            }
        }
    }
}

fn clean(source: &str, time: i64, speed: f64) -> axum::body::Bytes {
    axum::body::Bytes::from(format!(
        r#"{{"measurement":"car","tags":{{"driver":"{source}"}},"fields":{{"speed_kph":{speed}}},"time":{time}}}"#
    ))
}

fn anomaly(source: &str, id: &str) -> axum::body::Bytes {
    axum::body::Bytes::from(format!(
        r#"{{"id":"{id}","rule":"engine_overheat","measurement":"car","source_id":"{source}","phase":"start","time":1}}"#
    ))
}

/// Filters by stream and source; clean points are downsampled per series, the newest
/// kept; anomalies all arrive; a reconnect with Last-Event-ID gets what it missed.
#[tokio::test]
async fn live_feed_filters_downsamples_and_resumes() {
    use pitwall_server::LiveStream::{Anomalies, Clean, Metrics};
    let s = start(ServerConfig::default(), false).await;
    let url = format!(
        "{}/api/v1/live?stream=clean,anomalies&source=VER&rate=4",
        s.url
    );
    let mut events = Events::open(&url, None).await;
    for i in 0..50 {
        s.live.feed(Clean, Some(b"VER"), clean("VER", i, i as f64));
        s.live.feed(Clean, Some(b"HAM"), clean("HAM", i, 0.0));
    }
    s.live.feed(Anomalies, Some(b"VER"), anomaly("VER", "a1"));
    s.live.feed(Anomalies, Some(b"HAM"), anomaly("HAM", "a2"));
    s.live.feed(
        Metrics,
        Some(b"VER"),
        axum::body::Bytes::from_static(br#"{"measurement":"car","source_id":"VER"}"#),
    );
    let got = events
        .read_for(Duration::from_millis(800), usize::MAX)
        .await;
    let cleans: Vec<_> = got.iter().filter(|e| e.0 == "clean").collect();
    let anomalies: Vec<_> = got.iter().filter(|e| e.0 == "anomalies").collect();
    assert!(
        got.iter().all(|e| e.0 != "metrics"),
        "metrics were not asked for: {got:?}"
    );
    assert!(
        got.iter().all(|e| !e.2.contains("HAM")),
        "another source came through: {got:?}"
    );
    assert_eq!(anomalies.len(), 1, "{got:?}");
    assert!(anomalies[0].2.contains(r#""id":"a1""#));
    // 4 a second over 0.8 s: the first point at once, the newest after 250 ms, maybe one more.
    assert!(
        (2..=4).contains(&cleans.len()),
        "downsampled to 4/s: {cleans:?}"
    );
    assert!(
        cleans[0].2.contains(r#""speed_kph":0"#),
        "the first point goes at once: {cleans:?}"
    );
    assert!(
        cleans.last().unwrap().2.contains(r#""speed_kph":49"#),
        "the newest point is the one kept: {cleans:?}"
    );

    // Disconnected: three more anomalies; the reconnect gets exactly those.
    let last = anomalies[0].1;
    drop(events);
    for id in ["b1", "b2", "b3"] {
        s.live.feed(Anomalies, Some(b"VER"), anomaly("VER", id));
    }
    let url = format!("{}/api/v1/live?stream=anomalies&source=VER", s.url);
    let mut events = Events::open(&url, Some(last)).await;
    let missed = events.read_for(Duration::from_secs(2), 3).await;
    let ids: Vec<String> = missed
        .iter()
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(&e.2).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids, ["b1", "b2", "b3"], "{missed:?}");
    assert!(missed.iter().all(|e| e.1 > last));
    // Each event says when the server got it.
    let v: serde_json::Value = serde_json::from_str(&missed[0].2).unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (now_ms - v["received_ms"].as_i64().unwrap()).abs() < 60_000,
        "{v}"
    );

    let r = reqwest::get(format!("{}/api/v1/live?stream=nope", s.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// /metrics names requests by route pattern and status, in Prometheus text format.
#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    pitwall_server::metrics::install();
    let s = start(ServerConfig::default(), false).await;
    let c = reqwest::Client::new();
    for body in ["m,host=a v=1\n", "m,host=a v=1\n", "bad line\n"] {
        c.post(format!("{}/api/v2/write", s.url))
            .body(body)
            .send()
            .await
            .unwrap();
    }
    let text = c
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = |needle: &[&str]| {
        text.lines()
            .find(|l| {
                l.starts_with("pitwall_http_requests_total{")
                    && needle.iter().all(|n| l.contains(n))
            })
            .unwrap_or_else(|| panic!("no {needle:?} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(line(&[r#"route="/api/v2/write""#, r#"status="204""#]), "2");
    assert_eq!(line(&[r#"route="/api/v2/write""#, r#"status="400""#]), "1");
    assert!(
        text.contains(r#"pitwall_events_in_total{stage="write_api"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"pitwall_rejects_total{stage="write_api",reason="parse"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("# TYPE pitwall_http_request_seconds histogram"),
        "{text}"
    );
}

/// InfluxDB 1.x also takes minutes and hours.
#[tokio::test]
async fn v1_precision_in_minutes_and_hours() {
    let s = start(ServerConfig::default(), false).await;
    let c = reqwest::Client::new();
    for (p, t) in [("m", 29_453_760i64), ("h", 490_896)] {
        let r = c
            .post(format!("{}/write?db=x&precision={p}", s.url))
            .body(format!("m,host=a v=1 {t}\n"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{p}");
    }
    let got = s.sink.got.lock().unwrap();
    assert_eq!(event_time(&got[0]), 1_767_225_600_000_000_000);
    assert_eq!(event_time(&got[1]), 1_767_225_600_000_000_000);
}

/// A flood of bad lines gets a short answer: the first 100 named, the rest counted.
/// (2 M bad lines answered 220 MB of JSON before.)
#[tokio::test]
async fn a_flood_of_bad_lines_lists_the_first_hundred_and_counts_the_rest() {
    let s = start(ServerConfig::default(), false).await;
    let c = reqwest::Client::new();
    let mut body = "x\n".repeat(200_000);
    body.push_str("m,host=a v=1\n");
    let r = c
        .post(format!("{}/api/v2/write", s.url))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.len() < 20_000, "answer of {} bytes", text.len());
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["rejected_count"], 200_000);
    assert_eq!(v["rejected"].as_array().unwrap().len(), 100);
    assert_eq!(v["rejected"][99]["line"], 100);
    assert_eq!(v["accepted"], 1);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("199900 more not listed"),
        "{}",
        v["message"]
    );

    // The same for Telegraf JSON: a million empty metrics.
    let mut metrics = String::from("{\"metrics\":[");
    metrics.push_str(&vec!["{}"; 1_000_000].join(","));
    metrics.push_str("]}");
    let r = c
        .post(format!("{}/api/v1/telegraf", s.url))
        .body(metrics)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v = json_body(r).await;
    assert_eq!(v["rejected_count"], 1_000_000);
    assert_eq!(v["rejected"].as_array().unwrap().len(), 100);
}

/// One line that is not UTF-8 loses only itself.
#[tokio::test]
async fn invalid_utf8_is_judged_per_line() {
    let s = start(ServerConfig::default(), false).await;
    let body = b"m,host=a v=1 1767225600\nm,host=\xff v=2 1767225600\nm,host=b v= 1767225600\nm,host=c v=4 1767225600\n".to_vec();
    let r = reqwest::Client::new()
        .post(format!("{}/api/v2/write?precision=s", s.url))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v = json_body(r).await;
    assert_eq!(v["accepted"], 2, "{v}");
    assert_eq!(v["rejected"][0]["line"], 2);
    assert!(
        v["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .contains("column 8: byte 0xff is not valid UTF-8"),
        "{v}"
    );
    assert_eq!(
        v["rejected"][1]["line"], 3,
        "later lines keep their numbers"
    );
    let keys: Vec<_> = s
        .sink
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.key.clone().unwrap())
        .collect();
    assert_eq!(keys, [&b"a"[..], &b"c"[..]]);
}

/// Raw HTTP over TCP, to send what reqwest would not (half a head, a short body).
async fn raw(url: &str) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes the connection (or `within` passes); returns what came.
async fn read_to_close(tcp: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    match tokio::time::timeout(within, tcp.read_to_end(&mut out)).await {
        Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => None,
    }
}

/// Connections that send nothing, trickle a head or idle are closed on time; a live
/// feed is a request in flight and stays.
#[tokio::test]
async fn slow_heads_and_idle_connections_are_closed_and_live_feeds_are_not() {
    use tokio::io::AsyncWriteExt;
    let s = start(
        ServerConfig {
            header_read_timeout: Duration::from_millis(400),
            idle_timeout: Duration::from_millis(800),
            body_read_timeout: Duration::from_millis(400),
            ..ServerConfig::default()
        },
        false,
    )
    .await;
    // Nothing sent.
    let mut silent = raw(&s.url).await;
    assert!(
        read_to_close(&mut silent, Duration::from_secs(3))
            .await
            .is_some(),
        "a silent connection is closed"
    );
    // Half a head, then a byte now and then.
    let mut trickle = raw(&s.url).await;
    trickle
        .write_all(b"GET /ping HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if trickle.write_all(b"s").await.is_err() {
            break;
        }
    }
    assert!(
        read_to_close(&mut trickle, Duration::from_secs(3))
            .await
            .is_some(),
        "a trickled head is cut off"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // A body that never arrives: 408.
    let mut slow_body = raw(&s.url).await;
    slow_body
        .write_all(b"POST /api/v2/write HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nm,host=a")
        .await
        .unwrap();
    let answer = read_to_close(&mut slow_body, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("server.body-read-timeout"), "{answer}");
    // Kept alive after a request, then idle: closed after the idle timeout.
    let mut idle = raw(&s.url).await;
    idle.write_all(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut idle, Duration::from_secs(4))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    // A live feed outlives both timeouts and still gets events.
    let mut live = reqwest::Client::new()
        .get(format!("{}/api/v1/live?stream=anomalies", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    s.live.feed(
        pitwall_server::LiveStream::Anomalies,
        Some(b"car-1"),
        anomaly("car-1", "late-one"),
    );
    let mut got = String::new();
    while !got.contains("late-one") {
        let chunk = tokio::time::timeout(Duration::from_secs(3), live.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// Past `max-connections` a connection is answered 503 and closed; the ones open go on.
#[tokio::test]
async fn connections_past_the_cap_get_503() {
    use tokio::io::AsyncWriteExt;
    let s = start(
        ServerConfig {
            max_connections: 3,
            ..ServerConfig::default()
        },
        false,
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(raw(&s.url).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut over = raw(&s.url).await;
    over.write_all(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut over, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("retry-after: 1") && answer.contains("server.max-connections"),
        "{answer}"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = reqwest::Client::new()
        .get(format!("{}/ping", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

/// With a token set, a wrong one is answered before the body is read: a client
/// announcing 30 MB and sending none of it gets 401 at once.
#[tokio::test]
async fn the_token_is_checked_before_the_body_is_read() {
    use tokio::io::AsyncWriteExt;
    let s = start(
        ServerConfig {
            tokens: vec!["right".into()],
            ..ServerConfig::default()
        },
        false,
    )
    .await;
    let mut tcp = raw(&s.url).await;
    tcp.write_all(b"POST /api/v2/write HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token wrong\r\nContent-Length: 30000000\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::io::AsyncReadExt::read(&mut tcp, &mut buf),
    )
    .await
    .expect("answered without the body")
    .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

/// Without a token, other origins and non-loopback host names are refused (a web page
/// cannot write into the lake; DNS rebinding finds nothing), and pages carry security
/// headers.
#[tokio::test]
async fn without_a_token_only_same_origin_loopback_requests_are_served() {
    let s = start(ServerConfig::default(), false).await;
    let c = reqwest::Client::new();
    let write = format!("{}/api/v2/write", s.url);
    let r = c
        .post(&write)
        .header("Origin", "http://evil.example")
        .body("m,host=a v=1\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        json_body(r).await["message"]
            .as_str()
            .unwrap()
            .contains("another origin")
    );
    let r = c
        .post(&write)
        .header("Host", "rebound.example:8086")
        .body("m,host=a v=1\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let host = s.url.trim_start_matches("http://").to_owned();
    let r = c
        .post(&write)
        .header("Origin", format!("http://{host}"))
        .body("m,host=a v=1\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "the dashboard's own origin writes");
    assert_eq!(s.sink.got.lock().unwrap().len(), 1);
    let r = c.get(format!("{}/", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    // A rate too small for any interval is a 400, not a panic.
    let r = c
        .get(format!("{}/api/v1/live?rate=1e-300", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// What the API can know is answered at once, per line: a time before 2000 or too far
/// ahead of its receipt (`processor.max-future`) is a 400 for that line, never a 204
/// for a point quarantined later.
#[tokio::test]
async fn implausible_times_are_rejected_per_line() {
    let s = start(ServerConfig::default(), false).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let body = format!(
        "m,host=a v=1 {now}\nm,host=b v=1 {}\nm,host=c v=1 1700000\nm,host=d v=1 {}\n",
        now + 5 * 365 * 86_400,
        now + 3600
    );
    let r = reqwest::Client::new()
        .post(format!("{}/api/v2/write?precision=s", s.url))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v = json_body(r).await;
    assert_eq!(v["accepted"], 2, "on time, and an hour ahead: {v}");
    assert_eq!(v["rejected"][0]["line"], 2);
    assert!(
        v["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .contains("processor.max-future"),
        "{v}"
    );
    assert_eq!(v["rejected"][1]["line"], 3);
    assert!(
        v["rejected"][1]["error"]
            .as_str()
            .unwrap()
            .contains("before the year 2000"),
        "{v}"
    );
}

/// Names that would stop a table's commit later are a 400 for their line now: an
/// over-long measurement, a tag named like a numeric field of its table, a reserved
/// name, a tag and a field alike.
#[tokio::test]
async fn poison_names_are_refused_per_line() {
    let s = start(ServerConfig::default(), false).await;
    let long = "m".repeat(300);
    let body = format!(
        "{long},host=a v=1\ncar,driver=VER,speed_kph=fast rpm=1\nm,host=a time_day=1\nm,host=a host=1\ncar,driver=VER speed_kph=\"fast\"\ncar,driver=VER speed_kph=312.5\n"
    );
    let r = reqwest::Client::new()
        .post(format!("{}/api/v2/write", s.url))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v = json_body(r).await;
    assert_eq!(v["accepted"], 1, "{v}");
    let errors: Vec<(u64, String)> = v["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["error"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(errors.len(), 5, "{errors:?}");
    assert!(errors[0].1.contains("300 bytes long"), "{errors:?}");
    assert!(
        errors[1].1.contains("holds \"speed_kph\" as a float field"),
        "{errors:?}"
    );
    assert!(errors[2].1.contains("reserved"), "{errors:?}");
    assert!(errors[3].1.contains("both a tag and a field"), "{errors:?}");
    assert!(errors[4].1.contains("stores it as float"), "{errors:?}");
    assert_eq!(
        errors.iter().map(|e| e.0).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
}

/// `/api/v1/sources` is paged: at most 1,000 a page, the total in `X-Total-Count`.
#[tokio::test]
async fn sources_are_paged() {
    let s = start(ServerConfig::default(), false).await;
    for i in 0..1500 {
        s.live.feed(
            pitwall_server::LiveStream::Clean,
            Some(format!("s-{i:04}").as_bytes()),
            clean(&format!("s-{i:04}"), 1, 1.0),
        );
    }
    let c = reqwest::Client::new();
    let r = c
        .get(format!("{}/api/v1/sources", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-total-count"], "1500");
    let first: Vec<serde_json::Value> = r.json().await.unwrap();
    assert_eq!(first.len(), 1000);
    let r = c
        .get(format!("{}/api/v1/sources?offset=1000&limit=10000", s.url))
        .send()
        .await
        .unwrap();
    let rest: Vec<serde_json::Value> = r.json().await.unwrap();
    assert_eq!(rest.len(), 500);
    assert_eq!(rest[0]["source"], "s-1000");
}
