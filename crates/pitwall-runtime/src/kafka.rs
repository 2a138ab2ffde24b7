//! `pitwall process`: the processor as its own process, reading the raw topic from Kafka
//! in a consumer group and writing the lake exactly once.
//!
//! Partitions are taken up inside the group's rebalance: the lake's progress for the
//! partition says where to replay from (so open windows and rule episodes are rebuilt
//! exactly) and below which offset each table already has its rows; the assignment
//! itself starts at that offset. A revoked partition's buffered rows are dropped, and a
//! fenced commit (another member committed the partition meanwhile) drops ours and takes
//! the partition up again from the lake. Outputs also go to their Kafka topics (JSON
//! keyed by source id), acknowledged before each lake commit: at least once there.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use pitwall_bus::Publish;
use pitwall_bus::Topics;
use pitwall_bus::kafka::{
    KafkaConsumer, KafkaProducer, KafkaPublisher, KafkaTopic, Rebalance, StartHook,
};
use pitwall_core::PartitionId;
use pitwall_lake::progress::names;
use pitwall_lake::{Lake, LakeWriter, ResumePlan};
use pitwall_stream::{Outputs, Processor, ProcessorConfig, SchemaRegistry, TICK_KEY, tick_payload};
use tokio_util::sync::CancellationToken;

use crate::commits::{Commits, Gate, Landed};
use crate::config::Config;
use crate::metrics::Stats;
use crate::open::{ensure_topics, open_lake, spawn_maintenance};
use crate::produce::{SimRun, produce, replayed, simulators};
use crate::publish::{Encoded, OutputTopics, Publisher};
use crate::serve::{KafkaWriteSink, feed_live_from_kafka, start_server};

/// The longest wait between two tries of a failing commit: short, since the rows wait
/// in Kafka, not in memory.
const MAX_KAFKA_BACKOFF: Duration = Duration::from_secs(5);

/// How long a member may hold no partition, alone in its group, before it rejoins.
const STRANDED_AFTER: Duration = Duration::from_secs(15);

/// The most messages taken off the consumer's queue at once.
const RECV_BATCH: usize = 512;

/// The longest processed outputs wait before they go to their topics and the writer.
const HAND_OVER_AFTER: Duration = Duration::from_millis(20);

/// How `pitwall process` runs.
#[derive(Debug, Clone, Default)]
pub struct ProcessOptions {
    /// Exit once no message has arrived for this long, every partition is read to the
    /// end of the topic and everything is committed.
    pub exit_when_idle: Option<Duration>,
}

/// [`crate::embedded::run_embedded`] over Kafka: the simulators send to the raw topic (as `pitwall
/// ingest`) while the processor reads it in the consumer group (as `pitwall process`),
/// until `cancel`. What was processed is committed; what was sent but not processed
/// waits in Kafka for the next run.
pub async fn run_on_kafka(
    config: Config,
    run: SimRun,
    cancel: CancellationToken,
    stats: Arc<Stats>,
) -> anyhow::Result<()> {
    let topics = ensure_topics(&config).await?;
    let server = match &run.serve {
        Some(s) => {
            let sink = Arc::new(KafkaWriteSink::new(&config.kafka, &topics.raw)?);
            let (lake, schemas) = open_lake(&config).await?;
            let live = pitwall_server::LiveHub::default();
            feed_live_from_kafka(&config, &topics, &live, &cancel)?;
            Some(
                start_server(
                    s,
                    &config,
                    sink,
                    Some((lake, schemas)),
                    live,
                    stats.health.clone(),
                    cancel.clone(),
                )
                .await?,
            )
        }
        None => None,
    };
    let producer = {
        let (config, cancel, stats) = (config.clone(), cancel.clone(), Arc::clone(&stats));
        tokio::spawn(async move {
            let simulated = async {
                if run.replay.is_some() && !config.sim.race_enabled && !config.sim.iot_enabled {
                    return Ok(());
                }
                let mut sink = KafkaTopic::new(&config.kafka, &topics.raw)?;
                let mut sim = simulators(&config, run.start_time);
                produce(&config, &run, &mut sim, &mut sink, &cancel, &stats).await?;
                sink.finish().await?;
                anyhow::Ok(())
            };
            let replayed = async {
                if let Some(opts) = &run.replay {
                    let mut raw = KafkaTopic::new(&config.kafka, &topics.raw)?;
                    let mut dlq = KafkaTopic::new(&config.kafka, &topics.dlq)?;
                    replayed(&config, opts, &mut raw, &mut dlq, &cancel, &stats).await?;
                    raw.finish().await?;
                    dlq.finish().await?;
                }
                anyhow::Ok(())
            };
            let (simulated, replayed) = tokio::join!(simulated, replayed);
            simulated.and(replayed)
        })
    };
    let processed = self::run(config, ProcessOptions::default(), cancel.clone(), stats).await;
    cancel.cancel();
    producer.await.context("the simulator task panicked")??;
    if let Some(server) = server {
        server.await.context("the write API task panicked")??;
    }
    processed
}

