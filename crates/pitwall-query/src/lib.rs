//! SQL over the lake with DataFusion.
//!
//! [`Query`] registers the lake's Iceberg catalog with a DataFusion session as the
//! default catalog, so the two-part names of DESIGN.md resolve as written:
//! `SELECT * FROM clean.car`, `metrics.windows`, `anomalies.events`,
//! `quarantine.rejects`. Results come back as Arrow batches and can be printed as an
//! aligned table, CSV or JSON lines ([`Format`]).

use std::sync::Arc;

use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use pitwall_lake::Lake;

mod band_join;
mod engine;
mod parse;
pub mod postgres;
mod predicate;
mod rules;
mod run_aggregate;
mod scan;

pub use datafusion::common::ParamValues;
pub use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
pub use engine::{Described, Engine, LakeTableInfo, Limits, guard};

/// Query errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SQL was wrong or failed; DataFusion's message says where. Not a `source`:
    /// DataFusion's message already holds its chain, which would print twice.
    #[error("{0}")]
    Sql(datafusion::error::DataFusionError),
    /// The lake's catalog could not be read.
    #[error("reading the lake's catalog: {0}")]
    Catalog(#[from] iceberg::Error),
    /// Printing the result failed.
    #[error("formatting the result: {0}")]
    Format(#[from] arrow::error::ArrowError),
    /// A statement that would change something, sent where only reading is allowed.
    #[error("only reading is allowed here (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN): {0}")]
    ReadOnly(String),
    /// The query ran past its time limit and was stopped.
    #[error(
        "the query ran past its time limit of {0:?} and was stopped; narrow it (a time range, fewer columns) or raise server.query-timeout"
    )]
    Timeout(Duration),
    /// Every place for a running query stayed taken while this one waited.
    #[error(
        "{running} queries are running and none finished within {waited:?}; retry shortly (server.query-concurrency sets how many run at once)"
    )]
    Busy {
        /// The concurrency limit.
        running: usize,
        /// How long this query waited.
        waited: Duration,
    },
    /// The SQL text is longer than allowed.
    #[error("the SQL is {size} bytes, over the limit of {limit} (server.query-max-sql-bytes)")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The parser gave up: the SQL is of a shape whose parse takes exponential time.
    #[error(
        "the SQL is too complex to parse (it used up the parser's budget of {fuel} steps, far beyond what a query of its length needs); look for an unclosed bracket or a dangling `.`"
    )]
    TooComplex {
        /// The steps it was allowed.
        fuel: u64,
    },
    /// Expressions, subqueries or set operations nest deeper than allowed.
    #[error(
        "the SQL nests expressions, subqueries or UNIONs more than {limit} deep (server.query-max-depth); write long sums and chains as aggregates or IN lists"
    )]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// The query needed more memory than the pool all queries share.
    #[error("the query needed more than the {} MiB all queries share (server.query-memory); narrow it (a time range, fewer groups or distinct values) or raise server.query-memory: {detail}", limit / (1024 * 1024))]
    Memory {
        /// The pool's size in bytes.
        limit: usize,
        /// DataFusion's account of what asked for it.
        detail: String,
    },
    /// The query engine could not be set up or its thread failed.
    #[error("query engine: {0}")]
    Setup(String),
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Error::Sql(e)
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to print a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// An aligned text table.
    #[default]
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per row, one per line.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "table" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            other => Err(format!("unknown format {other:?}; use table, csv or json")),
        }
    }
}

/// A DataFusion session over the lake.
pub struct Query {
    ctx: SessionContext,
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("session", &self.ctx.session_id())
            .finish()
    }
}

impl Query {
    /// A session whose default catalog is the lake (loaded as it is now).
    pub async fn new(lake: &Lake) -> Result<Self> {
        let provider = scan::LakeCatalog::try_new(lake).await?;
        let ctx = SessionContext::new_with_state(session_state(None));
        ctx.register_catalog(pitwall_lake::CATALOG_NAME, Arc::new(provider));
        Ok(Query { ctx })
    }

    /// Runs `sql` and collects the result.
    pub async fn sql(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        let df = self.ctx.sql(sql).await?;
        Ok(df.collect().await?)
    }

