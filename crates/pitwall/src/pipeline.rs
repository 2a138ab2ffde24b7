//! The embedded pipeline: simulators → in-process bus → one processor task per
//! partition → lake writer, with orderly shutdown that commits everything produced.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use pitwall_bus::{BusConfig, InProcessBus, Message, PartitionConsumer, Producer, Topics};
use pitwall_bus::{OutputStream, Publish};
use pitwall_core::record::{window_fires, write_json, write_window_fire_json};
use pitwall_core::{PartitionId, json};
use pitwall_lake::{Lake, LakeWriter, TableRows};
use pitwall_sim::{Fleet, InjectedFault, Mixed, Race, Simulator};
use pitwall_stream::{Outputs, Processor, SchemaRegistry};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
pub use crate::metrics::Stats;
use crate::metrics::count;

impl Stats {
    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// How the simulators are driven.
#[derive(Debug, Clone)]
pub struct SimRun {
    /// Simulated time of the first sample, ns since the epoch.
    pub start_time: i64,
    /// Stop after this much simulated time; `None` runs until cancelled.
    pub sim_duration: Option<Duration>,
    /// Serve the write API too (then the run lasts until cancelled, whatever the
    /// simulators do).
    pub serve: Option<pitwall_server::ServerConfig>,
    /// Keep the raw topic open until cancelled after the simulators finish: another
    /// producer (a benchmark's load generator) sends to it.
    pub hold_open: bool,
    /// Files to send to the raw topic besides (or instead of) the simulators
    /// (`pitwall up --replay`).
    pub replay: Option<crate::replay::ReplayOptions>,
}

/// The write API's way onto the in-process bus: the raw topic's producer, which waits
/// while a partition is full (the server turns a long wait into 503).
struct BusSink {
    producer: Producer,
    stats: Arc<Stats>,
}

impl pitwall_server::Sink for BusSink {
    fn publish(&self, messages: Vec<pitwall_server::RawMessage>) -> pitwall_server::SinkFuture<'_> {
        Box::pin(async move {
            let n = messages.len() as u64;
            for m in messages {
                self.producer
                    .send(m.key, m.payload, m.time)
                    .await
                    .map_err(|e| pitwall_server::SinkError::Failed(e.to_string()))?;
            }
            self.stats.produced.fetch_add(n, Ordering::Relaxed);
            Ok(())
        })
    }
}

/// The write API's way onto Kafka: every point of a request queued to the raw topic,
/// then all of them awaited (acks=all), so the answer comes after the brokers have them.
pub struct KafkaWriteSink {
    producer: pitwall_bus::kafka::KafkaProducer,
}

impl KafkaWriteSink {
    /// A producer for `raw`.
    pub fn new(config: &pitwall_bus::kafka::KafkaConfig, raw: &str) -> anyhow::Result<Self> {
        Ok(KafkaWriteSink {
            producer: pitwall_bus::kafka::KafkaProducer::new(config, raw)?,
        })
    }
}

impl std::fmt::Debug for KafkaWriteSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaWriteSink").finish_non_exhaustive()
    }
}

impl pitwall_server::Sink for KafkaWriteSink {
    fn publish(&self, messages: Vec<pitwall_server::RawMessage>) -> pitwall_server::SinkFuture<'_> {
        Box::pin(async move {
            let failed = |e: pitwall_bus::Error| pitwall_server::SinkError::Failed(e.to_string());
            let mut acks = Vec::with_capacity(messages.len());
            for m in &messages {
                acks.push(
                    self.producer
                        .enqueue(m.key.as_deref(), &m.payload, m.time)
                        .await
                        .map_err(failed)?,
                );
            }
            for ack in acks {
                ack.await.map_err(failed)?;
            }
            Ok(())
        })
    }
}

