//! `pitwall.toml`: one file for the pipeline's shape, layered as built-in defaults, then
//! the file, then `PITWALL_SECTION__KEY` environment variables. Unknown keys are
//! rejected with the key's path, so a typo fails at start instead of being ignored.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use pitwall_lake::LakeConfig;
use pitwall_sim::{IotConfig, RaceConfig};
use pitwall_stream::ProcessorConfig;
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Simulators run by `pitwall up` and `pitwall sim`.
    pub sim: SimConfig,
    /// The bus.
    pub bus: BusSettings,
    /// Kafka, for `ingest`, `replay` and `process`.
    pub kafka: pitwall_bus::kafka::KafkaConfig,
    /// The lake.
    pub lake: LakeConfig,
    /// The processor: windows and rules.
    pub processor: ProcessorConfig,
    /// The HTTP server of `pitwall up` and `pitwall serve`.
    pub server: pitwall_server::ServerConfig,
    /// Where anomaly episodes are sent (`[[alerts.routes]]`).
    pub alerts: crate::alerts::AlertsConfig,
}

/// Which simulators run, and how fast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SimConfig {
    /// Seed; the same seed gives the same race.
    pub seed: u64,
    /// Simulated seconds per wall-clock second; 0 runs as fast as possible.
    pub speed: f64,
    /// Run the F1 race.
    pub race_enabled: bool,
    /// Run the IoT fleet.
    pub iot_enabled: bool,
    /// Malformed payloads put on the bus per simulated minute (truncated JSON, a
    /// missing source tag, a timestamp in seconds, not JSON at all), to exercise the
    /// rejects path; 0 sends none.
    pub corrupt_per_minute: f64,
    /// The F1 race.
    pub race: RaceConfig,
    /// The IoT sensor fleet.
    pub iot: IotConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            speed: 1.0,
            race_enabled: true,
            iot_enabled: true,
            corrupt_per_minute: 0.0,
            race: RaceConfig::default(),
            iot: IotConfig::default(),
        }
    }
}

/// Bus settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct BusSettings {
    /// Prefix of every topic name (`telemetry.raw`, ...); the seeds also use `f1.telemetry.`.
    pub topic_prefix: String,
    /// Partitions per topic.
    pub partitions: u32,
    /// Messages a partition holds before producers wait.
    pub capacity: usize,
}

impl Default for BusSettings {
    fn default() -> Self {
        BusSettings {
            topic_prefix: "telemetry.".into(),
            partitions: 3,
            capacity: 8192,
        }
    }
}

impl Config {
    /// Loads defaults, then `file` (if given; `pitwall.toml` in the working directory
    /// if present), then the environment, and validates the result.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => {
                if !path.exists() {
                    bail!(
                        "config file {} does not exist; pass an existing file to --config or leave it out to use the defaults",
                        path.display()
                    );
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None => {
                if Path::new("pitwall.toml").exists() {
                    figment = figment.merge(Toml::file_exact("pitwall.toml"));
                }
            }
        }
        // PITWALL_LAKE__COMMIT_INTERVAL=2s sets lake.commit-interval.
        figment = figment.merge(
            Env::prefixed("PITWALL_")
                .filter(|k| k.as_str().contains("__"))
                .map(|k| k.as_str().replace("__", ".").replace('_', "-").into()),
        );
        Self::extract(&figment)
    }

    /// Defaults, then the TOML `text` (no file, no environment), validated: what the
    /// config fuzz target feeds.
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        Self::extract(
            &Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)),
        )
    }

    fn extract(figment: &Figment) -> anyhow::Result<Config> {
        let config: Config = figment.extract().map_err(|e| {
            let mut msg = String::new();
            for err in e {
                let path = err.path.join(".");
                let source = err
                    .metadata
                    .as_ref()
                    .and_then(|m| m.source.as_ref())
                    .map(|s| format!(" (from {s})"))
                    .unwrap_or_default();
                msg.push_str(&format!("\n  key `{path}`{source}: {}", err.kind));
            }
            anyhow::anyhow!("invalid configuration:{msg}\nsee pitwall.toml in the repository for every key and its default")
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values serde cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.processor.validate()?;
        self.alerts.validate()?;
        self.kafka.validate()?;
        if self.bus.partitions == 0 || self.bus.partitions > 1024 {
            bail!(
                "config key bus.partitions: is {}; use 1 to 1024",
                self.bus.partitions
            );
        }
        self.server
            .validate()
            .map_err(|e| anyhow::anyhow!("config key {e}"))?;
        if self.bus.capacity == 0 {
            bail!("config key bus.capacity: is 0; a partition must hold at least one message");
        }
        if !(self.sim.speed >= 0.0 && self.sim.speed.is_finite()) {
            bail!(
                "config key sim.speed: is {}; use 0 (as fast as possible) or a positive factor",
                self.sim.speed
            );
        }
        if !(self.sim.corrupt_per_minute >= 0.0 && self.sim.corrupt_per_minute.is_finite()) {
            bail!(
                "config key sim.corrupt-per-minute: is {}; use 0 or a positive rate",
                self.sim.corrupt_per_minute
            );
        }
        if !(1..=20).contains(&self.sim.race.cars) {
            bail!(
                "config key sim.race.cars: is {}; the grid has 1 to 20 cars",
                self.sim.race.cars
            );
        }
        if !(self.sim.race.hz > 0.0 && self.sim.race.hz <= 1000.0) {
            bail!(
                "config key sim.race.hz: is {}; use a rate above 0 and at most 1000",
                self.sim.race.hz
            );
        }
        if !(self.sim.iot.hz > 0.0 && self.sim.iot.hz <= 1000.0) {
            bail!(
                "config key sim.iot.hz: is {}; use a rate above 0 and at most 1000",
                self.sim.iot.hz
            );
        }
        if self.lake.commit_interval < Duration::from_millis(10) {
            bail!(
                "config key lake.commit-interval: is {:?}; use at least 10ms (default 5s)",
                self.lake.commit_interval
            );
        }
        if self.lake.commit_rows == 0 {
            bail!("config key lake.commit-rows: is 0; use a positive row count");
        }
        self.lake
            .validate()
            .map_err(|e| anyhow::anyhow!("config key {e}"))?;
        Ok(())
    }
}

/// Reads a config file only to validate it (`pitwall rules check`).
pub fn check_file(path: &Path) -> anyhow::Result<Config> {
    Config::load(Some(path)).with_context(|| format!("checking {}", path.display()))
}