/// One partition this member owns.
struct Part {
    processor: Processor,
    plan: ResumePlan,
    /// From this offset on, the plan suppresses nothing.
    replay_until: i64,
    /// The next offset to process.
    next: i64,
    /// Outputs not yet handed to the lake writer.
    outputs: Outputs,
    /// Set while reading is being moved back to `next` (see [`recover_gap`]).
    seek: Option<Seek>,
    /// When the last message was processed (or the partition taken up).
    progressed: Instant,
    /// When the last data (not a tick) arrived, or the partition was taken up.
    last_data: Instant,
    /// When this processor last sent the partition a watermark tick.
    last_tick: Option<Instant>,
}

/// A seek back in progress: when it was made and how far before the wanted offset.
#[derive(Debug, Clone, Copy)]
struct Seek {
    at: Instant,
    before: i64,
}

impl Part {
    fn new(processor: Processor, plan: ResumePlan) -> Self {
        Part {
            processor,
            next: plan.base.replay_from,
            replay_until: plan.replay_until(),
            plan,
            outputs: Outputs::default(),
            seek: None,
            progressed: Instant::now(),
            last_data: Instant::now(),
            last_tick: None,
        }
    }
}

/// Runs the processor until `cancel` (or idle, if asked), then commits what it has.
pub async fn run(
    config: Config,
    options: ProcessOptions,
    cancel: CancellationToken,
    stats: Arc<Stats>,
) -> anyhow::Result<()> {
    let topics = ensure_topics(&config).await?;
    let (lake, schemas) = open_lake(&config).await?;
    let _maintenance = spawn_maintenance(&lake, &config, &cancel);
    let writer = LakeWriter::open(lake.clone())
        .await
        .context("reading the lake's committed offsets")?;
    let plans: Arc<Mutex<HashMap<PartitionId, ResumePlan>>> = Arc::default();
    let hook: StartHook = {
        let (lake, plans, handle) = (
            lake.clone(),
            Arc::clone(&plans),
            tokio::runtime::Handle::current(),
        );
        Arc::new(move |topic: &str, partition: u32| {
            let key = PartitionId::new(topic, partition);
            let plan = tokio::task::block_in_place(|| handle.block_on(lake.resume_plan(&key)))
                .map_err(|e| format!("reading the lake's progress: {e}"))?;
            let start = plan.base.replay_from;
            tracing::info!(
                partition = %key,
                replay_from = start,
                frontier = plan.frontier,
                behind = ?plan.suppress,
                "taking up the partition from the lake"
            );
            plans
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key, plan);
            Ok(start)
        })
    };
    let consumer = KafkaConsumer::subscribe_with(&config.kafka, &[&topics.raw], Some(hook))?;
    let end_offsets = EndOffsets::watch(&config.kafka, &topics.raw, &cancel)?;
    let producer = KafkaProducer::new(&config.kafka, &topics.clean)?;
    let processor_config = Arc::new(config.processor.clone());
    let (alerts, alert_routes) = crate::alerts::start(&config.alerts, &config.lake.data_dir)?;
    let mut parts: HashMap<u32, Part> = HashMap::new();
    let publisher = Arc::new(KafkaPublisher::new(&config.kafka)?);
    let mut outputs = Publisher::new(
        KafkaOutputs {
            publisher: Arc::clone(&publisher),
            topics: topics.clone(),
            streams: config.kafka.outputs.clone(),
        },
        Arc::clone(&processor_config),
        alerts,
        Arc::clone(&stats),
    );
    // Commits run on another task while processing goes on, once the Kafka outputs
    // queued before them (theirs among them) are acknowledged: the lake's offsets never
    // pass outputs that could still be lost. While commits fail or run long, reading
    // stops 4 x commit-rows ahead: the rows wait in Kafka, not in memory. (Past
    // max.poll.interval.ms the member leaves its group and the next owner takes the
    // partitions up from the lake.)
    let gate: Gate = {
        let publisher = Arc::clone(&publisher);
        Box::new(move || {
            let (publisher, mark) = (Arc::clone(&publisher), publisher.mark());
            Box::pin(async move {
                publisher
                    .delivered_before(mark)
                    .await
                    .context("publishing outputs to Kafka")
            })
        })
    };
    let mut commits = Commits::new(
        writer,
        config.lake.commit_rows.saturating_mul(4),
        MAX_KAFKA_BACKOFF,
        Arc::clone(&stats),
    )
    .with_gate(gate);
    let mut unflushed = 0usize;
    let mut last_message = Instant::now();
    let mut recv_errors = 0u32;
    let mut last_stall_check = Instant::now();
    let mut last_end_check = Instant::now();
    let mut last_hand_over = Instant::now();
    // Since when this member has held no partition.
    let mut empty_since = Instant::now();

    let result: anyhow::Result<()> = async {
        // Messages come in batches of those already fetched; a receive is cancellation
        // safe (nothing leaves librdkafka's queue until its batch is complete).
        let mut batch: Vec<pitwall_bus::Message> = Vec::with_capacity(RECV_BATCH);
        loop {
            let wait = commits.wait().min(Duration::from_millis(200));
            batch.clear();
            let holding = commits.holding();
            let received = tokio::select! {
                () = cancel.cancelled() => break,
                r = consumer.recv_batch(RECV_BATCH, &mut batch), if !holding => Some(r),
                () = tokio::time::sleep(wait) => None,
            };
            for event in consumer.rebalances() {
                match event {
                    Rebalance::Assigned(list) => {
                        for (topic, partition, _) in list {
                            let key = PartitionId::new(topic.as_str(), partition);
                            let plan = plans
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .remove(&key)
                                .with_context(|| format!("{key} was assigned without a plan"))?;
                            take_up(&mut parts, commits.writer_mut(), &topic, partition, plan, &processor_config, &schemas);
                        }
                        last_message = Instant::now();
                    }
                    Rebalance::Revoked(list) => {
                        for (topic, partition) in list {
                            parts.remove(&partition);
                            let key = PartitionId::new(topic.as_str(), partition);
                            commits.writer_mut().revoke(&key);
                            tracing::info!(partition = %key, "partition revoked; its uncommitted rows are left to the next owner");
                        }
                    }
                    Rebalance::Failed(reason) => anyhow::bail!("{reason}"),
                }
            }
            let idle_tick = received.is_none();
            match received {
                Some(Ok(())) => {
                    recv_errors = 0;
                    // One clock read per batch: every message of it arrived together.
                    let now = Instant::now();
                    let mut processed = 0;
                    for m in batch.drain(..) {
                        if take_message(&consumer, &mut parts, &m, now, &mut last_message) {
                            processed += 1;
                        }
                    }
                    stats.processed.fetch_add(processed as u64, Ordering::Relaxed);
                    unflushed += processed;
                }
                Some(Err(e)) => {
                    recv_errors += 1;
                    // librdkafka reconnects by itself; say so once in a while, not per poll.
                    if recv_errors == 1 || recv_errors.is_power_of_two() {
                        tracing::warn!(error = %e, attempts = recv_errors, "cannot read from Kafka; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None => {}
            }
            if last_stall_check.elapsed() >= Duration::from_secs(1) {
                report_lag(&end_offsets, &parts, &topics.raw);
                unstall(&consumer, &mut parts);
                last_stall_check = Instant::now();
                if !parts.is_empty() {
                    empty_since = Instant::now();
                } else if empty_since.elapsed() >= STRANDED_AFTER {
                    empty_since = Instant::now();
                    if tokio::task::block_in_place(|| consumer.stranded()).unwrap_or(false) {
                        tracing::warn!(
                            group = %config.kafka.group_id,
                            "this member has held no partition for {STRANDED_AFTER:?} although it is the group's only member; joining the group again"
                        );
                        consumer.rejoin()?;
                    }
                }
            }
            if idle_tick && !processor_config.idle_timeout.is_zero() {
                send_ticks(&mut parts, &producer, &topics.raw, processor_config.idle_timeout).await;
            }
            // Outputs go out in batches, but never held long: anomalies are awaited.
            if unflushed >= 2048 || (unflushed > 0 && (idle_tick || last_hand_over.elapsed() >= HAND_OVER_AFTER)) {
                hand_over(&mut parts, commits.writer_mut(), &mut outputs).await?;
                unflushed = 0;
                last_hand_over = Instant::now();
            }
            // Input gone quiet before an exit when idle: commit now rather than at the
            // next interval.
            let quiet = options.exit_when_idle.is_some_and(|idle| last_message.elapsed() >= idle) && unflushed == 0;
            match commits.step(quiet).await? {
                Landed::Committed => group_offsets(commits.writer(), &consumer, &topics),
                Landed::Fenced(partition, e) => {
                    tracing::warn!(error = %e, "fenced: taking the partition up again from the lake");
                    retake(&partition, &lake, commits.writer_mut(), &mut parts, &consumer, &processor_config, &schemas).await?;
                }
                Landed::Failed | Landed::Nothing => {}
            }
            if let Some(idle) = options.exit_when_idle
                && last_message.elapsed() >= idle
                && !parts.is_empty()
                && unflushed == 0
                && !commits.in_flight()
                && commits.writer().buffered() == 0
                && parts.values().all(|p| p.seek.is_none())
                && std::mem::replace(&mut last_end_check, Instant::now()).elapsed() >= Duration::from_secs(1)
                && caught_up(&consumer, &parts)
            {
                tracing::info!("no message for {idle:?}, every partition read to its end and everything committed; exiting");
                break;
            }
        }
        Ok(())
    }
    .await;

    // Stopping: commit what was processed (open windows stay open; the next owner
    // rebuilds them from the lake's progress).
    if result.is_ok() {
        hand_over(&mut parts, commits.writer_mut(), &mut outputs).await?;
        commits.finish().await?;
        group_offsets(commits.writer(), &consumer, &topics);
    }
    consumer.close();
    alert_routes.finish(crate::alerts::ALERTS_GRACE).await;
    result
}

/// Processes `m` if it is the next message its partition needs (received at `now`);
/// otherwise keeps the partition's reading position and timers right. Returns whether
/// it was processed.
fn take_message(
    consumer: &KafkaConsumer,
    parts: &mut HashMap<u32, Part>,
    m: &pitwall_bus::Message,
    now: Instant,
    last_message: &mut Instant,
) -> bool {
    // Ticks are not data: they neither keep the process from exiting when idle nor
    // postpone the next tick.
    let is_tick = m.key.as_deref() == Some(TICK_KEY);
    if !is_tick {
        *last_message = now;
    }
    let Some(part) = parts.get_mut(&m.partition) else {
        return false;
    };
    if !is_tick {
        part.last_data = now;
    }
    if m.offset < part.next {
        // Before what is needed (after a seek back): on the way there.
        part.progressed = now;
        return false;
    }
    if m.offset > part.next && !recover_gap(consumer, part, m.partition, m.offset) {
        return false;
    }
    part.seek = None;
    part.progressed = now;
    if m.offset >= part.replay_until {
        part.processor.process(m, &mut part.outputs);
    } else {
        // Replaying what the lake partly has: keep only what it lacks.
        let mut out = Outputs::default();
        part.processor.process(m, &mut out);
        part.plan.suppress(m.offset, &mut out);
        part.outputs.append(&mut out);
    }
    part.next = m.offset + 1;
    true
}

/// Sends a watermark tick to every partition idle for `idle` (no data, no tick from us
/// for that long) whose processor has windows open or sources to watch. The tick goes
/// through the raw topic, so every reader of the partition, a replay included, moves
/// event time on at the same offset. A tick that fails to send is tried again later.
async fn send_ticks(
    parts: &mut HashMap<u32, Part>,
    producer: &KafkaProducer,
    raw: &str,
    idle: Duration,
) {
    for (&partition, part) in parts.iter_mut() {
        let idle_for = part.last_data.elapsed();
        if idle_for < idle
            || part.last_tick.is_some_and(|t| t.elapsed() < idle)
            || part.seek.is_some()
            || part.next < part.replay_until
        {
            continue;
        }
        let Some(time) = part.processor.idle_tick_time(idle_for) else {
            continue;
        };
        part.last_tick = Some(Instant::now());
        match producer
            .send_to_partition(raw, partition, TICK_KEY, &tick_payload(time), time)
            .await
        {
            Ok(offset) => {
                tracing::debug!(partition, offset, idle = ?idle_for, "idle: sent a watermark tick")
            }
            Err(e) => {
                tracing::warn!(partition, error = %e, "idle: cannot send a watermark tick; trying again later")
            }
        }
    }
}

/// A message arrived past the next offset `part` needs. The assignment's start offset
/// is not always honoured (librdkafka may start at the group's committed offset), and
/// some Kafka-API brokers answer a fetch from inside a record batch with the batch after
/// it, or with nothing if it is the last (tansu 0.6 does). Either way: move reading
/// back, further each time that is not enough, and skip what arrives meanwhile; offsets
/// the topic no longer has (deleted by retention) are a gap to report and accept.
/// Returns whether to process the message.
fn recover_gap(consumer: &KafkaConsumer, part: &mut Part, partition: u32, got: i64) -> bool {
    if part
        .seek
        .is_some_and(|s| s.at.elapsed() < Duration::from_millis(200))
    {
        // Possibly fetched before the last seek; if nothing better comes, the stall
        // check seeks again.
        return false;
    }
    let want = part.next;
    let topic = part.processor.topic().to_owned();
    let earliest =
        tokio::task::block_in_place(|| consumer.earliest_offset(&topic, partition)).unwrap_or(0);
    if earliest > want {
        tracing::warn!(
            partition,
            expected = want,
            earliest,
            "offsets before {earliest} are gone from the topic (deleted by retention?); continuing from there"
        );
        part.next = got;
        return true;
    }
    seek_back(
        consumer,
        part,
        partition,
        earliest,
        &format!("got offset {got}"),
    );
    false
}

/// The furthest a stalled partition's reading is moved back before the offset it needs.
const MAX_SEEK_BACK: i64 = 1 << 16;

/// Seeks `part` back to its next offset, or further before it if a seek was already
/// tried (librdkafka drops what was fetched before a seek, so the first message after
/// one tells whether it reached far enough).
fn seek_back(consumer: &KafkaConsumer, part: &mut Part, partition: u32, earliest: i64, why: &str) {
    let want = part.next;
    let topic = part.processor.topic().to_owned();
    let before = match part.seek {
        None => 0,
        // Record batches hold at most a few thousand records, so going back further
        // than this never helps; it only rereads the partition from its start.
        Some(s) => (s.before * 8).clamp(64, MAX_SEEK_BACK),
    };
    let to = (want - before).max(earliest);
    tracing::info!(
        partition,
        want,
        seek_to = to,
        "reading is not at the offset needed next ({why}); seeking back"
    );
    if let Err(e) = tokio::task::block_in_place(|| consumer.seek(&topic, partition, to)) {
        tracing::warn!(error = %e, "seeking back");
    }
    part.seek = Some(Seek {
        at: Instant::now(),
        before: want - to,
    });
}

/// Whether every assigned partition has been read to the topic's end. A quiet spell is
/// not enough to call the work done: a fetch can come back empty for a while (a broker
/// answering from inside a record batch, or an overloaded machine) with offsets still
/// to read, and a watermark query that fails counts as not caught up.
fn caught_up(consumer: &KafkaConsumer, parts: &HashMap<u32, Part>) -> bool {
    parts.iter().all(|(partition, part)| {
        let topic = part.processor.topic();
        match tokio::task::block_in_place(|| consumer.offset_range(topic, *partition)) {
            Ok((_, high)) if high > part.next => {
                tracing::debug!(partition, next = part.next, high, "quiet, but not at the end of the partition yet");
                false
            }
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(partition, error = %e, "cannot tell whether the partition is read to its end");
                false
            }
        }
    })
}

/// Partitions that have made no progress for a while although the topic holds offsets
/// they need (a fetch from inside the last record batch can come back empty on some
/// brokers): seek them back.
fn unstall(consumer: &KafkaConsumer, parts: &mut HashMap<u32, Part>) {
    for (partition, part) in parts.iter_mut() {
        let quiet = |t: Instant| t.elapsed() >= Duration::from_secs(2);
        if !quiet(part.progressed) || part.seek.is_some_and(|s| !quiet(s.at)) {
            continue;
        }
        let topic = part.processor.topic().to_owned();
        let Ok((low, high)) =
            tokio::task::block_in_place(|| consumer.offset_range(&topic, *partition))
        else {
            continue;
        };
        if high > part.next {
            seek_back(
                consumer,
                part,
                *partition,
                low,
                &format!("nothing arrived for 2 s, the topic holds up to {high}"),
            );
        }
    }
}

/// Hands every partition's outputs to the lake writer (with the processor's checkpoint),
/// after publishing them (episodes to the alert outbox, the streams `kafka.outputs`
/// chooses queued on their Kafka topics).
async fn hand_over(
    parts: &mut HashMap<u32, Part>,
    writer: &mut LakeWriter,
    publisher: &mut Publisher<KafkaOutputs>,
) -> anyhow::Result<()> {
    for part in parts.values_mut() {
        let outputs = std::mem::take(&mut part.outputs);
        publisher.publish(&outputs).await?;
        let key = PartitionId::new(part.processor.topic(), part.processor.partition());
        writer.append(&key, &outputs, part.processor.checkpoint(part.next));
    }
    Ok(())
}

/// Kafka's output topics: the streams `kafka.outputs` names, queued on the publisher
/// (acknowledged before each lake commit).
struct KafkaOutputs {
    publisher: Arc<KafkaPublisher>,
    topics: Topics,
    streams: Vec<pitwall_bus::OutputStream>,
}

impl OutputTopics for KafkaOutputs {
    fn wants(&self, stream: pitwall_bus::OutputStream) -> bool {
        self.streams.contains(&stream)
    }

    async fn send(&self, encoded: &mut Encoded) -> anyhow::Result<()> {
        for (stream, key, payload, time) in encoded.iter() {
            self.publisher
                .publish(stream.topic(&self.topics), key, payload, time)
                .await?;
        }
        encoded.clear();
        Ok(())
    }
}

/// The lake's offsets of the raw topic as the group's committed offsets (for lag
/// monitoring).
fn group_offsets(writer: &LakeWriter, consumer: &KafkaConsumer, topics: &Topics) {
    let offsets: Vec<(String, u32, i64)> = writer
        .partitions()
        .filter(|key| key.topic() == topics.raw)
        .filter_map(|key| {
            Some((
                key.topic().to_owned(),
                key.partition(),
                writer.held(names::RAW, key)?,
            ))
        })
        .collect();
    if let Err(e) = consumer.commit_offsets(&offsets) {
        tracing::debug!(error = %e, "recording the group's offsets for lag monitoring");
    }
}

/// End offsets of the raw topic's partitions, asked of the brokers every 2 s by a
/// thread of its own (so a slow broker never holds up processing), for lag reports.
#[derive(Debug, Clone, Default)]
struct EndOffsets {
    inner: Arc<Mutex<Watched>>,
}

/// Partitions to ask about (this member's), and what the brokers last said of each.
type Watched = (Vec<u32>, HashMap<u32, i64>);

impl EndOffsets {
    fn watch(
        config: &pitwall_bus::kafka::KafkaConfig,
        topic: &str,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let ends = EndOffsets::default();
        let watcher = KafkaConsumer::watcher(config)?;
        let (shared, topic, cancel) = (ends.clone(), topic.to_owned(), cancel.clone());
        std::thread::spawn(move || {
            while !cancel.is_cancelled() {
                let partitions = shared.lock().0.clone();
                for p in partitions {
                    if let Ok(end) = watcher.end_offset(&topic, p, Duration::from_secs(2)) {
                        shared.lock().1.insert(p, end);
                    }
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        });
        Ok(ends)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watched> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Reports each partition's lag (the brokers' end offset, as last asked, minus the next
/// offset to process; never below zero) and watermark lag.
fn report_lag(ends: &EndOffsets, parts: &HashMap<u32, Part>, topic: &str) {
    let mut shared = ends.lock();
    shared.0 = parts.keys().copied().collect();
    for (p, part) in parts {
        let lag = shared.1.get(p).map(|end| end - part.next);
        crate::metrics::partition(topic, *p, lag, part.processor.watermark());
    }
}

/// Takes `key` up again from the lake after a fenced commit, if this member still owns it.
async fn retake(
    key: &PartitionId,
    lake: &Lake,
    writer: &mut LakeWriter,
    parts: &mut HashMap<u32, Part>,
    consumer: &KafkaConsumer,
    config: &Arc<ProcessorConfig>,
    schemas: &SchemaRegistry,
) -> anyhow::Result<()> {
    let (topic, partition) = (key.topic(), key.partition());
    if !parts.contains_key(&partition) {
        return Ok(());
    }
    let plan = lake.resume_plan(key).await?;
    consumer.seek(topic, partition, plan.base.replay_from)?;
    take_up(parts, writer, topic, partition, plan, config, schemas);
    Ok(())
}

/// Takes `topic/partition` up as `plan` says: the writer expects the lake's offsets and
/// drops anything it buffered for it, and a processor resumed from the plan's base
/// replaces any old one.
fn take_up(
    parts: &mut HashMap<u32, Part>,
    writer: &mut LakeWriter,
    topic: &str,
    partition: u32,
    plan: ResumePlan,
    config: &Arc<ProcessorConfig>,
    schemas: &SchemaRegistry,
) {
    writer.assign(&PartitionId::new(topic, partition), &plan);
    let mut processor = Processor::new(Arc::clone(config), schemas.clone(), topic, partition);
    processor.resume(&plan.base);
    parts.insert(partition, Part::new(processor, plan));
}
