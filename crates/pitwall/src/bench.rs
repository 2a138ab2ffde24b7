//! `pitwall bench`: figures that print numbers. For now the `http-write` scenario: the
//! write API under a load generator over loopback, batches of simulated telemetry as
//! line protocol (Telegraf's influxdb_v2 output sends the same).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::Config;

/// Where the benchmark's write API puts points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchSink {
    /// Counted and dropped: the API's own cost (HTTP, gzip, parse, encode, keys).
    Discard,
    /// The raw topic on Kafka, acknowledged by the brokers before each answer.
    Kafka,
}

/// Settings of `pitwall bench http-write`.
#[derive(Debug, Clone)]
pub struct HttpWrite {
    /// How long to send.
    pub duration: Duration,
    /// Concurrent connections.
    pub connections: usize,
    /// Lines per request.
    pub batch: usize,
    /// Gzip the bodies (Telegraf does by default).
    pub gzip: bool,
    /// Where points go.
    pub sink: BenchSink,
}

struct Discard(AtomicU64);

impl pitwall_server::Sink for Discard {
    fn publish(&self, messages: Vec<pitwall_server::RawMessage>) -> pitwall_server::SinkFuture<'_> {
        self.0.fetch_add(messages.len() as u64, Relaxed);
        Box::pin(async { Ok(()) })
    }
}

/// CPU seconds this process has used (user + system).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 here; 100 ticks/s on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs the scenario and prints its figures.
pub async fn http_write(config: &Config, opts: &HttpWrite) -> anyhow::Result<()> {
    // Bodies: simulated cars and sensors as line protocol, `batch` lines each.
    let mut sim = crate::pipeline::simulators(config, crate::now_ns());
    let mut bodies = Vec::new();
    let mut points = Vec::new();
    let mut raw_bytes = 0usize;
    while bodies.len() < 32 {
        while points.len() < opts.batch {
            use pitwall_sim::Simulator;
            sim.step(&mut points);
        }
        let batch: Vec<_> = points.drain(..opts.batch).collect();
        let text = pitwall_core::line_protocol::encode_all(&batch)?;
        raw_bytes += text.len();
        let body = if opts.gzip {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(text.as_bytes())?;
            e.finish()?
        } else {
            text.into_bytes()
        };
        bodies.push(bytes::Bytes::from(body));
    }
    let mean_line = raw_bytes as f64 / (bodies.len() * opts.batch) as f64;

    let discard = Arc::new(Discard(AtomicU64::new(0)));
    let sink: Arc<dyn pitwall_server::Sink> = match opts.sink {
        BenchSink::Discard => Arc::clone(&discard) as Arc<dyn pitwall_server::Sink>,
        BenchSink::Kafka => {
            let topics = crate::pipeline::ensure_topics(config).await?;
            Arc::new(crate::pipeline::KafkaWriteSink::new(&config.kafka, &topics.raw)?)
        }
    };
    let server_config = pitwall_server::ServerConfig {
        listen: "127.0.0.1:0".into(),
        ..config.server.clone()
    };
    let services = pitwall_server::Services {
        sink,
        processor: Arc::new(config.processor.clone()),
        stats: Arc::new(pitwall_server::WriteStats::default()),
        lake: None,
        live: pitwall_server::LiveHub::default(),
    };
    let bound = pitwall_server::Bound::bind(&server_config, pitwall_server::router(&server_config, services))
        .await
        .map_err(anyhow::Error::msg)?;
    let url = format!("http://{}/api/v2/write?precision=ns", bound.local_addr());
    let stop = tokio_util::sync::CancellationToken::new();
    let server = {
        let stop = stop.clone();
        tokio::spawn(bound.run(async move { stop.cancelled().await }))
    };

    eprintln!(
        "http-write: {} connections, {} lines per request ({:.0} bytes per line{}), sink {:?}, {:?}",
        opts.connections,
        opts.batch,
        mean_line,
        if opts.gzip { ", gzip" } else { "" },
        opts.sink,
        opts.duration
    );
    let client = reqwest::Client::builder().pool_max_idle_per_host(opts.connections).build()?;
    let bodies = Arc::new(bodies);
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let deadline = started + opts.duration;
    let mut tasks = Vec::new();
    for c in 0..opts.connections {
        let (client, bodies, url, gzip) = (client.clone(), Arc::clone(&bodies), url.clone(), opts.gzip);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = c;
            while Instant::now() < deadline {
                let mut req = client.post(&url).body(bodies[i % bodies.len()].clone());
                if gzip {
                    req = req.header("Content-Encoding", "gzip");
                }
                let t = Instant::now();
                let r = req.send().await.context("sending")?;
                anyhow::ensure!(r.status() == 204, "the write API answered {}: {}", r.status(), r.text().await.unwrap_or_default());
                latencies.push(t.elapsed());
                i += stride(c);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.context("a load task panicked")??);
    }
    let elapsed = started.elapsed();
    let cpu = cpu_seconds() - cpu0;
    stop.cancel();
    server.await.ok();
    latencies.sort();
    let pct = |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p) as usize).copied().unwrap_or_default();
    let points = (latencies.len() * opts.batch) as f64;
    if opts.sink == BenchSink::Discard {
        anyhow::ensure!(discard.0.load(Relaxed) as f64 == points, "the sink got {} points, not {points}", discard.0.load(Relaxed));
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!("requests            {}", latencies.len());
    println!("points/s            {:.0}", points / elapsed.as_secs_f64());
    println!("MB/s (uncompressed) {:.1}", points * mean_line / elapsed.as_secs_f64() / 1e6);
    println!("request latency     p50 {:.1} ms, p99 {:.1} ms", pct(0.5).as_secs_f64() * 1e3, pct(0.99).as_secs_f64() * 1e3);
    println!("CPU                 {cpu:.1} s over {:.1} s wall on {cores} cores (load generator included)", elapsed.as_secs_f64());
    println!("points per CPU-s    {:.0}", points / cpu.max(1e-9));
    Ok(())
}

/// Each connection walks the bodies with its own stride, so requests differ.
fn stride(c: usize) -> usize {
    1 + c % 3
}
