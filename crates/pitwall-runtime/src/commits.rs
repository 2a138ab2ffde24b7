//! Lake commits as both runtimes make them.
//!
//! [`Commits`] owns the lake writer: rows are appended as partitions hand them over; a
//! commit starts when due (enough rows, or the interval passed) on a task of its own
//! while appending goes on, one at a time; a failed one keeps its rows and is tried
//! again with backoff for as long as it takes (storage or a catalog that is down for
//! minutes loses nothing; `/health` and the status line say so meanwhile); once too
//! many rows wait, the writer takes no more, so the input waits upstream (in Kafka, or
//! the bus pushes back on its writers) instead of memory growing; at the end the rest
//! is committed. A commit another writer fenced is the caller's to handle (over Kafka:
//! take the partition up again from the lake).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::future::BoxFuture;
use pitwall_core::PartitionId;
use pitwall_lake::{CommitStats, LakeWriter, Round};

use crate::metrics::Stats;

/// Waits before each commit until what the commit must not pass is safe (over Kafka:
/// the output messages queued so far, acknowledged). Called when the commit starts;
/// the future it returns runs on the commit's task.
pub(crate) type Gate = Box<dyn Fn() -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// A lake commit running on a task of its own: the round and how it went (with the
/// commit's own duration).
type InFlight = tokio::task::JoinHandle<(Round, anyhow::Result<(CommitStats, Duration)>)>;

/// What [`Commits::step`] saw end.
#[derive(Debug)]
pub(crate) enum Landed {
    /// No commit ended.
    Nothing,
    /// A commit landed (counted in the stats).
    Committed,
    /// A commit failed; its rows are back in the writer and it is tried again after a
    /// backoff.
    Failed,
    /// Another writer committed `partition` since this one took it up: the writer has
    /// dropped it, and the caller decides what next.
    Fenced(PartitionId, anyhow::Error),
}

/// The lake writer of a runtime and its commits (see the module).
pub(crate) struct Commits {
    writer: LakeWriter,
    in_flight: Option<InFlight>,
    /// Commits failed in a row, and when to try again.
    failures: u32,
    retry_at: Instant,
    /// Rows buffered at which the writer takes no more until a commit lands.
    max_buffered: usize,
    /// The longest wait between two tries of a failing commit.
    max_backoff: Duration,
    stats: Arc<Stats>,
    gate: Option<Gate>,
}

