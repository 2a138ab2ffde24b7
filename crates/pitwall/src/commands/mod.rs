//! The binary's commands, one module each with its clap arguments and `run`; what
//! several share (the config and lake flags, Ctrl-C and --duration, /metrics) is here.

pub(crate) mod backfill;
pub(crate) mod bench;
pub(crate) mod ingest;
pub(crate) mod lake;
pub(crate) mod process;
pub(crate) mod query;
pub(crate) mod replay;
pub(crate) mod rules;
pub(crate) mod serve;
pub(crate) mod sim;
pub(crate) mod up;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use pitwall_runtime::config::Config;

#[derive(Debug, Args)]
pub(crate) struct Common {
    /// Config file (default: ./pitwall.toml if present, else built-in defaults).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    lake: LakeArgs,
}

/// Where the lake is; each flag overrides its `[lake]` key.
#[derive(Debug, Args)]
pub(crate) struct LakeArgs {
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

/// Cancels `cancel` on Ctrl-C, saying `message`.
pub(crate) fn cancel_on_ctrl_c(cancel: &CancellationToken, message: &'static str) {
    let cancel = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("{message}");
            cancel.cancel();
        }
    });
}

/// Cancels `cancel` once `duration` (if any) has passed.
pub(crate) fn cancel_after(cancel: &CancellationToken, duration: Option<Duration>) {
    if let Some(d) = duration {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            cancel.cancel();
        });
    }
}

/// Serves `/metrics` alone on `listen`, if given, until `cancel`.
pub(crate) async fn serve_metrics(
    listen: Option<&str>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
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

/// Where the servers listen; each flag overrides its `[server]` key.
#[derive(Debug, Args)]
pub(crate) struct ListenArgs {
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
}

impl ListenArgs {
    fn apply(self, server: &mut pitwall_server::ServerConfig) {
        if let Some(l) = self.listen {
            server.listen = l;
        }
        if let Some(pg) = self.pg_listen {
            server.pg_listen = pg;
        }
        if let Some(flight) = self.flight_listen {
            server.flight_listen = flight;
        }
    }
}
