//! Queries that cannot hurt the process that runs them.
//!
//! `pitwall up` runs the HTTP API and the pipeline in one process, so a query that
//! overflows a stack, takes all memory or all threads stops ingestion too. An
//! [`Engine`] runs every query it is given inside [`Limits`]:
//!
//! - the SQL's size and its nesting depth are checked before anything is planned (the
//!   planner, the optimizer and even dropping a deep expression tree recurse);
//! - planning and execution run on threads of their own, never the pipeline's, whose
//!   stacks are far deeper than anything the depth limit lets through;
//! - one memory pool is shared by every query; operators that can spill (sorts,
//!   grouped aggregates, joins) spill into the data directory's `tmp/`, and a query
//!   that still needs more fails with the setting named;
//! - a fixed number of queries run at once; the rest wait briefly, then are turned away
//!   as busy;
//! - the time limit covers planning as well as execution; a query past it is answered
//!   at once and abandoned (it keeps its place in the concurrency limit until its
//!   thread lets go, so abandoned queries cannot pile up).

use std::num::NonZeroUsize;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ParamValues;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{GreedyMemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::{Expr as LogicalExpr, LogicalPlan};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    Expr, Query as SqlQuery, SetExpr, Statement as SqlStatement, TableFactor, Visit, Visitor,
};
use pitwall_lake::Lake;
use std::future::Future;
use tokio::sync::Semaphore;

use crate::{Answer, Error, Flavor, Query, Result};

/// A table of the lake: its schema (namespace), its name and, when asked, its columns.
pub type LakeTableInfo = (String, String, Option<arrow::datatypes::SchemaRef>);

/// What a statement answers with, planned but not run ([`Engine::describe_postgres`]).
#[derive(Debug, Clone)]
pub struct Described {
    /// The result's columns.
    pub schema: arrow::datatypes::SchemaRef,
    /// The parameters' types, `$1` first; `None` where the query does not say.
    pub params: Vec<Option<DataType>>,
}

