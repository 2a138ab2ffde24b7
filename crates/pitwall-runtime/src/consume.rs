//! The one consume-process-publish-commit loop, on either bus.
//!
//! A [`Source`] is the raw topic as a bus gives it to one reader: partitions assigned
//! (each with the lake's [`ResumePlan`] for it) and revoked, messages in offset order
//! within each partition, watermark ticks sent back through the topic. The in-process
//! bus ([`crate::embedded`]) and a Kafka consumer group ([`crate::kafka`]) implement
//! it; [`consume`] runs the same processing, hand-over and commits on both:
//!
//! - each partition has its own [`Processor`], resumed from the lake's plan; a replay
//!   of what the lake partly has keeps only what it lacks;
//! - outputs go to their topics (and episodes to the alert outbox) before the lake
//!   writer takes them, so the topics are at least once and the lake exactly once;
//! - commits run on a task of their own ([`Commits`]); while too many rows wait, reading
//!   stops and the input waits on the bus;
//! - a bus that can read again (Kafka) seeks back over gaps and stalls and takes a
//!   fenced partition up again from the lake; the in-process bus has neither.
//!
//! The loop ends when `stop` fires (what was processed is committed; open windows are
//! rebuilt by the next owner from the lake), when the input ends (the in-process bus
//! closed: every window is closed and everything committed), or when asked to exit once
//! idle.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pitwall_bus::Message;
use pitwall_core::PartitionId;
use pitwall_lake::{Lake, LakeWriter, ResumePlan};
use pitwall_stream::{Outputs, Processor, ProcessorConfig, SchemaRegistry, TICK_KEY};
use tokio_util::sync::CancellationToken;

use crate::commits::{Commits, Landed};
use crate::metrics::Stats;
use crate::publish::{OutputTopics, Publisher};

/// A change of the partitions a reader owns.
#[derive(Debug)]
pub(crate) enum Change {
    /// Partitions taken up, each with the lake's plan (reading starts at its
    /// `base.replay_from`).
    Assigned(Vec<(PartitionId, ResumePlan)>),
    /// Partitions given up: nothing more is read from them.
    Revoked(Vec<PartitionId>),
}

/// The raw topic as one reader of a bus sees it (see the module).
#[allow(async_fn_in_trait)]
pub(crate) trait Source {
    /// Waits for messages and appends up to `max` to `batch`, each partition's in
    /// offset order; false once the input has ended (the in-process bus closed and
    /// drained). Cancel safe: nothing is lost if the wait is dropped.
    async fn recv(&mut self, max: usize, batch: &mut Vec<Message>) -> anyhow::Result<bool>;

    /// Partitions assigned and revoked since last asked, in order; an error is an
    /// assignment that could not be taken up.
    fn changes(&mut self) -> anyhow::Result<Vec<Change>>;

    /// Sends `partition` a watermark tick to event time `time` through the topic, so
    /// every reader of the partition, a replay included, moves event time on at the
    /// same offset.
    async fn tick(&self, partition: u32, time: i64) -> anyhow::Result<()>;

    /// Messages of `partition` from `next` on that have not been processed yet, if known.
    fn lag(&self, partition: u32, next: i64) -> Option<i64>;

    /// How reading is moved back, if this bus can read again (Kafka can; the in-process
    /// bus hands each message out once).
    fn rereader(&self) -> Option<&dyn Reread>;

    /// What the lake has committed, for the bus's own bookkeeping (Kafka: the group's
    /// committed offsets, for lag monitoring).
    fn committed(&self, _writer: &LakeWriter) {}

