//! Keeping tables healthy while streaming commits pile up small files and snapshots:
//! compaction (small files of a partition rewritten into files near a target size, and
//! every manifest merged into one), snapshot expiry (old snapshots dropped and the files
//! only they referenced deleted), orphan cleaning (files under a table that no snapshot
//! references, such as the leftovers of a crash between writing and committing) and
//! retention (day partitions older than an age dropped).
//!
//! Every change is one commit through the lake's own compare-and-set path
//! ([`crate::commit`]), so maintenance and the streaming writer never lose each other's
//! commits: whoever loses the race rebuilds on the newer snapshot. Compaction and
//! retention carry the snapshot summary's bus offsets and progress forward unchanged,
//! so a processor resumes and fences exactly as before.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use futures::{StreamExt, TryStreamExt};
use iceberg::Runtime;
use iceberg::arrow::{ArrowReaderBuilder, schema_to_arrow_schema};
use iceberg::spec::{DataFileFormat, Operation, PartitionKey, Struct, TableMetadataBuilder};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use iceberg::{NamespaceIdent, TableIdent};
use serde::{Deserialize, Serialize};

use crate::commit::{
    Rewritten, current_location, fenced_rewrite, live_entries, manifest_list, partition_day,
};
use crate::storage::LakeStorage;
use crate::tables::Fixed;
use crate::{Error, Lake, Result};

/// `[lake.maintenance]`: what `pitwall process` (and `up`) run on a schedule and
/// `pitwall lake …` runs by hand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct MaintenanceConfig {
    /// How often the processor runs compaction, expiry, orphan cleaning and retention
    /// over every table (default 10 minutes); "0s" = never: run `pitwall lake …` by
    /// hand or from a scheduler.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Compaction writes files of about this many bytes, and rewrites a partition's
    /// files smaller than three quarters of it.
    pub target_file_size: u64,
    /// Snapshots older than this are expired (the current one always stays), and the
    /// files only they referenced are deleted.
    #[serde(with = "humantime_serde")]
    pub expire_after: Duration,
    /// Files under a table that no snapshot references are removed once older than
    /// this; it must outlast the longest commit, or a commit in progress loses files.
    #[serde(with = "humantime_serde")]
    pub orphan_age: Duration,
    /// Day partitions whose whole day is older than this are dropped, per table
    /// (`"raw.events" = "30d"`); tables not listed are kept forever.
    #[serde(with = "humantime_serde_map")]
    pub retention: BTreeMap<String, Duration>,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            interval: Duration::from_secs(600),
            target_file_size: 128 << 20,
            expire_after: Duration::from_secs(3600),
            orphan_age: Duration::from_secs(86_400),
            retention: BTreeMap::new(),
        }
    }
}

/// Durations as humantime strings in a map.
mod humantime_serde_map {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<String, Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        m.iter()
            .map(|(k, v)| (k.clone(), humantime::format_duration(*v).to_string()))
            .collect::<BTreeMap<_, _>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Duration>, D::Error> {
        BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| {
                humantime::parse_duration(&v)
                    .map(|d| (k.clone(), d))
                    .map_err(|e| serde::de::Error::custom(format!("retention of {k}: {v:?}: {e}")))
            })
            .collect()
    }
}

/// What compaction did to one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Data files before.
    pub files_before: usize,
    /// Data files after.
    pub files_after: usize,
    /// Manifests before (after: one, if anything was committed).
    pub manifests_before: usize,
    /// Rows rewritten.
    pub rows_rewritten: u64,
    /// Whether a snapshot was committed.
    pub committed: bool,
}

