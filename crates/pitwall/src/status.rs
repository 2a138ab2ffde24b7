//! The one-line live status of `pitwall up`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::pipeline::Stats;

/// Prints a status line every `every` until `cancel`.
pub async fn report(stats: Arc<Stats>, every: Duration, cancel: CancellationToken) {
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
        let produced = stats.produced.load(Ordering::Relaxed);
        let rate = (produced - last) as f64 / last_at.elapsed().as_secs_f64().max(1e-3);
        last = produced;
        last_at = Instant::now();
        eprintln!("{}", line(&stats, start.elapsed(), rate));
    }
}

/// Prints the final status line.
pub fn print_line(stats: &Stats, elapsed: Duration) {
    let produced = stats.produced.load(Ordering::Relaxed);
    let rate = produced as f64 / elapsed.as_secs_f64().max(1e-3);
    eprintln!("{}", line(stats, elapsed, rate));
}

fn line(stats: &Stats, elapsed: Duration, rate: f64) -> String {
    let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    format!(
        "[{:>6.0}s] {:>8.0} events/s | {} events | {} rows committed in {} commits | {} windows | {} anomalies | {} rejects | {} late",
        elapsed.as_secs_f64(),
        rate,
        g(&stats.produced),
        g(&stats.rows_committed),
        g(&stats.commits),
        g(&stats.windows),
        g(&stats.anomalies),
        g(&stats.rejects),
        g(&stats.late),
    )
}
