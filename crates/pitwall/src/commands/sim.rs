//! `pitwall sim`: simulated telemetry printed to stdout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use pitwall_runtime::config::Config;

#[derive(Debug, Args)]
pub(crate) struct SimArgs {
    /// Simulated time to print.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Simulator seed.
    #[arg(long)]
    seed: Option<u64>,
    /// json (the bus payload) or lp (InfluxDB line protocol).
    #[arg(long, default_value = "json")]
    format: String,
    /// Config file for the simulator settings.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub(crate) fn run(args: &SimArgs) -> anyhow::Result<ExitCode> {
    use pitwall_sim::Simulator;
    use std::io::Write;
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(seed) = args.seed {
        config.sim.seed = seed;
    }
    let start = pitwall_core::now_ns();
    let end = start + i64::try_from(args.duration.as_nanos()).context("duration too long")?;
    let mut sim = pitwall_runtime::simulators(&config, start);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut points = Vec::new();
    let mut line = String::new();
    while sim.next_time() < end {
        points.clear();
        sim.step(&mut points);
        for p in &points {
            match args.format.as_str() {
                "json" => {
                    out.write_all(&pitwall_core::json::encode(p)?)?;
                    out.write_all(b"\n")?;
                }
                "lp" => {
                    line.clear();
                    pitwall_core::line_protocol::encode(p, &mut line)?;
                    out.write_all(line.as_bytes())?;
                }
                other => anyhow::bail!("unknown --format {other:?}; use json or lp"),
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
