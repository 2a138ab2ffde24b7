//! Fenced appends: pitwall's own Iceberg commit path.
//!
//! iceberg-rust's `Transaction::commit` reloads the table and re-applies its actions on
//! whatever is newest, so it never reports a conflict and cannot fence a writer that
//! lost its partitions. This module commits with requirements instead:
//!
//! 1. reload the table and read the bus offsets its newest snapshot records
//!    (`pitwall.offsets`);
//! 2. for every partition this writer claims, the lake must still hold exactly the offset
//!    the writer started from; otherwise another writer has committed those partitions
//!    since, and this one is a zombie: fail with [`Error::Fenced`], write nothing;
//! 3. write a manifest for the new data files, a manifest list (existing manifests plus
//!    the new one) and the next metadata file, with the merged offsets in the snapshot
//!    summary;
//! 4. swap the catalog pointer with a compare-and-set, the statement the JDBC catalog
//!    (Java, PyIceberg, Trino) uses: `UPDATE iceberg_tables SET metadata_location = new,
//!    previous_metadata_location = old WHERE … AND metadata_location = old`;
//! 5. if no row changed, someone committed in between: go back to 1 (their commit may
//!    be for other partitions, which is fine, or for ours, which fences us).

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use iceberg::spec::{
    DataFile, DataFileFormat, FormatVersion, MAIN_BRANCH, ManifestList, ManifestListWriter,
    ManifestWriterBuilder, Operation, Snapshot, SnapshotReference, SnapshotRetention,
    SnapshotSummaryCollector, Summary, TableMetadataBuilder,
};
use iceberg::table::Table;
use iceberg::{Catalog, MetadataLocation, NamespaceIdent, TableIdent};
use pitwall_core::PartitionId;
use sqlx::AnyPool;

use crate::progress::{
    OFFSETS_PROPERTY, PROGRESS_PROPERTY, Progress, committed_offsets, committed_progress,
};
use crate::{Error, Result};

/// How many times a commit is retried after losing a compare-and-set race.
const MAX_ATTEMPTS: u32 = 20;

/// How many times a maintenance commit is rebuilt after losing a race: its data files
/// are already written, and a retry is cheap (only what was appended since is read).
const MAX_REWRITE_ATTEMPTS: u32 = 100;

/// How a commit lands: the SQL catalog's row swapped by compare-and-set, or the REST
/// catalog's commit endpoint with requirements.
#[derive(Debug, Clone)]
pub(crate) enum CatalogPointer {
    /// The JDBC-layout SQL catalog (SQLite, PostgreSQL).
    Sql(SqlPointer),
    /// An Iceberg REST catalog.
    Rest(crate::rest::RestCommitter),
}

impl CatalogPointer {
    /// Makes `metadata` (built on `table` as loaded from `old_location`) the table's
    /// current metadata if nobody committed since: true once it is, false if another
    /// writer got there first (reload and rebuild).
    pub(crate) async fn swap(
        &self,
        table: &Table,
        old_location: &str,
        metadata: iceberg::spec::TableMetadata,
    ) -> Result<bool> {
        match self {
            CatalogPointer::Sql(sql) => {
                let location = MetadataLocation::from_str(old_location)?.with_next_version();
                metadata.write_to(table.file_io(), &location).await?;
                let new_location = location.to_string();
                let swapped = sql
                    .compare_and_set(table.identifier(), old_location, &new_location)
                    .await?;
                let doomed = if swapped {
                    superseded_metadata(table.metadata(), old_location, &metadata, &new_location)
                } else {
                    // Nobody will ever point at the file this attempt wrote.
                    vec![new_location]
                };
                for f in doomed {
                    if let Err(e) = table.file_io().delete(&f).await {
                        tracing::warn!(file = %f, error = %e, "could not delete a superseded metadata file; orphan cleaning will");
                    }
                }
                Ok(swapped)
            }
            CatalogPointer::Rest(rest) => {
                rest.commit(table.identifier(), table.metadata(), &metadata)
                    .await
            }
        }
    }
}

