//! Row counts: `count(*)` and other queries that name no column are answered from the
//! manifests' record counts without reading a file, and agree with the rows a scan
//! reads, with filters, limits and several files per table.

use pitwall_core::record::{Origin, RawRecord};
use pitwall_core::{Checkpoint, Outputs, PartitionId};
use pitwall_lake::{Lake, LakeConfig, LakeWriter};
use pitwall_query::{Engine, Limits};

/// Commits `rounds` rounds of `per_round` raw rows on partition 0: one data file each.
async fn filled(dir: &std::path::Path, rounds: i64, per_round: i64) -> Lake {
    let lake = Lake::open(LakeConfig::test_config(dir)).await.unwrap();
    let mut w = LakeWriter::open(lake.clone()).await.unwrap();
    for round in 0..rounds {
        let offsets = round * per_round..(round + 1) * per_round;
        let raw = offsets
            .clone()
            .map(|offset| RawRecord {
                origin: Origin {
                    topic: "telemetry.raw".into(),
                    partition: 0,
                    offset,
                },
                key: Some(format!("k{}", offset % 3)),
                ingest_time: 1_767_225_600_000_000_000 + offset,
                payload: b"{}".to_vec().into(),
            })
            .collect();
        let next = offsets.end;
        w.append(
            &PartitionId::new("telemetry.raw", 0),
            &Outputs {
                raw,
                ..Outputs::default()
            },
            Checkpoint {
                next,
                replay_from: next,
                max_time: next,
            },
        );
        w.commit().await.unwrap();
    }
    lake
}

async fn one_number(engine: &Engine, lake: &Lake, sql: &str) -> String {
    let answer = engine.read_only(lake, sql).await.unwrap();
    assert_eq!(answer.rows, 1, "{sql}");
    arrow::util::display::array_value_to_string(answer.batches[0].column(0), 0).unwrap()
}

async fn plan(engine: &Engine, lake: &Lake, sql: &str) -> String {
    let answer = engine
        .read_only(lake, &format!("EXPLAIN {sql}"))
        .await
        .unwrap();
    let mut text = String::new();
    for batch in &answer.batches {
        for row in 0..batch.num_rows() {
            text += &arrow::util::display::array_value_to_string(batch.column(1), row).unwrap();
            text.push('\n');
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_come_from_the_manifests_and_agree_with_the_rows_read() {
    let dir = tempfile::tempdir().unwrap();
    let lake = filled(dir.path(), 3, 1_000).await;
    let engine = Engine::new(Limits::default()).unwrap();

    // Three files, counted from their manifest entries: the plan reads no file.
    assert_eq!(
        one_number(&engine, &lake, "SELECT count(*) FROM raw.events").await,
        "3000"
    );
    let counted = plan(&engine, &lake, "SELECT count(*) FROM raw.events").await;
    assert!(!counted.contains("LakeScan"), "{counted}");

    // The same number when every row is read (a column named), and with a filter,
    // which must read the filtered column.
    assert_eq!(
        one_number(&engine, &lake, "SELECT count(partition) FROM raw.events").await,
        "3000"
    );
    assert_eq!(
        one_number(
            &engine,
            &lake,
            "SELECT count(*) FROM raw.events WHERE \"offset\" % 3 = 0"
        )
        .await,
        "1000"
    );
    assert_eq!(
        one_number(
            &engine,
            &lake,
            "SELECT count(*) FROM raw.events WHERE \"offset\" >= 2500"
        )
        .await,
        "500"
    );

    // Rows with no columns, limited, and grouped after a subquery that names none.
    let answer = engine
        .read_only(&lake, "SELECT 1 AS one FROM raw.events LIMIT 7")
        .await
        .unwrap();
    assert_eq!(answer.rows, 7);
    assert_eq!(
        one_number(
            &engine,
            &lake,
            "SELECT count(*) FROM (SELECT 1 AS one FROM raw.events LIMIT 2500)"
        )
        .await,
        "2500"
    );
    assert_eq!(
        one_number(
            &engine,
            &lake,
            "SELECT sum(n) FROM (SELECT 2 AS n FROM raw.events)"
        )
        .await,
        "6000"
    );
    // An empty table counts nothing.
    assert_eq!(
        one_number(&engine, &lake, "SELECT count(*) FROM quarantine.late").await,
        "0"
    );
}
