//! `pitwall replay PATH`: FastF1 CSV, JSON lines and line protocol files sent to the raw Kafka topic.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::*;
use pitwall_runtime::config::Config;

/// How replayed files are read (`pitwall replay` and `pitwall up --replay`).
#[derive(Debug, Args)]
pub(crate) struct ReplayInput {
    /// Input format; auto goes by extension (.csv FastF1, .jsonl JSON lines, .lp line protocol).
    #[arg(long, value_enum, default_value = "auto")]
    format: pitwall_runtime::replay::InputFormat,
    /// Driver code for FastF1 files (default: taken from the file name, e.g. VER.csv).
    #[arg(long)]
    driver: Option<String>,
    /// Keep watching the directory and send new files as they arrive (Ctrl-C to stop).
    #[arg(long)]
    pub(crate) follow: bool,
    /// Timestamp unit of line protocol and Telegraf JSON input: s, ms, us or ns.
    #[arg(long, default_value = "ns")]
    precision: pitwall_core::Precision,
}

impl ReplayInput {
    /// The options to replay `path` at `speed`.
    pub(crate) fn options(
        self,
        path: PathBuf,
        speed: f64,
    ) -> anyhow::Result<pitwall_runtime::replay::ReplayOptions> {
        if !(speed >= 0.0 && speed.is_finite()) {
            anyhow::bail!(
                "the replay speed is {speed}; use 0 (as fast as possible) or a positive factor"
            );
        }
        if !path.exists() {
            anyhow::bail!("{}: no such file or directory to replay", path.display());
        }
        Ok(pitwall_runtime::replay::ReplayOptions {
            path,
            format: self.format,
            driver: self.driver,
            speed,
            follow: self.follow,
            precision: self.precision,
        })
    }
}

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// A file or a directory of files.
    path: PathBuf,
    #[command(flatten)]
    input: ReplayInput,
    /// Event-time seconds per second: 1 is real time, 10 ten times faster, 0 as fast as possible.
    #[arg(long, default_value = "0")]
    speed: f64,
    /// Kafka bootstrap brokers (overrides kafka.brokers).
    #[arg(long)]
    brokers: Option<String>,
    /// Config file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve Prometheus metrics on http://HOST:PORT/metrics (pitwall up and serve have
    /// them on their --listen address).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
}

pub(crate) async fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(b) = args.brokers {
        config.kafka.brokers = b;
    }
    let opts = args.input.options(args.path, args.speed)?;
    let cancel = CancellationToken::new();
    cancel_on_ctrl_c(
        &cancel,
        "stopping: waiting for the brokers to acknowledge what was sent",
    );
    serve_metrics(args.metrics_listen.as_deref(), &cancel).await?;
    let summary = pitwall_runtime::replay::replay(&config, &opts, cancel).await?;
    eprintln!("{}", pitwall_runtime::replay::describe(&summary));
    Ok(ExitCode::SUCCESS)
}
