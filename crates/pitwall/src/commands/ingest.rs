//! `pitwall ingest`: the simulators, sending to the raw Kafka topic.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use pitwall_bus::Publish;
use tokio_util::sync::CancellationToken;

use super::*;
use pitwall_runtime::config::Config;

#[derive(Debug, Args)]
pub(crate) struct IngestArgs {
    /// Stop after this much wall time (e.g. 30s); default: until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Stop after this much simulated time (exact event counts for scripts).
    #[arg(long, value_parser = humantime::parse_duration)]
    sim_duration: Option<Duration>,
    /// Simulated seconds per second, 0 for as fast as possible (overrides sim.speed).
    #[arg(long)]
    speed: Option<f64>,
    /// Simulator seed (overrides sim.seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Kafka bootstrap brokers (overrides kafka.brokers).
    #[arg(long)]
    brokers: Option<String>,
    /// Seconds between status lines.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    status_interval: Duration,
    /// Config file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve Prometheus metrics on http://HOST:PORT/metrics (pitwall up and serve have
    /// them on their --listen address).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
}

pub(crate) async fn run(args: IngestArgs) -> anyhow::Result<ExitCode> {
    use std::sync::atomic::Ordering;
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(b) = args.brokers {
        config.kafka.brokers = b;
    }
    if let Some(s) = args.speed {
        config.sim.speed = s;
    }
    if let Some(seed) = args.seed {
        config.sim.seed = seed;
    }
    config.validate()?;
    let topics = pitwall_runtime::ensure_topics(&config).await?;
    let mut sink = pitwall_bus::kafka::KafkaTopic::new(&config.kafka, &topics.raw)?;
    let cancel = CancellationToken::new();
    cancel_on_ctrl_c(
        &cancel,
        "stopping: waiting for the brokers to acknowledge what was sent",
    );
    cancel_after(&cancel, args.duration);
    serve_metrics(args.metrics_listen.as_deref(), &cancel).await?;
    let stats = Arc::new(pitwall_runtime::metrics::Stats::default());
    pitwall_runtime::metrics::export(&stats);
    let status = {
        let (stats, cancel, every) = (Arc::clone(&stats), cancel.clone(), args.status_interval);
        let topic = topics.raw.clone();
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
            tick.tick().await;
            let mut last = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = cancel.cancelled() => return,
                }
                let n = stats.produced.load(Ordering::Relaxed);
                eprintln!(
                    "[{:>6.0}s] {:>8.0} events/s | {n} events sent to {topic}",
                    start.elapsed().as_secs_f64(),
                    (n - last) as f64 / every.as_secs_f64(),
                );
                last = n;
            }
        })
    };
    eprintln!(
        "pitwall ingest: {} cars, {} sensors, speed {}x -> {} on {}",
        if config.sim.race_enabled {
            config.sim.race.cars
        } else {
            0
        },
        if config.sim.iot_enabled {
            config.sim.iot.sensors
        } else {
            0
        },
        config.sim.speed,
        topics.raw,
        config.kafka.brokers
    );
    let started = std::time::Instant::now();
    let run = pitwall_runtime::SimRun {
        start_time: pitwall_core::now_ns(),
        sim_duration: args.sim_duration,
        serve: None,
        hold_open: false,
        replay: None,
    };
    let mut sim = pitwall_runtime::simulators(&config, run.start_time);
    pitwall_runtime::produce(&config, &run, &mut sim, &mut sink, &cancel, &stats).await?;
    sink.finish().await?;
    cancel.cancel();
    status.await.ok();
    let sent = stats.produced.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "ingest: sent {sent} events ({} malformed on purpose) in {secs:.1}s ({:.0} events/s), all acknowledged",
        stats.corrupted.load(Ordering::Relaxed),
        sent as f64 / secs.max(1e-3)
    );
    Ok(ExitCode::SUCCESS)
}