/// The parameters' types of `plan`, `$1` first: DataFusion's inference, then a cast
/// around the placeholder (`$1::int`) where it has none.
fn parameter_types(plan: &LogicalPlan) -> Result<Vec<Option<DataType>>> {
    let mut types: Vec<(usize, Option<DataType>)> = plan
        .get_parameter_types()?
        .into_iter()
        .filter_map(|(id, t)| id.strip_prefix('$')?.parse().ok().map(|n: usize| (n, t)))
        .collect();
    types.sort_by_key(|(n, _)| *n);
    let mut casts = std::collections::HashMap::new();
    plan.apply(|node| {
        for e in node.expressions() {
            e.apply(|e| {
                if let LogicalExpr::Cast(c) = e
                    && let LogicalExpr::Placeholder(p) = c.expr.as_ref()
                {
                    casts
                        .entry(p.id.clone())
                        .or_insert_with(|| c.data_type.clone());
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    let count = types.last().map_or(0, |(n, _)| *n);
    let mut out = vec![None; count];
    for (n, t) in types {
        out[n - 1] = t.or_else(|| casts.get(&format!("${n}")).cloned());
    }
    Ok(out)
}

/// `sql` parsed in the plain dialect within the parse budget and the depth limit.
fn plain(q: &Query, sql: &str, limits: &Limits) -> Result<DfStatement> {
    let limit = q.ctx.state().config().options().sql_parser.recursion_limit;
    let statement = crate::parse::statement(sql, limit)?;
    check_depth(&statement, limits.max_depth)?;
    Ok(statement)
}

impl Described {
    /// What `plan` answers with and the types of its parameters.
    fn of(plan: &LogicalPlan) -> Result<Described> {
        Ok(Described {
            schema: Arc::new(plan.schema().as_arrow().clone()),
            params: parameter_types(plan)?,
        })
    }
}

/// `plan` with `params` in place of its `$1`, `$2`, … (as it is when it has none).
fn with_params(plan: LogicalPlan, params: &ParamValues) -> Result<LogicalPlan> {
    let has_params = plan.get_parameter_types().is_ok_and(|t| !t.is_empty());
    Ok(if has_params {
        plan.replace_params_with_values(params)?
    } else {
        plan
    })
}

/// Stack of each query thread. Only the pages a query touches are ever committed, so
/// a deep stack costs address space, not memory; 256 MiB is many times what the
/// largest SQL within the size and depth limits needs (checked by the tests at the
/// limits).
const QUERY_THREAD_STACK: usize = 256 * 1024 * 1024;

/// Spill files all queries may hold at once, as a multiple of the memory pool: a query
/// that would fill the disk fails instead.
const SPILL_PER_MEMORY: u64 = 8;

/// Limits every query of an [`Engine`] runs within (`[server]` in `pitwall.toml`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Stop a query after this long, planning included (`server.query-timeout`).
    pub timeout: Duration,
    /// Return at most this many rows (`server.query-max-rows`).
    pub max_rows: usize,
    /// Memory all running queries share, in bytes (`server.query-memory`).
    pub memory: usize,
    /// Queries running at once (`server.query-concurrency`).
    pub concurrency: usize,
    /// How long a query waits for a place before it is turned away (`server.query-queue-timeout`).
    pub queue_timeout: Duration,
    /// Largest SQL text, in bytes (`server.query-max-sql-bytes`).
    pub max_sql_bytes: usize,
    /// Deepest nesting of expressions, subqueries and set operations (`server.query-max-depth`).
    pub max_depth: usize,
    /// Where spilling operators write their temporary files; `None` = the OS temp dir.
    pub spill_dir: Option<PathBuf>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(30),
            max_rows: 100_000,
            memory: 1024 * 1024 * 1024,
            concurrency: 4,
            queue_timeout: Duration::from_secs(5),
            max_sql_bytes: 256 * 1024,
            max_depth: 500,
            spill_dir: None,
        }
    }
}

/// Runs read-only queries over a lake within [`Limits`]; see the module docs.
#[derive(Clone)]
pub struct Engine {
    limits: Arc<Limits>,
    env: Arc<RuntimeEnv>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine with its own memory pool and place limit. The spill directory is
    /// created if it does not exist.
    pub fn new(limits: Limits) -> Result<Self> {
        let mode = match &limits.spill_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::Setup(format!(
                        "cannot create the spill directory {}: {e}",
                        dir.display()
                    ))
                })?;
                DiskManagerMode::Directories(vec![dir.clone()])
            }
            None => DiskManagerMode::OsTmpDirectory,
        };
        let pool = TrackConsumersPool::new(
            GreedyMemoryPool::new(limits.memory.max(1)),
            NonZeroUsize::new(3).expect("3 is not zero"),
        );
        let disk = DiskManagerBuilder::default()
            .with_mode(mode)
            .with_max_temp_directory_size(
                u64::try_from(limits.memory)
                    .unwrap_or(u64::MAX)
                    .saturating_mul(SPILL_PER_MEMORY),
            );
        let env = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(pool))
            .with_disk_manager_builder(disk)
            .build_arc()?;
        let permits = Arc::new(Semaphore::new(limits.concurrency.max(1)));
        Ok(Engine {
            limits: Arc::new(limits),
            env,
            permits,
        })
    }

    /// The limits this engine enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Runs `sql` over `lake` as a read-only query: DDL, DML (`INSERT`, `COPY`) and
    /// other statements (`SET`) are refused before anything runs; rows past the row
    /// limit are left out and the answer says so.
    pub async fn read_only(&self, lake: &Lake, sql: &str) -> Result<Answer> {
        check_size(sql, self.limits.max_sql_bytes)?;
        let sql = sql.to_owned();
        self.within_limits(lake, Flavor::Plain, move |q, limits| async move {
            let plan = q.plan_read_only(plain(&q, &sql, &limits)?).await?;
            q.run_plan(plan, limits.max_rows).await
        })
        .await
    }

    /// Plans `sql` (the HTTP API's dialect) without running it: the columns it answers
    /// with and its parameters' types (`$1`, `$2`, … in order; `None` where nothing in
    /// the query says). For Arrow Flight SQL's statements and prepared statements.
    pub async fn describe(&self, lake: &Lake, sql: &str) -> Result<Described> {
        check_size(sql, self.limits.max_sql_bytes)?;
        let sql = sql.to_owned();
        self.within_limits(lake, Flavor::Plain, move |q, limits| async move {
            let plan = q.plan_read_only(plain(&q, &sql, &limits)?).await?;
            Described::of(&plan)
        })
        .await
    }

    /// Runs `sql` (the HTTP API's dialect) with `params` for its `$1`, `$2`, …, planned
    /// against the lake as it is now.
    pub async fn run(&self, lake: &Lake, sql: &str, params: ParamValues) -> Result<Answer> {
        check_size(sql, self.limits.max_sql_bytes)?;
        let sql = sql.to_owned();
        self.within_limits(lake, Flavor::Plain, move |q, limits| async move {
            let plan = q.plan_read_only(plain(&q, &sql, &limits)?).await?;
            q.run_plan(with_params(plan, &params)?, limits.max_rows)
                .await
        })
        .await
    }

    /// The lake's tables as `(schema, table, columns)`, in order, in one session; the
    /// columns only `with_columns` (they load each table). For catalog listings.
    pub async fn tables(&self, lake: &Lake, with_columns: bool) -> Result<Vec<LakeTableInfo>> {
        self.within_limits(lake, Flavor::Plain, move |q, _| async move {
            let catalog = q
                .ctx
                .catalog(pitwall_lake::CATALOG_NAME)
                .ok_or_else(|| Error::Setup("the lake's catalog is not registered".into()))?;
            let mut schemas = catalog.schema_names();
            schemas.sort();
            let mut out = Vec::new();
            for name in schemas.into_iter().filter(|s| s != "information_schema") {
                let Some(schema) = catalog.schema(&name) else {
                    continue;
                };
                let mut tables = schema.table_names();
                tables.sort();
                for table in tables {
                    let columns = match with_columns {
                        true => schema.table(&table).await?.map(|t| t.schema()),
                        false => None,
                    };
                    out.push((name.clone(), table, columns));
                }
            }
            Ok(out)
        })
        .await
    }

    /// Parses SQL sent over the PostgreSQL wire protocol (PostgreSQL's dialect, the
    /// rewrites BI tools' catalog queries need) within the size, parse-budget and depth
    /// limits, on a query thread.
    pub async fn parse_postgres(&self, sql: &str) -> Result<Vec<SqlStatement>> {
        check_size(sql, self.limits.max_sql_bytes)?;
        let (sql, depth) = (sql.to_owned(), self.limits.max_depth);
        let parsed = runtime().spawn(async move {
            let limit = crate::session_config().options().sql_parser.recursion_limit;
            let statements = crate::parse::postgres_statements(&sql, limit)?;
            for s in &statements {
                check_statement_depth(s, depth)?;
            }
            Ok(statements)
        });
        within_time(parsed, self.limits.timeout).await
    }

    /// Plans a statement from [`Engine::parse_postgres`] without running it: the
    /// columns it answers with and the types of its parameters (`$1`, `$2`, … in order;
    /// `None` where nothing in the query says).
    pub async fn describe_postgres(
        &self,
        lake: &Lake,
        statement: SqlStatement,
    ) -> Result<Described> {
        self.within_limits(lake, Flavor::Postgres, move |q, _| async move {
            let plan = q
                .plan_read_only(DfStatement::Statement(Box::new(statement)))
                .await?;
            Described::of(&plan)
        })
        .await
    }

    /// Runs a statement from [`Engine::parse_postgres`] with its parameters, planned
    /// against the lake as it is now (a prepared statement sees new commits).
    pub async fn run_postgres(
        &self,
        lake: &Lake,
        statement: SqlStatement,
        params: ParamValues,
    ) -> Result<Answer> {
        self.within_limits(lake, Flavor::Postgres, move |q, limits| async move {
            let plan = q
                .plan_read_only(DfStatement::Statement(Box::new(statement)))
                .await?;
            q.run_plan(with_params(plan, &params)?, limits.max_rows)
                .await
        })
        .await
    }

    /// Runs `work` on a query thread with a session over `lake`, once a place is free,
    /// within the time limit; memory errors are said in terms of the setting.
    async fn within_limits<T, F, Fut>(&self, lake: &Lake, flavor: Flavor, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Query, Arc<Limits>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let permit = tokio::time::timeout(
            self.limits.queue_timeout,
            Arc::clone(&self.permits).acquire_owned(),
        )
        .await
        .map_err(|_| Error::Busy {
            running: self.limits.concurrency,
            waited: self.limits.queue_timeout,
        })?
        .map_err(|_| Error::Setup("the query engine is closed".into()))?;
        let (lake, limits, env) = (
            lake.clone(),
            Arc::clone(&self.limits),
            Arc::clone(&self.env),
        );
        let task = runtime().spawn(async move {
            let _permit = permit;
            let q = Query::with_env(&lake, env, flavor).await?;
            work(q, limits).await
        });
        within_time(task, self.limits.timeout)
            .await
            .map_err(|e| self.name_limits(e))
    }

    /// A DataFusion "resources exhausted" error, said in terms of the setting.
    fn name_limits(&self, e: Error) -> Error {
        match e {
            Error::Sql(df) => match df.find_root() {
                DataFusionError::ResourcesExhausted(detail) => Error::Memory {
                    limit: self.limits.memory,
                    detail: detail.clone(),
                },
                _ => Error::Sql(df),
            },
            other => other,
        }
    }
}

