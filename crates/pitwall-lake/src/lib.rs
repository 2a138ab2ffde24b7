//! The lake: Apache Iceberg tables that every stage of pitwall lands in.
//!
//! [`Lake`] opens (or creates) an Iceberg SQL catalog and a warehouse: in the embedded
//! shape a SQLite file and a local directory under `--data-dir`. Tables are named by
//! stage, as the seeds lay out their buckets: `raw.events`, `clean.<measurement>`,
//! `metrics.windows`, `anomalies.events`, `quarantine.rejects` and `quarantine.late`,
//! each partitioned by day. [`LakeWriter`] buffers the processor's outputs and commits
//! them in batches (by row count or time), recording in every snapshot summary the bus
//! offsets the commit covers. Any Iceberg reader (PyIceberg, DuckDB, Trino, Spark) can
//! read the same tables through the same catalog.

mod commit;
mod maintain;
pub mod progress;
pub mod rest;
pub mod storage;
pub mod tables;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use iceberg::spec::Type;
use iceberg::table::Table;
use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalogBuilder};
use pitwall_core::{FieldType, PartitionId};
use serde::{Deserialize, Serialize};

pub use commit::{Claim, Rewritten};
pub use maintain::{Compacted, Expired, MaintenanceConfig};
pub use progress::{OFFSETS_PROPERTY, committed_offsets, committed_progress};
pub use progress::{Progress, ResumePlan, TableProgress};
pub use rest::RestConfig;
pub use storage::S3Config;
pub use tables::Fixed;
pub use writer::{CommitStats, LakeWriter, QUARANTINE_AFTER, Round};

/// Lake errors; each says what failed and what to do. Causes are part of the message
/// rather than a `source`, so an error chain does not print them twice.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory cannot be used.
    #[error(
        "data directory {path}: {error}; check that it exists and is writable, or pass another --data-dir"
    )]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The Iceberg catalog or a table operation failed.
    #[error("iceberg: {0}")]
    Iceberg(iceberg::Error),
    /// Building Arrow data failed (a bug: types are checked before).
    #[error("arrow: {0}")]
    Arrow(arrow_schema::ArrowError),
    /// A clean table has a column whose type pitwall cannot write into.
    #[error(
        "table {table}: column {column} is {found}, which pitwall cannot write {wanted} values into; rename the field or drop the column"
    )]
    Incompatible {
        /// Table name.
        table: String,
        /// Column name.
        column: String,
        /// The column's type.
        found: String,
        /// The value type.
        wanted: String,
    },
    /// Another writer has committed a partition this writer claims: this writer lost
    /// the partition (a rebalance, or a pause long enough to be replaced) and must not
    /// write. Nothing was committed; resume from the lake's offsets.
    #[error(
        "commit to {table} fenced: the lake records partition {partition} up to offset {committed}, but this writer expected {expected}; another writer owns it now"
    )]
    Fenced {
        /// Table name.
        table: String,
        /// The partition.
        partition: PartitionId,
        /// What the lake records.
        committed: i64,
        /// What this writer expected.
        expected: i64,
    },
    /// The catalog database failed or is overloaded.
    #[error("catalog: {0}")]
    Catalog(String),
    /// The table changed under a maintenance run in a way it cannot build on.
    #[error("{table}: {message}")]
    Changed {
        /// Table name.
        table: String,
        /// What changed and what to do.
        message: String,
    },
    /// A `[lake]` setting is wrong.
    #[error("lake.{key}: {message}")]
    Config {
        /// The key under `[lake]`.
        key: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// Something that should not happen.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<iceberg::Error> for Error {
    fn from(e: iceberg::Error) -> Self {
        Error::Iceberg(e)
    }
}