/// Table property that keeps superseded metadata files when set to "false".
pub(crate) const DELETE_AFTER_COMMIT: &str = "write.metadata.delete-after-commit.enabled";

/// Metadata files a commit from `old` (at `old_location`) to `new` (at `new_location`)
/// leaves unreferenced: those the new metadata log (at most
/// `write.metadata.previous-versions-max`, 100 by default) no longer lists. Every commit
/// writes a metadata file holding all live snapshots, so keeping them all grows a
/// streaming table's metadata by the square of its commits (a day of 5-second commits
/// without maintenance was 14 GB a table here). As Java's writers do when
/// write.metadata.delete-after-commit.enabled is on; here it is on unless set "false".
fn superseded_metadata(
    old: &iceberg::spec::TableMetadata,
    old_location: &str,
    new: &iceberg::spec::TableMetadata,
    new_location: &str,
) -> Vec<String> {
    if new
        .properties()
        .get(DELETE_AFTER_COMMIT)
        .is_some_and(|v| v.eq_ignore_ascii_case("false"))
    {
        return Vec::new();
    }
    let kept: std::collections::HashSet<&str> = new
        .metadata_log()
        .iter()
        .map(|l| l.metadata_file.as_str())
        .chain([new_location])
        .collect();
    let mut doomed: Vec<String> = old
        .metadata_log()
        .iter()
        .map(|l| l.metadata_file.as_str())
        .chain([old_location])
        .filter(|f| !kept.contains(f))
        .map(str::to_owned)
        .collect();
    doomed.dedup();
    doomed
}

/// The catalog row a commit swaps, and how to reach it.
#[derive(Debug, Clone)]
pub(crate) struct SqlPointer {
    pub(crate) pool: AnyPool,
    pub(crate) catalog_name: String,
    /// `?` (SQLite) or `$n` (PostgreSQL) placeholders.
    pub(crate) dollar_placeholders: bool,
}

impl SqlPointer {
    /// Every table of the catalog with its metadata location.
    pub(crate) async fn locations(&self) -> Result<HashMap<TableIdent, String>> {
        use sqlx::Row;
        let sql = format!(
            "SELECT table_namespace, table_name, metadata_location FROM iceberg_tables
             WHERE catalog_name = {} AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL)",
            if self.dollar_placeholders { "$1" } else { "?" }
        );
        let rows = sqlx::query(&sql)
            .bind(&self.catalog_name)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::Catalog(format!("listing the tables: {e}")))?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in rows {
            let (namespace, name, location): (String, String, Option<String>) = (
                row.try_get(0)
                    .map_err(|e| Error::Catalog(format!("listing the tables: {e}")))?,
                row.try_get(1)
                    .map_err(|e| Error::Catalog(format!("listing the tables: {e}")))?,
                row.try_get(2)
                    .map_err(|e| Error::Catalog(format!("listing the tables: {e}")))?,
            );
            let Some(location) = location else { continue };
            let namespace = NamespaceIdent::from_strs(namespace.split('.'))
                .map_err(|e| Error::Catalog(format!("listing the tables: {e}")))?;
            out.insert(TableIdent::new(namespace, name), location);
        }
        Ok(out)
    }

    /// Moves `ident`'s metadata pointer from `old` to `new` if it still is `old`.
    async fn compare_and_set(&self, ident: &TableIdent, old: &str, new: &str) -> Result<bool> {
        let p = |i: usize| {
            if self.dollar_placeholders {
                format!("${i}")
            } else {
                "?".to_owned()
            }
        };
        let sql = format!(
            "UPDATE iceberg_tables SET metadata_location = {}, previous_metadata_location = {}
             WHERE catalog_name = {} AND table_namespace = {} AND table_name = {}
               AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL)
               AND metadata_location = {}",
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            p(6)
        );
        let result = sqlx::query(&sql)
            .bind(new)
            .bind(old)
            .bind(&self.catalog_name)
            .bind(ident.namespace().join("."))
            .bind(ident.name())
            .bind(old)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                Error::Catalog(format!("swapping the metadata pointer of {ident}: {e}"))
            })?;
        Ok(result.rows_affected() == 1)
    }
}

