//! Lake maintenance on real catalogs and storage: compaction, snapshot expiry, orphan
//! cleaning and retention keep every row a query sees, keep the bus offsets the
//! streaming writer resumes from, and never lose a commit racing the writer.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use pitwall_lake::{Fixed, Lake, LakeWriter};

use common::{Place, T0, feed, feed_at, local, open, part, raw_offsets, rest, shared};

/// Every raw row as (partition, offset, payload), sorted: what a query returns.
async fn raw_rows(lake: &Lake) -> Vec<(i32, i64, String)> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, Int64Type};
    let table = lake.table(&Fixed::Raw.ident()).await.unwrap();
    let batches: Vec<_> = common::scan(&table, &[]).await;
    let mut rows = Vec::new();
    for b in batches {
        let p = b
            .column_by_name("partition")
            .unwrap()
            .as_primitive::<Int32Type>();
        let o = b
            .column_by_name("offset")
            .unwrap()
            .as_primitive::<Int64Type>();
        let payload = b.column_by_name("payload").unwrap().as_binary::<i64>();
        for i in 0..b.num_rows() {
            rows.push((
                p.value(i),
                o.value(i),
                String::from_utf8_lossy(payload.value(i)).into_owned(),
            ));
        }
    }
    rows.sort();
    rows
}

/// Files under the raw table's location.
async fn files_under(lake: &Lake, suffix: &str) -> Vec<String> {
    let table = lake.table(&Fixed::Raw.ident()).await.unwrap();
    let mut files: Vec<String> = lake
        .storage()
        .list(table.metadata().location())
        .await
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    files.retain(|f| f.ends_with(suffix));
    files.sort();
    files
}

/// The current snapshot's manifest list.
async fn manifests(table: &iceberg::table::Table) -> iceberg::spec::ManifestList {
    let snapshot = table.metadata().current_snapshot().unwrap();
    let bytes = table
        .file_io()
        .new_input(snapshot.manifest_list())
        .unwrap()
        .read()
        .await
        .unwrap();
    iceberg::spec::ManifestList::parse_with_version(&bytes, table.metadata().format_version())
        .unwrap()
}

/// 20 small commits on two bus partitions, spread over two days.
async fn many_small_commits(cfg: &pitwall_lake::LakeConfig) {
    let mut w = LakeWriter::open(open(cfg).await).await.unwrap();
    const DAY: i64 = 86_400_000_000_000;
    for i in 0..10 {
        feed_at(&mut w, 0, i * 50..(i + 1) * 50, T0 + (i % 2) * DAY);
        feed(&mut w, 1, i * 30..(i + 1) * 30);
        w.commit().await.unwrap();
    }
}