impl From<arrow_schema::ArrowError> for Error {
    fn from(e: arrow_schema::ArrowError) -> Self {
        Error::Arrow(e)
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the lake lives and how often it commits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct LakeConfig {
    /// The embedded lake: holds `catalog.db` (the SQLite catalog) and `warehouse/` (the
    /// table files) unless `catalog` and `warehouse` say otherwise.
    pub data_dir: PathBuf,
    /// The Iceberg catalog: empty = SQLite in `data_dir`; `postgres://user:password@host/db`
    /// = the SQL catalog on PostgreSQL (Trino reads it as `iceberg.catalog.type=jdbc`,
    /// PyIceberg as a `SqlCatalog`); `http(s)://host:port` = an Iceberg REST catalog
    /// (see `[lake.rest]`). Processes sharing a lake share this.
    pub catalog: String,
    /// Where table files go: empty = `data_dir/warehouse`; `s3://bucket/prefix` (see
    /// `[lake.s3]`); or a local directory. Used when a table is created; existing tables
    /// keep their location.
    pub warehouse: String,
    /// How to reach S3 for `s3://` warehouses.
    pub s3: S3Config,
    /// How to talk to a REST catalog (`catalog = "http://…"`).
    pub rest: RestConfig,
    /// Compaction, snapshot expiry, orphan cleaning and retention.
    pub maintenance: MaintenanceConfig,
    /// Commit at least this often while data flows.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Commit as soon as this many rows are buffered.
    pub commit_rows: usize,
    /// Clean tables writes may create in all; a point of a new measurement past it is a
    /// reject naming this key.
    pub max_tables: usize,
    /// Columns (tags and fields) a clean table may have; a point adding more is a reject.
    pub max_columns: usize,
}

impl Default for LakeConfig {
    fn default() -> Self {
        LakeConfig {
            data_dir: PathBuf::from("pitwall-data"),
            catalog: String::new(),
            warehouse: String::new(),
            s3: S3Config::default(),
            rest: RestConfig::default(),
            maintenance: MaintenanceConfig::default(),
            commit_interval: Duration::from_secs(5),
            commit_rows: 200_000,
            max_tables: 500,
            max_columns: 500,
        }
    }
}

impl LakeConfig {
    /// A lake in `dir` for tests.
    pub fn test_config(dir: &Path) -> Self {
        LakeConfig {
            data_dir: dir.to_owned(),
            commit_interval: Duration::from_millis(200),
            commit_rows: 10_000,
            ..LakeConfig::default()
        }
    }

    /// Checks `catalog` and `warehouse` name something pitwall can use.
    pub fn validate(&self) -> Result<()> {
        for (key, value) in [
            ("max-tables", self.max_tables),
            ("max-columns", self.max_columns),
        ] {
            if value == 0 {
                return Err(Error::Config {
                    key,
                    message: "is 0; use a positive count (default 500)".into(),
                });
            }
        }
        let c = &self.catalog;
        if !(c.is_empty()
            || c.starts_with("postgres://")
            || c.starts_with("postgresql://")
            || c.starts_with("sqlite:")
            || rest::is_rest(c))
        {
            return Err(Error::Config {
                key: "catalog",
                message: format!(
                    "{:?} is not a catalog pitwall knows: use postgres://user:password@host:5432/database for the SQL catalog on PostgreSQL, http://host:port for an Iceberg REST catalog, sqlite:PATH, or leave it empty for the SQLite file in data-dir",
                    redact_password(c)
                ),
            });
        }
        let w = &self.warehouse;
        if w.contains("://") && !w.starts_with("file://") && storage::split_s3(w).is_none() {
            return Err(Error::Config {
                key: "warehouse",
                message: format!(
                    "{w:?} is not a location pitwall can write: use s3://bucket/prefix, a local directory, or leave it empty for data-dir/warehouse"
                ),
            });
        }
        Ok(())
    }

    /// Whether the catalog is the embedded SQLite file in `data_dir`.
    pub fn is_embedded_catalog(&self) -> bool {
        self.catalog.is_empty()
    }

    /// Where the catalog and the tables are, in words, for logs and errors.
    pub fn describe(&self) -> String {
        let catalog = if self.catalog.is_empty() {
            format!("{}", self.data_dir.join("catalog.db").display())
        } else {
            redact_password(&self.catalog)
        };
        let warehouse = if self.warehouse.is_empty() && rest::is_rest(&self.catalog) {
            "chosen by the catalog".to_owned()
        } else if self.warehouse.is_empty() {
            format!("{}", self.data_dir.join("warehouse").display())
        } else {
            self.warehouse.clone()
        };
        format!("catalog {catalog}, warehouse {warehouse}")
    }
}

/// `postgres://user:secret@host/db` as `postgres://user:***@host/db`.
pub fn redact_password(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(s), Some(at)) if at > s => match uri[s + 3..at].find(':') {
            Some(colon) => format!("{}:***{}", &uri[..s + 3 + colon], &uri[at..]),
            None => uri.to_owned(),
        },
        _ => uri.to_owned(),
    }
}

