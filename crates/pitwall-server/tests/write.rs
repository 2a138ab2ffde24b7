//! The write API over real HTTP on loopback: what Telegraf's influxdb_v2, influxdb and
//! http (JSON) outputs send lands as raw messages keyed by source; bad lines are named
//! and the rest accepted; tokens, body limits and a full pipeline get their status codes.
//! The sink here records what it is given (the pipeline tests publish to the real bus).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pitwall_core::{FieldValue, json};
use pitwall_server::{Bound, RawMessage, ServerConfig, Sink, SinkError, SinkFuture, WriteStats, router};
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
    let sink = Arc::new(Recorder { full, ..Recorder::default() });
    let config = ServerConfig {
        listen: "127.0.0.1:0".into(),
        ..config
    };
    let r = router(&config, Arc::new(ProcessorConfig::default()), Arc::clone(&sink) as Arc<dyn Sink>, Arc::new(WriteStats::default()));
    let bound = Bound::bind(&config, r).await.unwrap();
    let url = format!("http://{}", bound.local_addr());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(bound.run(async move {
        let _ = rx.await;
    }));
    Server { url, sink, stop: Some(tx) }
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
    let s = start(ServerConfig { tokens: vec!["s3cret".into()], ..ServerConfig::default() }, false).await;
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
        .post(format!("{}/api/v2/write?bucket=telegraf&org=pitwall&precision=ns", s.url))
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
    assert_eq!(m.key.as_deref(), Some(&b"s-1"[..]), "keyed by the sensor's source tag");
    let p = json::decode(&m.payload, 0, pitwall_core::Precision::Ns).unwrap();
    assert_eq!(p.measurement, "sensor");
    assert_eq!(p.time, 1_767_225_600_008_000_000);
    assert_eq!(p.fields["temperature_c"], FieldValue::F64(23.5));
    assert_eq!(p.fields["humidity_pct"], FieldValue::I64(41));
    assert_eq!(m.time, p.time);
}

/// InfluxDB v1 (`/write`, Telegraf's outputs.influxdb) with a precision, and Basic auth
/// carrying the token as the password.
#[tokio::test]
async fn v1_writes_take_their_precision_and_basic_auth() {
    let s = start(ServerConfig { tokens: vec!["a".into(), "b".into()], ..ServerConfig::default() }, false).await;
    let r = reqwest::Client::new()
        .post(format!("{}/write?db=telegraf&precision=s", s.url))
        .basic_auth("telegraf", Some("b"))
        .body("machine,host=press-7 temp=81.5 1767225600\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let got = s.sink.got.lock().unwrap();
    assert_eq!(got[0].time, 1_767_225_600_000_000_000);
    assert_eq!(got[0].key.as_deref(), Some(&b"press-7"[..]), "measurements without a source tag use host");
}

#[tokio::test]
async fn bad_lines_are_named_and_the_good_ones_still_land() {
    let s = start(ServerConfig::default(), false).await;
    let body = "m,host=a v=1 1767225600000000000\nm,host=a v= 1767225600000000001\nm,host=b v=2 1767225600000000002\n";
    let r = reqwest::Client::new().post(format!("{}/api/v2/write", s.url)).body(body).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let v = json_body(r).await;
    assert_eq!(v["accepted"], 2);
    assert_eq!(v["line"], 2);
    assert_eq!(v["rejected"][0]["line"], 2);
    let msg = v["message"].as_str().unwrap();
    assert!(msg.starts_with("partial write: 1 lines rejected, the other 2 accepted; first, line 2"), "{msg}");
    assert_eq!(s.sink.got.lock().unwrap().len(), 2);

    let r = reqwest::Client::new().post(format!("{}/api/v2/write?precision=h", s.url)).body(body).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(json_body(r).await["message"], "precision \"h\" is not one of ns, us, ms, s");
}

#[tokio::test]
async fn tokens_are_required_once_set() {
    let s = start(ServerConfig { tokens: vec!["right".into()], ..ServerConfig::default() }, false).await;
    let c = reqwest::Client::new();
    let url = format!("{}/api/v2/write", s.url);
    let line = "m,host=a v=1\n";
    assert_eq!(c.post(&url).body(line).send().await.unwrap().status(), 401);
    let r = c.post(&url).header("Authorization", "Token wrong").body(line).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(json_body(r).await["message"], "the token is not valid");
    assert_eq!(c.post(&url).header("Authorization", "Bearer right").body(line).send().await.unwrap().status(), 204);
    assert_eq!(s.sink.got.lock().unwrap().len(), 1, "only the authorized write landed");
    // Liveness needs no token.
    assert_eq!(c.get(format!("{}/ping", s.url)).send().await.unwrap().status(), 204);
}

#[tokio::test]
async fn oversized_bodies_are_413_and_a_full_pipeline_is_503() {
    let s = start(ServerConfig { max_body_bytes: 1024, ..ServerConfig::default() }, false).await;
    let c = reqwest::Client::new();
    let big = "m,host=a v=1\n".repeat(200);
    let r = c.post(format!("{}/api/v2/write", s.url)).body(big.clone()).send().await.unwrap();
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
    assert!(json_body(r).await["message"].as_str().unwrap().contains("once decompressed"));
    assert!(s.sink.got.lock().unwrap().is_empty());

    let full = start(ServerConfig { publish_timeout: Duration::from_millis(200), ..ServerConfig::default() }, true).await;
    let r = c.post(format!("{}/api/v2/write", full.url)).body("m,host=a v=1\n").send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
}

/// Telegraf's outputs.http with data_format = "json": one metric, or a batch.
#[tokio::test]
async fn telegraf_json_single_and_batched() {
    let s = start(ServerConfig::default(), false).await;
    let c = reqwest::Client::new();
    let one = r#"{"fields":{"usage_idle":91.5},"name":"cpu","tags":{"cpu":"cpu0","host":"edge-1"},"timestamp":1767225600}"#;
    let r = c.post(format!("{}/api/v1/telegraf", s.url)).body(one).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let batch = format!(r#"{{"metrics":[{one},{one},{{"name":"cpu","fields":"oops"}}]}}"#);
    let r = c.post(format!("{}/api/v1/telegraf", s.url)).body(batch).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let v = json_body(r).await;
    assert_eq!((v["accepted"].as_u64(), v["line"].as_u64()), (Some(2), Some(3)));
    let got = s.sink.got.lock().unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].time, 1_767_225_600_000_000_000, "Telegraf's JSON timestamps are seconds");
    assert_eq!(got[0].key.as_deref(), Some(&b"edge-1"[..]));
}
