//! `pitwall bench`: figures that print numbers. `http-write`: the write API under a
//! load generator over loopback, batches of simulated telemetry as line protocol
//! (Telegraf's influxdb_v2 output sends the same), or the same load against a peer's
//! endpoint; `lake`: commit latency, scans as streamed against compacted, storage;
//! `codec`: line protocol and JSON on one core. bench/ has the Kafka path and the peers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context;

use pitwall_runtime::config::Config;

mod flow;
pub use flow::{FixedRate, ProcessBench, Transport, freshness, ingest_kafka, latency, process};

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
    /// Another system's write endpoint to send the same bodies to instead of pitwall's
    /// (a peer: InfluxDB 1.x's `/write?db=…&precision=ns`), and its process id, whose
    /// CPU time is then reported.
    pub target: Option<(String, Option<u32>)>,
}

#[derive(Debug, Default)]
struct Discard(AtomicU64);

impl pitwall_server::Sink for Discard {
    fn publish(&self, messages: Vec<pitwall_server::RawMessage>) -> pitwall_server::SinkFuture<'_> {
        self.0.fetch_add(messages.len() as u64, Relaxed);
        Box::pin(async { Ok(()) })
    }
}

/// CPU seconds this process has used (user + system).
fn cpu_seconds() -> f64 {
    cpu_seconds_of("self")
}

/// CPU seconds process `pid` ("self" for this one) has used (user + system).
fn cpu_seconds_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
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
    let mut sim = pitwall_runtime::simulators(config, pitwall_core::now_ns());
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

    if let Some((url, pid)) = &opts.target {
        announce(opts, mean_line, &format!("to {url}"));
        let peer_cpu = || pid.map(|p| cpu_seconds_of(&p.to_string()));
        let before = peer_cpu();
        let load = send_load(opts, Arc::new(bodies), url).await?;
        let peer = peer_cpu().zip(before).map(|(after, before)| after - before);
        return print_load(opts, &load, mean_line, peer.map(|c| ("the target's", c)));
    }

    let discard = Arc::new(Discard(AtomicU64::new(0)));
    let sink: Arc<dyn pitwall_server::Sink> = match opts.sink {
        BenchSink::Discard => Arc::clone(&discard) as Arc<dyn pitwall_server::Sink>,
        BenchSink::Kafka => {
            let topics = pitwall_runtime::ensure_topics(config).await?;
            Arc::new(pitwall_runtime::KafkaWriteSink::new(
                &config.kafka,
                &topics.raw,
            )?)
        }
    };
    let server = LocalServer::start(config, sink, pitwall_server::LiveHub::default()).await?;
    let url = format!("http://{}/api/v2/write?precision=ns", server.addr);
    announce(
        opts,
        mean_line,
        &format!("to pitwall, sink {:?}", opts.sink),
    );
    let load = send_load(opts, Arc::new(bodies), &url).await;
    server.stop().await;
    let load = load?;
    if opts.sink == BenchSink::Discard {
        let points = load.latencies.len() * opts.batch;
        anyhow::ensure!(
            discard.0.load(Relaxed) as usize == points,
            "the sink got {} points, not {points}",
            discard.0.load(Relaxed)
        );
    }
    print_load(
        opts,
        &load,
        mean_line,
        Some(("pitwall's (load generator included)", load.cpu)),
    )
}