/// Name of the catalog in the SQL catalog's tables; readers must use the same.
pub const CATALOG_NAME: &str = "pitwall";

/// An open lake: the catalog and the warehouse.
#[derive(Debug, Clone)]
pub struct Lake {
    catalog: Arc<dyn Catalog>,
    config: LakeConfig,
    warehouse: String,
    catalog_uri: String,
    pointer: commit::CatalogPointer,
    /// Tables as last loaded for readers, by identifier: a query whose table is still
    /// at the same metadata location reuses it (and the manifests it has decoded).
    readers: Arc<std::sync::Mutex<HashMap<TableIdent, Table>>>,
}

/// Manifests and manifest lists a table kept for readers holds decoded, at most.
const READER_CACHE_BYTES: u64 = 4 << 20;

impl Lake {
    /// Opens the lake in `config.data_dir`, creating the catalog, the namespaces and
    /// the fixed tables on first use.
    pub async fn open(config: LakeConfig) -> Result<Lake> {
        config.validate()?;
        let dir = &config.data_dir;
        let data_dir = |dir: &Path| -> Result<PathBuf> {
            std::fs::create_dir_all(dir).map_err(|error| Error::DataDir {
                path: dir.to_owned(),
                error,
            })?;
            dir.canonicalize().map_err(|error| Error::DataDir {
                path: dir.to_owned(),
                error,
            })
        };
        let rest = rest::is_rest(&config.catalog);
        let uses_dir = config.catalog.is_empty() || (config.warehouse.is_empty() && !rest);
        let dir = if uses_dir {
            data_dir(dir)?
        } else {
            dir.clone()
        };
        let warehouse = if rest && config.warehouse.is_empty() {
            String::new()
        } else if config.warehouse.is_empty() {
            std::fs::create_dir_all(dir.join("warehouse")).map_err(|error| Error::DataDir {
                path: dir.clone(),
                error,
            })?;
            format!("file://{}", dir.join("warehouse").display())
        } else if storage::split_s3(&config.warehouse).is_some() {
            config.warehouse.trim_end_matches('/').to_owned()
        } else {
            let local = PathBuf::from(config.warehouse.trim_start_matches("file://"));
            format!("file://{}", data_dir(&local)?.display())
        };
        let storage = Arc::new(storage::LakeStorageFactory {
            s3: config.s3.clone(),
        });
        let (catalog, pointer, catalog_uri): (Arc<dyn Catalog>, _, _) = if rest {
            let (catalog, committer) =
                rest::connect(&config.catalog, &config.rest, storage).await?;
            (
                Arc::new(catalog),
                commit::CatalogPointer::Rest(committer),
                config.catalog.clone(),
            )
        } else {
            let (catalog_uri, postgres) = if config.catalog.is_empty() {
                (
                    format!("sqlite:{}?mode=rwc", dir.join("catalog.db").display()),
                    false,
                )
            } else if config.catalog.starts_with("postgres://")
                || config.catalog.starts_with("postgresql://")
            {
                (config.catalog.clone(), true)
            } else {
                (config.catalog.clone(), false)
            };
            let unreachable = |e: &dyn std::fmt::Display| {
                Error::Catalog(format!(
                    "cannot open the catalog at {}: {e}; check that the database is running and reachable, and the user and password",
                    redact_password(&catalog_uri)
                ))
            };
            sqlx::any::install_default_drivers();
            let catalog = SqlCatalogBuilder::default()
                .uri(&catalog_uri)
                .warehouse_location(&warehouse)
                .sql_bind_style(if postgres {
                    SqlBindStyle::DollarNumeric
                } else {
                    SqlBindStyle::QMark
                })
                // SQLite: one connection, as SQLite serializes writers anyway and this avoids
                // lock errors.
                .prop("pool.max-connections", if postgres { "4" } else { "1" })
                .with_storage_factory(storage)
                .load(CATALOG_NAME, HashMap::new())
                .await
                .map_err(|e| unreachable(&e))?;
            let pool = sqlx::any::AnyPoolOptions::new()
                .max_connections(2)
                .connect(&catalog_uri)
                .await
                .map_err(|e| unreachable(&e))?;
            let pointer = commit::CatalogPointer::Sql(commit::SqlPointer {
                pool,
                catalog_name: CATALOG_NAME.to_owned(),
                dollar_placeholders: postgres,
            });
            (Arc::new(catalog), pointer, catalog_uri)
        };
        let lake = Lake {
            pointer,
            catalog,
            config: LakeConfig {
                data_dir: dir.clone(),
                ..config
            },
            warehouse,
            catalog_uri,
            readers: Arc::default(),
        };
        for ns in tables::NAMESPACES {
            let ident = NamespaceIdent::new(ns.to_owned());
            if !lake.catalog.namespace_exists(&ident).await? {
                lake.catalog
                    .create_namespace(&ident, HashMap::new())
                    .await?;
            }
        }
        for t in Fixed::ALL {
            let ident = t.ident();
            if !lake.catalog.table_exists(&ident).await? {
                let schema = t.schema();
                let spec = tables::day_partition(&schema, t.time_column())?;
                lake.create_table(&ident, schema, spec).await?;
            } else {
                lake.add_missing_columns(&ident, &t.schema()).await?;
            }
        }
        Ok(lake)
    }