/// Binds the write API (an error at start if the address is taken) and serves it until
/// `stop` is cancelled.
pub(crate) async fn start_server(
    server: &pitwall_server::ServerConfig,
    config: &Config,
    sink: Arc<dyn pitwall_server::Sink>,
    lake: Option<(Lake, SchemaRegistry)>,
    live: pitwall_server::LiveHub,
    health: pitwall_server::Health,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let (lake, schemas) = lake.unzip();
    let live_hub = live.clone();
    let services = pitwall_server::Services {
        sink,
        processor: Arc::new(config.processor.clone()),
        stats: Arc::new(pitwall_server::WriteStats::default()),
        lake,
        schemas,
        live,
        health,
    };
    let (router, doors) =
        pitwall_server::app(server, services).map_err(|e| anyhow::anyhow!("{e}"))?;
    let bound = pitwall_server::Bound::bind(server, router)
        .await
        .map_err(|e| anyhow::anyhow!("{e}; pass --listen HOST:PORT (or set server.listen)"))?;
    let pg = pitwall_server::pg::PgBound::bind(server, doors.clone())
        .await
        .map_err(|e| {
            anyhow::anyhow!("{e}; pass --pg-listen HOST:PORT, or --pg-listen \"\" to turn it off")
        })?;
    let flight = pitwall_server::flight::FlightBound::bind(server, doors)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}; pass --flight-listen HOST:PORT, or --flight-listen \"\" to turn it off"
            )
        })?;
    let addr = bound.local_addr();
    let auth = if server.all_tokens().is_empty() {
        "no token needed"
    } else {
        "token required"
    };
    eprintln!(
        "dashboard on http://{addr}/ ({auth}); SQL /api/v1/query, live feed /api/v1/live, metrics /metrics"
    );
    if let Some(pg) = &pg {
        let pg_addr = pg.local_addr();
        eprintln!(
            "PostgreSQL on {pg_addr}: database {}, any user, {} (psql -h {} -p {} -d {})",
            pitwall_server::pg::DATABASE,
            if server.all_tokens().is_empty() {
                "no password"
            } else {
                "a token as the password"
            },
            pg_addr.ip(),
            pg_addr.port(),
            pitwall_server::pg::DATABASE
        );
    }
    if let Some(flight) = &flight {
        eprintln!(
            "Flight SQL on {}: grpc://{} ({}), catalog pitwall",
            flight.local_addr(),
            flight.local_addr(),
            if server.all_tokens().is_empty() {
                "no token"
            } else {
                "a token as the bearer or the password"
            }
        );
    }
    eprintln!(
        "write API on http://{addr}: InfluxDB v2 /api/v2/write, v1 /write, Telegraf JSON /api/v1/telegraf"
    );
    tracing::info!(%addr, "write API listening");
    let pg = pg.map(|pg| tokio::spawn(pg.run(stop.clone().cancelled_owned())));
    let flight = flight.map(|f| tokio::spawn(f.run(stop.clone().cancelled_owned())));
    Ok(tokio::spawn(async move {
        let served = bound
            .run(async move {
                stop.cancelled().await;
                // Open dashboard tabs are told at once, so they do not hold up the stop.
                live_hub.close();
            })
            .await;
        if let Some(flight) = flight {
            match flight.await {
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the Flight SQL listener stopped with an error")
                }
                Err(e) => tracing::warn!(error = %e, "the Flight SQL listener panicked"),
                Ok(Ok(())) => {}
            }
        }
        if let Some(pg) = pg {
            match pg.await {
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the PostgreSQL listener stopped with an error")
                }
                Err(e) => tracing::warn!(error = %e, "the PostgreSQL listener panicked"),
                Ok(Ok(())) => {}
            }
        }
        served
    }))
}

/// The output streams the live feed follows, with their live streams.
const LIVE: [(OutputStream, pitwall_server::LiveStream); 3] = [
    (OutputStream::Clean, pitwall_server::LiveStream::Clean),
    (OutputStream::Metrics, pitwall_server::LiveStream::Metrics),
    (
        OutputStream::Anomalies,
        pitwall_server::LiveStream::Anomalies,
    ),
];

/// Forwards the clean, metrics and anomalies topics of the in-process bus to the live
/// feed, until the topics end.
fn feed_live(
    bus: &InProcessBus,
    topics: &Topics,
    live: &pitwall_server::LiveHub,
) -> anyhow::Result<()> {
    for (output, stream) in LIVE {
        for mut consumer in bus.subscribe(output.topic(topics))? {
            let live = live.clone();
            tokio::spawn(async move {
                let mut batch = Vec::with_capacity(256);
                while consumer.recv_many(&mut batch, 256).await > 0 {
                    for m in batch.drain(..) {
                        live.feed(stream, m.key.as_deref(), m.payload);
                    }
                }
            });
        }
    }
    Ok(())
}

