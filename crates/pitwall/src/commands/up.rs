//! `pitwall up`: everything in one process (simulators or replayed files, bus, processor, lake, servers, status line).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::replay::ReplayInput;
use super::*;
use pitwall_runtime::config::Config;

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    #[command(flatten)]
    common: Common,
    /// Stop after this long (e.g. 30s, 5m); default: run until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Simulator seed (overrides sim.seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Simulated seconds per second, 0 for as fast as possible (overrides sim.speed).
    #[arg(long)]
    speed: Option<f64>,
    /// Seconds between status lines.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    status_interval: Duration,
    /// Run over Kafka at these brokers instead of the in-process bus: the simulators
    /// send to the raw topic and the processor reads it in the consumer group, exactly
    /// as `pitwall ingest` and `pitwall process` would.
    #[arg(long, value_name = "HOST:PORT,...")]
    brokers: Option<String>,
    #[command(flatten)]
    listen: ListenArgs,
    /// Replay files through the pipeline into the lake: a FastF1 car data CSV, JSON
    /// lines or line protocol file, or a directory of them (with --follow, new files as
    /// they arrive). The simulators are off unless --sim; the dashboard shows the
    /// replayed session (the link is printed when the replay ends).
    #[arg(long, value_name = "PATH")]
    replay: Option<PathBuf>,
    #[command(flatten)]
    replay_input: ReplayInput,
    /// Event-time seconds per second for --replay: 1 is real time, 0 as fast as possible.
    #[arg(long, default_value = "0", value_name = "FACTOR")]
    replay_speed: f64,
    /// Run the simulators beside --replay too.
    #[arg(long)]
    sim: bool,
}

pub(crate) async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let mut config = args
        .common
        .lake
        .apply(Config::load(args.common.config.as_deref())?);
    if let Some(seed) = args.seed {
        config.sim.seed = seed;
    }
    if let Some(speed) = args.speed {
        config.sim.speed = speed;
        config.validate()?;
    }
    let replay = match args.replay {
        Some(path) => {
            if !args.sim {
                config.sim.race_enabled = false;
                config.sim.iot_enabled = false;
            }
            Some(args.replay_input.options(path, args.replay_speed)?)
        }
        None => {
            if args.replay_input.follow || args.sim {
                anyhow::bail!("--follow and --sim go with --replay PATH");
            }
            None
        }
    };
    let cancel = CancellationToken::new();
    let stats = Arc::new(pitwall_runtime::metrics::Stats::default());
    pitwall_runtime::metrics::export(&stats);
    // Ctrl-C: finish cleanly; a second one aborts.
    {
        let cancel = cancel.clone();
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "stopping: draining the bus ({} events not yet processed) and committing everything not yet in the lake (Ctrl-C again to abort)",
                    stats
                        .produced
                        .load(std::sync::atomic::Ordering::Relaxed)
                        .saturating_sub(stats.processed.load(std::sync::atomic::Ordering::Relaxed))
                );
                cancel.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("aborted: rows not yet committed were not saved");
                    std::process::exit(130);
                }
            }
        });
    }
    cancel_after(&cancel, args.duration);
    let status = tokio::spawn(crate::status::report(
        Arc::clone(&stats),
        args.status_interval,
        cancel.clone(),
        crate::status::Rate::Produced,
    ));
    eprintln!(
        "pitwall up: {} cars at {} Hz, {} sensors, speed {}x; lake: {}",
        if config.sim.race_enabled {
            config.sim.race.cars
        } else {
            0
        },
        config.sim.race.hz,
        if config.sim.iot_enabled {
            config.sim.iot.sensors
        } else {
            0
        },
        config.sim.speed,
        config.lake.describe()
    );
    if let Some(r) = &replay {
        eprintln!(
            "replaying {}{} at {}",
            r.path.display(),
            if r.follow {
                " (following new files)"
            } else {
                ""
            },
            if r.speed > 0.0 {
                format!("{}x real time", r.speed)
            } else {
                "full speed".into()
            }
        );
    }
    let data_dir = config.lake.data_dir.clone();
    args.listen.apply(&mut config.server);
    let run = pitwall_runtime::SimRun {
        start_time: pitwall_core::now_ns(),
        sim_duration: None,
        serve: Some(config.server.clone()),
        hold_open: false,
        replay,
    };
    if let Some(brokers) = args.brokers {
        config.kafka.brokers = brokers;
        config.validate()?;
        eprintln!(
            "over Kafka at {}: simulators -> {}raw -> processor group {}",
            config.kafka.brokers, config.bus.topic_prefix, config.kafka.group_id
        );
        let started = std::time::Instant::now();
        let result =
            pitwall_runtime::kafka::run_on_kafka(config, run, cancel.clone(), Arc::clone(&stats))
                .await;
        cancel.cancel();
        status.await.ok();
        result?;
        crate::status::print_line(&stats, started.elapsed(), crate::status::Rate::Produced);
        return Ok(ExitCode::SUCCESS);
    }
    let result =
        pitwall_runtime::run_embedded(config, run, cancel.clone(), Arc::clone(&stats)).await;
    cancel.cancel();
    status.await.ok();
    let summary = result?;
    crate::status::print_line(&stats, summary.elapsed, crate::status::Rate::Produced);
    eprintln!(
        "done: {} events in {:.1}s, {} rows committed, {} anomalies, {} rejects. Try:\n  pitwall query --data-dir {} \"SELECT rule, source_id, time, observed FROM anomalies.events ORDER BY time\"",
        summary.produced,
        summary.elapsed.as_secs_f64(),
        summary.rows_committed,
        summary.anomalies,
        summary.rejects,
        data_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
