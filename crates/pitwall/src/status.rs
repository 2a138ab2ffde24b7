//! The one-line live status of `pitwall up`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use pitwall_runtime::metrics::Stats;

/// What the events/s figure counts.
#[derive(Debug, Clone, Copy)]
pub enum Rate {
    /// Events the simulators produced.
    Produced,
    /// Events the processor finished.
    Processed,
}

impl Rate {
    fn get(self, stats: &Stats) -> u64 {
        match self {
            Rate::Produced => stats.produced.load(Ordering::Relaxed),
            Rate::Processed => stats.processed.load(Ordering::Relaxed),
        }
    }
}

/// Prints a status line every `every` until `cancel`.
pub async fn report(stats: Arc<Stats>, every: Duration, cancel: CancellationToken, rate_of: Rate) {
    let start = Instant::now();
    let mut last = 0u64;
    let mut last_at = Instant::now();
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return,
        }
        let n = rate_of.get(&stats);
        let rate = n.saturating_sub(last) as f64 / last_at.elapsed().as_secs_f64().max(1e-3);
        last = n;
        last_at = Instant::now();
        eprintln!("{}", line(&stats, start.elapsed(), rate, rate_of));
    }
}

/// Prints the final status line.
pub fn print_line(stats: &Stats, elapsed: Duration, rate_of: Rate) {
    let rate = rate_of.get(stats) as f64 / elapsed.as_secs_f64().max(1e-3);
    eprintln!("{}", line(stats, elapsed, rate, rate_of));
}

fn line(stats: &Stats, elapsed: Duration, rate: f64, rate_of: Rate) -> String {
    let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let trouble = match stats.health.problem() {
        Some((reason, since, failures)) => {
            let reason: String = reason.chars().take(160).collect();
            format!(
                " | LAKE COMMITS FAILING for {}s ({failures} in a row, rows kept): {reason}",
                since.as_secs()
            )
        }
        None => String::new(),
    };
    let mut out = format!(
        "[{:>6.0}s] {:>8.0} events/s | {} events {} | {} rows committed in {} commits | {} windows | {} anomalies | {} rejects | {} late",
        elapsed.as_secs_f64(),
        rate,
        rate_of.get(stats),
        match rate_of {
            Rate::Produced => "produced",
            Rate::Processed => "processed",
        },
        g(&stats.rows_committed),
        g(&stats.commits),
        g(&stats.windows),
        g(&stats.anomalies),
        g(&stats.rejects),
        g(&stats.late),
    );
    let duplicates = g(&stats.duplicates);
    if duplicates > 0 {
        out.push_str(&format!(" | {duplicates} duplicates"));
    }
    out.push_str(&trouble);
    out
}