/// What a fenced append claims and moves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claim {
    /// For each partition this writer owns: the next offset the lake
    /// must record now, i.e. where this writer started or last committed. A partition
    /// the lake has never recorded counts as 0.
    pub expected: BTreeMap<PartitionId, i64>,
    /// The next offset of each claimed partition once this commit lands.
    pub next: BTreeMap<PartitionId, i64>,
    /// The processor's progress for each claimed partition, recorded with the offsets.
    pub progress: BTreeMap<PartitionId, Progress>,
}

/// Appends `files` to `ident` in one snapshot if, and only if, the lake still records
/// `claim.expected` for every claimed partition. `table` is the caller's freshly loaded
/// copy, used for the first attempt; a lost race reloads it.
pub(crate) async fn fenced_append(
    catalog: &dyn Catalog,
    pointer: &CatalogPointer,
    mut table: Table,
    files: Vec<DataFile>,
    claim: &Claim,
    properties: &HashMap<String, String>,
) -> Result<()> {
    let ident = table.identifier().clone();
    let ident = &ident;
    let mut backoff = Duration::from_millis(5);
    for attempt in 1..=MAX_ATTEMPTS {
        if attempt > 1 {
            table = load_table(catalog, ident).await?;
        }
        let committed = committed_offsets(&table).unwrap_or_default();
        for (partition, expected) in &claim.expected {
            let held = committed.get(partition).copied().unwrap_or(0);
            if held != *expected {
                return Err(Error::Fenced {
                    table: ident.to_string(),
                    partition: partition.clone(),
                    committed: held,
                    expected: *expected,
                });
            }
        }
        let mut offsets = committed;
        offsets.extend(claim.next.iter().map(|(k, v)| (k.clone(), *v)));
        let mut progress = committed_progress(&table);
        progress.extend(claim.progress.iter().map(|(k, v)| (k.clone(), v.clone())));
        let old_location = table
            .metadata_location()
            .ok_or_else(|| Error::Internal(format!("{ident} has no metadata location")))?
            .to_owned();
        let new_metadata = stage(
            &table,
            &old_location,
            files.clone(),
            &offsets,
            &progress,
            properties,
        )
        .await?;
        if pointer.swap(&table, &old_location, new_metadata).await? {
            return Ok(());
        }
        tracing::debug!(table = %ident, attempt, "lost a commit race; reloading and checking the claim again");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
    Err(Error::Catalog(format!(
        "{ident}: {MAX_ATTEMPTS} commits in a row lost the race to other writers; the catalog is overloaded or writers are spinning"
    )))
}

/// Writes the manifest, manifest list and next metadata file for appending `files` on
/// top of `table`; returns the new metadata. Nothing is visible until the catalog
/// takes it.
async fn stage(
    table: &Table,
    old_location: &str,
    files: Vec<DataFile>,
    offsets: &BTreeMap<PartitionId, i64>,
    progress: &BTreeMap<PartitionId, Progress>,
    properties: &HashMap<String, String>,
) -> Result<iceberg::spec::TableMetadata> {
    let metadata = table.metadata();
    if metadata.format_version() != FormatVersion::V2 {
        return Err(Error::Internal(format!(
            "table format {:?} is not supported by the fenced commit (pitwall creates v2 tables)",
            metadata.format_version()
        )));
    }
    let file_io = table.file_io();
    let schema = Arc::clone(metadata.current_schema());
    let spec = metadata.default_partition_spec().as_ref().clone();
    let snapshot_id = unique_snapshot_id(table);
    let sequence_number = metadata.next_sequence_number();
    let parent = metadata.current_snapshot_id();
    let commit_id = uuid::Uuid::new_v4();
    let meta_dir = format!("{}/metadata", metadata.location());

    let mut summary = SnapshotSummaryCollector::default();
    for f in &files {
        summary.add_file(
            f,
            Arc::clone(&schema),
            Arc::clone(metadata.default_partition_spec()),
        );
    }
    let manifest_path = format!("{meta_dir}/{commit_id}-m0.{}", DataFileFormat::Avro);
    let mut manifest = ManifestWriterBuilder::new(
        file_io.new_output(&manifest_path)?,
        Some(snapshot_id),
        Arc::clone(&schema),
        spec,
    )
    .build_v2_data();
    for f in files {
        manifest.add_file(f, sequence_number)?;
    }
    let new_manifest = manifest.write_manifest_file().await?;

    let mut manifests = Vec::new();
    let mut previous_totals = HashMap::new();
    if let Some(current) = metadata.current_snapshot() {
        let bytes = file_io.new_input(current.manifest_list())?.read().await?;
        let list = ManifestList::parse_with_version(&bytes, metadata.format_version())?;
        manifests.extend(
            list.entries()
                .iter()
                .filter(|m| m.has_added_files() || m.has_existing_files())
                .cloned(),
        );
        previous_totals = current.summary().additional_properties.clone();
    }
    manifests.push(new_manifest);
    let list_path = format!(
        "{meta_dir}/snap-{snapshot_id}-0-{commit_id}.{}",
        DataFileFormat::Avro
    );
    let mut list = ManifestListWriter::v2(
        file_io.new_output(&list_path)?.writer().await?,
        snapshot_id,
        parent,
        sequence_number,
    );
    list.add_manifests(manifests.into_iter())?;
    list.close().await?;

    let mut props = properties.clone();
    let added = summary.build();
    add_totals(&mut props, &added, &previous_totals);
    props.extend(added);
    props.insert(
        OFFSETS_PROPERTY.to_owned(),
        serde_json::to_string(offsets).map_err(|e| Error::Internal(e.to_string()))?,
    );
    if !progress.is_empty() {
        props.insert(
            PROGRESS_PROPERTY.to_owned(),
            serde_json::to_string(progress).map_err(|e| Error::Internal(e.to_string()))?,
        );
    }
    let snapshot = Snapshot::builder()
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(parent)
        .with_sequence_number(sequence_number)
        .with_timestamp_ms(chrono::Utc::now().timestamp_millis())
        .with_manifest_list(list_path)
        .with_summary(Summary {
            operation: Operation::Append,
            additional_properties: props,
        })
        .with_schema_id(metadata.current_schema_id())
        .build();
    let new_metadata =
        TableMetadataBuilder::new_from_metadata(metadata.clone(), Some(old_location.to_owned()))
            .add_snapshot(snapshot)?
            .set_ref(
                MAIN_BRANCH,
                SnapshotReference::new(snapshot_id, SnapshotRetention::branch(None, None, None)),
            )?
            .build()?
            .metadata;
    Ok(new_metadata)
}

/// `total-*` summary values: the previous snapshot's plus what this one adds, as the
/// Iceberg spec's snapshot summary defines them.
fn add_totals(
    props: &mut HashMap<String, String>,
    added: &HashMap<String, String>,
    previous: &HashMap<String, String>,
) {
    let num = |m: &HashMap<String, String>, k: &str| {
        m.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0)
    };
    for (total, add) in [
        ("total-data-files", "added-data-files"),
        ("total-records", "added-records"),
        ("total-files-size", "added-files-size"),
        ("total-delete-files", "added-delete-files"),
        ("total-position-deletes", "added-position-deletes"),
        ("total-equality-deletes", "added-equality-deletes"),
    ] {
        props.insert(
            total.to_owned(),
            (num(previous, total) + num(added, add)).to_string(),
        );
    }
}

