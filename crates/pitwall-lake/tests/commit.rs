//! The fenced commit path on a real SQLite catalog: writers racing on the same table
//! all land, and a writer whose claim is stale (a zombie) is refused and writes nothing.

use std::collections::BTreeMap;

use pitwall_core::record::{Origin, RawRecord};
use pitwall_lake::{Error, Fixed, Lake, LakeConfig, LakeWriter, committed_offsets};
use pitwall_stream::{Checkpoint, Outputs};

const T0: i64 = 1_767_225_600_000_000_000;

fn raw(partition: i32, offsets: std::ops::Range<i64>) -> Outputs {
    Outputs {
        raw: offsets
            .map(|offset| RawRecord {
                origin: Origin {
                    topic: "telemetry.raw".into(),
                    partition,
                    offset,
                },
                key: Some(format!("k{partition}")),
                ingest_time: T0 + offset,
                payload: format!("{{\"p\":{partition},\"o\":{offset}}}").into_bytes().into(),
            })
            .collect(),
        ..Outputs::default()
    }
}

/// Buffers raw rows of `offsets` in `partition`, as a processor with no open state would.
fn feed(w: &mut LakeWriter, partition: i32, offsets: std::ops::Range<i64>) {
    let next = offsets.end;
    w.append(
        &format!("telemetry.raw/{partition}"),
        raw(partition, offsets),
        Checkpoint { next, replay_from: next, max_time: T0 + next },
    );
}

async fn open(dir: &std::path::Path) -> Lake {
    Lake::open(LakeConfig::test_config(dir)).await.unwrap()
}

async fn raw_offsets(lake: &Lake) -> BTreeMap<String, i64> {
    committed_offsets(&lake.table(&Fixed::Raw.ident()).await.unwrap()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_racing_on_disjoint_partitions_all_land() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).await;
    // Two lake handles, each with its own catalog connections: two processes, in effect.
    let mut a = LakeWriter::open(open(dir.path()).await).await.unwrap();
    let mut b = LakeWriter::open(open(dir.path()).await).await.unwrap();
    const ROUNDS: i64 = 12;
    let ta = tokio::spawn(async move {
        for i in 0..ROUNDS {
            feed(&mut a, 0, i * 10..(i + 1) * 10);
            a.commit().await.unwrap();
        }
    });
    let tb = tokio::spawn(async move {
        for i in 0..ROUNDS {
            feed(&mut b, 1, i * 7..(i + 1) * 7);
            b.commit().await.unwrap();
        }
    });
    ta.await.unwrap();
    tb.await.unwrap();
    let lake = open(dir.path()).await;
    let table = lake.table(&Fixed::Raw.ident()).await.unwrap();
    assert_eq!(table.metadata().snapshots().count() as i64, 2 * ROUNDS, "no commit was lost");
    let offsets = raw_offsets(&lake).await;
    assert_eq!(offsets["telemetry.raw/0"], ROUNDS * 10);
    assert_eq!(offsets["telemetry.raw/1"], ROUNDS * 7);
    let summary = &table.metadata().current_snapshot().unwrap().summary().additional_properties;
    assert_eq!(summary["total-records"], (ROUNDS * 17).to_string());
    // Every row is readable once: scan the table.
    use futures::TryStreamExt;
    let batches: Vec<_> = table.scan().build().unwrap().to_arrow().await.unwrap().try_collect().await.unwrap();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows as i64, ROUNDS * 17);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_cannot_commit_and_a_resumed_writer_can() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).await;
    let mut owner = LakeWriter::open(open(dir.path()).await).await.unwrap();
    // The zombie read the lake at the same time, before the owner committed.
    let mut zombie = LakeWriter::open(open(dir.path()).await).await.unwrap();
    feed(&mut owner, 0, 0..100);
    owner.commit().await.unwrap();

    feed(&mut zombie, 0, 0..100);
    let err = zombie.commit().await.unwrap_err();
    match &err {
        Error::Fenced { table, partition, committed, expected } => {
            assert_eq!((table.as_str(), partition.as_str(), *committed, *expected), ("raw.events", "telemetry.raw/0", 100, 0));
        }
        other => panic!("expected a fenced commit, got {other}"),
    }
    assert!(err.to_string().contains("another writer owns it now"), "{err}");
    assert_eq!(zombie.buffered(), 0, "the fenced partition's rows were dropped");
    let lake = open(dir.path()).await;
    let table = lake.table(&Fixed::Raw.ident()).await.unwrap();
    assert_eq!(table.metadata().snapshots().count(), 1, "the zombie wrote no snapshot");

    // A writer that resumes from the lake carries on where the owner stopped.
    let mut resumed = LakeWriter::open(open(dir.path()).await).await.unwrap();
    assert_eq!(resumed.resume_offsets()["telemetry.raw/0"], 100);
    feed(&mut resumed, 0, 100..150);
    resumed.commit().await.unwrap();
    assert_eq!(raw_offsets(&lake).await["telemetry.raw/0"], 150);
    // ... and the old owner, now stale itself, is fenced in turn.
    feed(&mut owner, 0, 100..120);
    assert!(matches!(owner.commit().await, Err(Error::Fenced { committed: 150, expected: 100, .. })));
}
