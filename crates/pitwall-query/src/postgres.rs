//! What a session needs so PostgreSQL's clients find what they look for: the
//! `pg_catalog` tables over the lake's tables (psql's `\d`, SQLAlchemy's inspector,
//! Grafana's and Superset's table pickers), PostgreSQL's catalog functions, and a
//! `version()` that names a PostgreSQL version, which drivers parse.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, new_empty_array};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{CatalogProviderList, MemTable, SchemaProvider, TableProvider};
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;

use crate::{Error, Result};

/// The PostgreSQL version pitwall answers as: what its catalog tables follow.
pub const SERVER_VERSION: &str = "16.6";

/// `version()`'s text: drivers (SQLAlchemy, JDBC) read the PostgreSQL version from it.
fn version_string() -> String {
    format!(
        "PostgreSQL {SERVER_VERSION} (pitwall {}, Apache DataFusion {})",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION
    )
}

/// A session state for PostgreSQL's clients: DataFusion's, with [`UnknownLiterals`]
/// analysed before anything else.
pub(crate) fn session_state(
    env: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
) -> datafusion::execution::SessionState {
    use datafusion::execution::SessionStateBuilder;
    use datafusion::optimizer::AnalyzerRule;
    let state = crate::session_state(Some(env));
    let mut rules: Vec<Arc<dyn AnalyzerRule + Send + Sync>> = vec![Arc::new(UnknownLiterals)];
    rules.extend(state.analyzer().rules.iter().cloned());
    SessionStateBuilder::new_from_existing(state)
        .with_analyzer_rules(rules)
        .build()
}

/// PostgreSQL gives a quoted literal no type until it meets another: `indisprimary =
/// 'f'` compares booleans (SQLAlchemy's index query says so). DataFusion reads `'f'` as
/// text and finds no common type with a boolean; here a text literal compared with a
/// boolean becomes the boolean PostgreSQL would read it as (`t`/`f`, `true`/`false`,
/// `yes`/`no`, `on`/`off`, `1`/`0`); any other text is left for the usual error.
#[derive(Debug)]
struct UnknownLiterals;

impl datafusion::optimizer::AnalyzerRule for UnknownLiterals {
    fn name(&self) -> &str {
        "pitwall_postgres_unknown_literals"
    }

    fn analyze(
        &self,
        plan: datafusion::logical_expr::LogicalPlan,
        _config: &datafusion::config::ConfigOptions,
    ) -> DFResult<datafusion::logical_expr::LogicalPlan> {
        use datafusion::common::tree_node::{Transformed, TreeNode};
        use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, Operator};
        plan.transform_up_with_subqueries(|node| {
            let schema = datafusion::logical_expr::utils::merge_schema(&node.inputs());
            node.map_expressions(|e| {
                e.transform_up(|e| {
                    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = &e else {
                        return Ok(Transformed::no(e));
                    };
                    if !matches!(
                        op,
                        Operator::Eq
                            | Operator::NotEq
                            | Operator::IsDistinctFrom
                            | Operator::IsNotDistinctFrom
                    ) {
                        return Ok(Transformed::no(e));
                    }
                    let is_bool =
                        |x: &Expr| x.get_type(&schema).is_ok_and(|t| t == DataType::Boolean);
                    let (new_left, new_right) = match (pg_bool(right), pg_bool(left)) {
                        (Some(b), _) if is_bool(left) => ((**left).clone(), b),
                        (_, Some(b)) if is_bool(right) => (b, (**right).clone()),
                        _ => return Ok(Transformed::no(e)),
                    };
                    Ok(Transformed::yes(Expr::BinaryExpr(BinaryExpr::new(
                        Box::new(new_left),
                        *op,
                        Box::new(new_right),
                    ))))
                })
            })
        })
        .map(|t| t.data)
    }
}

/// A text literal PostgreSQL reads as a boolean, as a boolean literal.
fn pg_bool(e: &datafusion::logical_expr::Expr) -> Option<datafusion::logical_expr::Expr> {
    use datafusion::logical_expr::{Expr, lit};
    let Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)), _) = e else {
        return None;
    };
    match s.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Some(lit(true)),
        "f" | "false" | "n" | "no" | "off" | "0" => Some(lit(false)),
        _ => None,
    }
}

