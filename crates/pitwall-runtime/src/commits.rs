//! Lake commits as both runtimes make them: backoff after failures and what a
//! landed commit counts.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::metrics::Stats;

/// The longest wait between two tries of a failing commit.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The wait before the next try after `failures` failed commits in a row: 0.5 s,
/// doubling, at most [`MAX_BACKOFF`].
pub(crate) fn backoff(failures: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << failures.saturating_sub(1).min(10)))
        .min(MAX_BACKOFF)
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