/// The answer of a task on the query threads, or a timeout after `limit` (the task is
/// then abandoned: aborted at its next await).
async fn within_time<T>(
    mut task: tokio::task::JoinHandle<Result<T>>,
    limit: Duration,
) -> Result<T> {
    match tokio::time::timeout(limit, &mut task).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(joined)) => Err(Error::Setup(format!("the query's thread failed: {joined}"))),
        Err(_) => {
            task.abort();
            Err(Error::Timeout(limit))
        }
    }
}

/// The threads every engine's queries run on: as many as there are cores, with deep
/// stacks, apart from the runtime that runs the pipeline and the server.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map_or(2, NonZeroUsize::get))
            .thread_name("pitwall-query")
            .thread_stack_size(QUERY_THREAD_STACK)
            .enable_all()
            .build()
            .expect("the query threads could not be started")
    })
}

/// The checks a query passes before it is planned (size, then parse and depth), on a
/// thread with the query threads' stack, as the engine runs them: for the fuzz target.
#[doc(hidden)]
pub fn guard(sql: &str, limits: &Limits) -> Result<()> {
    check_size(sql, limits.max_sql_bytes)?;
    let (sql, depth) = (sql.to_owned(), limits.max_depth);
    std::thread::Builder::new()
        .stack_size(QUERY_THREAD_STACK)
        .spawn(move || {
            let limit = crate::session_config().options().sql_parser.recursion_limit;
            let statement = crate::parse::statement(&sql, limit)?;
            check_depth(&statement, depth)
        })
        .map_err(|e| Error::Setup(format!("cannot start a query thread: {e}")))?
        .join()
        // A panic is what the fuzzer looks for: let it through.
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn check_size(sql: &str, limit: usize) -> Result<()> {
    if sql.len() > limit {
        return Err(Error::TooLarge {
            size: sql.len(),
            limit,
        });
    }
    Ok(())
}

/// Fails when expressions, subqueries, joins' table factors or set operations
/// (`UNION` chains) nest deeper than `limit`.
fn check_depth(statement: &DfStatement, limit: usize) -> Result<()> {
    match statement {
        DfStatement::Statement(s) => check_statement_depth(s, limit),
        DfStatement::Explain(e) => match e.statement.as_ref() {
            DfStatement::Statement(s) => check_statement_depth(s, limit),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// [`check_depth`] for a statement of sqlparser's (the PostgreSQL dialect's).
fn check_statement_depth(statement: &SqlStatement, limit: usize) -> Result<()> {
    let mut v = Depth {
        depth: 0,
        max: 0,
        limit,
    };
    match statement.visit(&mut v) {
        ControlFlow::Break(()) => Err(Error::TooDeep { limit }),
        ControlFlow::Continue(()) => Ok(()),
    }
}

struct Depth {
    depth: usize,
    max: usize,
    limit: usize,
}

impl Depth {
    fn enter(&mut self, by: usize) -> ControlFlow<()> {
        self.depth += by;
        self.max = self.max.max(self.depth);
        if self.depth > self.limit {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

impl Visitor for Depth {
    type Break = ();

    fn pre_visit_query(&mut self, query: &SqlQuery) -> ControlFlow<()> {
        // A chain of set operations is a left-deep tree the visitor walks without
        // calling back; it counts as deep as it is long.
        let chain = set_chain(&query.body, self.limit + 1);
        self.enter(1 + chain)
    }

    fn post_visit_query(&mut self, query: &SqlQuery) -> ControlFlow<()> {
        self.depth -= 1 + set_chain(&query.body, self.limit + 1);
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.enter(1)
    }

    fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, _: &TableFactor) -> ControlFlow<()> {
        self.enter(1)
    }

    fn post_visit_table_factor(&mut self, _: &TableFactor) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }
}

/// How many set operations are nested in `body` (without recursing on the Rust stack
/// along the left spine, where the parser puts a chain), counted up to `cap`.
fn set_chain(body: &SetExpr, cap: usize) -> usize {
    let mut n = 0;
    let mut at = body;
    while let SetExpr::SetOperation { left, right, .. } = at {
        n += 1;
        if n >= cap {
            return cap;
        }
        // A parenthesised right side nests as a query, which the visitor counts itself.
        if let SetExpr::SetOperation { .. } = right.as_ref() {
            n += set_chain(right, cap - n);
        }
        at = left;
    }
    n.min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    fn depth_of(sql: &str, limit: usize) -> Result<()> {
        let state = SessionContext::new().state();
        let statement = state
            .sql_to_statement(sql, &"generic".parse().unwrap())
            .unwrap();
        check_depth(&statement, limit)
    }

    #[test]
    fn depth_counts_expressions_subqueries_and_unions() {
        let sum = |n: usize| format!("SELECT {}", vec!["1"; n].join("+"));
        // n terms make a left-deep tree n-1 operators deep, plus the leaf and the query.
        assert!(depth_of(&sum(10), 11).is_ok());
        assert!(matches!(
            depth_of(&sum(10), 10),
            Err(Error::TooDeep { limit: 10 })
        ));
        let unions = |n: usize| vec!["SELECT 1"; n].join(" UNION ALL ");
        assert!(depth_of(&unions(5), 10).is_ok());
        assert!(depth_of(&unions(50), 10).is_err());
        let nested = "SELECT * FROM (SELECT * FROM (SELECT * FROM (SELECT 1)))";
        assert!(depth_of(nested, 20).is_ok());
        assert!(depth_of(nested, 5).is_err());
    }

    #[test]
    fn size_is_checked_in_bytes() {
        assert!(check_size("SELECT 1", 8).is_ok());
        assert!(matches!(
            check_size("SELECT 12", 8),
            Err(Error::TooLarge { size: 9, limit: 8 })
        ));
    }
}
