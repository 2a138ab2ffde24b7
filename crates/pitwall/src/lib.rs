//! The `pitwall` binary: clap commands that wire the crates together.
//!
//! `pitwall up` runs the whole pipeline in one process (simulators, in-process bus,
//! processors, Iceberg lake); `pitwall query` runs SQL over the lake; `pitwall sim`
//! prints simulated telemetry; `pitwall rules check` validates a config file. The entry
//! point is [`startup`].

pub mod alerts;
pub mod backfill;
pub mod bench;
pub mod config;
mod metrics;
pub mod pipeline;
pub mod process;
pub mod replay;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

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
    Up(UpArgs),
    /// Run SQL over the lake's tables with DataFusion.
    ///
    /// Tables have two-part names: raw.events, clean.car, clean.sensor,
    /// metrics.windows, anomalies.events, quarantine.rejects, quarantine.late.
    /// Example: pitwall query "SELECT driver, max(speed_kph) FROM clean.car GROUP BY driver"
    Query(QueryArgs),
    /// Print simulated telemetry to stdout (JSON lines or line protocol).
    Sim(SimArgs),
    /// Run the simulators and send their telemetry to the raw Kafka topic.
    ///
    /// Topics pitwall uses are created through the admin API when missing. Kafka
    /// settings come from the [kafka] section of the config (or --brokers). Ctrl-C (or
    /// the end of --duration / --sim-duration) stops and waits for every message to be
    /// acknowledged.
    Ingest(IngestArgs),
    /// Send files to the raw Kafka topic: FastF1 car data CSV, JSON lines, line protocol.
    ///
    /// PATH is a file or a directory (files in name order; --follow keeps watching it
    /// for new files). Lines that are not valid points go to the DLQ topic with their
    /// file, line and reason, and the summary counts them. Kafka settings come from the
    /// [kafka] section of the config (or --brokers).
    Replay(ReplayArgs),
    /// Process the raw Kafka topic into the lake (and the output topics), exactly once.
    ///
    /// Joins the consumer group kafka.group-id: start more processes with the same group
    /// to split the partitions. Each partition resumes from the offsets the lake's
    /// snapshots record (replaying just enough to rebuild open windows and anomaly
    /// episodes), so a crash or rebalance writes no row twice and skips none. Clean
    /// points, window metrics, anomalies, rejects (DLQ) and late events also go to their
    /// topics as JSON keyed by source id. Ctrl-C commits what was processed and leaves
    /// the group.
    Process(ProcessArgs),
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
    Serve(ServeArgs),
    /// Measure: print figures of a scenario (see `pitwall bench --help`).
    Bench {
        #[command(subcommand)]
        scenario: BenchScenario,
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
    Backfill(BackfillArgs),
    /// Keep the lake's tables healthy: compaction, snapshot expiry, orphan files, retention.
    ///
    /// `pitwall process` (and `up`) run all of it every lake.maintenance.interval; these
    /// run one step now, over every table or the one --table names. Each change is one
    /// atomic commit that a streaming writer may race safely; queries see the same rows
    /// before and after (retention drops whole days past their age, as configured).
    Lake {
        #[command(subcommand)]
        command: LakeCommand,
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

#[derive(Debug, Args)]
struct BackfillArgs {
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

#[derive(Debug, Subcommand)]
enum LakeCommand {
    /// Rewrite each partition's small files into files near the target size and merge
    /// the manifests, in one `replace` snapshot per table.
    Compact {
        #[command(flatten)]
        target: LakeTarget,
        /// Target file size in bytes (lake.maintenance.target-file-size, default 128 MiB).
        #[arg(long, value_name = "BYTES")]
        target_size: Option<u64>,
    },
    /// Drop snapshots older than an age (never the current one) and delete the files
    /// only they referenced.
    Expire {
        #[command(flatten)]
        target: LakeTarget,
        /// Age (lake.maintenance.expire-after, default 1h), e.g. 30m, 7d.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
    },
    /// Delete files under a table that no snapshot references, once older than an age.
    CleanOrphans {
        #[command(flatten)]
        target: LakeTarget,
        /// Age (lake.maintenance.orphan-age, default 1d); younger files may belong to a
        /// commit in progress.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
    },
    /// Drop day partitions older than the table's retention (lake.maintenance.retention).
    Retention {
        #[command(flatten)]
        target: LakeTarget,
        /// Keep this much for every chosen table instead of the configured ages, e.g. 30d.
        #[arg(long, value_parser = humantime::parse_duration)]
        keep: Option<Duration>,
    },
    /// Run every step, as the processor's schedule does.
    Maintain {
        #[command(flatten)]
        target: LakeTarget,
    },
}

#[derive(Debug, Args)]
struct LakeTarget {
    #[command(flatten)]
    common: Common,
    /// Only this table (e.g. raw.events, clean.car); default: every table.
    #[arg(long)]
    table: Option<String>,
}

#[derive(Debug, Args)]
struct Common {
    /// Config file (default: ./pitwall.toml if present, else built-in defaults).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    lake: LakeArgs,
}

/// Where the lake is; each flag overrides its `[lake]` key.
#[derive(Debug, Args)]
struct LakeArgs {
    /// Directory of the embedded lake: the SQLite catalog and the warehouse (lake.data-dir, default pitwall-data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Iceberg catalog instead of the SQLite file: postgres://user:password@host:5432/db (the SQL catalog), or http://host:port for an Iceberg REST catalog (lake.catalog; token and credentials in [lake.rest]).
    #[arg(long, value_name = "URI")]
    catalog: Option<String>,
    /// Where new tables' files go: s3://bucket/prefix or a directory (lake.warehouse; S3 settings in [lake.s3]).
    #[arg(long, value_name = "LOCATION")]
    warehouse: Option<String>,
}

impl LakeArgs {
    fn apply(&self, mut config: Config) -> Config {
        if let Some(d) = &self.data_dir {
            config.lake.data_dir = d.clone();
        }
        if let Some(c) = &self.catalog {
            config.lake.catalog = c.clone();
        }
        if let Some(w) = &self.warehouse {
            config.lake.warehouse = w.clone();
        }
        config
    }
}

#[derive(Debug, Args)]
struct UpArgs {
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
    /// Where the HTTP server listens: the dashboard, the write API (InfluxDB v1/v2 line
    /// protocol and Telegraf JSON), SQL, the live feed and /metrics; overrides
    /// server.listen (default 127.0.0.1:8086). Port 0 picks a free one.
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Where the PostgreSQL wire protocol listens (psql, Grafana, Superset, any
    /// PostgreSQL driver; database pitwall, read-only); overrides server.pg-listen
    /// (default 127.0.0.1:5433); "" turns it off.
    #[arg(long, value_name = "HOST:PORT")]
    pg_listen: Option<String>,
    /// Where Arrow Flight SQL listens (ADBC, Grafana's Flight SQL source, InfluxDB 3
    /// clients; read-only); overrides server.flight-listen (default: off).
    #[arg(long, value_name = "HOST:PORT")]
    flight_listen: Option<String>,
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

#[derive(Debug, Args)]
struct QueryArgs {
    /// The SQL statement.
    sql: String,
    #[command(flatten)]
    common: Common,
    /// Output: table (aligned), csv or json (one object per line).
    #[arg(long, default_value = "table")]
    format: pitwall_query::Format,
}

#[derive(Debug, Args)]
struct ProcessArgs {
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

#[derive(Debug, Args)]
struct IngestArgs {
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

#[derive(Debug, Subcommand)]
enum BenchScenario {
    /// The write API under a load generator over loopback: batches of simulated
    /// telemetry as line protocol, several connections, for a while; prints points/s,
    /// request latency and CPU. The load generator runs in the same process.
    HttpWrite {
        /// How long to send.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Concurrent connections (default: one per core, which measured best here).
        #[arg(long)]
        connections: Option<usize>,
        /// Lines per request.
        #[arg(long, default_value = "5000")]
        batch: usize,
        /// Gzip the bodies, as Telegraf does.
        #[arg(long)]
        gzip: bool,
        /// Where accepted points go: discard (the API's own cost) or kafka (the raw
        /// topic, acknowledged before each answer).
        #[arg(long, value_enum, default_value = "discard")]
        sink: bench::BenchSink,
        /// Kafka bootstrap brokers (overrides kafka.brokers), for --sink kafka.
        #[arg(long)]
        brokers: Option<String>,
        /// Send the same bodies to another system's write endpoint instead, with the same
        /// load generator: a peer such as InfluxDB 1.x
        /// (http://127.0.0.1:8086/write?db=bench&precision=ns). bench/peers.sh runs both.
        #[arg(long, value_name = "URL")]
        target: Option<String>,
        /// The --target server's process id, to report the CPU it used.
        #[arg(long, value_name = "PID", requires = "target")]
        target_pid: Option<u32>,
        /// Config file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Line protocol and JSON, parsed and encoded on one core: lines/s for each, on the
    /// simulators' telemetry (criterion has the same in crates/pitwall-core/benches).
    Codec {
        /// Points per run.
        #[arg(long, default_value = "200000")]
        points: usize,
        /// Runs of each operation; the median is printed.
        #[arg(long, default_value = "7")]
        runs: usize,
        /// Config file (its simulator settings shape the points).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// The seeds' typical dashboard queries (deploy/trino/schema.sql) on a lake as it is:
    /// each one's median time. Fill the lake first (`pitwall bench lake --sim-duration
    /// 14h --speed 0` leaves about 10 million car rows); bench/peers.sh query runs the
    /// same SQL in DuckDB over the same Parquet files.
    Query {
        #[command(flatten)]
        common: Common,
        /// Runs of each query; the median is printed.
        #[arg(long, default_value = "5")]
        runs: usize,
    },
    /// The simulators into the raw topic on Kafka at full speed, the producer of `pitwall
    /// ingest` (idempotent, acks=all, kafka.compression): events/s and events per
    /// CPU-second. Each run writes a topic of its own. bench/kafka.sh runs the
    /// confluent-kafka producer on the same messages as the peer.
    IngestKafka {
        /// Kafka bootstrap brokers (overrides kafka.brokers).
        #[arg(long)]
        brokers: Option<String>,
        /// Simulated telemetry to send (the default config makes 220 events a second of it).
        #[arg(long, default_value = "2000s", value_parser = humantime::parse_duration)]
        sim_duration: Duration,
        /// Runs; the median is printed.
        #[arg(long, default_value = "3")]
        runs: usize,
        /// Config file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Raw telemetry to the lake with the configured windows and rules, as fast as it
    /// goes: in-process (the embedded pipeline of `pitwall up`), or with --brokers from
    /// Kafka (the raw topic is filled first, then `pitwall process` reads it to the end).
    /// Prints events/s and events per CPU-second of the processing alone.
    Process {
        #[command(flatten)]
        common: Common,
        /// Read the raw topic from Kafka at these brokers instead of the in-process bus.
        #[arg(long)]
        brokers: Option<String>,
        /// Simulated telemetry to process.
        #[arg(long, default_value = "2000s", value_parser = humantime::parse_duration)]
        sim_duration: Duration,
        /// Runs; the median is printed.
        #[arg(long, default_value = "3")]
        runs: usize,
        /// With --brokers: after each run, the Kafka work of that run alone, with the same
        /// client settings: the raw topic read again while the messages the run wrote to
        /// its output topics are written again, in step, to topics of their own. No
        /// decoding, processing or lake: the floor under the processor's figure.
        #[arg(long, requires = "brokers")]
        kafka_floor: bool,
    },
    /// Event to anomaly at a fixed rate: probes (car points over the engine_overheat
    /// limit) ride along with simulated telemetry, and the time to their anomaly is taken
    /// on the anomalies topic and on the live feed (SSE over loopback): p50, p99, p99.9.
    Latency {
        #[command(flatten)]
        fixed: FixedRateArgs,
        /// Probes per second: hot readings from 16 probe sources in turn, each opening a new anomaly episode.
        #[arg(long, default_value = "200")]
        probes: f64,
    },
    /// Event to visible in `pitwall query`: probes ride along with simulated telemetry at
    /// a fixed rate while a query for them runs every --poll.
    Freshness {
        #[command(flatten)]
        fixed: FixedRateArgs,
        /// Probes per second.
        #[arg(long, default_value = "2")]
        probes: f64,
        /// Time between queries.
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        poll: Duration,
    },
    /// The lake under streaming commits: commit latency, a full-scan aggregate as
    /// streamed against the same on the compacted tables, and lake bytes against the raw
    /// JSON bytes. Point it at an empty lake (--data-dir, or --catalog/--warehouse for
    /// PostgreSQL and S3).
    #[command(alias = "storage")]
    Lake {
        #[command(flatten)]
        common: Common,
        /// Simulated telemetry to stream.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        sim_duration: Duration,
        /// Times real time: every interval below is simulated time, so 12 streams an
        /// hour in five minutes with the commits and maintenance rounds an hour would
        /// see. 0 = as fast as possible (commits still every --commit-every of
        /// simulated data; maintenance every --maintenance of wall time).
        #[arg(long, default_value = "12")]
        speed: f64,
        /// One lake commit per this much simulated time.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        commit_every: Duration,
        /// A maintenance round per this much simulated time ("0s" = none); snapshots
        /// expire after lake.maintenance.expire-after, also in simulated time.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        maintenance: Duration,
        /// Runs of each query; the median is printed.
        #[arg(long, default_value = "5")]
        runs: usize,
    },
}

/// The load of `pitwall bench latency` and `freshness`.
#[derive(Debug, Args)]
struct FixedRateArgs {
    #[command(flatten)]
    common: Common,
    /// Go through Kafka at these brokers (ingest and process as separate stages) instead
    /// of the in-process bus.
    #[arg(long)]
    brokers: Option<String>,
    /// Events per second.
    #[arg(long, default_value = "10000")]
    rate: f64,
    /// Measured time.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured time first, for the consumer groups to settle (default 5s, 10s with --brokers).
    #[arg(long, value_parser = humantime::parse_duration)]
    warmup: Option<Duration>,
}

impl FixedRateArgs {
    fn settings(self, probes: f64) -> anyhow::Result<(Config, bench::FixedRate)> {
        let lake_given = self.common.lake.data_dir.is_some() || self.common.lake.catalog.is_some();
        let config = self
            .common
            .lake
            .apply(Config::load(self.common.config.as_deref())?);
        config.validate()?;
        anyhow::ensure!(
            self.rate >= 1.0 && self.rate.is_finite(),
            "--rate {}: give events per second, at least 1",
            self.rate
        );
        anyhow::ensure!(
            probes > 0.0 && probes <= self.rate,
            "--probes {probes}: give probes per second, more than 0 and at most --rate"
        );
        let transport = match self.brokers {
            Some(b) => bench::Transport::Kafka(b),
            None => bench::Transport::InProcess,
        };
        let warmup = self.warmup.unwrap_or(Duration::from_secs(
            if matches!(transport, bench::Transport::Kafka(_)) {
                10
            } else {
                5
            },
        ));
        Ok((
            config,
            bench::FixedRate {
                rate: self.rate,
                duration: self.duration,
                warmup,
                probe_every: Duration::from_secs_f64(1.0 / probes),
                transport,
                lake_given,
            },
        ))
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Where to listen (overrides server.listen, default 127.0.0.1:8086).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Where the PostgreSQL wire protocol listens (overrides server.pg-listen, default
    /// 127.0.0.1:5433); "" turns it off.
    #[arg(long, value_name = "HOST:PORT")]
    pg_listen: Option<String>,
    /// Where Arrow Flight SQL listens (overrides server.flight-listen, default off).
    #[arg(long, value_name = "HOST:PORT")]
    flight_listen: Option<String>,
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

/// How replayed files are read (`pitwall replay` and `pitwall up --replay`).
#[derive(Debug, Args)]
struct ReplayInput {
    /// Input format; auto goes by extension (.csv FastF1, .jsonl JSON lines, .lp line protocol).
    #[arg(long, value_enum, default_value = "auto")]
    format: replay::InputFormat,
    /// Driver code for FastF1 files (default: taken from the file name, e.g. VER.csv).
    #[arg(long)]
    driver: Option<String>,
    /// Keep watching the directory and send new files as they arrive (Ctrl-C to stop).
    #[arg(long)]
    follow: bool,
    /// Timestamp unit of line protocol and Telegraf JSON input: s, ms, us or ns.
    #[arg(long, default_value = "ns")]
    precision: pitwall_core::Precision,
}

impl ReplayInput {
    /// The options to replay `path` at `speed`.
    fn options(self, path: PathBuf, speed: f64) -> anyhow::Result<replay::ReplayOptions> {
        if !(speed >= 0.0 && speed.is_finite()) {
            anyhow::bail!(
                "the replay speed is {speed}; use 0 (as fast as possible) or a positive factor"
            );
        }
        if !path.exists() {
            anyhow::bail!("{}: no such file or directory to replay", path.display());
        }
        Ok(replay::ReplayOptions {
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
struct ReplayArgs {
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

#[derive(Debug, Args)]
struct SimArgs {
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
        Command::Up(args) => up(args).await,
        Command::Query(args) => query(args).await,
        Command::Sim(args) => sim(&args),
        Command::Replay(args) => replay_files(args).await,
        Command::Ingest(args) => ingest(args).await,
        Command::Process(args) => process_command(args).await,
        Command::Serve(args) => serve(args).await,
        Command::Bench { scenario } => bench_command(scenario).await,
        Command::Lake { command } => lake_command(command).await,
        Command::Backfill(args) => backfill_command(args).await,
        Command::Rules {
            command: RulesCommand::Check { file },
        } => {
            let c = config::check_file(&file)?;
            println!(
                "{}: ok ({} windows, {} rules)",
                file.display(),
                c.processor.windows.len(),
                c.processor.rules.len()
            );
            let all = |v: &[String], what: &str| {
                if v.is_empty() {
                    format!("every {what}")
                } else {
                    v.join(", ")
                }
            };
            for w in &c.processor.windows {
                let shape = match w.slide {
                    Some(slide) if slide != w.size => {
                        format!(
                            "sliding {} every {}",
                            humantime::format_duration(w.size),
                            humantime::format_duration(slide)
                        )
                    }
                    _ => format!("tumbling {}", humantime::format_duration(w.size)),
                };
                println!(
                    "  window {:<14} {shape} over {} of {}{}",
                    w.name,
                    all(&w.fields, "numeric field"),
                    all(&w.measurements, "measurement"),
                    if w.percentiles {
                        ", with p50/p95/p99"
                    } else {
                        ""
                    }
                );
            }
            for r in &c.processor.rules {
                let on = r.field().map(|f| format!("{f} of ")).unwrap_or_default();
                println!(
                    "  rule   {:<16} {} on {on}{} ({})",
                    r.name(),
                    r.kind(),
                    r.measurement(),
                    r.severity().as_str()
                );
            }
            let p = &c.processor;
            for u in &p.units {
                let to = u.rename.as_deref().unwrap_or(&u.field);
                println!("  unit   {} {:?} -> {to} {:?}", u.field, u.from, u.to);
            }
            for d in &p.dimensions {
                println!(
                    "  join   {:<16} {} on tag {}",
                    d.name,
                    d.file.display(),
                    d.key
                );
            }
            for l in &p.laps {
                let what = if l.distance == pitwall_stream::DistanceKind::Total {
                    "lap and sector"
                } else {
                    "sector"
                };
                println!(
                    "  derive {what} of {} from {} on the track named by tag {}",
                    l.measurement, l.distance_field, l.track_tag
                );
            }
            for (name, t) in &p.tracks {
                println!(
                    "  track  {name}: {} m, {} sectors",
                    t.length_m,
                    t.sectors.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Cancels `cancel` on Ctrl-C, saying `message`.
fn cancel_on_ctrl_c(cancel: &CancellationToken, message: &'static str) {
    let cancel = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("{message}");
            cancel.cancel();
        }
    });
}

/// Cancels `cancel` once `duration` (if any) has passed.
fn cancel_after(cancel: &CancellationToken, duration: Option<Duration>) {
    if let Some(d) = duration {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            cancel.cancel();
        });
    }
}

pub(crate) use pitwall_core::now_ns;

async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
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
    let stats = Arc::new(metrics::Stats::default());
    metrics::export(&stats);
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
    let status = tokio::spawn(status::report(
        Arc::clone(&stats),
        args.status_interval,
        cancel.clone(),
        status::Rate::Produced,
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
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(pg) = args.pg_listen {
        config.server.pg_listen = pg;
    }
    if let Some(flight) = args.flight_listen {
        config.server.flight_listen = flight;
    }
    let run = pipeline::SimRun {
        start_time: now_ns(),
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
        let result = pipeline::run_on_kafka(config, run, cancel.clone(), Arc::clone(&stats)).await;
        cancel.cancel();
        status.await.ok();
        result?;
        status::print_line(&stats, started.elapsed(), status::Rate::Produced);
        return Ok(ExitCode::SUCCESS);
    }
    let result = pipeline::run_embedded(config, run, cancel.clone(), Arc::clone(&stats)).await;
    cancel.cancel();
    status.await.ok();
    let summary = result?;
    status::print_line(&stats, summary.elapsed, status::Rate::Produced);
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

async fn backfill_command(args: BackfillArgs) -> anyhow::Result<ExitCode> {
    let config = args
        .common
        .lake
        .apply(Config::load(args.common.config.as_deref())?);
    config.validate()?;
    let options = backfill::BackfillOptions {
        from: backfill::parse_time(&args.from).context("--from")?,
        to: backfill::parse_time(&args.to).context("--to")?,
        warm_up: args.warm_up,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let started = std::time::Instant::now();
    let s = backfill::run(config, &options).await?;
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

async fn lake_command(command: LakeCommand) -> anyhow::Result<ExitCode> {
    let target = match &command {
        LakeCommand::Compact { target, .. }
        | LakeCommand::Expire { target, .. }
        | LakeCommand::CleanOrphans { target, .. }
        | LakeCommand::Retention { target, .. }
        | LakeCommand::Maintain { target } => target,
    };
    let only = target.table.clone();
    let config = target
        .common
        .lake
        .apply(Config::load(target.common.config.as_deref())?);
    config.validate()?;
    let m = &config.lake.maintenance;
    let lake = pitwall_lake::Lake::open(config.lake.clone())
        .await
        .with_context(|| format!("opening the lake ({})", config.lake.describe()))?;
    let all = lake.table_idents().await?;
    let tables: Vec<_> = match &only {
        None => all,
        Some(name) => {
            let found: Vec<_> = all.into_iter().filter(|t| &t.to_string() == name).collect();
            if found.is_empty() {
                anyhow::bail!(
                    "--table {name}: no such table; `pitwall query \"SHOW TABLES\"` lists them"
                );
            }
            found
        }
    };
    let mut changed = 0;
    for ident in &tables {
        let name = ident.to_string();
        let line = match &command {
            LakeCommand::Compact { target_size, .. } => {
                let c = lake
                    .compact(ident, target_size.unwrap_or(m.target_file_size))
                    .await?;
                c.committed.then(|| {
                    format!(
                        "compacted {} data files ({} manifests) into {}; {} rows rewritten",
                        c.files_before, c.manifests_before, c.files_after, c.rows_rewritten
                    )
                })
            }
            LakeCommand::Expire { older_than, .. } => {
                let x = lake
                    .expire_snapshots(ident, older_than.unwrap_or(m.expire_after))
                    .await?;
                (x.snapshots > 0).then(|| {
                    format!(
                        "expired {} snapshots; deleted {} files",
                        x.snapshots, x.files_deleted
                    )
                })
            }
            LakeCommand::CleanOrphans { older_than, .. } => {
                let o = lake
                    .clean_orphans(ident, older_than.unwrap_or(m.orphan_age))
                    .await?;
                (!o.is_empty()).then(|| format!("removed {} orphan files", o.len()))
            }
            LakeCommand::Retention { keep, .. } => {
                match keep.or_else(|| m.retention.get(&name).copied()) {
                    Some(keep) => {
                        let r = lake.apply_retention(ident, keep).await?;
                        (r.removed_files > 0).then(|| {
                            format!(
                                "dropped {} rows in {} files older than {}",
                                r.removed_rows,
                                r.removed_files,
                                humantime::format_duration(keep)
                            )
                        })
                    }
                    None => None,
                }
            }
            LakeCommand::Maintain { .. } => {
                let only = pitwall_lake::MaintenanceConfig {
                    retention: m
                        .retention
                        .iter()
                        .filter(|(t, _)| **t == name)
                        .map(|(t, d)| (t.clone(), *d))
                        .collect(),
                    ..m.clone()
                };
                let lines = lake
                    .maintain_tables(std::slice::from_ref(ident), &only)
                    .await?;
                (!lines.is_empty()).then(|| lines.join("; "))
            }
        };
        match line {
            Some(l) => {
                changed += 1;
                println!("{name}: {l}");
            }
            None => println!("{name}: nothing to do"),
        }
    }
    eprintln!("{changed} of {} tables changed", tables.len());
    Ok(ExitCode::SUCCESS)
}

async fn query(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let config = args
        .common
        .lake
        .apply(Config::load(args.common.config.as_deref())?);
    if config.lake.is_embedded_catalog() && !config.lake.data_dir.join("catalog.db").exists() {
        anyhow::bail!(
            "no lake in {}: run `pitwall up` first, or pass the --data-dir it used",
            config.lake.data_dir.display()
        );
    }
    // The limits of the SQL API (server.query-*) hold here too: the lake may be the one
    // a running `pitwall up` writes, on the same machine.
    let limits = config
        .server
        .query_limits(Some(config.lake.data_dir.join("tmp")));
    let engine = pitwall_query::Engine::new(limits)?;
    let lake = pitwall_lake::Lake::open(config.lake).await?;
    let answer = engine.read_only(&lake, &args.sql).await?;
    let text = pitwall_query::render(&answer.batches, args.format)?;
    print!("{text}");
    if args.format == pitwall_query::Format::Table {
        println!();
        eprintln!("{} rows", answer.rows);
    }
    if answer.truncated {
        eprintln!(
            "the answer was cut at {} rows (server.query-max-rows); narrow the query or raise the limit",
            answer.rows
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Serves `/metrics` alone on `listen`, if given, until `cancel`.
async fn serve_metrics(listen: Option<&str>, cancel: &CancellationToken) -> anyhow::Result<()> {
    let Some(listen) = listen else { return Ok(()) };
    pitwall_server::metrics::install();
    let config = pitwall_server::ServerConfig {
        listen: listen.to_owned(),
        ..Default::default()
    };
    let bound = pitwall_server::Bound::bind(&config, pitwall_server::metrics::metrics_only())
        .await
        .map_err(|e| anyhow::anyhow!("{e}; pass another --metrics-listen HOST:PORT"))?;
    eprintln!("metrics on http://{}/metrics", bound.local_addr());
    let cancel = cancel.clone();
    tokio::spawn(bound.run(async move { cancel.cancelled().await }));
    Ok(())
}

async fn process_command(args: ProcessArgs) -> anyhow::Result<ExitCode> {
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
    let stats = Arc::new(metrics::Stats::default());
    metrics::export(&stats);
    let status_cancel = CancellationToken::new();
    let status = tokio::spawn(status::report(
        Arc::clone(&stats),
        args.status_interval,
        status_cancel.clone(),
        status::Rate::Processed,
    ));
    eprintln!(
        "pitwall process: group {} reading {}raw on {}; lake: {}",
        config.kafka.group_id,
        config.bus.topic_prefix,
        config.kafka.brokers,
        config.lake.describe()
    );
    let started = std::time::Instant::now();
    let options = process::ProcessOptions {
        exit_when_idle: args.exit_when_idle,
    };
    let result = process::run(config, options, cancel, Arc::clone(&stats)).await;
    status_cancel.cancel();
    status.await.ok();
    status::print_line(&stats, started.elapsed(), status::Rate::Processed);
    result?;
    Ok(ExitCode::SUCCESS)
}

async fn bench_command(scenario: BenchScenario) -> anyhow::Result<ExitCode> {
    match scenario {
        BenchScenario::HttpWrite {
            duration,
            connections,
            batch,
            gzip,
            sink,
            brokers,
            target,
            target_pid,
            config,
        } => {
            let mut config = Config::load(config.as_deref())?;
            if let Some(b) = brokers {
                config.kafka.brokers = b;
            }
            let connections = connections
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from));
            anyhow::ensure!(
                connections > 0 && batch > 0,
                "--connections and --batch must be at least 1"
            );
            let opts = bench::HttpWrite {
                duration,
                connections,
                batch,
                gzip,
                sink,
                target: target.map(|t| (t, target_pid)),
            };
            bench::http_write(&config, &opts).await?;
        }
        BenchScenario::Query { common, runs } => {
            let config = common.lake.apply(Config::load(common.config.as_deref())?);
            config.validate()?;
            bench::query(&config, runs).await?;
        }
        BenchScenario::Codec {
            points,
            runs,
            config,
        } => {
            anyhow::ensure!(points > 0, "--points must be at least 1");
            bench::codec(&Config::load(config.as_deref())?, points, runs)?;
        }
        BenchScenario::IngestKafka {
            brokers,
            sim_duration,
            runs,
            config,
        } => {
            let mut config = Config::load(config.as_deref())?;
            if let Some(b) = brokers {
                config.kafka.brokers = b;
            }
            config.validate()?;
            let brokers = config.kafka.brokers.clone();
            bench::ingest_kafka(&config, &brokers, sim_duration, runs).await?;
        }
        BenchScenario::Process {
            common,
            brokers,
            sim_duration,
            runs,
            kafka_floor,
        } => {
            let lake_given = common.lake.data_dir.is_some() || common.lake.catalog.is_some();
            let config = common.lake.apply(Config::load(common.config.as_deref())?);
            config.validate()?;
            anyhow::ensure!(
                runs == 1 || common.lake.catalog.is_none(),
                "--runs {runs} with --catalog: every run needs an empty lake; give one run per catalog"
            );
            let opts = bench::ProcessBench {
                sim_duration,
                runs,
                transport: brokers.map_or(bench::Transport::InProcess, bench::Transport::Kafka),
                lake_given,
                kafka_floor,
            };
            bench::process(&config, &opts).await?;
        }
        BenchScenario::Latency { fixed, probes } => {
            let (config, opts) = fixed.settings(probes)?;
            bench::latency(&config, &opts).await?;
        }
        BenchScenario::Freshness {
            fixed,
            probes,
            poll,
        } => {
            let (config, opts) = fixed.settings(probes)?;
            bench::freshness(&config, &opts, poll).await?;
        }
        BenchScenario::Lake {
            common,
            sim_duration,
            speed,
            commit_every,
            maintenance,
            runs,
        } => {
            let config = common.lake.apply(Config::load(common.config.as_deref())?);
            config.validate()?;
            anyhow::ensure!(
                speed >= 0.0 && speed.is_finite(),
                "--speed {speed}: give a factor of real time, or 0 for as fast as possible"
            );
            anyhow::ensure!(
                !commit_every.is_zero(),
                "--commit-every 0s: give the simulated time between commits, e.g. 5s"
            );
            let opts = bench::LakeBench {
                sim_duration,
                speed,
                commit_every,
                maintenance: (!maintenance.is_zero()).then_some(maintenance),
                runs,
            };
            bench::lake(&config, &opts).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = args.lake.apply(Config::load(args.config.as_deref())?);
    if let Some(b) = args.brokers {
        config.kafka.brokers = b;
    }
    if let Some(l) = args.listen {
        config.server.listen = l;
    }
    if let Some(pg) = args.pg_listen {
        config.server.pg_listen = pg;
    }
    if let Some(flight) = args.flight_listen {
        config.server.flight_listen = flight;
    }
    config.validate()?;
    let topics = pipeline::ensure_topics(&config).await?;
    let sink = Arc::new(pipeline::KafkaWriteSink::new(&config.kafka, &topics.raw)?);
    let cancel = CancellationToken::new();
    cancel_on_ctrl_c(&cancel, "stopping: finishing the writes in flight");
    eprintln!(
        "pitwall serve: writes go to {} at {}",
        topics.raw, config.kafka.brokers
    );
    let lake = pipeline::open_lake(&config).await?;
    let live = pitwall_server::LiveHub::default();
    pipeline::feed_live_from_kafka(&config, &topics, &live, &cancel)?;
    // serve commits nothing; its /health reports the server alone.
    let server = pipeline::start_server(
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

async fn ingest(args: IngestArgs) -> anyhow::Result<ExitCode> {
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
    let topics = pipeline::ensure_topics(&config).await?;
    let mut sink = pipeline::KafkaSink::new(&config.kafka, &topics.raw)?;
    let cancel = CancellationToken::new();
    cancel_on_ctrl_c(
        &cancel,
        "stopping: waiting for the brokers to acknowledge what was sent",
    );
    cancel_after(&cancel, args.duration);
    serve_metrics(args.metrics_listen.as_deref(), &cancel).await?;
    let stats = Arc::new(metrics::Stats::default());
    metrics::export(&stats);
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
    let run = pipeline::SimRun {
        start_time: now_ns(),
        sim_duration: args.sim_duration,
        serve: None,
        hold_open: false,
        replay: None,
    };
    let mut sim = pipeline::simulators(&config, run.start_time);
    pipeline::produce(&config, &run, &mut sim, &mut sink, &cancel, &stats).await?;
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

async fn replay_files(args: ReplayArgs) -> anyhow::Result<ExitCode> {
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
    let summary = replay::replay(&config, &opts, cancel).await?;
    eprintln!("{}", replay::describe(&summary));
    Ok(ExitCode::SUCCESS)
}

fn sim(args: &SimArgs) -> anyhow::Result<ExitCode> {
    use pitwall_sim::Simulator;
    use std::io::Write;
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(seed) = args.seed {
        config.sim.seed = seed;
    }
    let start = now_ns();
    let end = start + i64::try_from(args.duration.as_nanos()).context("duration too long")?;
    let mut sim = pipeline::simulators(&config, start);
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