pub(crate) fn setup(ctx: &SessionContext) -> Result<()> {
    // What datafusion_pg_catalog::setup_pg_catalog does, with its static tables (some
    // thirty decoded from embedded Arrow files) decoded once per process, not per statement.
    use datafusion_pg_catalog::pg_catalog as pg;
    static STATIC_TABLES: std::sync::OnceLock<
        std::result::Result<Arc<pg::PgCatalogStaticTables>, String>,
    > = std::sync::OnceLock::new();
    let static_tables = STATIC_TABLES
        .get_or_init(|| {
            pg::PgCatalogStaticTables::try_new()
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| Error::Setup(format!("the PostgreSQL catalog tables: {e}")))?;
    let inner: Arc<dyn SchemaProvider> = Arc::new(
        pg::PgCatalogSchemaProvider::try_new(
            Arc::clone(ctx.state().catalog_list()),
            Arc::clone(&static_tables),
            EmptyContextProvider,
        )
        .map_err(|e| Error::Setup(format!("the PostgreSQL catalog tables: {e}")))?,
    );
    for udf in [
        pg::create_current_database_udf(),
        pg::create_current_schema_udf(),
        pg::create_current_schemas_udf(),
        pg::create_pg_get_userbyid_udf(),
        pg::has_privilege_udf::create_has_privilege_udf("has_table_privilege"),
        pg::has_privilege_udf::create_has_privilege_udf("has_schema_privilege"),
        pg::has_privilege_udf::create_has_privilege_udf("has_database_privilege"),
        pg::has_privilege_udf::create_has_privilege_udf("has_any_column_privilege"),
        pg::create_pg_table_is_visible(),
        pg::format_type::create_format_type_udf(),
        pg::create_session_user_udf(),
        pg::pg_get_expr_udf::create_pg_get_expr_udf(),
        pg::create_pg_get_partkeydef_udf(),
        pg::create_pg_relation_is_publishable_udf(),
        pg::create_pg_get_statisticsobjdef_columns_udf(),
        pg::create_pg_encoding_to_char_udf(),
        pg::create_pg_backend_pid_udf(),
        pg::create_pg_relation_size_udf(),
        pg::create_pg_total_relation_size_udf(),
        pg::create_pg_stat_get_numscans(),
        pg::create_pg_get_constraintdef(),
        pg::create_pg_get_partition_ancestors_udf(),
        pg::quote_ident_udf::create_quote_ident_udf(),
        pg::quote_ident_udf::create_parse_ident_udf(),
    ] {
        ctx.register_udf(udf);
    }
    ctx.register_udtf(
        "pg_get_keywords",
        Arc::<pg::ArrowTable>::clone(&static_tables.pg_get_keywords),
    );
    let catalog = ctx
        .catalog(pitwall_lake::CATALOG_NAME)
        .ok_or_else(|| Error::Setup("the lake's catalog is not registered".into()))?;
    catalog.register_schema(
        "pg_catalog",
        Arc::new(PgCatalog {
            inner,
            catalogs: Arc::clone(ctx.state().catalog_list()),
        }),
    )?;
    ctx.register_udf(version_udf());
    ctx.register_udf(type_is_visible_udf());
    ctx.register_udf(ScalarUDF::new_from_impl(NoDefinition {
        name: "pg_get_indexdef",
        signature: datafusion::logical_expr::Signature::any(3, Volatility::Stable),
    }));
    Ok(())
}

/// A PostgreSQL function that prints a definition pitwall never has, answering null:
/// `pg_get_indexdef(index, column, pretty)` (the lake's tables have no indexes;
/// SQLAlchemy 2's `get_indexes` calls it for each index column it finds).
#[derive(Debug, PartialEq, Eq, Hash)]
struct NoDefinition {
    name: &'static str,
    signature: datafusion::logical_expr::Signature,
}

impl datafusion::logical_expr::ScalarUDFImpl for NoDefinition {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        _args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> DFResult<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))
    }
}

/// `pg_type_is_visible(oid)`: true. Every type pitwall lists is in `pg_catalog`, which
/// is on every search path (SQLAlchemy 1.4's inspector lists domains and enums with it).
fn type_is_visible_udf() -> ScalarUDF {
    create_udf(
        "pg_type_is_visible",
        vec![DataType::Int32],
        DataType::Boolean,
        Volatility::Stable,
        Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))))),
    )
}

fn version_udf() -> ScalarUDF {
    let text = version_string();
    create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(text.clone()))))),
    )
}