    /// A session like [`Query::new`] whose memory pool and spill files are `env`'s;
    /// for PostgreSQL's clients it also has `pg_catalog` and PostgreSQL's functions.
    pub(crate) async fn with_env(
        lake: &Lake,
        env: Arc<RuntimeEnv>,
        flavor: Flavor,
    ) -> Result<Self> {
        let provider = scan::LakeCatalog::try_new(lake).await?;
        let ctx = match flavor {
            Flavor::Plain => SessionContext::new_with_state(session_state(Some(env))),
            Flavor::Postgres => SessionContext::new_with_state(postgres::session_state(env)),
        };
        ctx.register_catalog(pitwall_lake::CATALOG_NAME, Arc::new(provider));
        if flavor == Flavor::Postgres {
            postgres::setup(&ctx)?;
        }
        Ok(Query { ctx })
    }

    /// Plans a parsed statement, refusing one that would change anything.
    pub(crate) async fn plan_read_only(
        &self,
        statement: datafusion::sql::parser::Statement,
    ) -> Result<LogicalPlan> {
        let plan = self.ctx.state().statement_to_plan(statement).await?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| Error::ReadOnly(e.strip_backtrace()))?;
        Ok(plan)
    }

    /// Runs a plan from [`Query::plan_read_only`], collecting at most `max_rows` rows.
    pub(crate) async fn run_plan(&self, plan: LogicalPlan, max_rows: usize) -> Result<Answer> {
        let df = self.ctx.execute_logical_plan(plan).await?;
        let stream = df.execute_stream().await?;
        collect_limited(stream, max_rows).await
    }

    /// The DataFusion session, for callers that need more.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }
}

/// Which session a query gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// The lake's tables and `information_schema`.
    Plain,
    /// Also `pg_catalog` and PostgreSQL's functions, for the wire protocol's clients.
    Postgres,
}

/// The answer to a read-only query.
#[derive(Debug)]
pub struct Answer {
    /// The result's columns.
    pub schema: SchemaRef,
    /// The rows, at most the row limit.
    pub batches: Vec<RecordBatch>,
    /// Rows in `batches`.
    pub rows: usize,
    /// True when the query had more rows than the limit.
    pub truncated: bool,
}

async fn collect_limited(mut stream: SendableRecordBatchStream, max_rows: usize) -> Result<Answer> {
    let schema = stream.schema();
    let (mut batches, mut rows, mut truncated) = (Vec::new(), 0usize, false);
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let room = max_rows - rows;
        if batch.num_rows() > room {
            truncated = true;
            if room > 0 {
                batches.push(batch.slice(0, room));
                rows += room;
            }
            break;
        }
        rows += batch.num_rows();
        batches.push(batch);
    }
    Ok(Answer {
        schema,
        batches,
        rows,
        truncated,
    })
}

/// Renders `batches` in `format`.
pub fn render(batches: &[RecordBatch], format: Format) -> Result<String> {
    match format {
        Format::Table => Ok(arrow::util::pretty::pretty_format_batches(batches)?.to_string()),
        Format::Csv => {
            let mut out = Vec::new();
            {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out);
                for b in batches {
                    w.write(b)?;
                }
            }
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
        Format::Json => {
            let mut out = Vec::new();
            {
                let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
                for b in batches {
                    w.write(b)?;
                }
                w.finish()?;
            }
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
    }
}

/// DataFusion's session state with pitwall's settings and its band join (see
/// [`band_join`]); its memory pool and spill files are `env`'s when given.
pub(crate) fn session_state(env: Option<Arc<RuntimeEnv>>) -> datafusion::execution::SessionState {
    let builder = datafusion::execution::SessionStateBuilder::new()
        .with_config(session_config())
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(band_join::BandJoinRule))
        .with_physical_optimizer_rule(Arc::new(run_aggregate::RunAggregateRule));
    match env {
        Some(env) => builder.with_runtime_env(env),
        None => builder,
    }
    .build()
}

pub(crate) fn session_config() -> SessionConfig {
    SessionConfig::new()
        .with_default_catalog_and_schema(pitwall_lake::CATALOG_NAME, "clean")
        .with_information_schema(true)
}

/// Number of rows in `batches`.
pub fn row_count(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}