    /// Looked at once a second while this reader holds no partition: a member alone in
    /// its group with nothing assigned joins again.
    fn unassigned_for(&self, _idle: Duration) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Moving reading back, on a bus that can.
pub(crate) trait Reread: Sync {
    /// Reading of `partition` goes on from `offset`.
    fn seek(&self, partition: u32, offset: i64) -> anyhow::Result<()>;
    /// The oldest and the next offset `partition` holds.
    fn offset_range(&self, partition: u32) -> anyhow::Result<(i64, i64)>;
}

/// How [`consume`] runs.
pub(crate) struct Options {
    /// Ends the loop; what was processed is committed.
    pub stop: CancellationToken,
    /// Exit once no message has arrived for this long, every partition is read to the
    /// end and everything is committed.
    pub exit_when_idle: Option<Duration>,
    /// The most messages taken off the bus at once.
    pub recv_batch: usize,
}

/// The most messages processed before their outputs are handed over.
const HAND_OVER_MESSAGES: usize = 2048;

/// The longest processed outputs wait before they go to their topics and the writer.
const HAND_OVER_AFTER: Duration = Duration::from_millis(20);

/// How long a reader may hold no partition before the bus is asked why.
const UNASSIGNED_AFTER: Duration = Duration::from_secs(15);

/// Everything one loop works with besides its bus.
pub(crate) struct Pipeline<T> {
    pub lake: Lake,
    pub schemas: SchemaRegistry,
    pub config: Arc<ProcessorConfig>,
    pub commits: Commits,
    pub publisher: Publisher<T>,
    pub stats: Arc<Stats>,
}

/// One partition this reader owns.
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
    /// When this reader last sent the partition a watermark tick.
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

/// Runs the processor over `source` until the input ends, `stop` fires or (if asked)
/// the input has been idle, then commits what it has (see the module).
pub(crate) async fn consume<S: Source, T: OutputTopics>(
    source: &mut S,
    pipeline: &mut Pipeline<T>,
    options: &Options,
) -> anyhow::Result<()> {
    let mut parts: HashMap<u32, Part> = HashMap::new();
    let mut unflushed = 0usize;
    let mut last_message = Instant::now();
    let mut recv_errors = 0u32;
    let mut last_second = Instant::now();
    let mut last_end_check = Instant::now();
    let mut last_hand_over = Instant::now();
    // Since when this reader has held no partition.
    let mut empty_since = Instant::now();
    let mut batch: Vec<Message> = Vec::with_capacity(options.recv_batch);
    let ended = loop {
        let commits = &mut pipeline.commits;
        let wait = commits.wait().min(Duration::from_millis(200));
        batch.clear();
        let holding = commits.holding();
        let received = tokio::select! {
            () = options.stop.cancelled() => break false,
            r = source.recv(options.recv_batch, &mut batch), if !holding => Some(r),
            () = tokio::time::sleep(wait) => None,
        };
        for change in source.changes()? {
            match change {
                Change::Assigned(list) => {
                    for (key, plan) in list {
                        take_up(&mut parts, pipeline, &key, plan);
                    }
                    last_message = Instant::now();
                }
                Change::Revoked(list) => {
                    for key in list {
                        parts.remove(&key.partition());
                        pipeline.commits.writer_mut().revoke(&key);
                        tracing::info!(partition = %key, "partition revoked; its uncommitted rows are left to the next owner");
                    }
                }
            }
        }
        let idle_tick = received.is_none();
        match received {
            Some(Ok(true)) => {
                recv_errors = 0;
                // One clock read per batch: every message of it arrived together.
                let now = Instant::now();
                let mut processed = 0;
                for m in batch.drain(..) {
                    if take_message(source, &mut parts, &m, now, &mut last_message) {
                        processed += 1;
                    }
                }
                pipeline
                    .stats
                    .processed
                    .fetch_add(processed as u64, Ordering::Relaxed);
                unflushed += processed;
            }
            Some(Ok(false)) => break true,
            Some(Err(e)) => {
                recv_errors += 1;
                // The bus reconnects by itself; say so once in a while, not per poll.
                if recv_errors == 1 || recv_errors.is_power_of_two() {
                    tracing::warn!(error = %e, attempts = recv_errors, "cannot read the raw topic; retrying");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None => {}
        }
        let second = last_second.elapsed() >= Duration::from_secs(1);
        if second {
            last_second = Instant::now();
            for (&p, part) in &parts {
                crate::metrics::partition(
                    part.processor.topic(),
                    p,
                    source.lag(p, part.next),
                    part.processor.watermark(),
                );
            }
            if let Some(reread) = source.rereader() {
                unstall(reread, &mut parts);
            }
            if !parts.is_empty() {
                empty_since = Instant::now();
            } else if empty_since.elapsed() >= UNASSIGNED_AFTER {
                source.unassigned_for(empty_since.elapsed())?;
                empty_since = Instant::now();
            }
        }
        // Idle partitions are looked at whenever the input pauses, and once a second
        // while other partitions keep it busy.
        if (idle_tick || second) && !pipeline.config.idle_timeout.is_zero() {
            send_ticks(source, &mut parts, pipeline.config.idle_timeout).await;
        }
        // Outputs go out in batches, but never held long: anomalies are awaited.
        if unflushed >= HAND_OVER_MESSAGES
            || (unflushed > 0 && (idle_tick || last_hand_over.elapsed() >= HAND_OVER_AFTER))
        {
            hand_over(&mut parts, pipeline).await?;
            unflushed = 0;
            last_hand_over = Instant::now();
        }
        // Input gone quiet before an exit when idle: commit now rather than at the
        // next interval.
        let quiet = options
            .exit_when_idle
            .is_some_and(|idle| last_message.elapsed() >= idle)
            && unflushed == 0;
        match pipeline.commits.step(quiet).await? {
            Landed::Committed => source.committed(pipeline.commits.writer()),
            Landed::Fenced(partition, e) => match source.rereader() {
                Some(reread) => {
                    tracing::warn!(error = %e, "fenced: taking the partition up again from the lake");
                    retake(&partition, reread, &mut parts, pipeline).await?;
                }
                // Nothing to read again: another process commits this lake's offsets
                // (a second `pitwall up` on the same lake); the writer dropped the
                // partition, so say so and go on.
                None => pipeline.commits.failed(&e),
            },
            Landed::Failed | Landed::Nothing => {}
        }
        if let Some(idle) = options.exit_when_idle
            && last_message.elapsed() >= idle
            && !parts.is_empty()
            && unflushed == 0
            && !pipeline.commits.in_flight()
            && pipeline.commits.writer().buffered() == 0
            && parts.values().all(|p| p.seek.is_none())
            && std::mem::replace(&mut last_end_check, Instant::now()).elapsed()
                >= Duration::from_secs(1)
            && caught_up(source.rereader(), &parts)
        {
            tracing::info!(
                "no message for {idle:?}, every partition read to its end and everything committed; exiting"
            );
            break false;
        }
    };
    if ended {
        // The input is complete: close every window, so the run's last outputs are in.
        for part in parts.values_mut() {
            part.processor.finish(&mut part.outputs);
        }
    }
    hand_over(&mut parts, pipeline).await?;
    pipeline.commits.finish().await?;
    source.committed(pipeline.commits.writer());
    Ok(())
}

/// Processes `m` if it is the next message its partition needs (received at `now`);
/// otherwise keeps the partition's reading position and timers right. Returns whether
/// it was processed.
fn take_message<S: Source>(
    source: &S,
    parts: &mut HashMap<u32, Part>,
    m: &Message,
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
    if m.offset > part.next {
        match source.rereader() {
            Some(reread) if !recover_gap(reread, part, m.partition, m.offset) => return false,
            Some(_) => {}
            None => {
                // A bus that hands each message out once has nothing to go back to.
                tracing::warn!(
                    partition = m.partition,
                    expected = part.next,
                    got = m.offset,
                    "offsets missing from the partition; continuing from here"
                );
            }
        }
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
/// for that long) whose processor has windows open or sources to watch. A tick that
/// fails to send is tried again later.
async fn send_ticks<S: Source>(source: &S, parts: &mut HashMap<u32, Part>, idle: Duration) {
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
        match source.tick(partition, time).await {
            Ok(()) => tracing::debug!(partition, idle = ?idle_for, "idle: sent a watermark tick"),
            Err(e) => {
                tracing::warn!(partition, error = %e, "idle: cannot send a watermark tick; trying again later")
            }
        }
    }
}

/// A message arrived past the next offset `part` needs. A Kafka assignment's start
/// offset is not always honoured (librdkafka may start at the group's committed offset),
/// and some Kafka-API brokers answer a fetch from inside a record batch with the batch
/// after it, or with nothing if it is the last (tansu 0.6 does). Either way: move
/// reading back, further each time that is not enough, and skip what arrives meanwhile;
/// offsets the topic no longer has (deleted by retention) are a gap to report and
/// accept. Returns whether to process the message.
fn recover_gap(reread: &dyn Reread, part: &mut Part, partition: u32, got: i64) -> bool {
    if part
        .seek
        .is_some_and(|s| s.at.elapsed() < Duration::from_millis(200))
    {
        // Possibly fetched before the last seek; if nothing better comes, the stall
        // check seeks again.
        return false;
    }
    let want = part.next;
    let earliest = reread.offset_range(partition).map_or(0, |(low, _)| low);
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
        reread,
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
fn seek_back(reread: &dyn Reread, part: &mut Part, partition: u32, earliest: i64, why: &str) {
    let want = part.next;
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
    if let Err(e) = reread.seek(partition, to) {
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
/// to read, and a query that fails counts as not caught up. A bus that cannot read
/// again hands everything out as it comes: quiet is caught up there.
fn caught_up(reread: Option<&dyn Reread>, parts: &HashMap<u32, Part>) -> bool {
    let Some(reread) = reread else {
        return true;
    };
    parts
        .iter()
        .all(|(partition, part)| match reread.offset_range(*partition) {
            Ok((_, high)) if high > part.next => {
                tracing::debug!(
                    partition,
                    next = part.next,
                    high,
                    "quiet, but not at the end of the partition yet"
                );
                false
            }
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(partition, error = %e, "cannot tell whether the partition is read to its end");
                false
            }
        })
}

/// Partitions that have made no progress for a while although the topic holds offsets
/// they need (a fetch from inside the last record batch can come back empty on some
/// brokers): seek them back.
fn unstall(reread: &dyn Reread, parts: &mut HashMap<u32, Part>) {
    for (partition, part) in parts.iter_mut() {
        let quiet = |t: Instant| t.elapsed() >= Duration::from_secs(2);
        if !quiet(part.progressed) || part.seek.is_some_and(|s| !quiet(s.at)) {
            continue;
        }
        let Ok((low, high)) = reread.offset_range(*partition) else {
            continue;
        };
        if high > part.next {
            seek_back(
                reread,
                part,
                *partition,
                low,
                &format!("nothing arrived for 2 s, the topic holds up to {high}"),
            );
        }
    }
}

/// Hands every partition's outputs to the lake writer (with the processor's checkpoint),
/// after publishing them (episodes to the alert outbox, the wanted streams to their
/// topics).
async fn hand_over<T: OutputTopics>(
    parts: &mut HashMap<u32, Part>,
    pipeline: &mut Pipeline<T>,
) -> anyhow::Result<()> {
    for part in parts.values_mut() {
        let outputs = std::mem::take(&mut part.outputs);
        pipeline.publisher.publish(&outputs).await?;
        let key = PartitionId::new(part.processor.topic(), part.processor.partition());
        pipeline
            .commits
            .writer_mut()
            .append(&key, &outputs, part.processor.checkpoint(part.next));
    }
    Ok(())
}

/// Takes `key` up again from the lake after a fenced commit, if this reader still owns it.
async fn retake<T>(
    key: &PartitionId,
    reread: &dyn Reread,
    parts: &mut HashMap<u32, Part>,
    pipeline: &mut Pipeline<T>,
) -> anyhow::Result<()> {
    if !parts.contains_key(&key.partition()) {
        return Ok(());
    }
    let plan = pipeline.lake.resume_plan(key).await?;
    reread.seek(key.partition(), plan.base.replay_from)?;
    take_up(parts, pipeline, key, plan);
    Ok(())
}

/// Takes `key` up as `plan` says: the writer expects the lake's offsets and drops
/// anything it buffered for it, and a processor resumed from the plan's base replaces
/// any old one.
fn take_up<T>(
    parts: &mut HashMap<u32, Part>,
    pipeline: &mut Pipeline<T>,
    key: &PartitionId,
    plan: ResumePlan,
) {
    pipeline.commits.writer_mut().assign(key, &plan);
    let mut processor = Processor::new(
        Arc::clone(&pipeline.config),
        pipeline.schemas.clone(),
        key.topic(),
        key.partition(),
    );
    processor.resume(&plan.base);
    parts.insert(key.partition(), Part::new(processor, plan));
}