fn unique_snapshot_id(table: &Table) -> i64 {
    loop {
        let (a, b) = uuid::Uuid::new_v4().as_u64_pair();
        let id = ((a ^ b) & (i64::MAX as u64)) as i64;
        if id != 0 && !table.metadata().snapshots().any(|s| s.snapshot_id() == id) {
            return id;
        }
    }
}

/// The live data files of `table`'s current snapshot, with their manifest entries.
pub(crate) async fn live_entries(table: &Table) -> Result<Vec<iceberg::spec::ManifestEntryRef>> {
    live_entries_cached(table, &mut LiveEntries::default()).await
}

/// The live entries of manifests already read, by manifest path (a manifest never
/// changes once written), so a commit retried after a lost race reads only the
/// manifests appended since.
#[derive(Default)]
pub(crate) struct LiveEntries(HashMap<String, Arc<Vec<iceberg::spec::ManifestEntryRef>>>);

/// [`live_entries`], reading only manifests `cache` has not seen.
pub(crate) async fn live_entries_cached(
    table: &Table,
    cache: &mut LiveEntries,
) -> Result<Vec<iceberg::spec::ManifestEntryRef>> {
    let metadata = table.metadata();
    let Some(current) = metadata.current_snapshot() else {
        return Ok(Vec::new());
    };
    let file_io = table.file_io();
    let list = manifest_list(table, current).await?;
    let mut out = Vec::new();
    for m in list.entries() {
        let entries = match cache.0.get(&m.manifest_path) {
            Some(e) => Arc::clone(e),
            None => {
                let manifest = m.load_manifest(file_io).await?;
                let e = Arc::new(
                    manifest
                        .entries()
                        .iter()
                        .filter(|e| e.is_alive())
                        .cloned()
                        .collect::<Vec<_>>(),
                );
                cache.0.insert(m.manifest_path.clone(), Arc::clone(&e));
                e
            }
        };
        out.extend(entries.iter().cloned());
    }
    Ok(out)
}