/// Follows the clean, metrics and anomalies topics on Kafka into the live feed, from
/// their ends, until `cancel`: each in a group of its own (`GROUP-live-PID-TOPIC`)
/// that commits nothing, so it takes nothing from the processors' group.
pub(crate) fn feed_live_from_kafka(
    config: &Config,
    topics: &Topics,
    live: &pitwall_server::LiveHub,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    for (output, stream) in LIVE {
        if !config.kafka.outputs.contains(&output) {
            tracing::warn!(
                "kafka.outputs leaves out {}: the live feed's {} stream stays empty (add it to kafka.outputs to follow it live)",
                stream.name(),
                stream.name()
            );
        }
        let mut kafka = config.kafka.clone();
        kafka.group_id = format!(
            "{}-live-{}-{}",
            config.kafka.group_id,
            std::process::id(),
            stream.name()
        );
        kafka
            .properties
            .insert("auto.offset.reset".into(), "latest".into());
        let consumer =
            pitwall_bus::kafka::KafkaConsumer::subscribe(&kafka, &[output.topic(topics)])?;
        let (live, cancel) = (live.clone(), cancel.clone());
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    m = consumer.recv() => match m {
                        Ok(m) => {
                            failures = 0;
                            live.feed(stream, m.key.as_deref(), m.payload);
                        }
                        Err(e) => {
                            failures += 1;
                            if failures == 1 || failures.is_power_of_two() {
                                tracing::warn!(error = %e, "live feed: cannot read from Kafka; retrying");
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
            consumer.close();
        });
    }
    Ok(())
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Events produced.
    pub produced: u64,
    /// Rows committed per table over the whole run.
    pub rows_committed: u64,
    /// Anomalies raised.
    pub anomalies: u64,
    /// Rejects.
    pub rejects: u64,
    /// Payloads corrupted on purpose.
    pub corrupted: u64,
    /// The faults the simulators injected.
    pub faults: Vec<InjectedFault>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Builds the simulators `config` enables.
pub fn simulators(config: &Config, start_time: i64) -> Mixed {
    let mut sims: Vec<Box<dyn Simulator>> = Vec::new();
    if config.sim.race_enabled {
        sims.push(Box::new(Race::new(
            config.sim.race.clone(),
            config.sim.seed,
            start_time,
        )));
    }
    if config.sim.iot_enabled {
        sims.push(Box::new(Fleet::new(
            config.sim.iot.clone(),
            config.sim.seed,
            start_time,
        )));
    }
    Mixed::new(sims)
}

/// Runs the lake's maintenance (compaction, expiry, orphans, retention) every
/// `lake.maintenance.interval` until `cancel`; nothing when the interval is zero. A run
/// cut short by `cancel` leaves at most unreferenced files, which a later run removes.
/// The task stops when the returned guard is dropped.
pub(crate) fn spawn_maintenance(
    lake: &Lake,
    config: &Config,
    cancel: &CancellationToken,
) -> MaintenanceTask {
    let m = config.lake.maintenance.clone();
    if m.interval.is_zero() {
        return MaintenanceTask(None);
    }
    let (lake, cancel) = (lake.clone(), cancel.clone());
    // Its own thread and runtime: compaction is CPU work (Parquet decoding and encoding)
    // that would otherwise occupy the pipeline's runtime threads and hold up its commits.
    let stop = CancellationToken::new();
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new().name("lake-maintenance".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "no runtime for lake maintenance; it will not run");
                return;
            }
        };
        runtime.block_on(async move {
            // A lake handle of its own: its catalog connections are returned to pools
            // this runtime serves, never holding up the pipeline's.
            let lake = match Lake::open(lake.config().clone()).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "lake maintenance could not open the lake; it will not run");
                    return;
                }
            };
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = thread_stop.cancelled() => return,
                    () = tokio::time::sleep(m.interval) => {}
                }
                let round = async {
                    let tables = match lake.table_idents().await {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::warn!(error = %e, "lake maintenance cannot list the tables; trying again in {}", humantime::format_duration(m.interval));
                            return;
                        }
                    };
                    // Each table's outcome as soon as it is done: a round over a big
                    // lake takes a while.
                    for ident in tables {
                        let started = Instant::now();
                        if let Some(line) = lake.maintain_table(&ident, &m).await {
                            tracing::info!(took_ms = started.elapsed().as_millis() as u64, "lake maintenance: {ident}: {line}");
                        }
                    }
                };
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = thread_stop.cancelled() => return,
                    () = round => {}
                }
            }
        });
    });
    match thread {
        Ok(_) => MaintenanceTask(Some(stop)),
        Err(e) => {
            tracing::warn!(error = %e, "could not start lake maintenance");
            MaintenanceTask(None)
        }
    }
}

/// Stops the scheduled maintenance when dropped (a run in progress stops at its next
/// await; at most unreferenced files are left, which a later run removes).
pub(crate) struct MaintenanceTask(Option<CancellationToken>);

impl Drop for MaintenanceTask {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.cancel();
        }
    }
}

/// Opens the lake `config` names, and a schema registry seeded with its clean tables'
/// column types so a restart keeps them.
pub(crate) async fn open_lake(config: &Config) -> anyhow::Result<(Lake, SchemaRegistry)> {
    let lake = Lake::open(config.lake.clone())
        .await
        .with_context(|| format!("opening the lake ({})", config.lake.describe()))?;
    let schemas = SchemaRegistry::with_limits(pitwall_stream::SchemaLimits {
        max_tables: config.lake.max_tables,
        max_columns: config.lake.max_columns,
    });
    for (m, fields) in lake.clean_schemas().await? {
        schemas.seed(&m, fields);
    }
    Ok((lake, schemas))
}

/// Creates, through the admin API, the topics of `config`'s prefix that do not exist.
pub(crate) async fn ensure_topics(config: &Config) -> anyhow::Result<Topics> {
    let topics = Topics::with_prefix(&config.bus.topic_prefix);
    pitwall_bus::kafka::ensure_topics(&config.kafka, &topics.all())
        .await
        .context("making sure pitwall's topics exist")?;
    Ok(topics)
}

/// The in-process bus `config` asks for.
pub fn bus_config(config: &Config) -> BusConfig {
    BusConfig {
        topics: Topics::with_prefix(&config.bus.topic_prefix),
        partitions: config.bus.partitions,
        capacity: config.bus.capacity,
    }
}

/// How long alert routes may go on sending once the pipeline has stopped.
pub(crate) const ALERTS_GRACE: Duration = Duration::from_secs(5);

/// Runs the whole pipeline in this process until the simulators finish or `cancel`
/// fires, then drains the bus, closes every window and commits everything.
pub async fn run_embedded(
    config: Config,
    run: SimRun,
    cancel: CancellationToken,
    stats: Arc<Stats>,
) -> anyhow::Result<Summary> {
    let bus = InProcessBus::new(bus_config(&config));
    run_on_bus(bus, config, run, cancel, stats).await
}