impl std::fmt::Debug for Commits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commits")
            .field("buffered", &self.writer.buffered())
            .field("in_flight", &self.in_flight.is_some())
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl Commits {
    /// Commits for `writer`, taking no more rows once `max_buffered` wait, waiting at
    /// most `max_backoff` between tries of a failing commit.
    pub(crate) fn new(
        writer: LakeWriter,
        max_buffered: usize,
        max_backoff: Duration,
        stats: Arc<Stats>,
    ) -> Self {
        Commits {
            writer,
            in_flight: None,
            failures: 0,
            retry_at: Instant::now(),
            max_buffered,
            max_backoff,
            stats,
            gate: None,
        }
    }

    /// Every commit first waits for `gate`.
    pub(crate) fn with_gate(mut self, gate: Gate) -> Self {
        self.gate = Some(gate);
        self
    }

    pub(crate) fn writer(&self) -> &LakeWriter {
        &self.writer
    }

    /// The writer, to append to, assign or revoke partitions.
    pub(crate) fn writer_mut(&mut self) -> &mut LakeWriter {
        &mut self.writer
    }

    /// Whether the writer takes no more rows for now: `max_buffered` wait beside the
    /// commit in flight, or behind failing ones.
    pub(crate) fn holding(&self) -> bool {
        self.writer.buffered() >= self.max_buffered
    }

    /// Whether a commit is running.
    pub(crate) fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// How long until [`Self::step`] has something to do: a running commit is looked
    /// at every 10 ms; otherwise the retry of a failed one, or the commit interval.
    pub(crate) fn wait(&self) -> Duration {
        let until = if self.in_flight.is_some() {
            Duration::ZERO
        } else if self.failures > 0 {
            self.retry_at.saturating_duration_since(Instant::now())
        } else {
            self.writer.time_to_due()
        };
        until.max(Duration::from_millis(10))
    }

    /// Takes back a commit that ended, then starts the next if one is due. `quiet`
    /// (the input has gone quiet) commits whatever waits without waiting for the
    /// interval. The error is a commit task that panicked.
    pub(crate) async fn step(&mut self, quiet: bool) -> anyhow::Result<Landed> {
        let landed = self.land().await?;
        let due = if self.failures > 0 {
            Instant::now() >= self.retry_at && self.writer.buffered() > 0
        } else {
            self.writer.due() || (quiet && self.writer.buffered() > 0)
        };
        if self.in_flight.is_none() && due {
            self.in_flight = Some(self.start());
        }
        Ok(landed)
    }

    /// Takes back the commit in flight if it has ended.
    async fn land(&mut self) -> anyhow::Result<Landed> {
        let mut landed = Landed::Nothing;
        if let Some(done) = self.in_flight.take_if(|h| h.is_finished()) {
            landed = match self.take_back(done).await? {
                Ok((s, took)) => {
                    self.committed(&s, took);
                    Landed::Committed
                }
                Err(e) => match fenced(&e) {
                    Some(partition) => Landed::Fenced(partition, e),
                    None => {
                        self.failed(&e);
                        Landed::Failed
                    }
                },
            };
        }
        Ok(landed)
    }

    /// Counts a failed commit: `/health` says so, and the next try waits a backoff.
    pub(crate) fn failed(&mut self, e: &anyhow::Error) {
        let error = format!("{e:#}");
        self.failures = self.stats.health.commit_failed(&error);
        let wait = backoff(self.failures).min(self.max_backoff);
        self.retry_at = Instant::now() + wait;
        tracing::warn!(
            error = %error,
            failures = self.failures,
            buffered = self.writer.buffered(),
            retry_in = ?wait,
            "lake commit failed; keeping the rows and retrying"
        );
    }

    /// Takes what the writer has buffered and commits it on another task, once the
    /// gate opens.
    fn start(&mut self) -> InFlight {
        let gate = self.gate.as_ref().map(|g| g());
        let mut round = self.writer.take_round();
        tokio::spawn(async move {
            let result = async {
                if let Some(gate) = gate {
                    gate.await?;
                }
                let started = Instant::now();
                let s = round.commit().await?;
                Ok((s, started.elapsed()))
            }
            .await;
            (round, result)
        })
    }

    /// Waits for `done` and gives its round back to the writer (the offsets it
    /// committed, or its rows if it failed); the commit's figures and own duration, or
    /// its error. The outer error is a commit task that panicked.
    async fn take_back(
        &mut self,
        done: InFlight,
    ) -> anyhow::Result<anyhow::Result<(CommitStats, Duration)>> {
        let (round, result) = done.await.context("the lake commit task panicked")?;
        self.writer.finish_round(round);
        Ok(result)
    }

    fn committed(&mut self, s: &CommitStats, took: Duration) {
        record_commit(&self.stats, s, took);
        self.failures = 0;
        self.stats.health.commit_ok();
    }

    /// Stopping: waits for the commit in flight, then commits what is left here and
    /// now, trying a failing commit a few more times before giving up (a fenced one at
    /// once).
    pub(crate) async fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(done) = self.in_flight.take() {
            match self.take_back(done).await? {
                Ok((s, took)) => self.committed(&s, took),
                // What it could not commit is back in the writer, tried again below.
                Err(e) => tracing::warn!(error = %e, "lake commit failed; trying again"),
            }
        }
        let mut attempt = 0;
        while self.writer.buffered() > 0 {
            let done = self.start();
            match self.take_back(done).await? {
                Ok((s, took)) => self.committed(&s, took),
                Err(e) if attempt < 5 && fenced(&e).is_none() => {
                    attempt += 1;
                    self.stats.health.commit_failed(&format!("{e:#}"));
                    tracing::warn!(error = %e, attempt, "final lake commit failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => {
                    return Err(e.context(
                        "the final lake commit failed; its rows were not saved (from Kafka, the next owner of their partitions processes them again)",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The partition a fenced commit names.
fn fenced(e: &anyhow::Error) -> Option<PartitionId> {
    match e.downcast_ref::<pitwall_lake::Error>() {
        Some(pitwall_lake::Error::Fenced { partition, .. }) => Some(partition.clone()),
        _ => None,
    }
}

/// The longest wait between two tries of a failing commit.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The wait before the next try after `failures` failed commits in a row: 0.5 s,
/// doubling, at most [`MAX_BACKOFF`].
pub(crate) fn backoff(failures: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << failures.saturating_sub(1).min(10)))
        .min(MAX_BACKOFF)
}

/// Counts a finished commit in `stats`.
pub(crate) fn record_commit(stats: &Stats, s: &CommitStats, took: Duration) {
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

#[cfg(test)]
mod tests {
    use pitwall_core::record::{Origin, RawRecord};
    use pitwall_core::{Checkpoint, Outputs};
    use pitwall_lake::{Lake, LakeConfig, progress::names};

    use super::*;

    const T0: i64 = 1_767_225_600_000_000_000;

    fn partition() -> PartitionId {
        PartitionId::new("telemetry.raw", 0)
    }

    /// Raw rows of `offsets` in partition 0, as a processor with no open state hands
    /// them over.
    fn feed(writer: &mut LakeWriter, offsets: std::ops::Range<i64>) {
        let next = offsets.end;
        let outputs = Outputs {
            raw: offsets
                .map(|offset| RawRecord {
                    origin: Origin {
                        topic: "telemetry.raw".into(),
                        partition: 0,
                        offset,
                    },
                    key: Some(format!("k{}", offset % 3)),
                    ingest_time: T0 + offset,
                    payload: format!("{{\"o\":{offset}}}").into_bytes().into(),
                })
                .collect(),
            ..Outputs::default()
        };
        let checkpoint = Checkpoint {
            next,
            replay_from: next,
            max_time: T0 + next,
        };
        writer.append(&partition(), &outputs, checkpoint);
    }

    /// A local lake in `dir`, and commits of its writer holding at `max_buffered` rows.
    async fn open(dir: &std::path::Path, max_buffered: usize) -> (Lake, Arc<Stats>, Commits) {
        let lake = Lake::open(LakeConfig::test_config(dir)).await.unwrap();
        let stats = Arc::new(Stats::default());
        let writer = LakeWriter::open(lake.clone()).await.unwrap();
        let commits = Commits::new(
            writer,
            max_buffered,
            Duration::from_secs(1),
            Arc::clone(&stats),
        );
        (lake, stats, commits)
    }

    /// Steps `commits` until a commit ends (as the runtimes do, every few ms).
    async fn until_landed(commits: &mut Commits, quiet: bool) -> Landed {
        for _ in 0..2_000 {
            match commits.step(quiet).await.unwrap() {
                Landed::Nothing => tokio::time::sleep(Duration::from_millis(5)).await,
                landed => return landed,
            }
        }
        panic!("no commit ended within 10 s: {commits:?}");
    }

    /// Storage that refuses writes: the commit fails and keeps its rows, `/health` says
    /// so, input is held once `max_buffered` rows wait, the next try waits its
    /// backoff; with storage back every row lands once, and health passes again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_commit_keeps_its_rows_holds_input_and_lands_once_storage_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let (lake, stats, mut commits) = open(dir.path(), 100).await;
        // The raw table's data directory is a file: no data file can be written.
        let data = dir.path().join("warehouse/raw/events/data");
        std::fs::create_dir_all(data.parent().unwrap()).unwrap();
        std::fs::write(&data, b"in the way").unwrap();

        feed(commits.writer_mut(), 0..60);
        assert!(!commits.holding());
        assert!(matches!(
            until_landed(&mut commits, true).await,
            Landed::Failed
        ));
        let (reason, _, failures) = stats.health.problem().expect("health says nothing");
        assert_eq!(failures, 1);
        assert!(reason.contains("raw/events/data"), "{reason}");
        assert_eq!(
            commits.writer().buffered(),
            60,
            "the failed commit's rows are kept"
        );
        // Not tried again before its backoff (0.5 s after one failure).
        assert!(
            commits.wait() >= Duration::from_millis(300),
            "{:?}",
            commits.wait()
        );
        assert!(matches!(commits.step(true).await.unwrap(), Landed::Nothing));
        assert!(!commits.in_flight());

        feed(commits.writer_mut(), 60..110);
        assert!(commits.holding(), "110 rows wait behind a failing commit");

        std::fs::remove_file(&data).unwrap();
        assert!(matches!(
            until_landed(&mut commits, true).await,
            Landed::Committed
        ));
        assert_eq!(commits.writer().buffered(), 0);
        assert!(!commits.holding());
        assert!(stats.health.problem().is_none(), "health still failing");
        assert_eq!(Stats::get(&stats.rows_committed), 110, "every row once");
        let progress = lake.committed_progress().await.unwrap();
        assert_eq!(progress[names::RAW].offsets[&partition()], 110);
    }

    /// Another writer committed the partition meanwhile: the commit is fenced (not a
    /// failure to retry), the partition is named, and nothing of ours lands for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fenced_commit_names_its_partition() {
        let dir = tempfile::tempdir().unwrap();
        let (lake, stats, mut commits) = open(dir.path(), 1_000).await;
        let mut other = LakeWriter::open(lake.clone()).await.unwrap();
        feed(&mut other, 0..10);
        other.commit().await.unwrap();

        feed(commits.writer_mut(), 0..20);
        match until_landed(&mut commits, true).await {
            Landed::Fenced(p, e) => {
                assert_eq!(p, partition());
                assert!(format!("{e:#}").contains("telemetry.raw"), "{e:#}");
            }
            other => panic!("not fenced: {other:?}"),
        }
        assert!(
            stats.health.problem().is_none(),
            "fencing is not a storage failure"
        );
        let progress = lake.committed_progress().await.unwrap();
        assert_eq!(progress[names::RAW].offsets[&partition()], 10);
    }
}