    /// A lake made by an earlier pitwall gets the optional columns added since
    /// (`anomalies.events.peak`); readers see them as null in older rows.
    async fn add_missing_columns(
        &self,
        ident: &TableIdent,
        wanted: &iceberg::spec::Schema,
    ) -> Result<()> {
        let table = commit::load_table(self.catalog.as_ref(), ident).await?;
        let schema = Arc::clone(table.metadata().current_schema());
        let missing: Vec<_> = wanted
            .as_struct()
            .fields()
            .iter()
            .filter(|f| !f.required && schema.field_by_name(&f.name).is_none())
            .map(|f| AddColumn::optional(&f.name, (*f.field_type).clone()))
            .collect();
        self.add_columns(table, missing).await?;
        Ok(())
    }

    /// Adds `missing` columns to `table` in one schema update (none: the table as is).
    async fn add_columns(&self, table: Table, missing: Vec<AddColumn>) -> Result<Table> {
        if missing.is_empty() {
            return Ok(table);
        }
        let tx = Transaction::new(&table);
        let mut action = tx.update_schema();
        for col in missing {
            action = action.add_column(col);
        }
        Ok(action.apply(tx)?.commit(self.catalog.as_ref()).await?)
    }

    async fn create_table(
        &self,
        ident: &TableIdent,
        schema: iceberg::spec::Schema,
        spec: iceberg::spec::UnboundPartitionSpec,
    ) -> Result<Table> {
        let creation = TableCreation::builder()
            .name(ident.name().to_owned())
            .schema(schema)
            .partition_spec(spec)
            .properties([
                ("write.format.default".to_owned(), "parquet".to_owned()),
                (
                    "write.parquet.compression-codec".to_owned(),
                    "zstd".to_owned(),
                ),
            ])
            .build();
        Ok(self
            .catalog
            .create_table(ident.namespace(), creation)
            .await?)
    }

    /// The catalog, for readers such as DataFusion.
    pub fn catalog(&self) -> Arc<dyn Catalog> {
        Arc::clone(&self.catalog)
    }

