//! The pipeline scenarios of `pitwall bench`: `ingest-kafka` (simulators into the raw
//! topic), `process` (raw to lake, in-process or from Kafka), `latency` (event to
//! anomaly on the topic and on the live feed, at a fixed rate) and `freshness` (event to
//! visible in a query). Each runs the same code paths as `pitwall up`, `ingest` and
//! `process`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use pitwall_bus::{InProcessBus, Message, Topics};
use pitwall_core::{FieldValue, Point, json};
use tokio_util::sync::CancellationToken;

use super::{cpu_seconds, peak_memory, percentile};
use pitwall_bus::Publish;
use pitwall_runtime::SimRun;
use pitwall_runtime::config::Config;
use pitwall_runtime::metrics::Stats;

/// Where a pipeline scenario runs: the in-process bus, or Kafka at these brokers.
#[derive(Debug, Clone)]
pub enum Transport {
    /// The embedded bus of `pitwall up`.
    InProcess,
    /// Kafka (the separate processes' shape), at these bootstrap brokers.
    Kafka(String),
}

impl Transport {
    fn describe(&self, config: &Config) -> String {
        match self {
            Transport::InProcess => {
                format!("in-process bus ({} partitions)", config.bus.partitions)
            }
            Transport::Kafka(b) => format!(
                "Kafka at {b} ({} partitions, acks=all, idempotent, {} compression, linger {:?})",
                config.kafka.partitions, config.kafka.compression, config.kafka.linger
            ),
        }
    }
}

/// Gives a Kafka run topics and a consumer group of its own, so runs never see each
/// other's messages or offsets.
fn fresh_topics(config: &mut Config, transport: &Transport, run: usize) {
    if let Transport::Kafka(brokers) = transport {
        let stamp = pitwall_core::now_ns() / 1_000_000;
        config.kafka.brokers.clone_from(brokers);
        config.bus.topic_prefix = format!(
            "{}bench-{}-{stamp}-{run}.",
            config.bus.topic_prefix,
            std::process::id()
        );
        config.kafka.group_id = format!(
            "{}-bench-{}-{stamp}-{run}",
            config.kafka.group_id,
            std::process::id()
        );
    }
}

/// A lake directory of its own per run when none was given (removed at the end).
struct ScratchLake(Option<PathBuf>);