/// `pg_catalog` with its three tables of names computed here: `pg_namespace`,
/// `pg_class` and `pg_attribute`. `datafusion-pg-catalog` numbers objects from a
/// counter each of these tables restarts in its own order, so one session's
/// `pg_class.relnamespace` named another's `pg_namespace.oid` and psql's `\d` showed
/// the wrong table's columns. Here an object's OID is a hash of its name: the same in
/// every table and every session (psql looks a table's OID up in one query and uses
/// it in the next). Every other table is the crate's.
#[derive(Debug)]
struct PgCatalog {
    inner: Arc<dyn SchemaProvider>,
    catalogs: Arc<dyn CatalogProviderList>,
}

const OWNED: [&str; 3] = ["pg_namespace", "pg_class", "pg_attribute"];

#[async_trait::async_trait]
impl SchemaProvider for PgCatalog {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
        let Some(inner) = self.inner.table(name).await? else {
            return Ok(None);
        };
        if !OWNED.contains(&name) {
            return Ok(Some(inner));
        }
        let schema = with_missing_columns(name, inner.schema());
        // pg_namespace needs no table: the lake's are not loaded for it.
        let objects = self.objects(name != "pg_namespace").await?;
        let rows: Vec<HashMap<&'static str, ScalarValue>> = match name {
            "pg_namespace" => objects.namespaces(),
            "pg_class" => objects.classes(),
            _ => objects.attributes(),
        };
        let batch = rows_to_batch(&schema, &rows)?;
        Ok(Some(Arc::new(MemTable::try_new(
            schema,
            vec![vec![batch]],
        )?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}

/// Columns PostgreSQL has that the crate's table lacks, added (null in every row):
/// `pg_class.reloptions`, which SQLAlchemy's index query reads.
fn with_missing_columns(name: &str, schema: SchemaRef) -> SchemaRef {
    use datafusion::arrow::datatypes::{Field, Schema};
    let missing: &[(&str, DataType)] = match name {
        "pg_class" => &[(
            "reloptions",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        )],
        _ => &[],
    };
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    for (column, t) in missing {
        if schema.field_with_name(column).is_err() {
            fields.push(Arc::new(Field::new(*column, t.clone(), true)));
        }
    }
    if fields.len() == schema.fields().len() {
        return schema;
    }
    Arc::new(Schema::new(fields))
}

/// A catalog's schema: (catalog, schema, [(table, columns)]).
type SchemaObjects = (String, String, Vec<(String, SchemaRef)>);

/// Every schema and table the session sees, with their columns, sorted.
struct Objects {
    schemas: Vec<SchemaObjects>,
}

impl PgCatalog {
    /// The session's schemas, with their tables and columns if `with_tables`.
    async fn objects(&self, with_tables: bool) -> DFResult<Objects> {
        let mut schemas = Vec::new();
        let mut catalog_names = self.catalogs.catalog_names();
        catalog_names.sort();
        for c in catalog_names {
            let Some(catalog) = self.catalogs.catalog(&c) else {
                continue;
            };
            let mut names = catalog.schema_names();
            names.sort();
            for s in names {
                let Some(schema) = catalog.schema(&s) else {
                    continue;
                };
                // This schema's own tables are described by the crate's providers.
                let source = if s == "pg_catalog" {
                    &self.inner
                } else {
                    &schema
                };
                let mut table_names = if with_tables {
                    source.table_names()
                } else {
                    Vec::new()
                };
                table_names.sort();
                let mut tables = Vec::new();
                for t in table_names {
                    if let Some(p) = source.table(&t).await? {
                        tables.push((t, p.schema()));
                    }
                }
                schemas.push((c.clone(), s, tables));
            }
        }
        Ok(Objects { schemas })
    }
}

/// A stable OID for a name: FNV-1a, above PostgreSQL's reserved range.
fn oid(parts: &[&str]) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    (16384 + h % (i32::MAX as u32 - 16384)) as i32
}

fn is_system(schema: &str) -> bool {
    schema == "pg_catalog" || schema == "information_schema"
}

impl Objects {
    fn namespaces(&self) -> Vec<HashMap<&'static str, ScalarValue>> {
        self.schemas
            .iter()
            .map(|(c, s, _)| {
                HashMap::from([
                    ("oid", int32(oid(&[c, s]))),
                    ("nspname", text(s)),
                    ("nspowner", int32(10)),
                ])
            })
            .collect()
    }

    fn classes(&self) -> Vec<HashMap<&'static str, ScalarValue>> {
        let mut rows = Vec::new();
        for (c, s, tables) in &self.schemas {
            for (t, columns) in tables {
                let id = oid(&[c, s, t]);
                rows.push(HashMap::from([
                    ("oid", int32(id)),
                    ("relname", text(t)),
                    ("relnamespace", int32(oid(&[c, s]))),
                    ("relowner", int32(10)),
                    ("relfilenode", int32(id)),
                    ("reltuples", ScalarValue::Float64(Some(-1.0))),
                    ("relpersistence", text("p")),
                    ("relkind", text(if is_system(s) { "v" } else { "r" })),
                    (
                        "relnatts",
                        ScalarValue::Int16(Some(
                            i16::try_from(columns.fields().len()).unwrap_or(i16::MAX),
                        )),
                    ),
                    ("relispopulated", ScalarValue::Boolean(Some(true))),
                    ("relreplident", text("d")),
                ]));
            }
        }
        rows
    }

    fn attributes(&self) -> Vec<HashMap<&'static str, ScalarValue>> {
        let mut rows = Vec::new();
        for (c, s, tables) in &self.schemas {
            for (t, columns) in tables {
                let id = oid(&[c, s, t]);
                for (i, f) in columns.fields().iter().enumerate() {
                    let (typ, len, byval, align, storage) = pg_type(f.data_type());
                    rows.push(HashMap::from([
                        ("attrelid", int32(id)),
                        ("attname", text(f.name())),
                        ("atttypid", int32(typ)),
                        ("attstattarget", int32(-1)),
                        ("attlen", ScalarValue::Int16(Some(len))),
                        (
                            "attnum",
                            ScalarValue::Int16(Some(i16::try_from(i + 1).unwrap_or(i16::MAX))),
                        ),
                        ("attcacheoff", int32(-1)),
                        ("atttypmod", int32(-1)),
                        ("attbyval", ScalarValue::Boolean(Some(byval))),
                        ("attalign", text(align)),
                        ("attstorage", text(storage)),
                        ("attnotnull", ScalarValue::Boolean(Some(!f.is_nullable()))),
                        ("attislocal", ScalarValue::Boolean(Some(true))),
                        // No defaults, identities, generated columns or collations
                        // (parse.rs relies on it: untaken_catalog_branches).
                        ("atthasdef", ScalarValue::Boolean(Some(false))),
                        ("attidentity", text("")),
                        ("attgenerated", text("")),
                        ("attcollation", int32(0)),
                        ("attisdropped", ScalarValue::Boolean(Some(false))),
                    ]));
                }
            }
        }
        rows
    }
}

