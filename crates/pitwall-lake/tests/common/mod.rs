//! Shared by the lake's integration tests: where a test's lake lives (the embedded
//! SQLite + local directory, or PostgreSQL + an S3 server), and feeding a writer.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use pitwall_core::record::{Origin, RawRecord};
use pitwall_lake::{Fixed, Lake, LakeConfig, LakeWriter, committed_offsets};
use pitwall_stream::{Checkpoint, Outputs};

pub const T0: i64 = 1_767_225_600_000_000_000;

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
                key: Some(format!("k{partition}")),
                ingest_time: base + offset,
                payload: format!("{{\"p\":{partition},\"o\":{offset}}}").into_bytes().into(),
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
        &format!("telemetry.raw/{partition}"),
        raw_at(partition, offsets, base),
        Checkpoint { next, replay_from: next, max_time: base + next },
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
}

/// The embedded lake: SQLite catalog, local warehouse.
pub fn local() -> Place {
    let dir = tempfile::tempdir().unwrap();
    Place { config: LakeConfig::test_config(dir.path()), dir, services: None }
}

/// The shared lake: the SQL catalog on PostgreSQL, the warehouse on garage over S3.
pub fn shared() -> Place {
    let dir = tempfile::tempdir().unwrap();
    let pg = pitwall_testkit::Postgres::start();
    let s3 = pitwall_testkit::Garage::start();
    let config = LakeConfig {
        catalog: pg.database("catalog"),
        warehouse: format!("s3://{}/warehouse", s3.bucket),
        s3: pitwall_lake::S3Config {
            endpoint: s3.endpoint.clone(),
            region: s3.region.clone(),
            path_style: true,
            access_key_id: s3.access_key_id.clone(),
            secret_access_key: s3.secret_access_key.clone(),
            ..Default::default()
        },
        ..LakeConfig::test_config(dir.path())
    };
    Place { config, dir, services: Some((pg, s3)) }
}

pub async fn raw_offsets(lake: &Lake) -> BTreeMap<String, i64> {
    committed_offsets(&lake.table(&Fixed::Raw.ident()).await.unwrap()).unwrap_or_default()
}