    /// The settings the lake was opened with (`data_dir` made absolute).
    pub fn config(&self) -> &LakeConfig {
        &self.config
    }

    /// The warehouse location (`file:///…`).
    pub fn warehouse(&self) -> &str {
        &self.warehouse
    }

    /// The catalog's database URI, for other readers (PyIceberg's `SqlCatalog`); it
    /// holds the password of a PostgreSQL catalog, if the URI has one.
    pub fn catalog_uri(&self) -> &str {
        &self.catalog_uri
    }

    /// Appends data files to `table` in one snapshot, fenced by `claim`; see [`Claim`].
    /// `table` should be freshly loaded (it is the first attempt's base; a lost race
    /// reloads). `properties` go into the snapshot summary beside the offsets.
    pub async fn append_fenced(
        &self,
        table: Table,
        files: Vec<iceberg::spec::DataFile>,
        claim: &Claim,
        properties: &HashMap<String, String>,
    ) -> Result<()> {
        commit::fenced_append(
            self.catalog.as_ref(),
            &self.pointer,
            table,
            files,
            claim,
            properties,
        )
        .await
    }

    /// The bus offsets each table's newest snapshot records, by table name.
    pub async fn committed_offsets(&self) -> Result<BTreeMap<String, BTreeMap<PartitionId, i64>>> {
        Ok(self
            .committed_progress()
            .await?
            .into_iter()
            .map(|(t, p)| (t, p.offsets))
            .collect())
    }

    /// The offsets and processor progress each table's newest snapshot records, by
    /// table name: what [`ResumePlan::from_lake`] plans from.
    pub async fn committed_progress(&self) -> Result<BTreeMap<String, TableProgress>> {
        let mut idents: Vec<TableIdent> = Fixed::ALL.iter().map(|f| f.ident()).collect();
        idents.extend(
            self.catalog
                .list_tables(&NamespaceIdent::new("clean".to_owned()))
                .await?,
        );
        let mut out = BTreeMap::new();
        for ident in idents {
            let table = commit::load_table(self.catalog.as_ref(), &ident).await?;
            out.insert(
                ident.to_string(),
                TableProgress {
                    offsets: committed_offsets(&table).unwrap_or_default(),
                    progress: committed_progress(&table),
                },
            );
        }
        Ok(out)
    }

    /// How to take up `partition`: see [`ResumePlan`].
    pub async fn resume_plan(&self, partition: &PartitionId) -> Result<ResumePlan> {
        Ok(ResumePlan::from_lake(
            &self.committed_progress().await?,
            partition,
        ))
    }

    /// Loads a table.
    pub async fn table(&self, ident: &TableIdent) -> Result<Table> {
        commit::load_table(self.catalog.as_ref(), ident).await
    }

