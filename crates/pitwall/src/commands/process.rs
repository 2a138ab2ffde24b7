//! `pitwall process`: the raw Kafka topic through the processor into the lake and the output topics, exactly once, in a consumer group.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::*;
use pitwall_runtime::config::Config;

#[derive(Debug, Args)]
pub(crate) struct ProcessArgs {
    #[command(flatten)]
    common: Common,
    /// Kafka bootstrap brokers (overrides kafka.brokers).
    #[arg(long)]
    brokers: Option<String>,
    /// Consumer group (overrides kafka.group-id).
    #[arg(long)]
    group: Option<String>,
    /// Stop after this long (e.g. 30s, 5m); default: run until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Exit once no message has arrived for this long, every assigned partition is read
    /// to the end of the topic and everything is committed (catch up, then stop).
    #[arg(long, value_parser = humantime::parse_duration)]
    exit_when_idle: Option<Duration>,
    /// Seconds between status lines.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    status_interval: Duration,
    /// Serve Prometheus metrics on http://HOST:PORT/metrics (pitwall up and serve have
    /// them on their --listen address).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
}

pub(crate) async fn run(args: ProcessArgs) -> anyhow::Result<ExitCode> {
    let mut config = args
        .common
        .lake
        .apply(Config::load(args.common.config.as_deref())?);
    if let Some(b) = args.brokers {
        config.kafka.brokers = b;
    }
    if let Some(g) = args.group {
        config.kafka.group_id = g;
    }
    config.validate()?;
    let cancel = CancellationToken::new();
    cancel_on_ctrl_c(
        &cancel,
        "stopping: committing what was processed and leaving the group",
    );
    cancel_after(&cancel, args.duration);
    serve_metrics(args.metrics_listen.as_deref(), &cancel).await?;
    let stats = Arc::new(pitwall_runtime::metrics::Stats::default());
    pitwall_runtime::metrics::export(&stats);
    let status_cancel = CancellationToken::new();
    let status = tokio::spawn(crate::status::report(
        Arc::clone(&stats),
        args.status_interval,
        status_cancel.clone(),
        crate::status::Rate::Processed,
    ));
    eprintln!(
        "pitwall process: group {} reading {}raw on {}; lake: {}",
        config.kafka.group_id,
        config.bus.topic_prefix,
        config.kafka.brokers,
        config.lake.describe()
    );
    let started = std::time::Instant::now();
    let options = pitwall_runtime::kafka::ProcessOptions {
        exit_when_idle: args.exit_when_idle,
    };
    let result = pitwall_runtime::kafka::run(config, options, cancel, Arc::clone(&stats)).await;
    status_cancel.cancel();
    status.await.ok();
    crate::status::print_line(&stats, started.elapsed(), crate::status::Rate::Processed);
    result?;
    Ok(ExitCode::SUCCESS)
}
