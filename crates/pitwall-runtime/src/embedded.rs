//! The embedded pipeline: simulators → in-process bus → one processor task per
//! partition → lake writer, with orderly shutdown that commits everything produced.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use pitwall_bus::{InProcessBus, Message, PartitionConsumer, Publish};
use pitwall_core::PartitionId;
use pitwall_lake::{LakeWriter, TableRows};
use pitwall_sim::{InjectedFault, Simulator};
use pitwall_stream::{Outputs, Processor};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::commits::{Commits, Landed, MAX_BACKOFF};
use crate::config::Config;
use crate::metrics::Stats;
use crate::open::{bus_config, open_lake, spawn_maintenance};
use crate::produce::{SimRun, produce, replayed, simulators};
use crate::publish::{BusOutputs, Publisher};
use crate::serve::{BusSink, feed_live, start_server};

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
    // Rows wait in the writer up to one more commit's worth beside the commit in
    // flight.
    let commits = Commits::new(
        lake_writer_state,
        config.lake.commit_rows,
        MAX_BACKOFF,
        Arc::clone(&stats),
    );
    let writer =
        tokio::spawn(lake_writer(commits, out_rx).instrument(tracing::info_span!("lake-writer")));
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
            Arc::clone(&stats),
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
    alert_routes.finish(crate::alerts::ALERTS_GRACE).await;
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
/// buffer. The writer takes them while it commits (up to one more commit's worth), so
/// this only smooths the hand-over; bounded in rows, not batches, so a processor far
/// ahead of the writer (a backfill at full speed) waits instead of holding the whole
/// input in memory (batches of 1,024 messages, ~3 rows each, at 4,096 batches in a row
/// took 13 GB within 30 s).
const HANDOFF_ROWS: usize = 65_536;

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
                            hand_over(&processor, next, outputs, &key, &mut publisher, &out)
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
        hand_over(&processor, next, outputs, &key, &mut publisher, &out).await?;
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
) -> anyhow::Result<()> {
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

/// Takes the processors' outputs into the lake writer and commits them (see
/// [`Commits`]); at the end of input commits the rest. While commits fail or run long
/// and rows pile up, the writer takes nothing more, so the hand-off fills, the
/// processors wait and the bus pushes back on writers (503) instead of memory growing.
async fn lake_writer(mut commits: Commits, mut rx: mpsc::Receiver<Batch>) -> anyhow::Result<()> {
    loop {
        let next = tokio::select! {
            o = rx.recv(), if !commits.holding() => o.map(Some),
            () = tokio::time::sleep(commits.wait()) => Some(None),
        };
        match next {
            // The rows leave the hand-off's budget once in the writer's buffer.
            Some(Some((key, rows, checkpoint, _permit))) => {
                commits.writer_mut().append_rows(&key, rows, checkpoint)
            }
            Some(None) => {}
            None => break,
        }
        // Fenced: another process committed to this lake's offsets (a second `pitwall
        // up` on the same lake); the writer dropped the partition, so say so and go on.
        if let Landed::Fenced(_, e) = commits.step(false).await? {
            commits.failed(&e);
        }
    }
    commits.finish().await
}
