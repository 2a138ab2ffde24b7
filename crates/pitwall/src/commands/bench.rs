//! `pitwall bench <scenario>`: the benchmarks that print figures (HTTP write, codec, query, Kafka ingest, process, latency, freshness, lake).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::*;
use pitwall_runtime::config::Config;

#[derive(Debug, Subcommand)]
pub(crate) enum BenchScenario {
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
        sink: crate::bench::BenchSink,
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
pub(crate) struct FixedRateArgs {
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
    fn settings(self, probes: f64) -> anyhow::Result<(Config, crate::bench::FixedRate)> {
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
            Some(b) => crate::bench::Transport::Kafka(b),
            None => crate::bench::Transport::InProcess,
        };
        let warmup = self.warmup.unwrap_or(Duration::from_secs(
            if matches!(transport, crate::bench::Transport::Kafka(_)) {
                10
            } else {
                5
            },
        ));
        Ok((
            config,
            crate::bench::FixedRate {
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

pub(crate) async fn run(scenario: BenchScenario) -> anyhow::Result<ExitCode> {
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
            let opts = crate::bench::HttpWrite {
                duration,
                connections,
                batch,
                gzip,
                sink,
                target: target.map(|t| (t, target_pid)),
            };
            crate::bench::http_write(&config, &opts).await?;
        }
        BenchScenario::Query { common, runs } => {
            let config = common.lake.apply(Config::load(common.config.as_deref())?);
            config.validate()?;
            crate::bench::query(&config, runs).await?;
        }
        BenchScenario::Codec {
            points,
            runs,
            config,
        } => {
            anyhow::ensure!(points > 0, "--points must be at least 1");
            crate::bench::codec(&Config::load(config.as_deref())?, points, runs)?;
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
            crate::bench::ingest_kafka(&config, &brokers, sim_duration, runs).await?;
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
            let opts = crate::bench::ProcessBench {
                sim_duration,
                runs,
                transport: brokers.map_or(
                    crate::bench::Transport::InProcess,
                    crate::bench::Transport::Kafka,
                ),
                lake_given,
                kafka_floor,
            };
            crate::bench::process(&config, &opts).await?;
        }
        BenchScenario::Latency { fixed, probes } => {
            let (config, opts) = fixed.settings(probes)?;
            crate::bench::latency(&config, &opts).await?;
        }
        BenchScenario::Freshness {
            fixed,
            probes,
            poll,
        } => {
            let (config, opts) = fixed.settings(probes)?;
            crate::bench::freshness(&config, &opts, poll).await?;
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
            let opts = crate::bench::LakeBench {
                sim_duration,
                speed,
                commit_every,
                maintenance: (!maintenance.is_zero()).then_some(maintenance),
                runs,
            };
            crate::bench::lake(&config, &opts).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
