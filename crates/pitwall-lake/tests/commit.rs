//! The fenced commit path on real catalogs (the embedded SQLite file with a local
//! warehouse, and PostgreSQL with the warehouse on an S3 server): writers racing on the
//! same table all land, and a writer whose claim is stale (a zombie) is refused and
//! writes nothing.

mod common;

use common::{Place, T0, feed, local, open, part, raw, raw_offsets, rest, shared};
use pitwall_core::Checkpoint;
use pitwall_lake::{Error, Fixed, LakeWriter, QUARANTINE_AFTER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_racing_on_disjoint_partitions_all_land() {
    racing_writers_all_land(&local()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_racing_on_postgresql_and_s3_all_land() {
    let place = shared();
    racing_writers_all_land(&place).await;
    // The catalog row is in PostgreSQL and points into the bucket; nothing is on the local disk.
    let (pg, _) = place.services.as_ref().unwrap();
    let location = pg.psql(
        "catalog",
        "SELECT metadata_location FROM iceberg_tables WHERE catalog_name = 'pitwall' AND table_namespace = 'raw' AND table_name = 'events'",
    );
    assert!(
        location
            .trim()
            .starts_with("s3://pitwall/warehouse/raw/events/metadata/"),
        "{location}"
    );
    let table = open(&place.config)
        .await
        .table(&Fixed::Raw.ident())
        .await
        .unwrap();
    assert_eq!(table.metadata_location(), Some(location.trim()));
    // The layout Trino's JDBC catalog (and Java's, and PyIceberg's) reads: namespaces too.
    let namespaces = pg.psql("catalog", "SELECT DISTINCT namespace FROM iceberg_namespace_properties WHERE catalog_name = 'pitwall' ORDER BY 1");
    assert_eq!(
        namespaces.lines().collect::<Vec<_>>(),
        ["anomalies", "clean", "metrics", "quarantine", "raw"]
    );
    assert!(
        !place.config.data_dir.join("warehouse").exists(),
        "nothing should be written locally"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_racing_through_a_rest_catalog_all_land() {
    let place = rest(false);
    racing_writers_all_land(&place).await;
    // The tables live where the REST catalog put them, and its commits wrote the
    // metadata: nothing in pitwall's own data directory.
    let (server, _) = place.rest.as_ref().unwrap();
    let table = open(&place.config)
        .await
        .table(&Fixed::Raw.ident())
        .await
        .unwrap();
    let location = table.metadata_location().unwrap();
    assert!(
        location.starts_with(&format!("{}/raw/events/metadata/", server.warehouse)),
        "{location} is not under {}",
        server.warehouse
    );
    assert!(
        !place.config.data_dir.join("warehouse").exists()
            && !place.config.data_dir.join("catalog.db").exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_cannot_commit_through_a_rest_catalog_on_s3() {
    zombie_is_fenced(&rest(true)).await;
}

/// A commit built on a snapshot that is no longer the table's head is refused by the
/// REST catalog (the requirement `assert-ref-snapshot-id`) and rebuilt on the new head:
/// the other writer's snapshot, rows and offsets stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_commit_on_a_stale_head_is_rebuilt_not_lost() {
    let place = rest(false);
    let cfg = &place.config;
    let lake = open(cfg).await;
    let stale = lake.table(&Fixed::Raw.ident()).await.unwrap();
    let mut a = LakeWriter::open(open(cfg).await).await.unwrap();
    feed(&mut a, 0, 0..10);
    a.commit().await.unwrap();
    let head = lake
        .table(&Fixed::Raw.ident())
        .await
        .unwrap()
        .metadata()
        .current_snapshot_id()
        .unwrap();
    // A commit prepared on the table as it was before a's commit (no claim, no files).
    lake.append_fenced(
        stale,
        Vec::new(),
        &pitwall_lake::Claim::default(),
        &Default::default(),
    )
    .await
    .unwrap();
    let table = lake.table(&Fixed::Raw.ident()).await.unwrap();
    let current = table.metadata().current_snapshot().unwrap();
    assert_eq!(
        current.parent_snapshot_id(),
        Some(head),
        "rebuilt on a's snapshot"
    );
    assert_eq!(
        current.summary().additional_properties["total-records"],
        "10"
    );
    assert_eq!(table.metadata().snapshots().count(), 2);
    assert_eq!(raw_offsets(&lake).await[&part(0)], 10);
}

/// A REST catalog that refuses the credentials says so when the lake opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_catalog_refusing_the_token_is_a_clear_error() {
    let place = rest(false);
    let mut cfg = place.config.clone();
    cfg.rest.token = "rb_not_the_key".to_owned();
    let err = pitwall_lake::Lake::open(cfg).await.unwrap_err().to_string();
    assert!(
        err.contains("REST catalog") && err.contains(&place.config.catalog) && err.contains("401"),
        "{err}"
    );
}

async fn racing_writers_all_land(place: &Place) {
    let cfg = &place.config;
    open(cfg).await;
    // Two lake handles, each with its own catalog connections: two processes, in effect.
    let mut a = LakeWriter::open(open(cfg).await).await.unwrap();
    let mut b = LakeWriter::open(open(cfg).await).await.unwrap();
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
    let lake = open(cfg).await;
    let table = lake.table(&Fixed::Raw.ident()).await.unwrap();
    assert_eq!(
        table.metadata().snapshots().count() as i64,
        2 * ROUNDS,
        "no commit was lost"
    );
    let offsets = raw_offsets(&lake).await;
    assert_eq!(offsets[&part(0)], ROUNDS * 10);
    assert_eq!(offsets[&part(1)], ROUNDS * 7);
    let summary = &table
        .metadata()
        .current_snapshot()
        .unwrap()
        .summary()
        .additional_properties;
    assert_eq!(summary["total-records"], (ROUNDS * 17).to_string());
    // Every row is readable once: scan the table.
    let batches: Vec<_> = common::scan(&table, &[]).await;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows as i64, ROUNDS * 17);
}

/// Each commit writes a metadata file listing every live snapshot; those older than the
/// metadata log (100 versions) are deleted as commits supersede them, so a table's
/// metadata stays bounded. Every file the log still names is there, and so are the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superseded_metadata_files_are_deleted_and_the_log_stays_whole() {
    let place = local();
    let cfg = &place.config;
    let mut w = LakeWriter::open(open(cfg).await).await.unwrap();
    const COMMITS: i64 = 130;
    for i in 0..COMMITS {
        feed(&mut w, 0, i..i + 1);
        w.commit().await.unwrap();
    }
    let lake = open(cfg).await;
    let table = lake.table(&Fixed::Raw.ident()).await.unwrap();
    let dir = cfg.data_dir.join("warehouse/raw/events/metadata");
    let metadata_files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".metadata.json"))
        .collect();
    let log = table.metadata().metadata_log();
    assert_eq!(
        log.len(),
        100,
        "the log keeps write.metadata.previous-versions-max entries"
    );
    assert_eq!(
        metadata_files.len(),
        log.len() + 1,
        "the log's files and the current one, no more: {metadata_files:?}"
    );
    for entry in log {
        let name = entry.metadata_file.rsplit('/').next().unwrap();
        assert!(
            metadata_files.iter().any(|f| f == name),
            "{name} is in the metadata log but was deleted"
        );
    }
    assert_eq!(raw_offsets(&lake).await[&part(0)], COMMITS);
    let batches: Vec<_> = common::scan(&table, &[]).await;
    assert_eq!(
        batches.iter().map(|b| b.num_rows()).sum::<usize>() as i64,
        COMMITS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_cannot_commit_and_a_resumed_writer_can() {
    zombie_is_fenced(&local()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_cannot_commit_on_postgresql_and_s3() {
    zombie_is_fenced(&shared()).await;
}

async fn zombie_is_fenced(place: &Place) {
    let cfg = &place.config;
    open(cfg).await;
    let mut owner = LakeWriter::open(open(cfg).await).await.unwrap();
    // The zombie read the lake at the same time, before the owner committed.
    let mut zombie = LakeWriter::open(open(cfg).await).await.unwrap();
    feed(&mut owner, 0, 0..100);
    owner.commit().await.unwrap();

    feed(&mut zombie, 0, 0..100);
    let err = zombie.commit().await.unwrap_err();
    match &err {
        Error::Fenced {
            table,
            partition,
            committed,
            expected,
        } => {
            assert_eq!(
                (table.as_str(), partition.clone(), *committed, *expected),
                ("raw.events", part(0), 100, 0)
            );
        }
        other => panic!("expected a fenced commit, got {other}"),
    }
    assert!(
        err.to_string().contains("another writer owns it now"),
        "{err}"
    );
    assert_eq!(
        zombie.buffered(),
        0,
        "the fenced partition's rows were dropped"
    );
    let lake = open(cfg).await;
    let table = lake.table(&Fixed::Raw.ident()).await.unwrap();
    assert_eq!(
        table.metadata().snapshots().count(),
        1,
        "the zombie wrote no snapshot"
    );

    // A writer that resumes from the lake carries on where the owner stopped.
    let mut resumed = LakeWriter::open(open(cfg).await).await.unwrap();
    assert_eq!(resumed.resume_offsets()[&part(0)], 100);
    feed(&mut resumed, 0, 100..150);
    resumed.commit().await.unwrap();
    assert_eq!(raw_offsets(&lake).await[&part(0)], 150);
    // ... and the old owner, now stale itself, is fenced in turn.
    feed(&mut owner, 0, 100..120);
    assert!(matches!(
        owner.commit().await,
        Err(Error::Fenced {
            committed: 150,
            expected: 100,
            ..
        })
    ));
}

/// A commit can run as a round taken out of the writer while the writer buffers on
/// (`pitwall process` commits on another task): the round lands what was buffered when
/// it was taken, the writer's next commit the rest; a round that did not land puts its
/// rows back before those buffered since, so they land first, and a partition taken up
/// again while a round ran keeps only what the writer has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_commit_while_the_writer_buffers_on() {
    let place = local();
    let cfg = &place.config;
    let lake = open(cfg).await;
    let mut w = LakeWriter::open(open(cfg).await).await.unwrap();
    feed(&mut w, 0, 0..10);
    feed(&mut w, 1, 0..4);
    let mut round = w.take_round();
    assert_eq!((round.buffered(), w.buffered()), (14, 0));
    feed(&mut w, 0, 10..15);
    round.commit().await.unwrap();
    w.finish_round(round);
    assert_eq!(raw_offsets(&lake).await[&part(0)], 10);
    assert_eq!(w.buffered(), 5);
    assert_eq!(
        w.held("raw.events", &part(0)),
        Some(10),
        "the next commit expects what the round committed"
    );

    // A round that did not land (dropped before its commit, as a failed one is handed
    // back): its rows go back first.
    let round = w.take_round();
    feed(&mut w, 0, 15..20);
    w.finish_round(round);
    assert_eq!(w.buffered(), 10);
    w.commit().await.unwrap();
    assert_eq!(raw_offsets(&lake).await[&part(0)], 20);
    assert_eq!(raw_offsets(&lake).await[&part(1)], 4);

    // Partition 1 given up while a round of its rows ran: the round's rows and offsets
    // do not come back to the writer.
    feed(&mut w, 1, 4..8);
    let round = w.take_round();
    w.revoke(&part(1));
    w.finish_round(round);
    assert_eq!(w.buffered(), 0);

    let table = lake.table(&Fixed::Raw.ident()).await.unwrap();
    let batches: Vec<_> = common::scan(&table, &["partition", "offset"]).await;
    let mut seen: Vec<(i32, i64)> = Vec::new();
    for b in &batches {
        let p = b
            .column(0)
            .as_any()
            .downcast_ref::<arrow_array::Int32Array>()
            .unwrap();
        let o = b
            .column(1)
            .as_any()
            .downcast_ref::<arrow_array::Int64Array>()
            .unwrap();
        seen.extend((0..b.num_rows()).map(|i| (p.value(i), o.value(i))));
    }
    seen.sort_unstable();
    let want: Vec<(i32, i64)> = (0..20)
        .map(|o| (0, o))
        .chain((0..4).map(|o| (1, o)))
        .collect();
    assert_eq!(seen, want, "every row once, none twice");
}

/// A clean table that fails on its own (its data location broken) while the others
/// commit: after `QUARANTINE_AFTER` commits its rows go to `quarantine.rejects` with the
/// error, the other tables never wait on it, and the writer holds nothing afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_table_failing_alone_is_given_up_to_the_rejects() {
    use pitwall_core::{FieldValue, Point};
    let place = local();
    let cfg = &place.config;
    let lake = open(cfg).await;
    let mut w = LakeWriter::open(open(cfg).await).await.unwrap();
    let round = |w: &mut LakeWriter, r: i64| {
        let mut out = raw(0, r * 10..r * 10 + 10);
        for i in 0..10 {
            let t = T0 + (r * 10 + i) * 1_000_000;
            out.clean.push(
                Point::new("press", t)
                    .tag("host", "a")
                    .field("v", FieldValue::F64(i as f64)),
            );
            out.clean.push(
                Point::new("temp", t)
                    .tag("host", "a")
                    .field("v", FieldValue::F64(i as f64)),
            );
        }
        let next = r * 10 + 10;
        w.append(
            &part(0),
            &out,
            Checkpoint {
                next,
                replay_from: next,
                max_time: T0 + next,
            },
        );
    };
    round(&mut w, 0);
    w.commit().await.unwrap();
    // Break clean.press where it keeps its data: a file where its directory was.
    let data = walk(place.dir.path())
        .into_iter()
        .find(|p| p.ends_with("press/data"))
        .expect("clean.press has a data directory");
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::write(&data, b"not a directory").unwrap();
    for r in 1..QUARANTINE_AFTER as i64 {
        round(&mut w, r);
        let e = w.commit().await.unwrap_err();
        assert!(!e.to_string().is_empty());
        assert_eq!(w.buffered(), 10 * r as usize, "only clean.press waits");
    }
    round(&mut w, QUARANTINE_AFTER as i64);
    let stats = w.commit().await.unwrap();
    let n = 10 * QUARANTINE_AFTER as usize;
    assert_eq!(stats.quarantined["clean.press"].0, n, "{stats:?}");
    assert_eq!(w.buffered(), 0);
    let count = |table: &'static str, column: &'static str| {
        let lake = lake.clone();
        async move {
            let t = lake
                .table(&iceberg::TableIdent::from_strs(table.split('.')).unwrap())
                .await
                .unwrap();
            let batches: Vec<arrow_array::RecordBatch> = common::scan(&t, &[column]).await;
            batches
                .iter()
                .flat_map(|b| {
                    let c = b
                        .column(0)
                        .as_any()
                        .downcast_ref::<arrow_array::StringArray>()
                        .map(|a| {
                            a.iter()
                                .map(|s| s.unwrap_or_default().to_owned())
                                .collect::<Vec<_>>()
                        });
                    c.unwrap_or_else(|| vec![String::new(); b.num_rows()])
                })
                .collect::<Vec<String>>()
        }
    };
    let reasons = count("quarantine.rejects", "reason").await;
    assert_eq!(reasons.len(), n);
    assert!(
        reasons
            .iter()
            .all(|r| r.starts_with("clean.press could not take this row")),
        "{:?}",
        reasons[0]
    );
    assert_eq!(
        count("clean.temp", "host").await.len(),
        10 * (QUARANTINE_AFTER as usize + 1),
        "clean.temp committed every round"
    );
    assert_eq!(
        raw_offsets(&lake).await[&part(0)],
        10 * (QUARANTINE_AFTER as i64 + 1)
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.push(p.clone());
            out.extend(walk(&p));
        }
    }
    out
}

/// A lake made before `anomalies.events` had its `peak` column: opening it adds the
/// column (older rows read null), and new episodes fill it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_lake_gains_the_peak_column_on_open() {
    use pitwall_core::record::{AnomalyRecord, Phase};
    let place = local();
    let cfg = &place.config;
    let lake = open(cfg).await;
    // Make anomalies.events as an earlier pitwall did: the same columns but `peak`.
    let ident = Fixed::Anomalies.ident();
    let catalog = lake.catalog();
    catalog.drop_table(&ident).await.unwrap();
    let full = Fixed::Anomalies.schema();
    let older = iceberg::spec::Schema::builder()
        .with_fields(
            full.as_struct()
                .fields()
                .iter()
                .filter(|f| f.name != "peak")
                .cloned(),
        )
        .build()
        .unwrap();
    let time = older.field_by_name("time").unwrap().id;
    let spec = iceberg::spec::UnboundPartitionSpec::builder()
        .add_partition_field(time, "time_day", iceberg::spec::Transform::Day)
        .unwrap()
        .build();
    let creation = iceberg::TableCreation::builder()
        .name(ident.name().to_owned())
        .schema(older)
        .partition_spec(spec)
        .build();
    catalog
        .create_table(ident.namespace(), creation)
        .await
        .unwrap();
    let has_peak = |lake: pitwall_lake::Lake| async move {
        let t = lake.table(&Fixed::Anomalies.ident()).await.unwrap();
        t.metadata()
            .current_schema()
            .field_by_name("peak")
            .is_some()
    };
    assert!(!has_peak(lake.clone()).await, "the older table has no peak");
    let reopened = open(cfg).await;
    assert!(has_peak(reopened.clone()).await, "opening added peak");
    // The writer fills it.
    let mut w = LakeWriter::open(reopened.clone()).await.unwrap();
    let mut out = raw(0, 0..1);
    out.anomalies.push(AnomalyRecord {
        id: "engine_overheat:VER:1".into(),
        rule: "engine_overheat".into(),
        kind: "threshold".into(),
        severity: "critical".into(),
        measurement: "car".into(),
        source_id: "VER".into(),
        field: "engine_temp_c".into(),
        phase: Phase::End,
        time: T0,
        end_time: Some(T0 + 1_000_000_000),
        observed: 118.0,
        peak: 133.7,
        expected: 120.0,
        message: "engine_temp_c back under 120".into(),
    });
    w.append(
        &part(0),
        &out,
        Checkpoint {
            next: 1,
            replay_from: 1,
            max_time: T0,
        },
    );
    w.commit().await.unwrap();
    let t = reopened.table(&Fixed::Anomalies.ident()).await.unwrap();
    let batches: Vec<arrow_array::RecordBatch> = common::scan(&t, &["peak"]).await;
    let peaks: Vec<f64> = batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<arrow_array::Float64Array>()
                .unwrap()
                .iter()
                .flatten()
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(peaks, vec![133.7]);
}

/// Readers keep a table while its metadata location stays, and load it again once a
/// commit moves it; the catalog lists every location in one read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_reuse_a_table_until_a_commit_moves_it() {
    let place = local();
    let lake = open(&place.config).await;
    let mut w = LakeWriter::open(lake.clone()).await.unwrap();
    feed(&mut w, 0, 0..10);
    w.commit().await.unwrap();
    let ident = Fixed::Raw.ident();
    let first = lake
        .table_locations()
        .await
        .unwrap()
        .expect("a SQL catalog lists locations");
    let at = first[&ident].clone();
    let a = lake.table_for_reading(&ident, Some(&at)).await.unwrap();
    let b = lake.table_for_reading(&ident, Some(&at)).await.unwrap();
    assert_eq!(a.metadata_location(), Some(at.as_str()));
    assert!(
        std::sync::Arc::ptr_eq(&a.metadata_ref(), &b.metadata_ref()),
        "the second read reuses the first's table"
    );
    // Another process's handle on the same lake commits: the location moves, and the
    // next read loads the new metadata.
    let mut other = LakeWriter::open(open(&place.config).await).await.unwrap();
    feed(&mut other, 1, 0..5);
    other.commit().await.unwrap();
    let moved = lake.table_locations().await.unwrap().unwrap()[&ident].clone();
    assert_ne!(moved, at);
    let c = lake.table_for_reading(&ident, Some(&moved)).await.unwrap();
    assert_eq!(c.metadata_location(), Some(moved.as_str()));
    assert!(!std::sync::Arc::ptr_eq(
        &a.metadata_ref(),
        &c.metadata_ref()
    ));
    let rows: u64 = c
        .metadata()
        .current_snapshot()
        .and_then(|s| {
            s.summary()
                .additional_properties
                .get("total-records")
                .cloned()
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_default();
    assert_eq!(rows, 15, "the reloaded table has both commits' rows");
}
