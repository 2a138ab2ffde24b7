//! `pitwall serve`: the HTTP, PostgreSQL and Flight SQL servers over a lake (and Kafka for writes and the live feed) without a processor.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::*;
use pitwall_runtime::config::Config;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    listen: ListenArgs,
    /// The lake the SQL API and dashboard read (the one `pitwall process` writes).
    #[command(flatten)]
    lake: LakeArgs,
    /// Kafka bootstrap brokers (overrides kafka.brokers).
    #[arg(long)]
    brokers: Option<String>,
    /// Config file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = args.lake.apply(Config::load(args.config.as_deref())?);
    if let Some(b) = args.brokers {
        config.kafka.brokers = b;
    }
    args.listen.apply(&mut config.server);
    config.validate()?;
    let topics = pitwall_runtime::ensure_topics(&config).await?;
    let sink = Arc::new(pitwall_runtime::KafkaWriteSink::new(
        &config.kafka,
        &topics.raw,
    )?);
    let cancel = CancellationToken::new();
    cancel_on_ctrl_c(&cancel, "stopping: finishing the writes in flight");
    eprintln!(
        "pitwall serve: writes go to {} at {}",
        topics.raw, config.kafka.brokers
    );
    let lake = pitwall_runtime::open_lake(&config).await?;
    let live = pitwall_server::LiveHub::default();
    pitwall_runtime::feed_live_from_kafka(&config, &topics, &live, &cancel)?;
    // serve commits nothing; its /health reports the server alone.
    let server = pitwall_runtime::start_server(
        &config.server,
        &config,
        sink,
        Some(lake),
        live,
        pitwall_server::Health::default(),
        cancel.clone(),
    )
    .await?;
    server.await??;
    Ok(ExitCode::SUCCESS)
}
