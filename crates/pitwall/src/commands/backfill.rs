//! `pitwall backfill`: recompute days of the lake from raw.events with the current rules and windows.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::*;
use pitwall_runtime::config::Config;

#[derive(Debug, Args)]
pub(crate) struct BackfillArgs {
    #[command(flatten)]
    common: Common,
    /// First day (2026-01-02, or a UTC time whose day is taken whole: 2026-01-02T13:00:00Z).
    #[arg(long)]
    from: String,
    /// End, exclusive (2026-01-04 backfills up to the end of 2026-01-03).
    #[arg(long)]
    to: String,
    /// Raw data before the first day replayed to warm windows and rules up.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    warm_up: Duration,
}

pub(crate) async fn run(args: BackfillArgs) -> anyhow::Result<ExitCode> {
    let config = args
        .common
        .lake
        .apply(Config::load(args.common.config.as_deref())?);
    config.validate()?;
    let options = pitwall_runtime::backfill::BackfillOptions {
        from: pitwall_runtime::backfill::parse_time(&args.from).context("--from")?,
        to: pitwall_runtime::backfill::parse_time(&args.to).context("--to")?,
        warm_up: args.warm_up,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let started = std::time::Instant::now();
    let s = pitwall_runtime::backfill::run(config, &options).await?;
    let day = |d: i32| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_secs(d as u64 * 86_400),
        )
        .to_string()[..10]
            .to_owned()
    };
    let days: Vec<String> = s.days.iter().map(|d| day(*d)).collect();
    println!(
        "backfilled {} from {} raw rows in {:.1}s",
        days.join(", "),
        s.raw_rows,
        started.elapsed().as_secs_f64()
    );
    for (table, (removed, written)) in &s.tables {
        println!("  {table}: {removed} rows replaced by {written}");
    }
    Ok(ExitCode::SUCCESS)
}
