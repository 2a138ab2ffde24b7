//! The lake's tables as DataFusion tables that are read on every core.
//!
//! `iceberg-datafusion`'s table scan is one stream: however many data files a table
//! has, one core decodes them all, and a table that streaming commits left in many
//! small files reads slower than the same rows in one file. Here a scan plans its
//! files when the query is planned and spreads them over DataFusion's target
//! partitions (one per core by default), balanced by bytes; each partition reads its
//! share with iceberg's own Arrow reader (which applies schema evolution, the pushed
//! down predicate and row-group pruning), so the aggregate above runs in parallel.
//!
//! A table is loaded when a query names it, so the rows a query reads and the schema it
//! was planned with come from one snapshot.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, Session};
use datafusion::common::Statistics;
use datafusion::common::stats::Precision;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use iceberg::Runtime;
use iceberg::arrow::{ArrowReaderBuilder, schema_to_arrow_schema};
use iceberg::io::FileIO;
use iceberg::scan::FileScanTask;
use iceberg::table::Table;
use iceberg::{NamespaceIdent, TableIdent};
use pitwall_lake::Lake;

/// Files each partition opens at once: overlaps one file's footer read with another's
/// decoding (and, on object stores, their round trips).
const FILES_AT_ONCE: usize = 4;

fn df_error(e: iceberg::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The lake's catalog: one schema per namespace (`raw`, `clean`, `metrics`, …), and
/// the schemas a session adds (`pg_catalog` for PostgreSQL's clients).
#[derive(Debug)]
pub(crate) struct LakeCatalog {
    schemas: HashMap<String, Arc<LakeSchema>>,
    added: std::sync::RwLock<HashMap<String, Arc<dyn SchemaProvider>>>,
}

impl LakeCatalog {
    /// Lists the namespaces and their tables with their metadata locations (tables are
    /// loaded when a query names them, or taken from the lake's readers' cache when still
    /// at the listed location).
    pub(crate) async fn try_new(lake: &Lake) -> iceberg::Result<Self> {
        let catalog = lake.catalog();
        let locations = lake
            .table_locations()
            .await
            .map_err(|e| iceberg::Error::new(iceberg::ErrorKind::Unexpected, e.to_string()))?;
        let mut schemas = HashMap::new();
        for name in catalog
            .list_namespaces(None)
            .await?
            .iter()
            .flat_map(|ns| ns.as_ref().clone())
        {
            let namespace = NamespaceIdent::new(name.clone());
            let tables = match &locations {
                Some(all) => all
                    .iter()
                    .filter(|(ident, _)| *ident.namespace() == namespace)
                    .map(|(ident, location)| (ident.name().to_owned(), Some(location.clone())))
                    .collect(),
                None => catalog
                    .list_tables(&namespace)
                    .await?
                    .into_iter()
                    .map(|t| (t.name().to_owned(), None))
                    .collect(),
            };
            schemas.insert(
                name,
                Arc::new(LakeSchema {
                    lake: lake.clone(),
                    namespace,
                    tables,
                }),
            );
        }
        Ok(LakeCatalog {
            schemas,
            added: Default::default(),
        })
    }
}

impl LakeCatalog {
    fn added(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<dyn SchemaProvider>>> {
        self.added
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl CatalogProvider for LakeCatalog {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.schemas.keys().cloned().collect();
        names.extend(self.added().keys().cloned());
        names.sort();
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        self.schemas
            .get(name)
            .map(|s| Arc::clone(s) as Arc<dyn SchemaProvider>)
            .or_else(|| self.added().get(name).cloned())
    }

    /// Adds a schema that is not the lake's (the lake's own namespaces cannot be
    /// replaced).
    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> DFResult<Option<Arc<dyn SchemaProvider>>> {
        if self.schemas.contains_key(name) {
            return Err(DataFusionError::Plan(format!(
                "{name} is one of the lake's namespaces"
            )));
        }
        Ok(self
            .added
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned(), schema))
    }
}

/// One namespace's tables, with their metadata locations when the catalog lists them.
#[derive(Debug)]
struct LakeSchema {
    lake: Lake,
    namespace: NamespaceIdent,
    tables: HashMap<String, Option<String>>,
}

#[async_trait]
impl SchemaProvider for LakeSchema {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tables.keys().cloned().collect();
        names.sort();
        names
    }

    async fn table(&self, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
        let Some(location) = self.tables.get(name) else {
            return Ok(None);
        };
        let ident = TableIdent::new(self.namespace.clone(), name.to_owned());
        let table = self
            .lake
            .table_for_reading(&ident, location.as_deref())
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(Some(Arc::new(LakeTable::new(table).map_err(df_error)?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.contains_key(name)
    }
}

/// One table as loaded when the query was planned.
#[derive(Debug)]
struct LakeTable {
    table: Table,
    schema: SchemaRef,
}

impl LakeTable {
    fn new(table: Table) -> iceberg::Result<Self> {
        let schema = Arc::new(schema_to_arrow_schema(table.metadata().current_schema())?);
        Ok(LakeTable { table, schema })
    }
}

#[async_trait]
impl TableProvider for LakeTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => Arc::clone(&self.schema),
        };
        let mut builder = self.table.scan();
        builder = match projection {
            // No columns (`count(*)`, `SELECT 1 FROM t`): iceberg's reader reads every
            // column for an empty selection, so ask for the narrowest one and drop it;
            // files that need no reading at all are counted from their metadata.
            Some(p) if p.is_empty() => match narrowest(&self.schema) {
                Some(name) => builder.select([name]),
                None => builder.select_empty(),
            },
            Some(_) => builder.select(schema.fields().iter().map(|f| f.name().clone())),
            None => builder.select_all(),
        };
        if let Some(predicate) =
            crate::predicate::to_predicate(self.table.metadata().current_schema(), filters)
        {
            builder = builder.with_filter(predicate);
        }
        let tasks: Vec<FileScanTask> = builder
            .build()
            .map_err(df_error)?
            .plan_files()
            .await
            .map_err(df_error)?
            .try_collect()
            .await
            .map_err(df_error)?;
        let partitions = state.config().target_partitions();
        let tasks = if schema.fields().is_empty() && tasks.iter().all(countable) {
            tasks
        } else {
            split(tasks, partitions, MIN_PIECE)
        };
        let groups = spread(tasks, partitions, |t| t.length);
        Ok(Arc::new(LakeScan::new(
            self.table.file_io().clone(),
            schema,
            groups,
            limit,
        )))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DFResult<Vec<TableProviderFilterPushDown>> {
        // Pushed down to prune files and row groups; DataFusion still filters the rows.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
}

/// The name of the column cheapest to read: the narrowest fixed-width one, else the
/// first.
fn narrowest(schema: &arrow::datatypes::Schema) -> Option<&String> {
    schema
        .fields()
        .iter()
        .min_by_key(|f| f.data_type().primitive_width().unwrap_or(usize::MAX))
        .map(|f| f.name())
}

/// A task whose rows are all its file's rows, so that the file's record count is the
/// number of rows it yields: the whole file, no filter, no deletes.
fn countable(task: &FileScanTask) -> bool {
    task.record_count.is_some() && task.predicate.is_none() && task.deletes.is_empty()
}

/// The rows `tasks` yield when every one is [`countable`].
fn counted_rows(tasks: &[FileScanTask]) -> Option<usize> {
    tasks.iter().try_fold(0usize, |sum, t| {
        countable(t)
            .then_some(t.record_count)
            .flatten()
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|n| sum.checked_add(n))
    })
}

/// A batch of `rows` rows and no columns (`schema` has none).
fn no_columns(schema: &SchemaRef, rows: usize) -> DFResult<RecordBatch> {
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        Vec::new(),
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

/// A piece of a file no smaller than this is worth its own footer read and task.
const MIN_PIECE: u64 = 4 << 20;

/// Cuts files into byte ranges so that [`spread`] can give every partition an equal
/// share: each file longer than a quarter of a partition's share (and than
/// `min_piece`) becomes ranges of about that size. One big file (a compacted table), or
/// a big and a small one (a compaction per day), would otherwise keep one core busy while
/// the other waits. iceberg's reader reads the row groups whose midpoints lie in a task's
/// range, so each row group is read by exactly one task (a range holding no midpoint
/// reads nothing). Small tables stay whole: a query over them pays no extra footer reads.
fn split(tasks: Vec<FileScanTask>, partitions: usize, min_piece: u64) -> Vec<FileScanTask> {
    if tasks.is_empty() || partitions <= 1 {
        return tasks;
    }
    let total: u64 = tasks.iter().map(|t| t.length).sum();
    let target = (total / (partitions as u64 * 4)).max(min_piece).max(1);
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        // A zero length means the whole file to the reader; leave such a task whole.
        if task.length <= target {
            out.push(task);
            continue;
        }
        let pieces = task.length.div_ceil(target);
        let (start, length) = (task.start, task.length);
        for i in 0..pieces {
            let mut piece = task.clone();
            piece.start = start + length * i / pieces;
            piece.length = start + length * (i + 1) / pieces - piece.start;
            // The row count is the whole file's; no share claims it.
            piece.record_count = None;
            out.push(piece);
        }
    }
    out
}

/// Spreads `items` over at most `n` groups of about equal weight (heaviest first, each
/// to the lightest group so far); no group is empty, but there is always one.
fn spread<T>(mut items: Vec<T>, n: usize, weight: impl Fn(&T) -> u64) -> Vec<Vec<T>> {
    let n = n.clamp(1, items.len().max(1));
    items.sort_by_key(|t| std::cmp::Reverse(weight(t)));
    let mut groups: Vec<(u64, Vec<T>)> = (0..n).map(|_| (0, Vec::new())).collect();
    for item in items {
        let lightest = groups
            .iter_mut()
            .min_by_key(|g| g.0)
            .expect("at least one group");
        lightest.0 += weight(&item);
        lightest.1.push(item);
    }
    groups.into_iter().map(|g| g.1).collect()
}

/// Reads a table's planned files, a share per partition.
struct LakeScan {
    file_io: FileIO,
    schema: SchemaRef,
    groups: Vec<Vec<FileScanTask>>,
    limit: Option<usize>,
    properties: Arc<PlanProperties>,
}

impl LakeScan {
    fn new(
        file_io: FileIO,
        schema: SchemaRef,
        groups: Vec<Vec<FileScanTask>>,
        limit: Option<usize>,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(groups.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        LakeScan {
            file_io,
            schema,
            groups,
            limit,
            properties,
        }
    }
}

impl fmt::Debug for LakeScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LakeScan")
            .field("partitions", &self.groups.len())
            .field("limit", &self.limit)
            .finish()
    }
}

impl DisplayAs for LakeScan {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let files: usize = self.groups.iter().map(Vec::len).sum();
        write!(
            f,
            "LakeScan: {files} files in {} partitions, columns [",
            self.groups.len()
        )?;
        for (i, field) in self.schema.fields().iter().enumerate() {
            write!(f, "{}{}", if i > 0 { ", " } else { "" }, field.name())?;
        }
        write!(f, "]")?;
        if let Some(p) = self
            .groups
            .iter()
            .flatten()
            .find_map(|t| t.predicate.as_ref())
        {
            write!(f, ", predicate {p}")?;
        }
        if let Some(limit) = self.limit {
            write!(f, ", limit {limit}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for LakeScan {
    fn name(&self) -> &str {
        "LakeScan"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    /// Exact row counts from the manifests when every file is read whole, unfiltered
    /// and without deletes (`count(*)` is then answered without a scan).
    fn partition_statistics(&self, partition: Option<usize>) -> DFResult<Statistics> {
        // The limit applies to each partition's stream.
        let rows = |group: &[FileScanTask]| {
            counted_rows(group).map(|n| self.limit.map_or(n, |l| n.min(l)))
        };
        let rows = match partition {
            Some(p) => self.groups.get(p).map_or(Some(0), |g| rows(g)),
            None => self
                .groups
                .iter()
                .try_fold(0usize, |sum, g| rows(g).and_then(|n| sum.checked_add(n))),
        };
        Ok(Statistics::new_unknown(&self.schema)
            .with_num_rows(rows.map_or(Precision::Absent, Precision::Exact)))
    }

    fn with_new_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let tasks = self.groups.get(partition).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!("LakeScan has no partition {partition}"))
        })?;
        let batch_size = context.session_config().batch_size();
        if self.schema.fields().is_empty()
            && let Some(rows) = counted_rows(&tasks)
        {
            // No column asked for and every row counted in the manifests: batches of
            // no columns, read from nothing.
            let rows = self.limit.map_or(rows, |l| rows.min(l));
            let schema = Arc::clone(&self.schema);
            let batches = (0..rows.div_ceil(batch_size))
                .map(move |i| no_columns(&schema, batch_size.min(rows - i * batch_size)));
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&self.schema),
                futures::stream::iter(batches),
            )));
        }
        let runtime = Runtime::try_current().map_err(df_error)?;
        // Batches as large as DataFusion's own (8,192 rows; the Parquet reader's default
        // is 1,024, and every operator above pays per batch).
        let reader = ArrowReaderBuilder::new(self.file_io.clone(), runtime)
            .with_data_file_concurrency_limit(FILES_AT_ONCE)
            .with_batch_size(batch_size)
            .build();
        let batches = reader
            .read(futures::stream::iter(tasks.into_iter().map(Ok)).boxed())
            .map_err(df_error)?
            .stream()
            .map_err(df_error);
        // An empty projection read one column to count rows by; drop it.
        let batches = if self.schema.fields().is_empty() {
            let schema = Arc::clone(&self.schema);
            batches
                .and_then(move |b| futures::future::ready(no_columns(&schema, b.num_rows())))
                .boxed()
        } else {
            batches.boxed()
        };
        let stream = match self.limit {
            None => batches.boxed(),
            Some(limit) => {
                let mut remaining = limit;
                batches
                    .try_filter_map(move |b| {
                        let taken = b.num_rows().min(remaining);
                        remaining -= taken;
                        futures::future::ready(Ok((taken > 0).then(|| b.slice(0, taken))))
                    })
                    .boxed()
            }
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use iceberg::scan::FileScanTask;
    use iceberg::spec::{DataFileFormat, Schema};

    use super::{split, spread};

    fn task(path: &str, size: u64) -> FileScanTask {
        FileScanTask::builder()
            .with_file_size_in_bytes(size)
            .with_start(0)
            .with_length(size)
            .with_record_count(Some(1000))
            .with_data_file_path(path.to_owned())
            .with_data_file_format(DataFileFormat::Parquet)
            .with_schema(Arc::new(
                Schema::builder().build().expect("an empty schema"),
            ))
            .with_project_field_ids(Vec::new())
            .with_case_sensitive(true)
            .build()
    }

    #[test]
    fn big_files_are_cut_into_ranges_that_cover_each_file_once() {
        let pieces = split(vec![task("a", 1001), task("b", 10)], 5, 1);
        // 5 partitions, 1,011 bytes: pieces of at most 50 bytes, so "a" in 21 ranges and
        // "b" whole.
        for (path, size, count) in [("a", 1001, 21), ("b", 10, 1)] {
            let mut ranges: Vec<(u64, u64)> = pieces
                .iter()
                .filter(|t| t.data_file_path == path)
                .map(|t| (t.start, t.length))
                .collect();
            ranges.sort_unstable();
            assert_eq!(ranges.len(), count, "{path}: {ranges:?}");
            let mut next = 0;
            for (start, length) in &ranges {
                assert_eq!(
                    *start, next,
                    "{path}: ranges leave a gap or overlap: {ranges:?}"
                );
                next = start + length;
            }
            assert_eq!(
                next, size,
                "{path}: ranges end before the file does: {ranges:?}"
            );
        }
        assert!(
            pieces
                .iter()
                .filter(|t| t.data_file_path == "a")
                .all(|t| t.record_count.is_none()),
            "a piece must not claim the file's row count"
        );
    }

    #[test]
    fn an_uneven_pair_of_files_still_shares_the_work_evenly() {
        // A compaction per day: 10 hours in one file, 4 in the other.
        let groups = spread(
            split(vec![task("a", 700_000), task("b", 300_000)], 2, 1),
            2,
            |t| t.length,
        );
        let sums: Vec<u64> = groups
            .iter()
            .map(|g| g.iter().map(|t| t.length).sum())
            .collect();
        let (lo, hi) = (sums[0].min(sums[1]), sums[0].max(sums[1]));
        assert!(hi - lo <= 1_000_000 / 8, "{sums:?}");
    }

    #[test]
    fn small_tables_are_left_whole() {
        let whole = split(vec![task("a", 100), task("b", 100)], 2, 4 << 20);
        assert_eq!(
            whole
                .iter()
                .map(|t| (t.start, t.length, t.record_count))
                .collect::<Vec<_>>(),
            vec![(0, 100, Some(1000)); 2]
        );
        let one = split(vec![task("a", 1 << 20)], 2, 4 << 20);
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn files_spread_evenly_by_bytes_and_no_partition_is_empty() {
        let groups = spread(vec![5u64, 1, 1, 1, 1, 1, 4, 2], 2, |w| *w);
        assert_eq!(groups.len(), 2);
        let sums: Vec<u64> = groups.iter().map(|g| g.iter().sum()).collect();
        assert_eq!(sums, vec![8, 8], "{groups:?}");
        // Fewer files than cores: one partition per file.
        assert_eq!(spread(vec![3u64, 9], 8, |w| *w), vec![vec![9], vec![3]]);
        // No files: one empty partition (the scan still has a schema to return).
        assert_eq!(
            spread(Vec::<u64>::new(), 4, |w| *w),
            vec![Vec::<u64>::new()]
        );
    }
}