/// PostgreSQL's type for an Arrow type: OID, length, by value, alignment, storage.
fn pg_type(t: &DataType) -> (i32, i16, bool, &'static str, &'static str) {
    match t {
        DataType::Boolean => (16, 1, true, "c", "p"),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => (21, 2, true, "s", "p"),
        DataType::Int32 | DataType::UInt16 => (23, 4, true, "i", "p"),
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => (20, 8, true, "d", "p"),
        DataType::Float16 | DataType::Float32 => (700, 4, true, "i", "p"),
        DataType::Float64 => (701, 8, true, "d", "p"),
        DataType::Timestamp(_, Some(_)) => (1184, 8, true, "d", "p"),
        DataType::Timestamp(_, None) => (1114, 8, true, "d", "p"),
        DataType::Date32 | DataType::Date64 => (1082, 4, true, "i", "p"),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            (17, -1, false, "i", "x")
        }
        DataType::Decimal128(..) | DataType::Decimal256(..) => (1700, -1, false, "i", "m"),
        _ => (25, -1, false, "i", "x"),
    }
}

fn int32(v: i32) -> ScalarValue {
    ScalarValue::Int32(Some(v))
}

fn text(v: &str) -> ScalarValue {
    ScalarValue::Utf8(Some(v.to_owned()))
}

/// One batch in `schema` from rows of named values; a column a row does not name is
/// null, or zero / false / empty where the column cannot be null.
fn rows_to_batch(
    schema: &SchemaRef,
    rows: &[HashMap<&'static str, ScalarValue>],
) -> DFResult<RecordBatch> {
    let mut columns = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let blank = ScalarValue::try_from(f.data_type())?;
        let filler = if f.is_nullable() {
            blank
        } else {
            match f.data_type() {
                DataType::Utf8 => text(""),
                DataType::Boolean => ScalarValue::Boolean(Some(false)),
                other => ScalarValue::new_zero(other)?,
            }
        };
        let values = rows.iter().map(|r| {
            r.get(f.name().as_str())
                .cloned()
                .unwrap_or_else(|| filler.clone())
        });
        let array = if rows.is_empty() {
            new_empty_array(f.data_type())
        } else {
            ScalarValue::iter_to_array(values)?
        };
        columns.push(array);
    }
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}