impl ScratchLake {
    fn apply(config: &mut Config, given: bool, run: usize) -> Self {
        if given {
            if run > 0 {
                config.lake.data_dir = config.lake.data_dir.join(format!("run{run}"));
            }
            return ScratchLake(None);
        }
        let dir = std::env::temp_dir().join(format!("pitwall-bench-{}-{run}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        config.lake.data_dir.clone_from(&dir);
        ScratchLake(Some(dir))
    }
}

impl Drop for ScratchLake {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Events a second the configured simulators make.
fn sim_rate(config: &Config) -> f64 {
    (if config.sim.race_enabled {
        config.sim.race.cars as f64 * config.sim.race.hz
    } else {
        0.0
    }) + if config.sim.iot_enabled {
        config.sim.iot.sensors as f64 * config.sim.iot.hz
    } else {
        0.0
    }
}

/// One run's throughput figures.
#[derive(Debug, Clone, Copy)]
struct Throughput {
    events: u64,
    wall: f64,
    cpu: f64,
}

impl Throughput {
    fn rate(&self) -> f64 {
        self.events as f64 / self.wall.max(1e-9)
    }
    fn per_cpu(&self) -> f64 {
        self.events as f64 / self.cpu.max(1e-9)
    }
}

/// Prints each run, then the median of each figure taken on its own (the run with the
/// median events/s need not be the one with the median events per CPU-second).
fn print_runs(what: &str, runs: &[Throughput]) {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    for (i, r) in runs.iter().enumerate() {
        println!(
            "  run {}: {} events in {:.2} s wall, {:.2} CPU-s: {:.0} events/s, {:.0} events per CPU-second",
            i + 1,
            r.events,
            r.wall,
            r.cpu,
            r.rate(),
            r.per_cpu()
        );
    }
    let median = |figure: fn(&Throughput) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(figure).collect();
        values.sort_by(f64::total_cmp);
        values[(values.len() - 1) / 2]
    };
    println!(
        "{what}: median of {}: {:.0} events/s, {:.0} events/s per core used ({:.2} of {cores} cores busy); peak memory {}",
        runs.len(),
        median(Throughput::rate),
        median(Throughput::per_cpu),
        median(|r| r.cpu / r.wall.max(1e-9)),
        peak_memory()
    );
}

/// Sends `sim_duration` of simulated telemetry to the raw topic on Kafka as fast as the
/// producer goes, as `pitwall ingest --speed 0` does, and waits for every acknowledgement.
async fn fill_kafka(
    config: &Config,
    sim_duration: Duration,
) -> anyhow::Result<(Throughput, String)> {
    let topics = pitwall_runtime::ensure_topics(config).await?;
    let mut sink = pitwall_bus::kafka::KafkaTopic::new(&config.kafka, &topics.raw)?;
    let run = SimRun {
        start_time: pitwall_core::now_ns() - i64::try_from(sim_duration.as_nanos()).unwrap_or(0),
        sim_duration: Some(sim_duration),
        serve: None,
        hold_open: false,
        replay: None,
    };
    let mut config = config.clone();
    config.sim.speed = 0.0;
    let mut sim = pitwall_runtime::simulators(&config, run.start_time);
    let stats = Stats::default();
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    pitwall_runtime::produce(
        &config,
        &run,
        &mut sim,
        &mut sink,
        &CancellationToken::new(),
        &stats,
    )
    .await?;
    sink.finish().await?;
    let t = Throughput {
        events: stats.produced.load(Relaxed),
        wall: t0.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - cpu0,
    };
    Ok((t, topics.raw))
}

/// `pitwall bench ingest-kafka`: the simulators into the raw topic, `runs` times, each
/// to a topic of its own.
pub async fn ingest_kafka(
    config: &Config,
    brokers: &str,
    sim_duration: Duration,
    runs: usize,
) -> anyhow::Result<()> {
    let transport = Transport::Kafka(brokers.to_owned());
    println!(
        "ingest-kafka: {} of simulated telemetry ({:.0} events, JSON) at full speed into {}, the producer of `pitwall ingest`",
        humantime::format_duration(sim_duration),
        sim_rate(config) * sim_duration.as_secs_f64(),
        transport.describe(config)
    );
    let mut results = Vec::new();
    for run in 0..runs.max(1) {
        let mut cfg = config.clone();
        fresh_topics(&mut cfg, &transport, run);
        let (t, topic) = fill_kafka(&cfg, sim_duration).await?;
        println!("  run {} wrote topic {topic}", run + 1);
        results.push(t);
    }
    print_runs("ingest-kafka", &results);
    Ok(())
}

/// Settings of `pitwall bench process`.
#[derive(Debug, Clone)]
pub struct ProcessBench {
    /// Simulated telemetry to process.
    pub sim_duration: Duration,
    /// Runs (the median is printed).
    pub runs: usize,
    /// In-process or from Kafka.
    pub transport: Transport,
    /// Whether the lake was given (else each run gets a scratch directory).
    pub lake_given: bool,
    /// From Kafka: also time each run's Kafka work alone ([`kafka_floor`]).
    pub kafka_floor: bool,
}

/// `pitwall bench process`: raw telemetry to the lake with the configured windows and
/// rules. In-process: the embedded pipeline at full speed, its simulators' own cost
/// (measured alone first) taken out of the CPU figure. From Kafka: the raw topic is
/// filled first (not timed), then `pitwall process` reads it to the end.
pub async fn process(config: &Config, opts: &ProcessBench) -> anyhow::Result<()> {
    let events = sim_rate(config) * opts.sim_duration.as_secs_f64();
    println!(
        "process: {} of simulated telemetry ({events:.0} events) from the {} to {}; {} windows, {} rules; a lake commit every {:?} or {} rows",
        humantime::format_duration(opts.sim_duration),
        opts.transport.describe(config),
        if opts.lake_given {
            config.lake.describe()
        } else {
            "a scratch embedded lake per run".to_owned()
        },
        config.processor.windows.len(),
        config.processor.rules.len(),
        config.lake.commit_interval,
        config.lake.commit_rows
    );
    let mut results = Vec::new();
    let mut floor_runs = Vec::new();
    for run in 0..opts.runs.max(1) {
        let mut cfg = config.clone();
        cfg.sim.speed = 0.0;
        let _scratch = ScratchLake::apply(&mut cfg, opts.lake_given, run);
        let t = match &opts.transport {
            Transport::InProcess => process_in_process(&cfg, opts.sim_duration).await?,
            Transport::Kafka(_) => {
                fresh_topics(&mut cfg, &opts.transport, run);
                let (fill, topic) = fill_kafka(&cfg, opts.sim_duration).await?;
                println!(
                    "  run {}: {} events sent to {topic} first ({:.0} events/s)",
                    run + 1,
                    fill.events,
                    fill.rate()
                );
                let idle = Duration::from_secs(2);
                let stats = Arc::new(Stats::default());
                let process_cfg = cfg.clone();
                let (cpu0, t0) = (cpu_seconds(), Instant::now());
                let options = pitwall_runtime::kafka::ProcessOptions {
                    exit_when_idle: Some(idle),
                };
                pitwall_runtime::kafka::run(
                    process_cfg,
                    options,
                    CancellationToken::new(),
                    Arc::clone(&stats),
                )
                .await?;
                let processed = stats.processed.load(Relaxed);
                anyhow::ensure!(
                    processed >= fill.events,
                    "processed {processed} of {} events",
                    fill.events
                );
                let t = Throughput {
                    events: processed,
                    // Less the idle wait that ends the run.
                    wall: (t0.elapsed().saturating_sub(idle)).as_secs_f64(),
                    cpu: cpu_seconds() - cpu0,
                };
                floor_runs.push((cfg, fill.events));
                t
            }
        };
        results.push(t);
    }
    print_runs("process", &results);
    if opts.kafka_floor {
        // Peak memory from here on is the floor's own (it holds the output messages).
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        println!(
            "each run's Kafka work alone (the same client and settings; no decoding, processing or lake):"
        );
        let mut floors = Vec::new();
        for (run, (cfg, events)) in floor_runs.iter().enumerate() {
            let (floor, outputs) = kafka_floor(cfg, *events).await?;
            println!(
                "  run {}: {} events read while {outputs} output messages were written again",
                run + 1,
                floor.events
            );
            floors.push(floor);
        }
        print_runs("kafka floor", &floors);
    }
    Ok(())
}

/// The Kafka work of a `process` run alone: the run's raw topic read again by the
/// processor's consumer while its publisher writes the messages the run wrote to its
/// output topics (read into memory first, not timed), in step with the reading, to
/// topics of their own. Nothing is decoded, processed or written to the lake, so its
/// events per CPU-second bound what any processor with this client, this broker and
/// this volume of output can reach. Returns the timing and the messages written.
async fn kafka_floor(cfg: &Config, raw_events: u64) -> anyhow::Result<(Throughput, usize)> {
    use pitwall_bus::kafka::{KafkaConsumer, KafkaPublisher};
    let topics = Topics::with_prefix(&cfg.bus.topic_prefix);
    let outputs: Vec<&str> = topics
        .all()
        .into_iter()
        .filter(|t| *t != topics.raw)
        .collect();
    let targets: Vec<String> = outputs.iter().map(|t| format!("{t}.floor")).collect();
    let mut sends: Vec<(&str, Message)> = Vec::new();
    for (topic, target) in outputs.iter().zip(&targets) {
        let messages = read_topic(cfg, topic).await?;
        sends.extend(messages.into_iter().map(|m| (target.as_str(), m)));
    }
    let mut kafka = cfg.kafka.clone();
    pitwall_bus::kafka::ensure_topics(
        &kafka,
        &targets.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await?;
    kafka.group_id = format!("{}-floor", cfg.kafka.group_id);
    let publisher = KafkaPublisher::new(&kafka)?;
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let consumer = KafkaConsumer::subscribe(&kafka, &[&topics.raw])?;
    let (mut read, mut sent) = (0u64, 0usize);
    let mut batch = Vec::new();
    while read < raw_events {
        batch.clear();
        consumer.recv_batch(512, &mut batch).await?;
        read += batch.len() as u64;
        let upto = usize::try_from(
            sends.len() as u128 * u128::from(read.min(raw_events)) / u128::from(raw_events),
        )?;
        for (topic, m) in &sends[sent..upto] {
            publisher
                .publish(topic, m.key.as_deref(), &m.payload, m.timestamp)
                .await?;
        }
        sent = upto;
    }
    publisher.delivered().await?;
    let t = Throughput {
        events: read,
        wall: t0.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - cpu0,
    };
    consumer.close();
    Ok((t, sends.len()))
}

/// Every message of `topic` (to the end offsets it reports, and on while more comes
/// within a second: tansu's end offsets can lag what it serves), through a consumer
/// group of its own.
async fn read_topic(cfg: &Config, topic: &str) -> anyhow::Result<Vec<Message>> {
    use pitwall_bus::kafka::KafkaConsumer;
    let mut kafka = cfg.kafka.clone();
    kafka.group_id = format!("{}-read-{topic}", cfg.kafka.group_id);
    let consumer = KafkaConsumer::subscribe(&kafka, &[topic])?;
    let mut expected = 0;
    for partition in 0..u32::try_from(cfg.kafka.partitions)? {
        expected += consumer.end_offset(topic, partition, Duration::from_secs(10))?;
    }
    let mut messages = Vec::new();
    if expected == 0 {
        return Ok(messages);
    }
    loop {
        let patience = if (messages.len() as i64) < expected {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(1)
        };
        match tokio::time::timeout(patience, consumer.recv_batch(512, &mut messages)).await {
            Ok(r) => r?,
            Err(_) if (messages.len() as i64) < expected => {
                anyhow::bail!(
                    "{topic}: read {} of the {expected} messages its end offsets promise",
                    messages.len()
                )
            }
            Err(_) => break,
        }
    }
    consumer.close();
    Ok(messages)
}

async fn process_in_process(cfg: &Config, sim_duration: Duration) -> anyhow::Result<Throughput> {
    let start_time = pitwall_core::now_ns() - i64::try_from(sim_duration.as_nanos()).unwrap_or(0);
    // The simulators and their JSON alone, to take out of the pipeline's CPU time.
    let sim_cpu = {
        let end = start_time + i64::try_from(sim_duration.as_nanos()).unwrap_or(i64::MAX);
        let mut sim = pitwall_runtime::simulators(cfg, start_time);
        let (mut points, mut payload) = (Vec::new(), Vec::with_capacity(512));
        let cpu0 = cpu_seconds();
        while pitwall_sim::Simulator::next_time(&sim) < end {
            points.clear();
            pitwall_sim::Simulator::step(&mut sim, &mut points);
            for p in &points {
                payload.clear();
                json::encode_into(p, &mut payload)?;
                std::hint::black_box(Bytes::copy_from_slice(&payload));
            }
        }
        cpu_seconds() - cpu0
    };
    let mut cfg = cfg.clone();
    cfg.processor.idle_timeout = Duration::ZERO;
    let run = SimRun {
        start_time,
        sim_duration: Some(sim_duration),
        serve: None,
        hold_open: false,
        replay: None,
    };
    let stats = Arc::new(Stats::default());
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let summary =
        pitwall_runtime::run_embedded(cfg, run, CancellationToken::new(), Arc::clone(&stats))
            .await?;
    let cpu = cpu_seconds() - cpu0;
    println!(
        "  {} events, {} rows committed; the simulators and their JSON took {sim_cpu:.2} CPU-s of the run's {cpu:.2} (measured alone), left out below",
        summary.produced, summary.rows_committed
    );
    Ok(Throughput {
        events: stats.processed.load(Relaxed),
        wall: t0.elapsed().as_secs_f64(),
        cpu: (cpu - sim_cpu).max(1e-3),
    })
}

/// Probe points sent by the load generator: number -> when it was sent.
#[derive(Debug, Default)]
struct Probes {
    sent: Mutex<HashMap<u64, Instant>>,
}

impl Probes {
    /// How long ago probe `n` was sent, if it is being measured.
    fn age_of(&self, n: u64, now: Instant) -> Option<Duration> {
        let sent = self
            .sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sent.get(&n).map(|t| now.duration_since(*t))
    }

    fn len(&self) -> usize {
        self.sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

/// A fixed-rate load of simulated telemetry, restamped with the wall clock as it is
/// sent, with a probe every `probe_every`: a car point whose engine is over the
/// `engine_overheat` limit, from a source named PREFIX + number.
struct Load {
    rate: f64,
    warmup: Duration,
    duration: Duration,
    probe_every: Duration,
    prefix: String,
    /// Probes cycle through this many sources, each probe followed at once by a cool
    /// point that ends its episode, so the next probe on the source starts a new one;
    /// probes are then known by their event time. `None`: a new source per probe, known
    /// by its number.
    cycle: Option<u64>,
}

impl Load {
    /// Sends until warm-up plus duration are over (or `cancel`); probes sent after the
    /// warm-up are recorded in `probes`. Returns the events sent after the warm-up.
    async fn run<S: Publish>(
        self,
        config: Config,
        mut sink: S,
        probes: Arc<Probes>,
        cancel: CancellationToken,
    ) -> anyhow::Result<(u64, S)> {
        let mut sim = pitwall_runtime::simulators(&config, pitwall_core::now_ns());
        let mut pool = Vec::new();
        while pool.len() < 20_000 {
            pitwall_sim::Simulator::step(&mut sim, &mut pool);
        }
        let template = pool
            .iter()
            .find(|p| p.measurement == "car")
            .cloned()
            .context(
                "the probes are car points: turn the race simulator on (sim.race-enabled = true)",
            )?;
        let mut payload = Vec::with_capacity(512);
        let start = Instant::now();
        let (mut sent, mut probes_sent, mut measured_from) = (0u64, 0u64, None);
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = cancel.cancelled() => break,
            }
            let elapsed = start.elapsed();
            if elapsed >= self.warmup + self.duration {
                break;
            }
            if measured_from.is_none() && elapsed >= self.warmup {
                measured_from = Some(sent);
            }
            let due = (self.rate * elapsed.as_secs_f64()) as u64;
            let probes_due = (elapsed.as_secs_f64() / self.probe_every.as_secs_f64()) as u64;
            while sent < due {
                let now = pitwall_core::now_ns();
                let is_probe = probes_sent < probes_due;
                let i = (sent as usize) % pool.len();
                let probe = if is_probe {
                    let mut q = template.clone();
                    let source = self.cycle.map_or(probes_sent, |k| probes_sent % k);
                    q.tags
                        .insert("driver".into(), format!("{}{source}", self.prefix).into());
                    q.fields
                        .insert("engine_temp_c".into(), FieldValue::F64(150.0));
                    q.time = now;
                    Some(q)
                } else {
                    pool[i].time = now;
                    None
                };
                let p: &Point = probe.as_ref().unwrap_or(&pool[i]);
                payload.clear();
                json::encode_into(p, &mut payload)?;
                let key = config.processor.source_key(p);
                if is_probe && measured_from.is_some() {
                    let id = if self.cycle.is_some() {
                        now as u64
                    } else {
                        probes_sent
                    };
                    probes
                        .sent
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(id, Instant::now());
                }
                sink.send(key.clone(), Bytes::copy_from_slice(&payload), now)
                    .await?;
                if let Some(mut q) = probe {
                    probes_sent += 1;
                    if self.cycle.is_some() {
                        // Cool again: the episode ends, ready for the source's next probe.
                        q.fields
                            .insert("engine_temp_c".into(), FieldValue::F64(90.0));
                        q.time = now + 1;
                        payload.clear();
                        json::encode_into(&q, &mut payload)?;
                        sink.send(key, Bytes::copy_from_slice(&payload), now + 1)
                            .await?;
                        sent += 1;
                    }
                }
                sent += 1;
            }
        }
        Ok((sent - measured_from.unwrap_or(sent), sink))
    }
}

/// What to do with each message of the anomalies topic (key, JSON).
type OnAnomaly = Arc<dyn Fn(Option<&[u8]>, Bytes) + Send + Sync>;

/// The pipeline fed by a [`Load`] instead of its simulators, as `pitwall up` (in-process)
/// or `pitwall ingest` + `pitwall process` (Kafka) run it.
struct Harness {
    cancel: CancellationToken,
    pipeline: tokio::task::JoinHandle<anyhow::Result<()>>,
    load: tokio::task::JoinHandle<anyhow::Result<u64>>,
    stats: Arc<Stats>,
}

impl Harness {
    async fn start(
        cfg: &Config,
        transport: &Transport,
        load: Load,
        probes: &Arc<Probes>,
        on_anomaly: Option<OnAnomaly>,
    ) -> anyhow::Result<Self> {
        let cancel = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        // The pipeline's own simulators send nothing; the load does.
        let run = SimRun {
            start_time: pitwall_core::now_ns(),
            sim_duration: Some(Duration::ZERO),
            serve: None,
            hold_open: true,
            replay: None,
        };
        let (pipeline, load) = match transport {
            Transport::InProcess => {
                let bus = InProcessBus::new(pitwall_runtime::bus_config(cfg));
                let topics: Topics = bus.config().topics.clone();
                if let Some(on_anomaly) = on_anomaly {
                    for mut consumer in bus.subscribe(&topics.anomalies)? {
                        let on_anomaly = Arc::clone(&on_anomaly);
                        tokio::spawn(async move {
                            let mut batch = Vec::with_capacity(256);
                            while consumer.recv_many(&mut batch, 256).await > 0 {
                                for m in batch.drain(..) {
                                    on_anomaly(m.key.as_deref(), m.payload);
                                }
                            }
                        });
                    }
                }
                let sink = bus.producer(&topics.raw)?;
                let pipeline = tokio::spawn({
                    let (cfg, cancel, stats) = (cfg.clone(), cancel.clone(), Arc::clone(&stats));
                    async move {
                        pitwall_runtime::run_on_bus(bus, cfg, run, cancel, stats)
                            .await
                            .map(|_| ())
                    }
                });
                let load = tokio::spawn({
                    let (cfg, probes, cancel) = (cfg.clone(), Arc::clone(probes), cancel.clone());
                    async move { Ok(load.run(cfg, sink, probes, cancel).await?.0) }
                });
                (pipeline, load)
            }
            Transport::Kafka(_) => {
                let topics = pitwall_runtime::ensure_topics(cfg).await?;
                if let Some(on_anomaly) = on_anomaly {
                    let mut kafka = cfg.kafka.clone();
                    kafka.group_id.push_str("-anomalies");
                    kafka
                        .properties
                        .insert("auto.offset.reset".into(), "earliest".into());
                    let consumer = pitwall_bus::kafka::KafkaConsumer::subscribe(
                        &kafka,
                        &[topics.anomalies.as_str()],
                    )?;
                    let cancel = cancel.clone();
                    tokio::spawn(async move {
                        loop {
                            tokio::select! {
                                () = cancel.cancelled() => break,
                                m = consumer.recv() => match m {
                                    Ok(m) => on_anomaly(m.key.as_deref(), m.payload),
                                    Err(e) => {
                                        tracing::warn!(error = %e, "latency bench: cannot read the anomalies topic; retrying");
                                        tokio::time::sleep(Duration::from_millis(100)).await;
                                    }
                                }
                            }
                        }
                        consumer.close();
                    });
                }
                let sink = pitwall_bus::kafka::KafkaTopic::new(&cfg.kafka, &topics.raw)?;
                let pipeline = tokio::spawn(pitwall_runtime::kafka::run_on_kafka(
                    cfg.clone(),
                    run,
                    cancel.clone(),
                    Arc::clone(&stats),
                ));
                let load = tokio::spawn({
                    let (cfg, probes, cancel) = (cfg.clone(), Arc::clone(probes), cancel.clone());
                    async move {
                        let (sent, mut sink) = load.run(cfg, sink, probes, cancel).await?;
                        sink.finish().await?;
                        Ok(sent)
                    }
                });
                (pipeline, load)
            }
        };
        Ok(Harness {
            cancel,
            pipeline,
            load,
            stats,
        })
    }

    /// Waits for the load to finish; returns the events it sent after the warm-up.
    async fn wait_load(&mut self) -> anyhow::Result<u64> {
        (&mut self.load)
            .await
            .context("the load generator panicked")?
    }

    /// Stops the pipeline (it commits what it has) and reports its error, if any.
    async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.pipeline.await.context("the pipeline task panicked")?
    }
}

/// Latencies of the probes, in seconds, as each path saw them.
#[derive(Debug, Default)]
struct Seen {
    first: Mutex<HashMap<u64, f64>>,
}

impl Seen {
    fn note(&self, n: u64, secs: f64) {
        self.first
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(n)
            .or_insert(secs);
    }
    fn len(&self) -> usize {
        self.first
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
    fn sorted(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .first
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .copied()
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }
    /// "N of M probes: p50 … ms, p99 …, p99.9 …, max …".
    fn summary(&self, expected: usize) -> String {
        let v = self.sorted();
        let ms = |p: f64| percentile(&v, p) * 1e3;
        format!(
            "{} of {expected} probes; p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
            v.len(),
            ms(0.5),
            ms(0.99),
            ms(0.999),
            v.last().copied().unwrap_or(f64::NAN) * 1e3
        )
    }
}

/// The probe an anomaly JSON is about: its event time, if it starts the episode of a
/// probe source.
fn probe_of(prefix: &str, json: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        source_id: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        phase: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        rule: std::borrow::Cow<'a, str>,
        time: i64,
    }
    let h: Head<'_> = serde_json::from_slice(json).ok()?;
    (h.phase == "start" && h.rule == "engine_overheat" && h.source_id.starts_with(prefix))
        .then_some(h.time as u64)
}

/// Sources the latency probes cycle through (a new source per probe would measure the
/// cost of new sources, not of events).
const PROBE_SOURCES: u64 = 16;

/// Settings of `pitwall bench latency` and `pitwall bench freshness`.
#[derive(Debug, Clone)]
pub struct FixedRate {
    /// Events per second.
    pub rate: f64,
    /// Measured time, after the warm-up.
    pub duration: Duration,
    /// Unmeasured time first (Kafka: the consumer groups settle).
    pub warmup: Duration,
    /// Time between probes.
    pub probe_every: Duration,
    /// In-process or through Kafka.
    pub transport: Transport,
    /// Whether the lake was given (else a scratch directory).
    pub lake_given: bool,
}

impl FixedRate {
    fn load(&self, prefix: &str, cycle: Option<u64>) -> Load {
        Load {
            rate: self.rate,
            warmup: self.warmup,
            duration: self.duration,
            probe_every: self.probe_every,
            prefix: prefix.to_owned(),
            cycle,
        }
    }

    fn describe(&self, what: &str, cfg: &Config) -> String {
        format!(
            "{what}: {:.0} events/s of simulated telemetry (stamped with the wall clock as sent) through the {} for {} after {} of warm-up, a probe every {:?}; {} windows, {} rules; lake: {}, a commit every {:?}",
            self.rate,
            self.transport.describe(cfg),
            humantime::format_duration(self.duration),
            humantime::format_duration(self.warmup),
            self.probe_every,
            cfg.processor.windows.len(),
            cfg.processor.rules.len(),
            if self.lake_given {
                cfg.lake.describe()
            } else {
                "a scratch embedded lake".to_owned()
            },
            cfg.lake.commit_interval
        )
    }
}

/// Waits until `done` or `limit` passes.
async fn wait_until(limit: Duration, done: impl Fn() -> bool) {
    let t = Instant::now();
    while !done() && t.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prints what the load achieved, the CPU and memory.
fn print_load(opts: &FixedRate, sent: u64, cpu: f64, wall: f64) {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "load: {sent} events in the measured {} = {:.0} events/s (asked for {:.0}); CPU {cpu:.1} s over {wall:.1} s wall on {cores} cores, load generator included; peak memory {}",
        humantime::format_duration(opts.duration),
        sent as f64 / opts.duration.as_secs_f64(),
        opts.rate,
        peak_memory()
    );
}

/// `pitwall bench latency`: event to anomaly at a fixed rate. Probes (car points over
/// the engine_overheat limit, from 16 probe sources in turn) go in with the load; the time to
/// their anomaly is taken where it leaves the pipeline (the anomalies topic) and where a
/// browser gets it (the live feed's server-sent events, over loopback HTTP).
pub async fn latency(config: &Config, opts: &FixedRate) -> anyhow::Result<()> {
    const PREFIX: &str = "PROBE";
    let mut cfg = config.clone();
    let _scratch = ScratchLake::apply(&mut cfg, opts.lake_given, 0);
    fresh_topics(&mut cfg, &opts.transport, 0);
    println!("{}", opts.describe("latency", &cfg));
    let probes = Arc::new(Probes::default());
    let (topic_seen, sse_seen) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
    let live = pitwall_server::LiveHub::default();
    let server =
        super::LocalServer::start(&cfg, Arc::new(super::Discard::default()), live.clone()).await?;
    // The browser's side, connecting while the pipeline starts (the server sends the
    // stream's head with its first event).
    let sse = {
        let url = format!("http://{}/api/v1/live?stream=anomalies", server.addr);
        let (probes, seen) = (Arc::clone(&probes), Arc::clone(&sse_seen));
        tokio::spawn(async move {
            let response = reqwest::Client::new()
                .get(&url)
                .send()
                .await
                .with_context(|| format!("connecting to {url}"))?;
            anyhow::ensure!(
                response.status().is_success(),
                "{url} answered {}",
                response.status()
            );
            read_sse(response, move |data| {
                if let Some(n) = probe_of(PREFIX, data)
                    && let Some(age) = probes.age_of(n, Instant::now())
                {
                    seen.note(n, age.as_secs_f64());
                }
            })
            .await;
            Ok(())
        })
    };
    // Wait for the live feed's subscription, so no probe goes out before it.
    wait_until(Duration::from_secs(5), || live.has_listeners()).await;
    anyhow::ensure!(
        live.has_listeners(),
        "the live feed's client did not connect"
    );
    let on_anomaly: OnAnomaly = {
        let (probes, seen, live) = (Arc::clone(&probes), Arc::clone(&topic_seen), live.clone());
        Arc::new(move |key, payload| {
            if let Some(n) = probe_of(PREFIX, &payload)
                && let Some(age) = probes.age_of(n, Instant::now())
            {
                seen.note(n, age.as_secs_f64());
            }
            live.feed(pitwall_server::LiveStream::Anomalies, key, payload);
        })
    };
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let mut harness = Harness::start(
        &cfg,
        &opts.transport,
        opts.load(PREFIX, Some(PROBE_SOURCES)),
        &probes,
        Some(on_anomaly),
    )
    .await?;
    let sent = harness.wait_load().await?;
    let expected = probes.len();
    wait_until(Duration::from_secs(10), || {
        topic_seen.len() >= expected && sse_seen.len() >= expected
    })
    .await;
    let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    let processed = harness.stats.processed.load(Relaxed);
    harness.stop().await?;
    sse.abort();
    server.stop().await;
    print_load(opts, sent, cpu, wall);
    println!("processed {processed} events in all (warm-up included)");
    println!(
        "event -> anomalies topic   {}",
        topic_seen.summary(expected)
    );
    println!("event -> live feed (SSE)   {}", sse_seen.summary(expected));
    Ok(())
}

/// `pitwall bench freshness`: event to visible in `pitwall query`. Probes go in with
/// the load; a query for them runs every `poll`, and a probe counts as visible at the
/// start of the first query that returns it.
pub async fn freshness(config: &Config, opts: &FixedRate, poll: Duration) -> anyhow::Result<()> {
    // Probes of this run only, should the lake hold earlier runs'.
    let prefix = format!("FRESH{}x", pitwall_core::now_ns() / 1_000_000_000);
    let mut cfg = config.clone();
    let _scratch = ScratchLake::apply(&mut cfg, opts.lake_given, 0);
    fresh_topics(&mut cfg, &opts.transport, 0);
    println!(
        "{}; polled every {poll:?}",
        opts.describe("freshness", &cfg)
    );
    // Opening the lake first creates its tables, so the queries have them from the start.
    let (lake, _) = pitwall_runtime::open_lake(&cfg).await?;
    let probes = Arc::new(Probes::default());
    let seen = Seen::default();
    let sql = format!(
        "SELECT DISTINCT CAST(substr(driver, {}) AS BIGINT) AS n FROM clean.car WHERE driver LIKE '{prefix}%'",
        prefix.len() + 1
    );
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let mut harness = Harness::start(
        &cfg,
        &opts.transport,
        opts.load(&prefix, None),
        &probes,
        None,
    )
    .await?;
    let mut queries = Vec::new();
    let mut load_done = None;
    let car = pitwall_lake::tables::clean_ident("car");
    let mut car_exists = false;
    loop {
        // clean.car comes with the first commit of car rows; until then nothing is visible.
        car_exists = car_exists || lake.table(&car).await.is_ok();
        let started = Instant::now();
        let batches = if car_exists {
            let q = pitwall_query::Query::new(&lake).await?;
            let batches = q.sql(&sql).await?;
            queries.push(started.elapsed().as_secs_f64());
            batches
        } else {
            Vec::new()
        };
        for b in &batches {
            let col = b
                .column(0)
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .context("the probe numbers are not BIGINT")?;
            for n in col.iter().flatten() {
                if let Some(age) = probes.age_of(n as u64, started) {
                    seen.note(n as u64, age.as_secs_f64());
                }
            }
        }
        if load_done.is_none() && harness.load.is_finished() {
            load_done = Some((
                harness.wait_load().await?,
                cpu_seconds() - cpu0,
                t0.elapsed().as_secs_f64(),
                Instant::now(),
            ));
        }
        if let Some((.., at)) = load_done
            && (seen.len() >= probes.len()
                || at.elapsed() > cfg.lake.commit_interval * 3 + Duration::from_secs(10))
        {
            break;
        }
        tokio::time::sleep(poll.saturating_sub(started.elapsed())).await;
    }
    harness.stop().await?;
    let (sent, cpu, wall, _) = load_done.context("the load ended without a result")?;
    print_load(opts, sent, cpu, wall);
    queries.sort_by(f64::total_cmp);
    println!(
        "{} queries, each p50 {:.1} ms, p99 {:.1} ms (catalog load, planning and scan)",
        queries.len(),
        percentile(&queries, 0.5) * 1e3,
        percentile(&queries, 0.99) * 1e3
    );
    println!(
        "event -> visible in a query   {}",
        seen.summary(probes.len())
    );
    Ok(())
}

/// Reads a server-sent event stream, handing each event's data to `on_data`.
async fn read_sse(mut response: reqwest::Response, on_data: impl Fn(&[u8])) {
    let mut buf: Vec<u8> = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            if let Some(data) = line.strip_prefix(b"data:") {
                on_data(data.trim_ascii());
            }
        }
    }
}
