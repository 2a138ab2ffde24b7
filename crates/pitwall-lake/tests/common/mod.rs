//! Shared by the lake's integration tests: where a test's lake lives (the embedded
//! SQLite + local directory, or PostgreSQL + an S3 server), and feeding a writer.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use pitwall_core::record::{Origin, RawRecord};
use pitwall_core::{Checkpoint, Outputs, PartitionId};
use pitwall_lake::{Fixed, Lake, LakeConfig, LakeWriter, committed_offsets};

pub const T0: i64 = 1_767_225_600_000_000_000;

/// Partition `n` of the raw topic.
pub fn part(n: u32) -> PartitionId {
    PartitionId::new("telemetry.raw", n)
}

pub fn raw(partition: i32, offsets: std::ops::Range<i64>) -> Outputs {
    raw_at(partition, offsets, T0)
}

/// Raw rows whose ingest time is `base` plus the offset (in nanoseconds).
pub fn raw_at(partition: i32, offsets: std::ops::Range<i64>, base: i64) -> Outputs {
    Outputs {
        raw: offsets
            .map(|offset| RawRecord {
                origin: Origin {
                    topic: "telemetry.raw".into(),
                    partition,
                    offset,
                },
                // Three sources a partition, interleaved as a bus interleaves them.
                key: Some(format!("k{partition}-{}", offset % 3)),
                ingest_time: base + offset,
                payload: format!("{{\"p\":{partition},\"o\":{offset}}}")
                    .into_bytes()
                    .into(),
            })
            .collect(),
        ..Outputs::default()
    }
}

/// Buffers raw rows of `offsets` in `partition`, as a processor with no open state would.
pub fn feed(w: &mut LakeWriter, partition: i32, offsets: std::ops::Range<i64>) {
    feed_at(w, partition, offsets, T0);
}

/// As [`feed`], with ingest times from `base`.
pub fn feed_at(w: &mut LakeWriter, partition: i32, offsets: std::ops::Range<i64>, base: i64) {
    let next = offsets.end;
    w.append(
        &part(partition as u32),
        &raw_at(partition, offsets, base),
        Checkpoint {
            next,
            replay_from: next,
            max_time: base + next,
        },
    );
}

pub async fn open(config: &LakeConfig) -> Lake {
    Lake::open(config.clone()).await.unwrap()
}

/// Where a test's lake lives; the services stop when it is dropped.
pub struct Place {
    pub config: LakeConfig,
    pub dir: tempfile::TempDir,
    pub services: Option<(pitwall_testkit::Postgres, pitwall_testkit::Garage)>,
    /// The REST catalog and, when its warehouse is on S3, the S3 server (dropped after
    /// the catalog).
    pub rest: Option<(pitwall_testkit::Rustberg, Option<pitwall_testkit::Garage>)>,
}

/// The embedded lake: SQLite catalog, local warehouse.
pub fn local() -> Place {
    let dir = tempfile::tempdir().unwrap();
    Place {
        config: LakeConfig::test_config(dir.path()),
        dir,
        services: None,
        rest: None,
    }
}

/// The shared lake: the SQL catalog on PostgreSQL, the warehouse on garage over S3.
pub fn shared() -> Place {
    let dir = tempfile::tempdir().unwrap();
    let pg = pitwall_testkit::Postgres::start();
    let s3 = pitwall_testkit::Garage::start();
    let config = LakeConfig {
        catalog: pg.database("catalog"),
        warehouse: format!("s3://{}/warehouse", s3.bucket),
        s3: s3_config(&s3),
        ..LakeConfig::test_config(dir.path())
    };
    Place {
        config,
        dir,
        services: Some((pg, s3)),
        rest: None,
    }
}

fn s3_config(s3: &pitwall_testkit::Garage) -> pitwall_lake::S3Config {
    pitwall_lake::S3Config {
        endpoint: s3.endpoint.clone(),
        region: s3.region.clone(),
        path_style: true,
        access_key_id: s3.access_key_id.clone(),
        secret_access_key: s3.secret_access_key.clone(),
        ..Default::default()
    }
}

/// A lake behind an Iceberg REST catalog (rustberg, an API key required): with its
/// warehouse in a local directory, or on garage over S3.
pub fn rest(on_s3: bool) -> Place {
    let dir = tempfile::tempdir().unwrap();
    let s3 = on_s3.then(pitwall_testkit::Garage::start);
    let server = match &s3 {
        Some(g) => pitwall_testkit::Rustberg::start_on(g),
        None => pitwall_testkit::Rustberg::start(),
    };
    let config = LakeConfig {
        catalog: server.uri.clone(),
        rest: pitwall_lake::RestConfig {
            token: server.token.clone(),
            ..Default::default()
        },
        s3: s3.as_ref().map(s3_config).unwrap_or_default(),
        ..LakeConfig::test_config(dir.path())
    };
    Place {
        config,
        dir,
        services: None,
        rest: Some((server, s3)),
    }
}

pub async fn raw_offsets(lake: &Lake) -> BTreeMap<PartitionId, i64> {
    committed_offsets(&lake.table(&Fixed::Raw.ident()).await.unwrap()).unwrap_or_default()
}

/// Every row of `table` as Arrow batches, only `columns` (all when empty): what a reader
/// of the lake sees.
pub async fn scan(
    table: &iceberg::table::Table,
    columns: &[&str],
) -> Vec<arrow_array::RecordBatch> {
    use futures::TryStreamExt;
    let scan = table.scan();
    let scan = if columns.is_empty() {
        scan
    } else {
        scan.select(columns.iter().copied())
    };
    scan.build()
        .unwrap()
        .to_arrow()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}