/// The manifest list of one of `table`'s snapshots.
pub(crate) async fn manifest_list(table: &Table, snapshot: &Snapshot) -> Result<ManifestList> {
    let bytes = table
        .file_io()
        .new_input(snapshot.manifest_list())?
        .read()
        .await?;
    Ok(ManifestList::parse_with_version(
        &bytes,
        table.metadata().format_version(),
    )?)
}

/// What a rewrite commit did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewritten {
    /// Data files taken out of the table.
    pub removed_files: usize,
    /// Rows in them.
    pub removed_rows: u64,
    /// Data files put in.
    pub added_files: usize,
    /// Rows in them.
    pub added_rows: u64,
    /// Live data files in the table afterwards.
    pub files_after: usize,
}

/// One snapshot that takes `removed` (data file paths) out of the table and puts `added`
/// in, keeping every other live file, all in a single merged manifest (so it also merges
/// the manifests streaming appends pile up). `operation` is `Replace` for compaction
/// (same rows, other files) and `Delete` for retention. The snapshot carries the
/// parent's `pitwall.*` summary (the bus offsets and progress) forward unchanged, so the
/// streaming writer's resume point and fencing are unaffected.
///
/// Races with the streaming writer are settled by the same compare-and-set as appends:
/// a lost race reloads and rebuilds on the newer snapshot (files appended meanwhile are
/// kept). If a file to remove is no longer live (another maintenance run took it),
/// nothing is written and [`Error::Changed`] says so.
/// `owned_days`, when given, are day partitions this commit replaces whole: a live file
/// in one of them that is not in `removed` (written by someone else since the caller
/// planned) makes the commit fail with [`Error::Changed`] rather than mix the two.
pub(crate) async fn fenced_rewrite(
    catalog: &dyn Catalog,
    pointer: &CatalogPointer,
    ident: &TableIdent,
    removed: &std::collections::BTreeSet<String>,
    added: Vec<DataFile>,
    operation: Operation,
    owned_days: Option<&std::collections::BTreeSet<i32>>,
) -> Result<Rewritten> {
    let mut cache = LiveEntries::default();
    for attempt in 1..=MAX_REWRITE_ATTEMPTS {
        let table = load_table(catalog, ident).await?;
        let metadata = table.metadata();
        let live = live_entries_cached(&table, &mut cache).await?;
        let live_paths: std::collections::HashSet<&str> =
            live.iter().map(|e| e.file_path()).collect();
        if let Some(gone) = removed.iter().find(|p| !live_paths.contains(p.as_str())) {
            return Err(Error::Changed {
                table: ident.to_string(),
                message: format!(
                    "{gone} is no longer in the table (another maintenance run rewrote it); nothing was written, run it again"
                ),
            });
        }
        if let Some(days) = owned_days
            && let Some(intruder) = live.iter().find(|e| {
                partition_day(e.data_file.partition()).is_some_and(|d| days.contains(&d))
                    && !removed.contains(e.file_path())
            })
        {
            return Err(Error::Changed {
                table: ident.to_string(),
                message: format!(
                    "{} was written into a day being replaced after the replacement was planned (is a processor still writing those days?); nothing was written, run it again once the stream has left those days",
                    intruder.file_path()
                ),
            });
        }
        let file_io = table.file_io();
        let schema = Arc::clone(metadata.current_schema());
        let spec = Arc::clone(metadata.default_partition_spec());
        let snapshot_id = unique_snapshot_id(&table);
        let sequence_number = metadata.next_sequence_number();
        let parent = metadata.current_snapshot_id();
        let commit_id = uuid::Uuid::new_v4();
        let meta_dir = format!("{}/metadata", metadata.location());
        // The live files in one manifest, the removed ones (DELETED entries, which the
        // snapshot must record) in another: the next append carries only manifests with
        // live files forward, so later scans do not read past the removed files.
        let writer = |n: usize| -> Result<_> {
            let path = format!("{meta_dir}/{commit_id}-m{n}.{}", DataFileFormat::Avro);
            Ok(ManifestWriterBuilder::new(
                file_io.new_output(&path)?,
                Some(snapshot_id),
                Arc::clone(&schema),
                spec.as_ref().clone(),
            )
            .build_v2_data())
        };
        let mut manifest = writer(0)?;
        let mut deletions = writer(1)?;
        let mut summary = SnapshotSummaryCollector::default();
        let mut done = Rewritten::default();
        let (mut total_files, mut total_records, mut total_size) = (0u64, 0u64, 0u64);
        for e in &live {
            let seq = e.sequence_number.unwrap_or(0);
            if removed.contains(e.file_path()) {
                summary.remove_file(&e.data_file, Arc::clone(&schema), Arc::clone(&spec));
                deletions.add_delete_file(
                    e.data_file.clone(),
                    seq,
                    e.file_sequence_number.or(Some(seq)),
                )?;
                done.removed_files += 1;
                done.removed_rows += e.record_count();
            } else {
                manifest.add_existing_file(
                    e.data_file.clone(),
                    e.snapshot_id.or(parent).unwrap_or(snapshot_id),
                    seq,
                    e.file_sequence_number.or(Some(seq)),
                )?;
                total_files += 1;
                total_records += e.record_count();
                total_size += e.file_size_in_bytes();
            }
        }
        for f in &added {
            summary.add_file(f, Arc::clone(&schema), Arc::clone(&spec));
            done.added_files += 1;
            done.added_rows += f.record_count();
            total_files += 1;
            total_records += f.record_count();
            total_size += f.file_size_in_bytes();
        }
        for f in added.iter().cloned() {
            manifest.add_file(f, sequence_number)?;
        }
        done.files_after = total_files as usize;
        let mut new_manifests = vec![manifest.write_manifest_file().await?];
        if done.removed_files > 0 {
            new_manifests.push(deletions.write_manifest_file().await?);
        }
        let list_path = format!(
            "{meta_dir}/snap-{snapshot_id}-0-{commit_id}.{}",
            DataFileFormat::Avro
        );
        let mut list = ManifestListWriter::v2(
            file_io.new_output(&list_path)?.writer().await?,
            snapshot_id,
            parent,
            sequence_number,
        );
        list.add_manifests(new_manifests.into_iter())?;
        list.close().await?;

        let mut props: HashMap<String, String> = metadata
            .current_snapshot()
            .map(|s| {
                s.summary()
                    .additional_properties
                    .iter()
                    .filter(|(k, _)| k.starts_with("pitwall."))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        props.extend(summary.build());
        for (k, v) in [
            ("total-data-files", total_files),
            ("total-records", total_records),
            ("total-files-size", total_size),
            ("total-delete-files", 0),
            ("total-position-deletes", 0),
            ("total-equality-deletes", 0),
        ] {
            props.insert(k.to_owned(), v.to_string());
        }
        let snapshot = Snapshot::builder()
            .with_snapshot_id(snapshot_id)
            .with_parent_snapshot_id(parent)
            .with_sequence_number(sequence_number)
            .with_timestamp_ms(chrono::Utc::now().timestamp_millis())
            .with_manifest_list(list_path)
            .with_summary(Summary {
                operation: operation.clone(),
                additional_properties: props,
            })
            .with_schema_id(metadata.current_schema_id())
            .build();
        let old_location = current_location(&table)?;
        let new_metadata =
            TableMetadataBuilder::new_from_metadata(metadata.clone(), Some(old_location.clone()))
                .add_snapshot(snapshot)?
                .set_ref(
                    MAIN_BRANCH,
                    SnapshotReference::new(
                        snapshot_id,
                        SnapshotRetention::branch(None, None, None),
                    ),
                )?
                .build()?
                .metadata;
        if pointer.swap(&table, &old_location, new_metadata).await? {
            return Ok(done);
        }
        tracing::debug!(table = %ident, attempt, "a maintenance commit lost a race; rebuilding on the newer snapshot");
        // The streaming writer is not spinning (it commits every few seconds): the
        // best chance is to retry at once, while a retry costs only the manifests
        // appended since. A short jitter keeps two maintenance runs from lockstep.
        tokio::time::sleep(Duration::from_millis(
            1 + u64::from(uuid::Uuid::new_v4().as_bytes()[0] % 8),
        ))
        .await;
    }
    Err(Error::Catalog(format!(
        "{ident}: {MAX_REWRITE_ATTEMPTS} maintenance commits in a row lost the race to other writers; try again later"
    )))
}

/// Loads `ident` from `catalog`, again if its metadata file was gone: a commit can
/// replace the file the catalog pointed to, and delete it, between the load reading the
/// pointer and reading the file; the pointer then names a newer one.
pub(crate) async fn load_table(catalog: &dyn Catalog, ident: &TableIdent) -> Result<Table> {
    let mut attempt = 0u64;
    loop {
        match catalog.load_table(ident).await {
            Err(e) if attempt < 5 && crate::storage::is_missing(&e) => {
                attempt += 1;
                tracing::debug!(table = %ident, attempt, error = %e, "the metadata file went while loading; loading again");
                tokio::time::sleep(Duration::from_millis(5 * attempt)).await;
            }
            loaded => return Ok(loaded?),
        }
    }
}

/// The day (days since 1970-01-01) a day-partitioned file holds.
pub(crate) fn partition_day(partition: &iceberg::spec::Struct) -> Option<i32> {
    match partition.iter().next()? {
        Some(iceberg::spec::Literal::Primitive(iceberg::spec::PrimitiveLiteral::Int(d))) => {
            Some(*d)
        }
        _ => None,
    }
}

/// The table's metadata file location.
pub(crate) fn current_location(table: &Table) -> Result<String> {
    table
        .metadata_location()
        .map(str::to_owned)
        .ok_or_else(|| Error::Internal(format!("{} has no metadata location", table.identifier())))
}