/// pitwall's HTTP server on a free loopback port, with no lake behind its SQL API.
struct LocalServer {
    addr: std::net::SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl LocalServer {
    async fn start(
        config: &Config,
        sink: Arc<dyn pitwall_server::Sink>,
        live: pitwall_server::LiveHub,
    ) -> anyhow::Result<Self> {
        let server_config = pitwall_server::ServerConfig {
            listen: "127.0.0.1:0".into(),
            ..config.server.clone()
        };
        let services = pitwall_server::Services {
            sink,
            processor: Arc::new(config.processor.clone()),
            stats: Arc::new(pitwall_server::WriteStats::default()),
            lake: None,
            schemas: None,
            live,
            health: pitwall_server::Health::default(),
        };
        let bound = pitwall_server::Bound::bind(
            &server_config,
            pitwall_server::router(&server_config, services).map_err(|e| anyhow::anyhow!("{e}"))?,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        let addr = bound.local_addr();
        let stop = tokio_util::sync::CancellationToken::new();
        let task = {
            let stop = stop.clone();
            tokio::spawn(bound.run(async move { stop.cancelled().await }))
        };
        Ok(LocalServer { addr, stop, task })
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.ok();
    }
}

/// The peak resident memory of this process so far (VmHWM), e.g. "412 MB".
pub(crate) fn peak_memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or_else(
            || "unknown".to_owned(),
            |kb| format!("{:.0} MB", kb * 1024.0 / 1e6),
        )
}

/// Says what a load run sends, and where.
fn announce(opts: &HttpWrite, mean_line: f64, to: &str) {
    eprintln!(
        "http-write {to}: {} connections, {} lines per request ({:.0} bytes per line{}), {:?}",
        opts.connections,
        opts.batch,
        mean_line,
        if opts.gzip { ", gzip" } else { "" },
        opts.duration
    );
}

/// What a load run measured.
struct Load {
    latencies: Vec<Duration>,
    elapsed: Duration,
    /// CPU seconds of this process during the run.
    cpu: f64,
}

/// Posts `bodies` to `url` over `opts.connections` connections for `opts.duration`.
async fn send_load(
    opts: &HttpWrite,
    bodies: Arc<Vec<bytes::Bytes>>,
    url: &str,
) -> anyhow::Result<Load> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.connections)
        .build()?;
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let deadline = started + opts.duration;
    let mut tasks = Vec::new();
    for c in 0..opts.connections {
        let (client, bodies, url, gzip) = (
            client.clone(),
            Arc::clone(&bodies),
            url.to_owned(),
            opts.gzip,
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = c;
            while Instant::now() < deadline {
                let mut req = client.post(&url).body(bodies[i % bodies.len()].clone());
                if gzip {
                    req = req.header("Content-Encoding", "gzip");
                }
                let t = Instant::now();
                let r = req
                    .send()
                    .await
                    .with_context(|| format!("sending to {url}"))?;
                anyhow::ensure!(
                    r.status() == 204,
                    "{url} answered {}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                );
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
    latencies.sort();
    Ok(Load {
        latencies,
        elapsed,
        cpu: cpu_seconds() - cpu0,
    })
}

/// Prints a load run's figures; `server_cpu` is the CPU the receiving side used.
fn print_load(
    opts: &HttpWrite,
    load: &Load,
    mean_line: f64,
    server_cpu: Option<(&str, f64)>,
) -> anyhow::Result<()> {
    let pct = |p: f64| {
        load.latencies
            .get(((load.latencies.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or_default()
    };
    let points = (load.latencies.len() * opts.batch) as f64;
    let secs = load.elapsed.as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!("requests            {}", load.latencies.len());
    println!("points/s            {:.0}", points / secs);
    println!("MB/s (uncompressed) {:.1}", points * mean_line / secs / 1e6);
    println!(
        "request latency     p50 {:.1} ms, p99 {:.1} ms",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );
    match server_cpu {
        Some((whose, cpu)) => {
            println!(
                "CPU                 {cpu:.1} s {whose} over {secs:.1} s wall on {cores} cores"
            );
            println!("points per CPU-s    {:.0}", points / cpu.max(1e-9));
        }
        None => println!(
            "CPU                 {:.1} s of the load generator over {secs:.1} s wall on {cores} cores",
            load.cpu
        ),
    }
    Ok(())
}

/// Each connection walks the bodies with its own stride, so requests differ.
fn stride(c: usize) -> usize {
    1 + c % 3
}

/// Settings of `pitwall bench lake`.
#[derive(Debug, Clone)]
pub struct LakeBench {
    /// Simulated time to stream into the lake.
    pub sim_duration: Duration,
    /// Times real time (0: as fast as possible).
    pub speed: f64,
    /// Simulated time per commit.
    pub commit_every: Duration,
    /// Simulated time per maintenance round while streaming (None: no maintenance).
    pub maintenance: Option<Duration>,
    /// Runs of each query (the median is printed).
    pub runs: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn median_query(lake: &pitwall_lake::Lake, sql: &str, runs: usize) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for _ in 0..runs.max(1) {
        let q = pitwall_query::Query::new(lake).await?;
        let t = Instant::now();
        let batches = q.sql(sql).await?;
        times.push(t.elapsed().as_secs_f64());
        anyhow::ensure!(
            pitwall_query::row_count(&batches) > 0,
            "{sql} returned nothing"
        );
    }
    times.sort_by(f64::total_cmp);
    Ok(percentile(&times, 0.5))
}

async fn table_files_and_bytes(
    lake: &pitwall_lake::Lake,
) -> anyhow::Result<Vec<(String, u64, u64, u64)>> {
    let mut out = Vec::new();
    for ident in lake.table_idents().await? {
        let table = lake.table(&ident).await?;
        let (files, bytes, rows) = table.metadata().current_snapshot().map_or((0, 0, 0), |s| {
            let p = &s.summary().additional_properties;
            let n = |k: &str| p.get(k).and_then(|v| v.parse().ok()).unwrap_or(0u64);
            (
                n("total-data-files"),
                n("total-files-size"),
                n("total-records"),
            )
        });
        out.push((ident.to_string(), files, bytes, rows));
    }
    Ok(out)
}

/// Streams simulated telemetry into the lake in many small commits (as `pitwall up`
/// does every 5 s), with or without maintenance, then prints: commit latency, a
/// full-scan aggregate on the streamed tables against the same query once everything
/// is compacted, and lake bytes against the raw JSON bytes.
pub async fn lake(config: &Config, opts: &LakeBench) -> anyhow::Result<()> {
    let mut cfg = config.clone();
    let per_second = if cfg.sim.race_enabled {
        cfg.sim.race.cars as f64 * cfg.sim.race.hz
    } else {
        0.0
    } + if cfg.sim.iot_enabled {
        cfg.sim.iot.sensors as f64 * cfg.sim.iot.hz
    } else {
        0.0
    };
    let events = per_second * opts.sim_duration.as_secs_f64();
    let commits = (opts.sim_duration.as_secs_f64() / opts.commit_every.as_secs_f64())
        .ceil()
        .max(1.0);
    cfg.sim.speed = opts.speed;
    cfg.processor.idle_timeout = Duration::ZERO;
    // Simulated time to wall time.
    let wall = |d: Duration| {
        if opts.speed > 0.0 {
            d.div_f64(opts.speed)
        } else {
            d
        }
    };
    if opts.speed > 0.0 {
        cfg.lake.commit_interval = wall(opts.commit_every);
        cfg.lake.commit_rows = usize::MAX;
    } else {
        // About three rows an event (raw, clean, window rows) are buffered per commit.
        cfg.lake.commit_rows = ((events * 3.0) / commits).max(100.0) as usize;
        cfg.lake.commit_interval = Duration::from_secs(3600);
    }
    let m = &mut cfg.lake.maintenance;
    m.interval = opts.maintenance.map_or(Duration::ZERO, wall);
    m.expire_after = wall(m.expire_after);
    println!(
        "lake: {}; {} of simulated telemetry ({:.0} events) at {}, a commit per {} of it ({:.0} commits); maintenance {}",
        cfg.lake.describe(),
        humantime::format_duration(opts.sim_duration),
        events,
        if opts.speed > 0.0 {
            format!("{}x real time", opts.speed)
        } else {
            "full speed".to_owned()
        },
        humantime::format_duration(opts.commit_every),
        commits,
        opts.maintenance.map_or("off".to_owned(), |d| format!(
            "every {} (expiring snapshots after {})",
            humantime::format_duration(d),
            humantime::format_duration(config.lake.maintenance.expire_after)
        ))
    );
    let stats = Arc::new(pitwall_runtime::metrics::Stats::default());
    let run = pitwall_runtime::SimRun {
        start_time: pitwall_core::now_ns()
            - i64::try_from(opts.sim_duration.as_nanos()).unwrap_or(0),
        sim_duration: Some(opts.sim_duration),
        serve: None,
        hold_open: false,
        replay: None,
    };
    let started = Instant::now();
    let summary = pitwall_runtime::run_embedded(
        cfg.clone(),
        run,
        tokio_util::sync::CancellationToken::new(),
        Arc::clone(&stats),
    )
    .await
    .context("streaming into the lake")?;
    let mut commit_times = stats
        .commit_seconds
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    commit_times.sort_by(f64::total_cmp);
    println!(
        "streamed {} events in {:.1}s: {} commits; commit latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        summary.produced,
        started.elapsed().as_secs_f64(),
        commit_times.len(),
        percentile(&commit_times, 0.5) * 1e3,
        percentile(&commit_times, 0.99) * 1e3,
        commit_times.last().copied().unwrap_or(f64::NAN) * 1e3
    );

    let lake = pitwall_lake::Lake::open(cfg.lake.clone()).await?;
    let queries = [
        (
            "clean.car",
            "SELECT driver, count(*) AS n, avg(speed_kph) AS speed, max(rpm) AS rpm FROM clean.car GROUP BY driver",
        ),
        (
            "metrics.windows",
            "SELECT \"window\", field, count(*) AS n, avg(mean) AS mean FROM metrics.windows GROUP BY 1, 2",
        ),
    ];
    let before = table_files_and_bytes(&lake).await?;
    let mut streamed = Vec::new();
    for (_, sql) in &queries {
        streamed.push(median_query(&lake, sql, opts.runs).await?);
    }
    let mut idents = lake.table_idents().await?;
    idents.sort_by_key(|i| i.to_string());
    for ident in &idents {
        lake.compact(ident, cfg.lake.maintenance.target_file_size)
            .await?;
        lake.expire_snapshots(ident, Duration::ZERO).await?;
    }
    let after = table_files_and_bytes(&lake).await?;
    for (i, (table, sql)) in queries.iter().enumerate() {
        let compacted = median_query(&lake, sql, opts.runs).await?;
        let files =
            |v: &[(String, u64, u64, u64)]| v.iter().find(|t| t.0 == *table).map_or(0, |t| t.1);
        println!(
            "full-scan aggregate on {table}: {:.1} ms as streamed ({} files), {:.1} ms compacted ({} files): {:.2}x",
            streamed[i] * 1e3,
            files(&before),
            compacted * 1e3,
            files(&after),
            streamed[i] / compacted
        );
    }
    let q = pitwall_query::Query::new(&lake).await?;
    let raw = q
        .sql("SELECT sum(octet_length(CAST(payload AS VARCHAR))) AS b FROM raw.events")
        .await?;
    let raw_bytes = raw
        .first()
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .map(|a| a.value(0))
        })
        .unwrap_or(0) as f64;
    let total: u64 = after.iter().map(|t| t.2).sum();
    let no_raw: u64 = after
        .iter()
        .filter(|t| t.0 != "raw.events")
        .map(|t| t.2)
        .sum();
    println!(
        "storage: raw JSON {:.1} MB; lake {:.1} MB in all = 1/{:.1} of it ({:.1} MB without raw.events = 1/{:.1})",
        raw_bytes / 1e6,
        total as f64 / 1e6,
        raw_bytes / total as f64,
        no_raw as f64 / 1e6,
        raw_bytes / no_raw as f64
    );
    for (table, files, bytes, rows) in &after {
        println!(
            "  {table}: {rows} rows, {files} files, {:.2} MB, {:.1} bytes a row",
            *bytes as f64 / 1e6,
            *bytes as f64 / (*rows).max(1) as f64
        );
    }
    Ok(())
}

/// `pitwall bench codec`: line protocol and JSON, parsed and encoded on one core, over
/// `points` of the simulators' telemetry; prints the median of `runs` per operation.
pub fn codec(config: &Config, points: usize, runs: usize) -> anyhow::Result<()> {
    use pitwall_core::{Precision, json, line_protocol};
    let mut sim = pitwall_runtime::simulators(config, pitwall_core::now_ns());
    let mut batch = Vec::with_capacity(points);
    while batch.len() < points {
        use pitwall_sim::Simulator;
        sim.step(&mut batch);
    }
    batch.truncate(points);
    let text = line_protocol::encode_all(&batch)?;
    let payloads = batch
        .iter()
        .map(json::encode)
        .collect::<Result<Vec<_>, _>>()?;
    let json_bytes: usize = payloads.iter().map(Vec::len).sum();
    println!(
        "codec: {points} simulated points ({:.0} bytes a line-protocol line, {:.0} bytes a JSON payload), one core, median of {runs} runs",
        text.len() as f64 / points as f64,
        json_bytes as f64 / points as f64
    );
    let time = |f: &mut dyn FnMut() -> anyhow::Result<usize>| -> anyhow::Result<f64> {
        let mut secs = Vec::new();
        for _ in 0..runs.max(1) {
            let t = Instant::now();
            let n = f()?;
            secs.push(t.elapsed().as_secs_f64());
            anyhow::ensure!(n == points, "handled {n} points, not {points}");
        }
        secs.sort_by(f64::total_cmp);
        Ok(percentile(&secs, 0.5))
    };
    let mut rows = Vec::new();
    rows.push((
        "line-protocol parse",
        time(&mut || {
            let mut n = 0;
            for p in line_protocol::parse(&text, Precision::Ns, 0) {
                std::hint::black_box(p?);
                n += 1;
            }
            Ok(n)
        })?,
    ));
    let mut out = String::with_capacity(text.len());
    rows.push((
        "line-protocol encode",
        time(&mut || {
            out.clear();
            for p in &batch {
                line_protocol::encode(p, &mut out)?;
            }
            Ok(batch.len())
        })?,
    ));
    rows.push((
        "JSON decode",
        time(&mut || {
            for p in &payloads {
                std::hint::black_box(json::decode(p, 0, Precision::Ns)?);
            }
            Ok(payloads.len())
        })?,
    ));
    let mut buf = Vec::with_capacity(json_bytes);
    rows.push((
        "JSON encode",
        time(&mut || {
            buf.clear();
            for p in &batch {
                json::encode_into(p, &mut buf)?;
            }
            Ok(batch.len())
        })?,
    ));
    for (name, secs) in rows {
        println!(
            "{name:<22} {:>10.0} lines/s on one core ({:.1} ms for {points})",
            points as f64 / secs,
            secs * 1e3
        );
    }
    Ok(())
}

/// The seeds' typical questions (deploy/trino/schema.sql, also shipped for Trino).
const SCHEMA_SQL: &str = include_str!("../../../../deploy/trino/schema.sql");

/// The queries of schema.sql, comments left out.
pub fn schema_queries() -> Vec<String> {
    let text: String = SCHEMA_SQL
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `pitwall bench query`: the seeds' typical dashboard queries (schema.sql) on the lake
/// as it is; prints each one's median time and the rows of the tables it reads.
pub async fn query(config: &Config, runs: usize) -> anyhow::Result<()> {
    let lake = pitwall_lake::Lake::open(config.lake.clone()).await?;
    let tables = table_files_and_bytes(&lake).await?;
    let rows = |t: &str| tables.iter().find(|x| x.0 == t).map_or(0, |x| x.3);
    println!(
        "query: {}; clean.car {} rows, metrics.windows {} rows, anomalies.events {} rows; median of {runs} runs",
        config.lake.describe(),
        rows("clean.car"),
        rows("metrics.windows"),
        rows("anomalies.events")
    );
    anyhow::ensure!(
        rows("clean.car") > 0,
        "the lake has no clean.car rows: fill it first (pitwall bench lake --sim-duration 14h --speed 0 streams about 10 million)"
    );
    for (i, sql) in schema_queries().iter().enumerate() {
        let first = sql.lines().next().unwrap_or_default();
        let secs = median_query(&lake, sql, runs).await?;
        println!("query {} {:>9.1} ms  {first}", i + 1, secs * 1e3);
    }
    Ok(())
}