/// [`run_embedded`] on a bus the caller made, so it can read the output topics
/// (clean, metrics, anomalies, dlq, late) while the pipeline runs. Output topics are
/// closed at the end, so their readers see the end too.
pub async fn run_on_bus(
    bus: InProcessBus,
    config: Config,
    run: SimRun,
    cancel: CancellationToken,
    stats: Arc<Stats>,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let (lake, schemas) = open_lake(&config).await?;
    let _maintenance = spawn_maintenance(&lake, &config, &cancel);
    let topics = bus.config().topics.clone();
    let consumers = bus.subscribe(&topics.raw)?;
    let processor_config = Arc::new(config.processor.clone());
    let (alerts, alert_routes) = crate::alerts::start(&config.alerts, &config.lake.data_dir)?;

    // Processors hand their outputs to the one lake writer, bounded by rows in flight.
    let (out_tx, out_rx) = Handoff::new();
    // Continue the offsets the lake has recorded, so every commit's claim holds. (The
    // in-process bus keeps nothing between runs, so there is nothing to replay.)
    let progress = lake
        .committed_progress()
        .await
        .context("reading the lake's committed offsets")?;
    let mut lake_writer_state = LakeWriter::with_progress(lake.clone(), &progress);
    for consumer in &consumers {
        let key = PartitionId::new(topics.raw.as_str(), consumer.partition);
        let plan = pitwall_lake::ResumePlan::from_lake(&progress, &key);
        bus.resume(&topics.raw, consumer.partition, plan.frontier)
            .await?;
        lake_writer_state.assign(&key, &plan);
    }
    let writer = tokio::spawn(
        lake_writer(
            lake_writer_state,
            out_rx,
            Arc::clone(&stats),
            config.lake.commit_rows.saturating_mul(4),
        )
        .instrument(tracing::info_span!("lake-writer")),
    );
    let mut processors = Vec::new();
    for consumer in consumers {
        let p = Processor::new(
            Arc::clone(&processor_config),
            schemas.clone(),
            &topics.raw,
            consumer.partition,
        );
        let span = tracing::info_span!("processor", partition = consumer.partition);
        let publisher = Publisher::new(
            BusOutputs::new(&bus, &topics)?,
            Arc::clone(&processor_config),
            alerts.clone(),
        );
        processors.push(tokio::spawn(
            process_partition(
                p,
                consumer,
                publisher,
                out_tx.clone(),
                Arc::clone(&stats),
                processor_config.idle_timeout,
            )
            .instrument(span),
        ));
    }
    drop(out_tx);

    let stop_server = CancellationToken::new();
    let server = match &run.serve {
        Some(s) => {
            let sink = Arc::new(BusSink {
                producer: bus.producer(&topics.raw)?,
                stats: Arc::clone(&stats),
            });
            let live = pitwall_server::LiveHub::default();
            feed_live(&bus, &topics, &live)?;
            Some(
                start_server(
                    s,
                    &config,
                    sink,
                    Some((lake.clone(), schemas.clone())),
                    live,
                    stats.health.clone(),
                    stop_server.clone(),
                )
                .await?,
            )
        }
        None => None,
    };
    let mut producer = bus.producer(&topics.raw)?;
    let mut sim = simulators(&config, run.start_time);
    let produced = match &run.replay {
        None => produce(&config, &run, &mut sim, &mut producer, &cancel, &stats).await,
        Some(opts) => {
            let simulated = async {
                if config.sim.race_enabled || config.sim.iot_enabled {
                    produce(&config, &run, &mut sim, &mut producer, &cancel, &stats).await
                } else {
                    Ok(())
                }
            };
            let replayed = async {
                let mut raw = bus.producer(&topics.raw)?;
                let mut rejects = crate::replay::RejectFile::new(
                    config.lake.data_dir.join("replay-rejects.jsonl"),
                );
                let summary =
                    replayed(&config, opts, &mut raw, &mut rejects, &cancel, &stats).await?;
                rejects.finish().await?;
                if summary.rejected_total() > 0 {
                    eprintln!(
                        "  the bad lines, with their reasons: {}",
                        rejects.path().display()
                    );
                }
                anyhow::Ok(())
            };
            let (simulated, replayed) = tokio::join!(simulated, replayed);
            simulated.and(replayed)
        }
    };
    if run.hold_open || server.is_some() {
        // Serving or fed from outside: the run lasts until cancelled, then writes in
        // flight finish before the topic ends.
        cancel.cancelled().await;
    }
    if let Some(server) = server {
        stop_server.cancel();
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the write API stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "the write API task panicked"),
        }
    }
    // Everything sent is on the bus; ending the topic lets processors drain and finish.
    bus.close(&topics.raw).await?;
    // A failing writer makes processors and then the producer fail too: report the
    // writer's error, which is the cause, before theirs.
    let mut errors = Vec::new();
    match writer.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => errors.push(e),
        Err(e) => errors.push(anyhow::Error::from(e).context("the lake writer task panicked")),
    }
    for p in processors {
        match p.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(anyhow::Error::from(e).context("a processor task panicked")),
        }
    }
    if let Err(e) = produced {
        errors.push(e);
    }
    // Episodes of the last commit go out before the end (what cannot go in time waits
    // in the outbox for the next start).
    alert_routes.finish(ALERTS_GRACE).await;
    for t in topics.all() {
        if t != topics.raw {
            bus.close(t).await?;
        }
    }
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    Ok(Summary {
        produced: Stats::get(&stats.produced),
        rows_committed: Stats::get(&stats.rows_committed),
        anomalies: Stats::get(&stats.anomalies),
        rejects: Stats::get(&stats.rejects),
        corrupted: Stats::get(&stats.corrupted),
        faults: sim.faults(),
        elapsed: started.elapsed(),
    })
}

