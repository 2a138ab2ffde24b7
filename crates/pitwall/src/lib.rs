//! The `pitwall` binary: clap commands that wire the crates together.
//!
//! `pitwall up` runs the whole pipeline in one process (simulators, in-process bus,
//! processors, Iceberg lake); `pitwall query` runs SQL over the lake; `pitwall sim`
//! prints simulated telemetry; `pitwall rules check` validates a config file. Each
//! command is a module of `commands/` with its arguments and `run`; the entry point is
//! [`startup`].

pub mod bench;
mod commands;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// pitwall: a real-time telemetry lakehouse in one binary.
///
/// Telemetry from race cars, IoT sensors and machines goes onto a bus, is cleaned,
/// windowed and checked for anomalies, and lands exactly once in Apache Iceberg tables
/// that DataFusion, Trino, DuckDB, Spark and PyIceberg can read.
#[derive(Debug, Parser)]
#[command(name = "pitwall", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in this process: simulators, bus, processor, lake and the HTTP
    /// server (dashboard at /, write API, SQL, live feed, /metrics).
    ///
    /// A status line every few seconds shows events/s, rows committed, anomalies and
    /// rejects; the dashboard's URL is printed at start. Ctrl-C (or the end of --duration) stops the simulators, drains the bus,
    /// closes open windows and commits everything before exiting; a second Ctrl-C aborts.
    Up(commands::up::UpArgs),
    /// Run SQL over the lake's tables with DataFusion.
    ///
    /// Tables have two-part names: raw.events, clean.car, clean.sensor,
    /// metrics.windows, anomalies.events, quarantine.rejects, quarantine.late.
    /// Example: pitwall query "SELECT driver, max(speed_kph) FROM clean.car GROUP BY driver"
    Query(commands::query::QueryArgs),
    /// Print simulated telemetry to stdout (JSON lines or line protocol).
    Sim(commands::sim::SimArgs),
    /// Run the simulators and send their telemetry to the raw Kafka topic.
    ///
    /// Topics pitwall uses are created through the admin API when missing. Kafka
    /// settings come from the [kafka] section of the config (or --brokers). Ctrl-C (or
    /// the end of --duration / --sim-duration) stops and waits for every message to be
    /// acknowledged.
    Ingest(commands::ingest::IngestArgs),
    /// Send files to the raw Kafka topic: FastF1 car data CSV, JSON lines, line protocol.
    ///
    /// PATH is a file or a directory (files in name order; --follow keeps watching it
    /// for new files). Lines that are not valid points go to the DLQ topic with their
    /// file, line and reason, and the summary counts them. Kafka settings come from the
    /// [kafka] section of the config (or --brokers).
    Replay(commands::replay::ReplayArgs),
    /// Process the raw Kafka topic into the lake (and the output topics), exactly once.
    ///
    /// Joins the consumer group kafka.group-id: start more processes with the same group
    /// to split the partitions. Each partition resumes from the offsets the lake's
    /// snapshots record (replaying just enough to rebuild open windows and anomaly
    /// episodes), so a crash or rebalance writes no row twice and skips none. Clean
    /// points, window metrics, anomalies, rejects (DLQ) and late events also go to their
    /// topics as JSON keyed by source id. Ctrl-C commits what was processed and leaves
    /// the group.
    Process(commands::process::ProcessArgs),
    /// Serve the HTTP API and dashboard in front of Kafka and the lake.
    ///
    /// Write API: InfluxDB v2 (/api/v2/write) and v1 (/write) line protocol and
    /// Telegraf JSON (/api/v1/telegraf), gzip or not; every accepted point is on the raw
    /// topic, acknowledged by the brokers, before the answer; bad lines are named in a
    /// 400 and the rest accepted. Point Telegraf's influxdb_v2 output at
    /// http://HOST:PORT. SQL: POST /api/v1/query (read-only; JSON, CSV or Arrow IPC)
    /// over the lake in --data-dir. Live: GET /api/v1/live (server-sent events) follows
    /// the clean, metrics and anomalies topics. Dashboard at /, Prometheus metrics at
    /// /metrics. Tokens come from server.tokens or PITWALL_TOKEN (comma-separated).
    /// Runs until Ctrl-C; `pitwall process` turns the raw topic into the lake.
    Serve(commands::serve::ServeArgs),
    /// Measure: print figures of a scenario (see `pitwall bench --help`).
    Bench {
        #[command(subcommand)]
        scenario: commands::bench::BenchScenario,
    },
    /// Recompute clean points, window metrics and anomalies of whole days from raw.events
    /// with the current rules and windows, replacing those days' partitions.
    ///
    /// The seeds' batch ETL: after changing a rule or a window, backfill the days it
    /// should apply to. Each bus partition's raw rows are replayed in offset order
    /// through the same processor the stream runs (from --warm-up before the first day,
    /// so windows and rules have their history); each table's days flip in one atomic
    /// commit. Days are whole UTC days. Backfill days the stream has left: a processor
    /// still writing into them makes the replacement stop for that table, naming the file.
    Backfill(commands::backfill::BackfillArgs),
    /// Keep the lake's tables healthy: compaction, snapshot expiry, orphan files, retention.
    ///
    /// `pitwall process` (and `up`) run all of it every lake.maintenance.interval; these
    /// run one step now, over every table or the one --table names. Each change is one
    /// atomic commit that a streaming writer may race safely; queries see the same rows
    /// before and after (retention drops whole days past their age, as configured).
    Lake {
        #[command(subcommand)]
        command: commands::lake::LakeCommand,
    },
    /// Work with anomaly rules.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Validate a config file's windows and rules without starting anything.
    Check {
        /// The file to check (pitwall.toml format).
        file: PathBuf,
    },
}

/// Parses the command line, runs the command, and turns errors into a message and an
/// exit code.
pub fn startup() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,pitwall=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Every process records metrics from the start; /metrics shows them where served.
    pitwall_server::metrics::install();
    match cli.command {
        Command::Up(args) => commands::up::run(args).await,
        Command::Query(args) => commands::query::run(args).await,
        Command::Sim(args) => commands::sim::run(&args),
        Command::Replay(args) => commands::replay::run(args).await,
        Command::Ingest(args) => commands::ingest::run(args).await,
        Command::Process(args) => commands::process::run(args).await,
        Command::Serve(args) => commands::serve::run(args).await,
        Command::Bench { scenario } => commands::bench::run(scenario).await,
        Command::Lake { command } => commands::lake::run(command).await,
        Command::Backfill(args) => commands::backfill::run(args).await,
        Command::Rules {
            command: RulesCommand::Check { file },
        } => commands::rules::check(&file),
    }
}