/// What expiry did to one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expired {
    /// Snapshots removed from the table's metadata.
    pub snapshots: usize,
    /// Files deleted (manifest lists, manifests, data files).
    pub files_deleted: usize,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Lake {
    /// Every table of the lake: the fixed ones and each `clean.<measurement>`.
    pub async fn table_idents(&self) -> Result<Vec<TableIdent>> {
        let mut idents: Vec<TableIdent> = Fixed::ALL.iter().map(|f| f.ident()).collect();
        idents.extend(
            self.catalog
                .list_tables(&NamespaceIdent::new("clean".to_owned()))
                .await?,
        );
        Ok(idents)
    }

    /// The storage table files live in, for listing and deleting.
    pub fn storage(&self) -> LakeStorage {
        LakeStorage::new(self.config.s3.resolved())
    }

    /// Rewrites each partition's small files (under three quarters of `target_size`)
    /// into files of about `target_size`, and merges all manifests into one, in a single
    /// `replace` snapshot. Queries return the same rows before and after.
    pub async fn compact(&self, ident: &TableIdent, target_size: u64) -> Result<Compacted> {
        self.compact_with(ident, target_size, false).await
    }

    /// As [`Lake::compact`], but cheap enough to run every few minutes on streaming
    /// tables: small files are grouped in size tiers (under 256 KiB, then each tier four
    /// times the one before) and only a tier holding four or more files in a partition is
    /// merged, so a row is rewritten a few times at most rather than on every run.
    pub async fn compact_tiered(&self, ident: &TableIdent, target_size: u64) -> Result<Compacted> {
        self.compact_with(ident, target_size, true).await
    }

    async fn compact_with(
        &self,
        ident: &TableIdent,
        target_size: u64,
        tiered: bool,
    ) -> Result<Compacted> {
        let table = crate::commit::load_table(self.catalog.as_ref(), ident).await?;
        let live = live_entries(&table).await?;
        // Manifests with live files: a compaction's own manifest of removed files is
        // dropped by the next append, so it is no reason to compact again.
        let manifests_before = match table.metadata().current_snapshot() {
            Some(s) => manifest_list(&table, s)
                .await?
                .entries()
                .iter()
                .filter(|m| m.has_added_files() || m.has_existing_files())
                .count(),
            None => 0,
        };
        let mut out = Compacted {
            files_before: live.len(),
            files_after: live.len(),
            manifests_before,
            ..Compacted::default()
        };
        let small = target_size / 4 * 3;
        let tier = |size: u64| {
            if tiered {
                (size / (256 << 10)).checked_ilog(4).map_or(0, |t| t + 1)
            } else {
                0
            }
        };
        let mut groups: BTreeMap<(Option<i32>, u32), (Struct, Vec<String>)> = BTreeMap::new();
        for e in &live {
            if e.file_size_in_bytes() < small {
                let g = groups
                    .entry((
                        partition_day(e.data_file.partition()),
                        tier(e.file_size_in_bytes()),
                    ))
                    .or_insert_with(|| (e.data_file.partition().clone(), Vec::new()));
                g.1.push(e.file_path().to_owned());
            }
        }
        let min_files = if tiered { 4 } else { 2 };
        groups.retain(|_, (_, files)| files.len() >= min_files);
        if groups.is_empty() && manifests_before <= 1 {
            return Ok(out);
        }
        let mut removed = BTreeSet::new();
        let mut added = Vec::new();
        if !groups.is_empty() {
            let tasks: Vec<_> = table
                .scan()
                .build()?
                .plan_files()
                .await?
                .try_collect()
                .await?;
            let metadata = table.metadata();
            let schema = Arc::clone(metadata.current_schema());
            let arrow_schema = Arc::new(schema_to_arrow_schema(&schema)?);
            let sort_by = crate::tables::sort_columns(ident, &schema);
            let spec = metadata.default_partition_spec().as_ref().clone();
            let builder = DataFileWriterBuilder::new(RollingFileWriterBuilder::new(
                ParquetWriterBuilder::new(
                    crate::writer::for_schema(crate::writer::compaction_properties(), &schema),
                    Arc::clone(&schema),
                ),
                usize::try_from(target_size).unwrap_or(usize::MAX),
                table.file_io().clone(),
                DefaultLocationGenerator::new(metadata)?,
                DefaultFileNameGenerator::new(
                    format!("compact-{}", uuid::Uuid::new_v4()),
                    None,
                    DataFileFormat::Parquet,
                ),
            ));
            for (partition, files) in groups.into_values() {
                let wanted: HashSet<&str> = files.iter().map(String::as_str).collect();
                let group: Vec<_> = tasks
                    .iter()
                    .filter(|t| wanted.contains(t.data_file_path.as_str()))
                    .cloned()
                    .collect();
                if group.len() != files.len() {
                    return Err(Error::Internal(format!(
                        "{ident}: the scan planned {} of the {} files to compact",
                        group.len(),
                        files.len()
                    )));
                }
                // Object stores answer each read after tens of milliseconds: read many
                // small files at once (row order does not matter, chunks are sorted).
                let mut batches =
                    ArrowReaderBuilder::new(table.file_io().clone(), Runtime::current())
                        .with_data_file_concurrency_limit(READ_CONCURRENCY)
                        .build()
                        .read(futures::stream::iter(group.into_iter().map(Ok)).boxed())?
                        .stream();
                let key = PartitionKey::new(spec.clone(), Arc::clone(&schema), partition);
                let mut w = builder.build(Some(key)).await?;
                let mut chunk = SortChunk::new(&sort_by, &arrow_schema);
                let mut group_rows = 0u64;
                while let Some(b) = batches.next().await {
                    let b = RecordBatch::try_new(Arc::clone(&arrow_schema), b?.columns().to_vec())?;
                    group_rows += b.num_rows() as u64;
                    if let Some(sorted) = chunk.push(b)? {
                        w.write(sorted).await?;
                    }
                }
                if let Some(sorted) = chunk.finish()? {
                    w.write(sorted).await?;
                }
                let written = w.close().await?;
                // Never trade rows for smaller files: the rows read and written must be
                // the rows the manifests say the files hold.
                let written_rows: u64 = written.iter().map(|f| f.record_count()).sum();
                let source_rows: u64 = live
                    .iter()
                    .filter(|e| wanted.contains(e.file_path()))
                    .map(|e| e.record_count())
                    .sum();
                if group_rows != source_rows || written_rows != source_rows {
                    for f in written.iter().chain(&added) {
                        let _ = table.file_io().delete(f.file_path()).await;
                    }
                    return Err(Error::Internal(format!(
                        "{ident}: compaction read {group_rows} rows and wrote {written_rows} from files holding {source_rows}; nothing was committed"
                    )));
                }
                out.rows_rewritten += group_rows;
                added.extend(written);
                removed.extend(files);
            }
        }
        let written: Vec<String> = added.iter().map(|f| f.file_path().to_owned()).collect();
        match fenced_rewrite(
            self.catalog.as_ref(),
            &self.pointer,
            ident,
            &removed,
            added,
            Operation::Replace,
            None,
        )
        .await
        {
            Ok(Rewritten { files_after, .. }) => {
                out.files_after = files_after;
                out.committed = true;
                Ok(out)
            }
            Err(e) => {
                // Nothing references the new files: take them back.
                for f in written {
                    let _ = table.file_io().delete(&f).await;
                }
                Err(e)
            }
        }
    }

    /// Drops snapshots older than `older_than` (never the current one) and deletes the
    /// manifest lists, manifests and data files no remaining snapshot references.
    pub async fn expire_snapshots(
        &self,
        ident: &TableIdent,
        older_than: Duration,
    ) -> Result<Expired> {
        for _ in 0..20 {
            let table = crate::commit::load_table(self.catalog.as_ref(), ident).await?;
            let metadata = table.metadata();
            let current = metadata.current_snapshot_id();
            let cutoff = now_ms() - older_than.as_millis() as i64;
            // pitwall keeps only the main branch; iceberg-rust does not list other refs.
            let (old, keep): (Vec<_>, Vec<_>) = metadata
                .snapshots()
                .partition(|s| s.timestamp_ms() < cutoff && Some(s.snapshot_id()) != current);
            if old.is_empty() {
                return Ok(Expired::default());
            }
            let mut manifests = ManifestFiles::default();
            let mut kept_files = HashSet::new();
            for s in &keep {
                kept_files.extend(manifests.snapshot_files(&table, s).await?);
            }
            let mut doomed = BTreeSet::new();
            for s in &old {
                doomed.extend(
                    manifests
                        .snapshot_files(&table, s)
                        .await?
                        .into_iter()
                        .filter(|f| !kept_files.contains(f)),
                );
            }
            let ids: Vec<i64> = old.iter().map(|s| s.snapshot_id()).collect();
            let old_location = current_location(&table)?;
            let new_metadata = TableMetadataBuilder::new_from_metadata(
                metadata.clone(),
                Some(old_location.clone()),
            )
            .remove_snapshots(&ids)
            .build()?
            .metadata;
            if self
                .pointer
                .swap(&table, &old_location, new_metadata)
                .await?
            {
                let io = table.file_io();
                let mut deleted = 0;
                for f in &doomed {
                    match io.delete(f).await {
                        Ok(()) => deleted += 1,
                        Err(e) => {
                            tracing::warn!(file = %f, error = %e, "could not delete an expired file; orphan cleaning will")
                        }
                    }
                }
                return Ok(Expired {
                    snapshots: ids.len(),
                    files_deleted: deleted,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(Error::Catalog(format!(
            "{ident}: expiry kept losing the commit race; try again later"
        )))
    }

    /// Deletes files under the table's location that no snapshot and no metadata file
    /// of the table references and that are older than `older_than`. Returns them.
    pub async fn clean_orphans(
        &self,
        ident: &TableIdent,
        older_than: Duration,
    ) -> Result<Vec<String>> {
        let table = crate::commit::load_table(self.catalog.as_ref(), ident).await?;
        let metadata = table.metadata();
        let mut referenced: HashSet<String> = HashSet::new();
        let mut manifests = ManifestFiles::default();
        for s in metadata.snapshots() {
            referenced.extend(
                manifests
                    .snapshot_files(&table, s)
                    .await?
                    .iter()
                    .map(|f| normalize(f)),
            );
        }
        referenced.extend(table.metadata_location().map(normalize));
        referenced.extend(
            metadata
                .metadata_log()
                .iter()
                .map(|l| normalize(&l.metadata_file)),
        );
        let cutoff = now_ms() - older_than.as_millis() as i64;
        let storage = self.storage();
        let mut removed = Vec::new();
        for (path, modified) in storage.list(metadata.location()).await? {
            if modified < cutoff && !referenced.contains(&normalize(&path)) {
                table.file_io().delete(&path).await?;
                removed.push(path);
            }
        }
        Ok(removed)
    }

    /// Drops every day partition whose day ended more than `keep` ago, in one `delete`
    /// snapshot.
    pub async fn apply_retention(&self, ident: &TableIdent, keep: Duration) -> Result<Rewritten> {
        const DAY_MS: i64 = 86_400_000;
        let first_kept_day = (now_ms() - keep.as_millis() as i64).div_euclid(DAY_MS) as i32;
        let table = crate::commit::load_table(self.catalog.as_ref(), ident).await?;
        let old: BTreeSet<String> = live_entries(&table)
            .await?
            .iter()
            .filter(|e| partition_day(e.data_file.partition()).is_some_and(|d| d < first_kept_day))
            .map(|e| e.file_path().to_owned())
            .collect();
        if old.is_empty() {
            return Ok(Rewritten::default());
        }
        fenced_rewrite(
            self.catalog.as_ref(),
            &self.pointer,
            ident,
            &old,
            Vec::new(),
            Operation::Delete,
            None,
        )
        .await
    }

    /// One round of everything `config` asks for, over every table; errors of one table
    /// are logged and the others still run. Returns a line per table that changed.
    pub async fn maintain(&self, config: &MaintenanceConfig) -> Result<Vec<String>> {
        self.maintain_tables(&self.table_idents().await?, config)
            .await
    }

    /// As [`Lake::maintain`], over `tables`; lines carry no table name when given one.
    pub async fn maintain_tables(
        &self,
        tables: &[TableIdent],
        config: &MaintenanceConfig,
    ) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        for ident in tables {
            if let Some(line) = self.maintain_table(ident, config).await {
                lines.push(if tables.len() == 1 {
                    line
                } else {
                    format!("{ident}: {line}")
                });
            }
        }
        Ok(lines)
    }

    /// One round of everything `config` asks for on one table: retention, tiered
    /// compaction, expiry, orphan cleaning. Failures are logged, and the next step
    /// still runs. Returns what changed, if anything.
    pub async fn maintain_table(
        &self,
        ident: &TableIdent,
        config: &MaintenanceConfig,
    ) -> Option<String> {
        let name = ident.to_string();
        let mut parts = Vec::new();
        if let Some(keep) = config.retention.get(&name) {
            match self.apply_retention(ident, *keep).await {
                Ok(r) if r.removed_files > 0 => parts.push(format!(
                    "dropped {} rows in {} files past retention",
                    r.removed_rows, r.removed_files
                )),
                Ok(_) => {}
                Err(e) => tracing::warn!(table = %name, error = %e, "retention failed"),
            }
        }
        match self.compact_tiered(ident, config.target_file_size).await {
            Ok(c) if c.committed => parts.push(format!(
                "compacted {} files ({} manifests) into {}",
                c.files_before, c.manifests_before, c.files_after
            )),
            Ok(_) => {}
            // Another round (a replica's, or one by hand) rewrote those files first.
            Err(e @ Error::Changed { .. }) => {
                tracing::info!(table = %name, error = %e, "compaction skipped until the next round")
            }
            Err(e) => tracing::warn!(table = %name, error = %e, "compaction failed"),
        }
        match self.expire_snapshots(ident, config.expire_after).await {
            Ok(x) if x.snapshots > 0 => parts.push(format!(
                "expired {} snapshots, deleted {} files",
                x.snapshots, x.files_deleted
            )),
            Ok(_) => {}
            Err(e) => tracing::warn!(table = %name, error = %e, "snapshot expiry failed"),
        }
        match self.clean_orphans(ident, config.orphan_age).await {
            Ok(o) if !o.is_empty() => parts.push(format!("removed {} orphan files", o.len())),
            Ok(_) => {}
            Err(e) => tracing::warn!(table = %name, error = %e, "orphan cleaning failed"),
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// `file:/x` and `file:///x` alike, as listings and metadata may spell them differently.
fn normalize(path: &str) -> String {
    match path.strip_prefix("file://") {
        Some(rest) => format!("file:{rest}"),
        None => path.to_owned(),
    }
}

/// The live data files of each manifest read so far. Manifests never change once
/// written and streaming snapshots share most of theirs, so a walk over every snapshot
/// reads each manifest once instead of once per snapshot.
#[derive(Default)]
struct ManifestFiles(std::collections::HashMap<String, Arc<Vec<String>>>);

impl ManifestFiles {
    /// Every file a snapshot needs: its manifest list, its manifests and the data files
    /// live in it (a file its manifests list as deleted is not read through it).
    async fn snapshot_files(
        &mut self,
        table: &Table,
        snapshot: &iceberg::spec::Snapshot,
    ) -> Result<Vec<String>> {
        let mut out = vec![snapshot.manifest_list().to_owned()];
        for m in manifest_list(table, snapshot).await?.entries() {
            out.push(m.manifest_path.clone());
            let files = match self.0.get(&m.manifest_path) {
                Some(f) => Arc::clone(f),
                None => {
                    let manifest = m.load_manifest(table.file_io()).await?;
                    let files: Arc<Vec<String>> = Arc::new(
                        manifest
                            .entries()
                            .iter()
                            .filter(|e| e.is_alive())
                            .map(|e| e.file_path().to_owned())
                            .collect(),
                    );
                    self.0.insert(m.manifest_path.clone(), Arc::clone(&files));
                    files
                }
            };
            out.extend(files.iter().cloned());
        }
        Ok(out)
    }
}

/// Data files compaction reads at once.
const READ_CONCURRENCY: usize = 16;

/// Rows on their way into compacted files, sorted in chunks of bounded memory: a
/// partition's rows are sorted within each chunk (most of the gain in size, without
/// holding a whole partition in memory).
struct SortChunk {
    columns: Vec<usize>,
    schema: arrow_schema::SchemaRef,
    batches: Vec<RecordBatch>,
    bytes: usize,
}

impl SortChunk {
    /// Memory a chunk may take before it is sorted and written.
    const LIMIT: usize = 256 << 20;

    fn new(sort_by: &[String], schema: &arrow_schema::SchemaRef) -> Self {
        let columns = sort_by
            .iter()
            .filter_map(|c| schema.index_of(c).ok())
            .collect();
        SortChunk {
            columns,
            schema: Arc::clone(schema),
            batches: Vec::new(),
            bytes: 0,
        }
    }

    /// Takes `batch`; returns a sorted chunk once enough has gathered.
    fn push(&mut self, batch: RecordBatch) -> Result<Option<RecordBatch>> {
        self.bytes += batch.get_array_memory_size();
        self.batches.push(batch);
        if self.bytes >= Self::LIMIT {
            self.finish()
        } else {
            Ok(None)
        }
    }

    /// Sorts and returns what has gathered, if anything.
    fn finish(&mut self) -> Result<Option<RecordBatch>> {
        self.bytes = 0;
        if self.batches.is_empty() {
            return Ok(None);
        }
        let batch =
            arrow_select::concat::concat_batches(&self.schema, &std::mem::take(&mut self.batches))?;
        if self.columns.is_empty() {
            return Ok(Some(batch));
        }
        let keys: Vec<arrow_ord::sort::SortColumn> = self
            .columns
            .iter()
            .map(|&i| arrow_ord::sort::SortColumn {
                values: Arc::clone(batch.column(i)),
                options: None,
            })
            .collect();
        let order = arrow_ord::sort::lexsort_to_indices(&keys, None)?;
        Ok(Some(arrow_select::take::take_record_batch(&batch, &order)?))
    }
}