/// `pitwall up --replay`: the files into `raw` (bad lines into `rejects`), counted as
/// produced; then the summary and where the dashboard shows the replayed events.
pub(crate) async fn replayed<R: Publish, D: Publish>(
    config: &Config,
    opts: &crate::replay::ReplayOptions,
    raw: &mut R,
    rejects: &mut D,
    cancel: &CancellationToken,
    stats: &Stats,
) -> anyhow::Result<crate::replay::ReplaySummary> {
    let counted = AtomicU64::new(0);
    let summary = crate::replay::replay_into(config, opts, raw, rejects, cancel, |sent| {
        let before = counted.swap(sent, Ordering::Relaxed);
        stats.produced.fetch_add(sent - before, Ordering::Relaxed);
    })
    .await?;
    eprintln!("{}", crate::replay::describe(&summary));
    if let Some((first, last)) = summary.span {
        let ms = |ns: i64| ns.div_euclid(1_000_000);
        eprintln!(
            "the replayed events run from {} to {}: on the dashboard, /?range=lake&from={}&to={}",
            pitwall_core::rfc3339_ms(first),
            pitwall_core::rfc3339_ms(last),
            ms(first),
            ms(last) + 1
        );
    }
    Ok(summary)
}

/// Steps the simulators and sends their points until the simulated end, or `cancel`.
pub async fn produce<S: Publish>(
    config: &Config,
    run: &SimRun,
    sim: &mut Mixed,
    producer: &mut S,
    cancel: &CancellationToken,
    stats: &Stats,
) -> anyhow::Result<()> {
    let end_time = run.sim_duration.map(|d| {
        run.start_time
            .saturating_add(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    });
    let speed = config.sim.speed;
    let wall_start = Instant::now();
    let mut points = Vec::new();
    let mut payload = Vec::with_capacity(512);
    let mut corrupter = Corrupter::new(config);
    loop {
        let t = sim.next_time();
        if end_time.is_some_and(|end| t >= end) {
            return Ok(());
        }
        if speed > 0.0 {
            // Real time times `speed`: wait until the wall clock catches up with sim time.
            let due = Duration::from_nanos(((t - run.start_time).max(0) as f64 / speed) as u64);
            let now = wall_start.elapsed();
            if due > now {
                tokio::select! {
                    () = tokio::time::sleep(due - now) => {}
                    () = cancel.cancelled() => return Ok(()),
                }
            }
        }
        if cancel.is_cancelled() {
            return Ok(());
        }
        points.clear();
        sim.step(&mut points);
        for p in &points {
            payload.clear();
            if corrupter.corrupt(p, &mut payload) {
                stats.corrupted.fetch_add(1, Ordering::Relaxed);
            } else {
                json::encode_into(p, &mut payload)?;
            }
            // The simulator is the producer: the message timestamp is the event time.
            let send = producer.send(
                config.processor.source_key(p),
                Bytes::copy_from_slice(&payload),
                p.time,
            );
            tokio::select! {
                r = send => { r?; }
                () = cancel.cancelled() => return Ok(()),
            }
            stats.produced.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Turns a deterministic share of payloads into malformed ones.
struct Corrupter {
    chance: f64,
    rng: ChaCha8Rng,
    next_kind: u32,
}

impl Corrupter {
    fn new(config: &Config) -> Self {
        let per_minute = |n: usize, hz: f64, on: bool| if on { n as f64 * hz * 60.0 } else { 0.0 };
        let events_per_minute = per_minute(
            config.sim.race.cars,
            config.sim.race.hz,
            config.sim.race_enabled,
        ) + per_minute(
            config.sim.iot.sensors,
            config.sim.iot.hz,
            config.sim.iot_enabled,
        );
        Corrupter {
            chance: config.sim.corrupt_per_minute / events_per_minute.max(1.0),
            rng: ChaCha8Rng::seed_from_u64(config.sim.seed ^ 0x00c0_ffee),
            next_kind: 0,
        }
    }

    /// Writes a malformed payload for `p` into `out` and returns true, or returns false.
    fn corrupt(&mut self, p: &pitwall_core::Point, out: &mut Vec<u8>) -> bool {
        if self.chance <= 0.0 || self.rng.random::<f64>() >= self.chance {
            return false;
        }
        let mut q = p.clone();
        self.next_kind = (self.next_kind + 1) % 4;
        match self.next_kind {
            0 => {
                let _ = json::encode_into(&q, out);
                out.truncate(out.len() / 2);
            }
            1 => {
                q.tags.clear();
                let _ = json::encode_into(&q, out);
            }
            2 => {
                q.time /= 1_000_000_000;
                let _ = json::encode_into(&q, out);
            }
            _ => out.extend_from_slice(
                format!("{} at {}: sensor offline", q.measurement, q.time).as_bytes(),
            ),
        }
        true
    }
}

/// Outputs encoded for their topics: every message's key and payload written one after
/// another into one buffer, so encoding allocates nothing per message and the in-process
/// bus hands out slices of one shared buffer.
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    bytes: Vec<u8>,
    messages: Vec<EncodedMessage>,
}

#[derive(Debug)]
struct EncodedMessage {
    stream: OutputStream,
    start: usize,
    /// Where the key ends (it starts at `start`); `None` for no key.
    key_end: Option<usize>,
    end: usize,
    time: i64,
}

impl EncodedMessage {
    /// Where its key and its payload are in the buffer.
    fn ranges(&self) -> (Option<std::ops::Range<usize>>, std::ops::Range<usize>) {
        (
            self.key_end.map(|e| self.start..e),
            self.key_end.unwrap_or(self.start)..self.end,
        )
    }
}

impl Encoded {
    fn push(
        &mut self,
        stream: OutputStream,
        key: Option<&str>,
        time: i64,
        write: impl FnOnce(&mut Vec<u8>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let start = self.bytes.len();
        let key_end = key.map(|k| {
            self.bytes.extend_from_slice(k.as_bytes());
            self.bytes.len()
        });
        if let Err(e) = write(&mut self.bytes) {
            self.bytes.truncate(start);
            return Err(e);
        }
        self.messages.push(EncodedMessage {
            stream,
            start,
            key_end,
            end: self.bytes.len(),
            time,
        });
        Ok(())
    }

    /// Every message as `(stream, key, payload, event time)`, in the order encoded.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (OutputStream, Option<&[u8]>, &[u8], i64)> {
        self.messages.iter().map(|m| {
            let (key, payload) = m.ranges();
            (
                m.stream,
                key.map(|k| &self.bytes[k]),
                &self.bytes[payload],
                m.time,
            )
        })
    }

    /// Every message with its key and payload as shared slices of one buffer.
    fn into_shared(self) -> impl Iterator<Item = (OutputStream, Option<Bytes>, Bytes, i64)> {
        let bytes = Bytes::from(self.bytes);
        self.messages.into_iter().map(move |m| {
            let (key, payload) = m.ranges();
            (
                m.stream,
                key.map(|k| bytes.slice(k)),
                bytes.slice(payload),
                m.time,
            )
        })
    }

    /// Empties it, keeping its memory.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.messages.clear();
    }
}

/// Encodes `o` for the output topics `want` selects, appending to `out`: JSON, keyed by
/// source id (DLQ messages carry no key), timestamped with event time; the metrics topic
/// gets one message per window fire.
fn encode_outputs(
    o: &Outputs,
    config: &pitwall_stream::ProcessorConfig,
    want: impl Fn(OutputStream) -> bool,
    out: &mut Encoded,
) -> anyhow::Result<()> {
    if want(OutputStream::Clean) {
        for p in &o.clean {
            out.push(OutputStream::Clean, config.source_id(p), p.time, |buf| {
                Ok(json::encode_into(p, buf)?)
            })?;
        }
    }
    if want(OutputStream::Metrics) {
        // One message per source and window fire, every field's aggregates in it.
        for fire in window_fires(&o.windows) {
            let w = &fire[0];
            out.push(
                OutputStream::Metrics,
                Some(&w.source_id),
                w.window_end,
                |buf| {
                    write_window_fire_json(fire, buf);
                    Ok(())
                },
            )?;
        }
    }
    if want(OutputStream::Anomalies) {
        for a in &o.anomalies {
            out.push(OutputStream::Anomalies, Some(&a.source_id), a.time, |buf| {
                write_json(a, buf);
                Ok(())
            })?;
        }
    }
    if want(OutputStream::Dlq) {
        for r in &o.rejects {
            out.push(OutputStream::Dlq, None, r.ingest_time, |buf| {
                write_json(r, buf);
                Ok(())
            })?;
        }
    }
    if want(OutputStream::Late) {
        for l in &o.late {
            out.push(OutputStream::Late, Some(&l.source_id), l.time, |buf| {
                write_json(l, buf);
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// The output topics of a runtime, on the in-process bus or on Kafka: which streams are
/// wanted, and sending a hand-over's encoded messages to them.
#[allow(async_fn_in_trait)]
pub(crate) trait OutputTopics {
    /// Whether `stream`'s messages are wanted: on the in-process bus when its topic has a
    /// reader, on Kafka when `kafka.outputs` names it. Nothing is encoded for the rest.
    fn wants(&self, stream: OutputStream) -> bool;

    /// Sends every message of `encoded` to its stream's topic, in order, and empties it.
    async fn send(&self, encoded: &mut Encoded) -> anyhow::Result<()>;
}

/// Puts the processor's outputs out for live readers, as JSON keyed by source id:
/// episodes to the alert outbox first (synced), then every wanted stream to its topic.
pub(crate) struct Publisher<T> {
    topics: T,
    config: Arc<pitwall_stream::ProcessorConfig>,
    alerts: crate::alerts::Alerts,
    /// The messages of a hand-over; its memory is kept from one to the next where the
    /// topics copy what they send (Kafka), and goes with the messages where they share it
    /// (the in-process bus).
    encoded: Encoded,
}

impl<T: OutputTopics> Publisher<T> {
    pub(crate) fn new(
        topics: T,
        config: Arc<pitwall_stream::ProcessorConfig>,
        alerts: crate::alerts::Alerts,
    ) -> Self {
        Publisher {
            topics,
            config,
            alerts,
            encoded: Encoded::default(),
        }
    }

    /// Publishes `o` (before it goes to the lake writer: at least once on the topics).
    pub(crate) async fn publish(&mut self, o: &Outputs) -> anyhow::Result<()> {
        self.alerts.record(&o.anomalies);
        self.encoded.clear();
        let topics = &self.topics;
        encode_outputs(o, &self.config, |s| topics.wants(s), &mut self.encoded)?;
        self.topics.send(&mut self.encoded).await
    }
}

/// The in-process bus's output topics.
struct BusOutputs {
    clean: Producer,
    metrics: Producer,
    anomalies: Producer,
    dlq: Producer,
    late: Producer,
}

impl BusOutputs {
    fn new(bus: &InProcessBus, topics: &Topics) -> anyhow::Result<Self> {
        Ok(BusOutputs {
            clean: bus.producer(&topics.clean)?,
            metrics: bus.producer(&topics.metrics)?,
            anomalies: bus.producer(&topics.anomalies)?,
            dlq: bus.producer(&topics.dlq)?,
            late: bus.producer(&topics.late)?,
        })
    }

    fn producer(&self, s: OutputStream) -> &Producer {
        match s {
            OutputStream::Clean => &self.clean,
            OutputStream::Metrics => &self.metrics,
            OutputStream::Anomalies => &self.anomalies,
            OutputStream::Dlq => &self.dlq,
            OutputStream::Late => &self.late,
        }
    }
}

impl OutputTopics for BusOutputs {
    fn wants(&self, stream: OutputStream) -> bool {
        self.producer(stream).has_consumer()
    }

    /// Readers get slices of one shared buffer (so its memory goes with them).
    async fn send(&self, encoded: &mut Encoded) -> anyhow::Result<()> {
        for (s, key, payload, time) in std::mem::take(encoded).into_shared() {
            self.producer(s).send(key, payload, time).await?;
        }
        Ok(())
    }
}

/// Outputs of one partition for the lake writer, built into the lake's columns by the
/// partition's task, with the processor's checkpoint after them and the share of the
/// hand-off's row budget they hold until the writer takes them.
type Batch = (
    PartitionId,
    TableRows,
    pitwall_stream::Checkpoint,
    tokio::sync::OwnedSemaphorePermit,
);

/// Rows handed from the processors to the lake writer that it has not yet taken into its
/// buffer. Roomy, so processors go on (and anomalies go out) while the writer commits;
/// bounded in rows, not batches, so a processor far ahead of the writer (a backfill at
/// full speed) waits instead of holding the whole input in memory (batches of 1,024
/// messages, ~3 rows each, at 4,096 batches in a row took 13 GB within 30 s).
const HANDOFF_ROWS: usize = 262_144;

/// The processors' side of the channel to the lake writer.
#[derive(Clone)]
struct Handoff {
    tx: mpsc::Sender<Batch>,
    budget: Arc<tokio::sync::Semaphore>,
}

impl Handoff {
    fn new() -> (Handoff, mpsc::Receiver<Batch>) {
        // Many small batches (a few events each at low rates) fit as well.
        let (tx, rx) = mpsc::channel(4096);
        (
            Handoff {
                tx,
                budget: Arc::new(tokio::sync::Semaphore::new(HANDOFF_ROWS)),
            },
            rx,
        )
    }

    /// Waits for room, then builds `outputs` into the lake's columns and hands them
    /// over; false if the writer has stopped.
    async fn send(
        &self,
        key: PartitionId,
        outputs: Outputs,
        checkpoint: pitwall_stream::Checkpoint,
    ) -> bool {
        // A batch larger than the whole budget takes all of it.
        let rows = u32::try_from(outputs.len().clamp(1, HANDOFF_ROWS)).unwrap_or(u32::MAX);
        let Ok(permit) = Arc::clone(&self.budget).acquire_many_owned(rows).await else {
            return false;
        };
        let rows = TableRows::of(&outputs);
        drop(outputs);
        self.tx.send((key, rows, checkpoint, permit)).await.is_ok()
    }
}

/// Processes one partition until the topic ends, then closes its windows.
async fn process_partition(
    mut processor: Processor,
    mut consumer: PartitionConsumer,
    mut publisher: Publisher<BusOutputs>,
    out: Handoff,
    stats: Arc<Stats>,
    idle_timeout: Duration,
) -> anyhow::Result<()> {
    let mut batch: Vec<Message> = Vec::with_capacity(1024);
    let key = PartitionId::new(processor.topic(), processor.partition());
    let mut next = 0;
    let mut last_data = Instant::now();
    loop {
        batch.clear();
        let n = if idle_timeout.is_zero() {
            consumer.recv_many(&mut batch, 1024).await
        } else {
            // recv_many is cancel safe: a timeout loses no message.
            match tokio::time::timeout(idle_timeout, consumer.recv_many(&mut batch, 1024)).await {
                Ok(n) => n,
                Err(_) => {
                    // Idle: event time moves on by the time that passed. (Nothing on
                    // the in-process bus outlives the run, so there is no replay to
                    // keep in step; over Kafka the tick goes through the raw topic.)
                    if let Some(time) = processor.idle_tick_time(last_data.elapsed()) {
                        let mut outputs = Outputs::default();
                        processor.tick(time, &mut outputs);
                        if !outputs.is_empty() {
                            hand_over(
                                &processor,
                                next,
                                outputs,
                                &key,
                                &mut publisher,
                                &out,
                                &stats,
                            )
                            .await?;
                        }
                    }
                    continue;
                }
            }
        };
        last_data = Instant::now();
        let mut outputs = Outputs::default();
        if n == 0 {
            processor.finish(&mut outputs);
            count(&stats, &outputs);
            publisher.publish(&outputs).await?;
            if !outputs.is_empty() {
                out.send(key, outputs, processor.checkpoint(next)).await;
            }
            return Ok(());
        }
        for m in &batch {
            processor.process(m, &mut outputs);
            next = m.offset + 1;
        }
        stats.processed.fetch_add(n as u64, Ordering::Relaxed);
        crate::metrics::partition(
            processor.topic(),
            processor.partition(),
            Some(consumer.pending() as i64),
            processor.watermark(),
        );
        hand_over(
            &processor,
            next,
            outputs,
            &key,
            &mut publisher,
            &out,
            &stats,
        )
        .await?;
    }
}

/// Counts `outputs`, publishes them to live readers (before the lake commit: at least
/// once, keyed by source) and hands them to the lake writer with the checkpoint at `next`.
async fn hand_over(
    processor: &Processor,
    next: i64,
    outputs: Outputs,
    key: &PartitionId,
    publisher: &mut Publisher<BusOutputs>,
    out: &Handoff,
    stats: &Stats,
) -> anyhow::Result<()> {
    count(stats, &outputs);
    publisher.publish(&outputs).await?;
    if !out
        .send(key.to_owned(), outputs, processor.checkpoint(next))
        .await
    {
        anyhow::bail!(
            "the lake writer stopped; partition {} cannot hand over its output",
            processor.partition()
        );
    }
    Ok(())
}

/// Buffers outputs and commits when due; at the end commits the rest. A failed commit
/// keeps its rows and is retried with backoff (up to [`MAX_BACKOFF`]) for as long as it
/// takes: storage or a catalog that is down for minutes loses nothing. Meanwhile
/// `/health` and the status line say so, and once `max_buffered` rows wait the writer
/// takes nothing more, so the hand-off fills, the processors wait and the bus pushes
/// back on writers (503) instead of memory growing.
async fn lake_writer(
    mut writer: LakeWriter,
    mut rx: mpsc::Receiver<Batch>,
    stats: Arc<Stats>,
    max_buffered: usize,
) -> anyhow::Result<()> {
    let mut failures = 0u32;
    let mut retry_at = Instant::now();
    loop {
        let holding = failures > 0 && writer.buffered() >= max_buffered;
        let wait = if failures > 0 {
            retry_at.saturating_duration_since(Instant::now())
        } else {
            writer.time_to_due()
        }
        .max(Duration::from_millis(10));
        let next = tokio::select! {
            o = rx.recv(), if !holding => o.map(Some),
            () = tokio::time::sleep(wait) => Some(None),
        };
        match next {
            // The rows leave the hand-off's budget once in the writer's buffer (which
            // its commit_rows bounds).
            Some(Some((key, rows, checkpoint, _permit))) => {
                writer.append_rows(&key, rows, checkpoint)
            }
            Some(None) => {}
            None => break,
        }
        let due = if failures > 0 {
            Instant::now() >= retry_at
        } else {
            writer.due()
        };
        if due {
            match commit(&mut writer, &stats).await {
                Ok(()) => {
                    failures = 0;
                    stats.health.commit_ok();
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    failures = stats.health.commit_failed(&error);
                    let backoff = backoff(failures);
                    retry_at = Instant::now() + backoff;
                    tracing::warn!(
                        error = %error,
                        failures,
                        buffered = writer.buffered(),
                        retry_in = ?backoff,
                        "lake commit failed; keeping the rows and retrying"
                    );
                }
            }
        }
    }
    // End of input: commit what is left, retrying a few times before giving up.
    let mut attempt = 0;
    while writer.buffered() > 0 {
        match commit(&mut writer, &stats).await {
            Ok(()) => stats.health.commit_ok(),
            Err(e) if attempt < 5 => {
                attempt += 1;
                stats.health.commit_failed(&format!("{e:#}"));
                tracing::warn!(error = %e, attempt, "final lake commit failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => {
                return Err(e.context("the final lake commit failed; the rows were not saved"));
            }
        }
    }
    Ok(())
}

/// The longest wait between two tries of a failing commit.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The wait before the next try after `failures` failed commits in a row: 0.5 s,
/// doubling, at most [`MAX_BACKOFF`].
pub(crate) fn backoff(failures: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << failures.saturating_sub(1).min(10)))
        .min(MAX_BACKOFF)
}

async fn commit(writer: &mut LakeWriter, stats: &Stats) -> anyhow::Result<()> {
    let started = Instant::now();
    let s = writer.commit().await?;
    record_commit(stats, &s, started.elapsed());
    Ok(())
}

/// Counts a finished commit in `stats`.
pub(crate) fn record_commit(stats: &Stats, s: &pitwall_lake::CommitStats, took: Duration) {
    crate::metrics::commit(s, took);
    stats
        .rows_committed
        .fetch_add(s.total_rows() as u64, Ordering::Relaxed);
    let clean: usize = s
        .rows
        .iter()
        .filter(|(k, _)| k.starts_with("clean."))
        .map(|(_, v)| v)
        .sum();
    stats
        .clean_committed
        .fetch_add(clean as u64, Ordering::Relaxed);
    if s.total_rows() > 0 {
        stats.commits.fetch_add(1, Ordering::Relaxed);
        let mut times = stats
            .commit_seconds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if times.len() < 100_000 {
            times.push(took.as_secs_f64());
        }
    }
    tracing::debug!(rows = s.total_rows(), files = s.files, "committed");
}
