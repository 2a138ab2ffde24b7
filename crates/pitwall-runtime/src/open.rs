//! Opening what a run needs: the lake (with its schema registry and scheduled
//! maintenance) and the topics.

use std::time::Instant;

use anyhow::Context;
use pitwall_bus::{BusConfig, Topics};
use pitwall_lake::Lake;
use pitwall_stream::SchemaRegistry;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Runs the lake's maintenance (compaction, expiry, orphans, retention) every
/// `lake.maintenance.interval` until `cancel`; nothing when the interval is zero. A run
/// cut short by `cancel` leaves at most unreferenced files, which a later run removes.
/// The task stops when the returned guard is dropped.
pub(crate) fn spawn_maintenance(
    lake: &Lake,
    config: &Config,
    cancel: &CancellationToken,
) -> MaintenanceTask {
    let m = config.lake.maintenance.clone();
    if m.interval.is_zero() {
        return MaintenanceTask(None);
    }
    let (lake, cancel) = (lake.clone(), cancel.clone());
    // Its own thread and runtime: compaction is CPU work (Parquet decoding and encoding)
    // that would otherwise occupy the pipeline's runtime threads and hold up its commits.
    let stop = CancellationToken::new();
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new().name("lake-maintenance".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "no runtime for lake maintenance; it will not run");
                return;
            }
        };
        runtime.block_on(async move {
            // A lake handle of its own: its catalog connections are returned to pools
            // this runtime serves, never holding up the pipeline's.
            let lake = match Lake::open(lake.config().clone()).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "lake maintenance could not open the lake; it will not run");
                    return;
                }
            };
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = thread_stop.cancelled() => return,
                    () = tokio::time::sleep(m.interval) => {}
                }
                let round = async {
                    let tables = match lake.table_idents().await {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::warn!(error = %e, "lake maintenance cannot list the tables; trying again in {}", humantime::format_duration(m.interval));
                            return;
                        }
                    };
                    // Each table's outcome as soon as it is done: a round over a big
                    // lake takes a while.
                    for ident in tables {
                        let started = Instant::now();
                        if let Some(line) = lake.maintain_table(&ident, &m).await {
                            tracing::info!(took_ms = started.elapsed().as_millis() as u64, "lake maintenance: {ident}: {line}");
                        }
                    }
                };
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = thread_stop.cancelled() => return,
                    () = round => {}
                }
            }
        });
    });
    match thread {
        Ok(_) => MaintenanceTask(Some(stop)),
        Err(e) => {
            tracing::warn!(error = %e, "could not start lake maintenance");
            MaintenanceTask(None)
        }
    }
}

/// Stops the scheduled maintenance when dropped (a run in progress stops at its next
/// await; at most unreferenced files are left, which a later run removes).
pub(crate) struct MaintenanceTask(Option<CancellationToken>);

impl Drop for MaintenanceTask {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.cancel();
        }
    }
}

/// Opens the lake `config` names, and a schema registry seeded with its clean tables'
/// column types so a restart keeps them.
pub async fn open_lake(config: &Config) -> anyhow::Result<(Lake, SchemaRegistry)> {
    let lake = Lake::open(config.lake.clone())
        .await
        .with_context(|| format!("opening the lake ({})", config.lake.describe()))?;
    let schemas = SchemaRegistry::with_limits(pitwall_stream::SchemaLimits {
        max_tables: config.lake.max_tables,
        max_columns: config.lake.max_columns,
    });
    for (m, fields) in lake.clean_schemas().await? {
        schemas.seed(&m, fields);
    }
    Ok((lake, schemas))
}

/// Creates, through the admin API, the topics of `config`'s prefix that do not exist.
pub async fn ensure_topics(config: &Config) -> anyhow::Result<Topics> {
    let topics = Topics::with_prefix(&config.bus.topic_prefix);
    pitwall_bus::kafka::ensure_topics(&config.kafka, &topics.all())
        .await
        .context("making sure pitwall's topics exist")?;
    Ok(topics)
}

/// The in-process bus `config` asks for.
pub fn bus_config(config: &Config) -> BusConfig {
    BusConfig {
        topics: Topics::with_prefix(&config.bus.topic_prefix),
        partitions: config.bus.partitions,
        capacity: config.bus.capacity,
    }
}