    /// Every table and its current metadata location, in one read of the catalog; `None`
    /// where the catalog has no such read (a REST catalog: each load asks it). Tables
    /// kept for readers that are no longer listed are let go.
    pub async fn table_locations(&self) -> Result<Option<HashMap<TableIdent, String>>> {
        let commit::CatalogPointer::Sql(sql) = &self.pointer else {
            return Ok(None);
        };
        let locations = sql.locations().await?;
        self.readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|ident, _| locations.contains_key(ident));
        Ok(Some(locations))
    }

    /// `ident` for reading, at `location` (from [`Lake::table_locations`]): the table
    /// kept from an earlier read if it is still there, else loaded from the catalog and
    /// kept. Without a location it is loaded, and kept, as the catalog has it now.
    pub async fn table_for_reading(
        &self,
        ident: &TableIdent,
        location: Option<&str>,
    ) -> Result<Table> {
        if let Some(location) = location {
            let kept = self
                .readers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(ident)
                .filter(|t| t.metadata_location() == Some(location))
                .cloned();
            if let Some(table) = kept {
                return Ok(table);
            }
        }
        let loaded = commit::load_table(self.catalog.as_ref(), ident).await?;
        // Rebuilt to bound the manifests it keeps decoded (iceberg's default is 32 MiB a
        // table), on the runtime of the reader that loads it (the query threads).
        let table = match iceberg::Runtime::try_current() {
            Ok(runtime) => {
                let mut builder = Table::builder()
                    .identifier(loaded.identifier().clone())
                    .metadata(loaded.metadata_ref())
                    .file_io(loaded.file_io().clone())
                    .readonly(true)
                    .cache_size_bytes(READER_CACHE_BYTES)
                    .runtime(runtime);
                if let Some(l) = loaded.metadata_location() {
                    builder = builder.metadata_location(l);
                }
                builder.build()?
            }
            Err(_) => loaded,
        };
        self.readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(ident.clone(), table.clone());
        Ok(table)
    }

    /// The field types of every clean table, to seed the processor's schema registry
    /// so a restart keeps the column types it had.
    pub async fn clean_schemas(&self) -> Result<Vec<(String, Vec<(String, FieldType)>)>> {
        let ns = NamespaceIdent::new("clean".to_owned());
        let mut out = Vec::new();
        for ident in self.catalog.list_tables(&ns).await? {
            let table = commit::load_table(self.catalog.as_ref(), &ident).await?;
            let schema = table.metadata().current_schema();
            let fields = schema
                .as_struct()
                .fields()
                .iter()
                .filter(|f| f.name != "time")
                .filter_map(|f| {
                    // Tags are strings too; only the registry's field entries matter, and a
                    // string type is what a tag-named field would have to be anyway.
                    tables::clean_field_type(&f.field_type).map(|t| (f.name.clone(), t))
                })
                .collect();
            out.push((ident.name().to_owned(), fields));
        }
        Ok(out)
    }

    /// Makes sure `clean.<measurement>` exists and has a column for every tag and field,
    /// creating the table or adding columns as needed.
    pub async fn ensure_clean_table(
        &self,
        measurement: &str,
        tags: &std::collections::BTreeSet<String>,
        fields: &BTreeMap<String, FieldType>,
    ) -> Result<Table> {
        let ident = tables::clean_ident(measurement);
        if !self.catalog.table_exists(&ident).await? {
            let schema = tables::clean_schema(tags, fields.iter().map(|(k, v)| (k, *v)))?;
            let spec = tables::day_partition(&schema, "time")?;
            match self.create_table(&ident, schema, spec).await {
                Ok(t) => return Ok(t),
                // Another process created it first: fall through and evolve it.
                Err(_) if self.catalog.table_exists(&ident).await? => {}
                Err(e) => return Err(e),
            }
        }
        let table = commit::load_table(self.catalog.as_ref(), &ident).await?;
        let schema = Arc::clone(table.metadata().current_schema());
        let mut missing = Vec::new();
        for t in tags {
            match schema.field_by_name(t) {
                None => missing.push(AddColumn::optional(
                    t,
                    Type::Primitive(iceberg::spec::PrimitiveType::String),
                )),
                Some(f)
                    if *f.field_type != Type::Primitive(iceberg::spec::PrimitiveType::String) =>
                {
                    return Err(Error::Incompatible {
                        table: format!("clean.{measurement}"),
                        column: t.clone(),
                        found: f.field_type.to_string(),
                        wanted: "tag (string)".into(),
                    });
                }
                Some(_) => {}
            }
        }
        for (f, ft) in fields {
            match schema.field_by_name(f) {
                None => missing.push(AddColumn::optional(
                    f,
                    Type::Primitive(tables::field_type(*ft)),
                )),
                Some(col)
                    if tables::clean_field_type(&col.field_type) != Some(*ft)
                        && !(matches!(ft, FieldType::UInt)
                            && tables::clean_field_type(&col.field_type)
                                == Some(FieldType::Int)) =>
                {
                    return Err(Error::Incompatible {
                        table: format!("clean.{measurement}"),
                        column: f.clone(),
                        found: col.field_type.to_string(),
                        wanted: format!("{ft:?}").to_lowercase(),
                    });
                }
                Some(_) => {}
            }
        }
        self.add_columns(table, missing).await
    }
}