async fn compaction_keeps_every_row(place: &Place) {
    let cfg = &place.config;
    many_small_commits(cfg).await;
    let lake = open(cfg).await;
    let before = raw_rows(&lake).await;
    assert_eq!(before.len(), 800);
    let offsets = raw_offsets(&lake).await;
    let files_before = files_under(&lake, ".parquet").await.len();

    let c = lake.compact(&Fixed::Raw.ident(), 128 << 20).await.unwrap();
    assert!(c.committed);
    assert!(c.files_before >= 10, "{c:?}");
    assert_eq!(c.files_after, 2, "one file per day partition: {c:?}");
    assert_eq!(c.manifests_before, 10, "{c:?}");
    assert_eq!(c.rows_rewritten, 800);
    assert_eq!(
        raw_rows(&lake).await,
        before,
        "the same rows after compaction"
    );
    assert_eq!(
        raw_offsets(&lake).await,
        offsets,
        "the offsets are carried forward"
    );
    // Compacted files hold their rows sorted (partition, source key, then offset),
    // although the commits interleaved the two bus partitions.
    {
        use arrow_array::Array;
        use arrow_array::cast::AsArray;
        use arrow_array::types::{Int32Type, Int64Type};
        let table = lake.table(&Fixed::Raw.ident()).await.unwrap();
        let batches: Vec<_> = common::scan(&table, &[]).await;
        for b in batches {
            let p = b
                .column_by_name("partition")
                .unwrap()
                .as_primitive::<Int32Type>();
            let k = b.column_by_name("key").unwrap().as_string::<i32>();
            let o = b
                .column_by_name("offset")
                .unwrap()
                .as_primitive::<Int64Type>();
            let keys: Vec<(i32, Option<&str>, i64)> = (0..b.num_rows())
                .map(|i| (p.value(i), k.is_valid(i).then(|| k.value(i)), o.value(i)))
                .collect();
            assert!(
                keys.windows(2).all(|w| w[0] <= w[1]),
                "a compacted file's rows are not in order: {keys:?}"
            );
        }
    }
    let table = lake.table(&Fixed::Raw.ident()).await.unwrap();
    let snapshot = table.metadata().current_snapshot().unwrap();
    assert_eq!(
        snapshot.summary().operation,
        iceberg::spec::Operation::Replace
    );
    assert_eq!(
        snapshot.summary().additional_properties["total-records"],
        "800"
    );
    assert_eq!(
        snapshot.summary().additional_properties["total-data-files"],
        "2"
    );
    // The removed files are recorded in a manifest of their own, apart from the live ones.
    let list = manifests(&table).await;
    let shapes: Vec<(bool, u32)> = list
        .entries()
        .iter()
        .map(|m| {
            (
                m.has_added_files() || m.has_existing_files(),
                m.deleted_files_count.unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        shapes,
        [(true, 0), (false, c.files_before as u32)],
        "live manifest, then the removed files' manifest"
    );
    // Compacting again finds nothing to do.
    assert!(
        !lake
            .compact(&Fixed::Raw.ident(), 128 << 20)
            .await
            .unwrap()
            .committed
    );

    // The streaming writer carries on from the same offsets, and its commit lands on top.
    let mut w = LakeWriter::open(open(cfg).await).await.unwrap();
    assert_eq!(w.resume_offsets()[&part(0)], 500);
    feed(&mut w, 0, 500..510);
    w.commit().await.unwrap();
    assert_eq!(raw_rows(&lake).await.len(), 810);
    // The next snapshot carries only manifests with live files: scans no longer read
    // past the files compaction removed.
    let table = lake.table(&Fixed::Raw.ident()).await.unwrap();
    let list = manifests(&table).await;
    assert_eq!(
        list.entries().len(),
        2,
        "the compacted manifest and the append's"
    );
    assert!(
        list.entries()
            .iter()
            .all(|m| m.has_added_files() || m.has_existing_files()),
        "no manifest of removed files is carried forward"
    );

    // Expiry drops the old snapshots and deletes the files only they referenced.
    let x = lake
        .expire_snapshots(&Fixed::Raw.ident(), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(x.snapshots, 11, "{x:?}");
    let parquet_after = files_under(&lake, ".parquet").await;
    assert_eq!(
        parquet_after.len(),
        3,
        "two compacted files and the new append: {parquet_after:?} (had {files_before})"
    );
    assert_eq!(raw_rows(&lake).await.len(), 810);
    let table = lake.table(&Fixed::Raw.ident()).await.unwrap();
    assert_eq!(table.metadata().snapshots().count(), 1);

    // Orphans: a file nothing references goes; everything referenced stays.
    let stray = format!(
        "{}/data/stray-{}.parquet",
        table.metadata().location(),
        uuid_like()
    );
    table
        .file_io()
        .new_output(&stray)
        .unwrap()
        .write(bytes::Bytes::from_static(b"not a table file"))
        .await
        .unwrap();
    let young = lake
        .clean_orphans(&Fixed::Raw.ident(), Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(
        young.is_empty(),
        "files younger than the age stay: {young:?}"
    );
    let removed = lake
        .clean_orphans(&Fixed::Raw.ident(), Duration::ZERO)
        .await
        .unwrap();
    assert!(
        removed
            .iter()
            .any(|f| f.ends_with(stray.rsplit('/').next().unwrap())),
        "{removed:?}"
    );
    assert!(
        removed
            .iter()
            .all(|f| !f.ends_with(".parquet") || f.contains("stray-")),
        "only the stray data file: {removed:?}"
    );
    assert_eq!(
        raw_rows(&lake).await.len(),
        810,
        "orphan cleaning removed nothing a query reads"
    );
    assert_eq!(files_under(&lake, ".parquet").await.len(), 3);
}

fn uuid_like() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_expiry_and_orphan_cleaning_keep_every_row() {
    compaction_keeps_every_row(&local()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_expiry_and_orphan_cleaning_on_postgresql_and_s3() {
    compaction_keeps_every_row(&shared()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_expiry_and_orphan_cleaning_through_a_rest_catalog_on_s3() {
    compaction_keeps_every_row(&rest(true)).await;
}

/// Compaction running again and again while the writer commits: no commit is lost, no
/// row doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_racing_the_streaming_writer_loses_nothing() {
    let place = local();
    let cfg = place.config.clone();
    open(&cfg).await;
    // The writer commits at least 40 times, and on until three compactions have landed
    // in between (however slow the machine is at either).
    const ROUNDS: i64 = 40;
    let compactions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (cfg, compactions) = (cfg.clone(), std::sync::Arc::clone(&compactions));
        tokio::spawn(async move {
            let mut w = LakeWriter::open(open(&cfg).await).await.unwrap();
            let mut i = 0;
            while i < ROUNDS
                || (compactions.load(std::sync::atomic::Ordering::SeqCst) < 3 && i < 50 * ROUNDS)
            {
                feed(&mut w, 0, i * 25..(i + 1) * 25);
                w.commit().await.unwrap();
                tokio::time::sleep(Duration::from_millis(25)).await;
                i += 1;
            }
            i
        })
    };
    let lake = open(&cfg).await;
    while !writer.is_finished() {
        match lake.compact(&Fixed::Raw.ident(), 128 << 20).await {
            Ok(c) if c.committed => {
                compactions.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(_) => {}
            Err(e) => panic!("compaction failed: {e}"),
        }
    }
    let rounds = writer.await.unwrap();
    let compactions = compactions.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        compactions >= 3,
        "compaction should have run during the writes ({compactions} in {rounds} commits)"
    );
    let rows = raw_rows(&lake).await;
    let offsets: BTreeSet<i64> = rows.iter().map(|r| r.1).collect();
    assert_eq!(rows.len() as i64, rounds * 25, "every row once");
    assert_eq!(offsets.len() as i64, rounds * 25);
    assert_eq!(raw_offsets(&lake).await[&part(0)], rounds * 25);
}

/// Retention drops whole day partitions older than the age, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_old_day_partitions() {
    let place = local();
    let cfg = &place.config;
    const DAY: i64 = 86_400_000_000_000;
    let today = chrono::Utc::now()
        .timestamp_nanos_opt()
        .unwrap()
        .div_euclid(DAY)
        * DAY;
    let mut w = LakeWriter::open(open(cfg).await).await.unwrap();
    feed_at(&mut w, 0, 0..100, today - 10 * DAY);
    w.commit().await.unwrap();
    feed_at(&mut w, 0, 100..160, today - 3 * DAY);
    w.commit().await.unwrap();
    feed_at(&mut w, 0, 160..200, today);
    w.commit().await.unwrap();
    let lake = open(cfg).await;
    let offsets = raw_offsets(&lake).await;
    let r = lake
        .apply_retention(&Fixed::Raw.ident(), Duration::from_secs(5 * 86_400))
        .await
        .unwrap();
    assert_eq!((r.removed_files, r.removed_rows), (1, 100), "{r:?}");
    let rows = raw_rows(&lake).await;
    assert_eq!(rows.len(), 100);
    assert!(
        rows.iter().all(|r| r.1 >= 100),
        "only the partition ten days old went"
    );
    assert_eq!(raw_offsets(&lake).await, offsets);
    let table = lake.table(&Fixed::Raw.ident()).await.unwrap();
    assert_eq!(
        table
            .metadata()
            .current_snapshot()
            .unwrap()
            .summary()
            .operation,
        iceberg::spec::Operation::Delete
    );
    // Nothing more to drop.
    let again = lake
        .apply_retention(&Fixed::Raw.ident(), Duration::from_secs(5 * 86_400))
        .await
        .unwrap();
    assert_eq!(again.removed_files, 0);
}

/// The scheduled (tiered) compaction merges a tier once it holds four files and leaves
/// fewer alone, so frequent runs do not rewrite the same rows again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_compaction_merges_full_tiers_only() {
    let place = local();
    let cfg = &place.config;
    many_small_commits(cfg).await;
    let lake = open(cfg).await;
    let before = raw_rows(&lake).await;
    let c = lake
        .compact_tiered(&Fixed::Raw.ident(), 128 << 20)
        .await
        .unwrap();
    assert!(
        c.committed && c.files_after == 2,
        "ten small files a day become one: {c:?}"
    );
    assert_eq!(raw_rows(&lake).await, before);
    let mut w = LakeWriter::open(open(cfg).await).await.unwrap();
    for i in 0..2 {
        feed(&mut w, 1, 300 + i * 5..300 + (i + 1) * 5);
        w.commit().await.unwrap();
    }
    // The merged file and two new small ones in the first day: a tier of three is left
    // alone (only the manifests are merged).
    let c = lake
        .compact_tiered(&Fixed::Raw.ident(), 128 << 20)
        .await
        .unwrap();
    assert_eq!((c.files_after, c.rows_rewritten), (4, 0), "{c:?}");
    feed(&mut w, 1, 310..315);
    w.commit().await.unwrap();
    let c = lake
        .compact_tiered(&Fixed::Raw.ident(), 128 << 20)
        .await
        .unwrap();
    // 250 + 300 rows of the first day, and the 15 new ones.
    assert_eq!(
        (c.files_after, c.rows_rewritten),
        (2, 565),
        "the fourth file fills the tier: {c:?}"
    );
    assert_eq!(raw_rows(&lake).await.len(), before.len() + 15);
}
