//! Parsing SQL in time linear in its length.
//!
//! The parser DataFusion 53 uses (sqlparser 0.61) tries some constructs speculatively
//! and backs out, and on a few shapes the attempts nest: each repetition doubles the
//! work. 70 bytes of `SELECT a.b[c. a.b[c. …` take seconds, 200 bytes hours, on a
//! thread the query's timeout cannot stop (parsing never yields). Later sqlparser
//! releases fix the shapes found so far one by one; pitwall cannot take them until
//! DataFusion does, and others will be found.
//!
//! So every query is parsed by DataFusion's default dialect (sqlparser's generic one)
//! wrapped with fuel: each expression the parser starts costs one unit, and a query
//! gets [`FUEL_BASE`] plus [`FUEL_PER_BYTE`] per byte of SQL. Ordinary SQL uses a
//! small part of it (about one unit per token); once it is spent every further attempt
//! fails at once, so the speculation collapses and the query is refused as too complex
//! instead of holding a core. The wrapper changes nothing else: it answers every
//! question the generic dialect answers, as that dialect does.

use std::cell::Cell;

use datafusion::sql::parser::{DFParserBuilder, Statement};
use datafusion::sql::sqlparser::ast::Expr;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::dialect::{Dialect, GenericDialect, PostgreSqlDialect, Precedence};
use datafusion::sql::sqlparser::parser::{Parser, ParserError};

use crate::{Error, Result};

/// Fuel every query gets.
pub const FUEL_BASE: u64 = 10_000;
/// Fuel per byte of SQL.
pub const FUEL_PER_BYTE: u64 = 4;

/// A dialect (DataFusion's default, or PostgreSQL's for the wire protocol) with a
/// budget of parse attempts.
#[derive(Debug)]
struct Fuelled<D> {
    inner: D,
    left: Cell<u64>,
}

impl<D> Fuelled<D> {
    fn new(inner: D, sql: &str) -> Self {
        Fuelled {
            inner,
            left: Cell::new(fuel_for(sql)),
        }
    }

    fn spent(&self) -> bool {
        self.left.get() == 0
    }

    fn burn(&self) -> Option<std::result::Result<Expr, ParserError>> {
        match self.left.get() {
            0 => Some(Err(ParserError::ParserError(OUT_OF_FUEL.into()))),
            n => {
                self.left.set(n - 1);
                None
            }
        }
    }
}

const OUT_OF_FUEL: &str = "the parser ran out of fuel";

fn fuel_for(sql: &str) -> u64 {
    FUEL_BASE + FUEL_PER_BYTE * sql.len() as u64
}

macro_rules! same_as_inner {
    ($($name:ident),* $(,)?) => {
        $(fn $name(&self) -> bool {
            self.inner.$name()
        })*
    };
}

impl<D: Dialect> Dialect for Fuelled<D> {
    fn dialect(&self) -> std::any::TypeId {
        self.inner.dialect()
    }
    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        self.inner.is_delimited_identifier_start(ch)
    }
    fn is_identifier_start(&self, ch: char) -> bool {
        self.inner.is_identifier_start(ch)
    }
    fn is_identifier_part(&self, ch: char) -> bool {
        self.inner.is_identifier_part(ch)
    }
    fn parse_prefix(
        &self,
        _parser: &mut Parser<'_>,
    ) -> Option<std::result::Result<Expr, ParserError>> {
        self.burn()
    }
    fn parse_infix(
        &self,
        _parser: &mut Parser<'_>,
        _expr: &Expr,
        _precedence: u8,
    ) -> Option<std::result::Result<Expr, ParserError>> {
        self.burn()
    }
    fn identifier_quote_style(&self, identifier: &str) -> Option<char> {
        self.inner.identifier_quote_style(identifier)
    }
    fn is_custom_operator_part(&self, ch: char) -> bool {
        self.inner.is_custom_operator_part(ch)
    }
    fn get_next_precedence(
        &self,
        parser: &Parser<'_>,
    ) -> Option<std::result::Result<u8, ParserError>> {
        self.inner.get_next_precedence(parser)
    }
    fn prec_value(&self, prec: Precedence) -> u8 {
        self.inner.prec_value(prec)
    }
    // Every question sqlparser 0.61's generic and PostgreSQL dialects answer themselves.
    same_as_inner!(
        supports_listen_notify,
        supports_factorial_operator,
        supports_named_fn_args_with_colon_operator,
        supports_named_fn_args_with_expr_name,
        supports_numeric_literal_underscores,
        supports_geometric_types,
        supports_alter_column_type_using,
        supports_notnull_operator,
        supports_unicode_string_literal,
        supports_group_by_expr,
        supports_group_by_with_modifier,
        supports_left_associative_joins_without_parens,
        supports_connect_by,
        supports_match_recognize,
        supports_pipe_operator,
        supports_start_transaction_modifier,
        supports_window_function_null_treatment_arg,
        supports_dictionary_syntax,
        supports_window_clause_named_window_reference,
        supports_parenthesized_set_variables,
        supports_select_wildcard_except,
        support_map_literal_syntax,
        allow_extract_custom,
        allow_extract_single_quotes,
        supports_extract_comma_syntax,
        supports_create_view_comment_syntax,
        supports_parens_around_table_factor,
        supports_values_as_table_factor,
        supports_create_index_with_clause,
        supports_explain_with_utility_options,
        supports_limit_comma,
        supports_from_first_select,
        supports_projection_trailing_commas,
        supports_asc_desc_in_column_definition,
        supports_try_convert,
        supports_bitwise_shift_operators,
        supports_comment_on,
        supports_load_extension,
        supports_named_fn_args_with_assignment_operator,
        supports_struct_literal,
        supports_empty_projections,
        supports_nested_comments,
        supports_multiline_comment_hints,
        supports_user_host_grantee,
        supports_string_escape_constant,
        supports_array_typedef_with_brackets,
        supports_match_against,
        supports_set_names,
        supports_comma_separated_set_assignments,
        supports_filter_during_aggregation,
        supports_select_wildcard_exclude,
        supports_data_type_signed_suffix,
        supports_interval_options,
        supports_quote_delimited_string,
        supports_lambda_functions,
        supports_select_wildcard_replace,
        supports_select_wildcard_ilike,
        supports_select_wildcard_rename,
        supports_optimize_table,
        supports_install,
        supports_detach,
        supports_prewhere,
        supports_with_fill,
        supports_limit_by,
        supports_interpolate,
        supports_settings,
        supports_select_format,
        supports_comment_optimizer_hint,
        supports_constraint_keyword_without_name,
    );
}

/// Parses one statement as DataFusion's `sql_to_statement` does (the generic dialect,
/// `recursion_limit`), within the fuel `sql`'s length buys.
pub(crate) fn statement(sql: &str, recursion_limit: usize) -> Result<Statement> {
    let dialect = Fuelled::new(GenericDialect {}, sql);
    let parsed = DFParserBuilder::new(sql)
        .with_dialect(&dialect)
        .with_recursion_limit(recursion_limit)
        .build()
        .and_then(|mut p| p.parse_statements());
    if dialect.spent() {
        return Err(Error::TooComplex {
            fuel: fuel_for(sql),
        });
    }
    let mut statements = parsed.map_err(Error::Sql)?;
    if statements.len() > 1 {
        return Err(Error::Sql(
            datafusion::error::DataFusionError::NotImplemented(
                "one SQL statement at a time".into(),
            ),
        ));
    }
    statements.pop_front().ok_or_else(|| {
        Error::Sql(datafusion::error::DataFusionError::Plan(
            "no SQL statement was given".into(),
        ))
    })
}

/// Parses statements in PostgreSQL's dialect, as the PostgreSQL wire protocol's
/// clients send them, then rewrites what DataFusion cannot plan as PostgreSQL writes it
/// (`::regclass`, `ANY(array)`, the catalog queries of psql and BI tools;
/// `datafusion-pg-catalog`'s rules). The fuelled parse comes first, so SQL whose parse
/// would take exponential time is refused before the rewriter's own parse sees it.
pub(crate) fn postgres_statements(sql: &str, recursion_limit: usize) -> Result<Vec<SqlStatement>> {
    let dialect = Fuelled::new(PostgreSqlDialect {}, sql);
    let checked = Parser::new(&dialect)
        .with_recursion_limit(recursion_limit)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements());
    if dialect.spent() {
        return Err(Error::TooComplex {
            fuel: fuel_for(sql),
        });
    }
    checked.map_err(|e| Error::Sql(e.into()))?;
    static REWRITER: std::sync::OnceLock<datafusion_pg_catalog::sql::PostgresCompatibilityParser> =
        std::sync::OnceLock::new();
    let mut statements = REWRITER
        .get_or_init(datafusion_pg_catalog::sql::PostgresCompatibilityParser::new)
        .parse(sql)
        .map_err(|e| Error::Sql(e.into()))?;
    for s in &mut statements {
        let _ = datafusion::sql::sqlparser::ast::visit_expressions_mut(s, |e| {
            backslash_escapes(e);
            untaken_catalog_branches(e);
            int2vectors_as_arrays(e);
            std::ops::ControlFlow::<()>::Continue(())
        });
    }
    Ok(statements)
}

/// `CASE` branches that guard a subquery with a condition pitwall's `pg_attribute` makes
/// false in every row, removed. SQLAlchemy 2's column query (its inspector's
/// `get_columns`, what Superset and Metabase call) reads defaults, identities and
/// collations through correlated subqueries over `pg_attrdef`, `pg_sequence` and
/// `pg_collation`, which DataFusion cannot plan, each behind `atthasdef`,
/// `attidentity != ''` or `attcollation != 0`. pitwall's lake columns have no default,
/// identity, generation or collation (`postgres.rs` sets those columns so in every row),
/// so those branches never run and the `CASE` is its `ELSE`.
fn untaken_catalog_branches(e: &mut Expr) {
    use datafusion::sql::sqlparser::ast::Value;
    let Expr::Case {
        operand: None,
        conditions,
        else_result,
        ..
    } = e
    else {
        return;
    };
    let before = conditions.len();
    conditions.retain(|w| {
        !((has_subquery(&w.condition) || has_subquery(&w.result)) && never_in_catalog(&w.condition))
    });
    if before > 0 && conditions.is_empty() {
        *e = match else_result.take() {
            Some(other) => *other,
            None => Expr::Value(Value::Null.into()),
        };
    }
}

/// `pg_index`'s `int2vector` columns (`indkey`, …) used as arrays. The catalog keeps
/// them as PostgreSQL prints them (`"1 2"`), which is what `indkey::varchar` expects,
/// but SQLAlchemy's primary-key and index queries (Superset's dataset check) also take
/// them apart: `unnest(ix.indkey)`, `generate_subscripts(ix.indkey, 1)`,
/// `a.attnum = ANY(ix.indkey)` (by then `array_contains(ix.indkey, a.attnum)`). There each becomes `CAST(string_to_array(ix.indkey, ' ')
/// AS SMALLINT[])`, and `generate_subscripts(v, 1)` (not in DataFusion)
/// `unnest(generate_series(1, array_length(v, 1)))`, zipped with the `unnest` beside it
/// as PostgreSQL zips set-returning functions.
fn int2vectors_as_arrays(e: &mut Expr) {
    use datafusion::sql::sqlparser::ast::{FunctionArguments, Value};
    match e {
        Expr::AnyOp { right, .. } | Expr::AllOp { right, .. } if is_int2vector(right) => {
            let column = std::mem::replace(&mut **right, Expr::Value(Value::Null.into()));
            **right = int2vector_array(column);
        }
        Expr::Function(f) => {
            let name = f.name.to_string().to_ascii_lowercase();
            let name = name.rsplit('.').next().unwrap_or_default().to_owned();
            let FunctionArguments::List(list) = &mut f.args else {
                return;
            };
            let Some(first) = list.args.first_mut().and_then(function_arg) else {
                return;
            };
            if !is_int2vector(first) {
                return;
            }
            let column = std::mem::replace(first, Expr::Value(Value::Null.into()));
            match name.as_str() {
                "unnest" | "array_length" | "cardinality" | "array_contains" | "array_has" => {
                    *first = int2vector_array(column)
                }
                "generate_subscripts" => {
                    let length = call(
                        "array_length",
                        vec![
                            int2vector_array(column),
                            Expr::Value(Value::Number("1".into(), false).into()),
                        ],
                    );
                    let series = call(
                        "generate_series",
                        vec![Expr::Value(Value::Number("1".into(), false).into()), length],
                    );
                    *e = call("unnest", vec![series]);
                }
                _ => *first = column,
            }
        }
        _ => {}
    }
}

/// The expression of a plain function argument.
fn function_arg(arg: &mut datafusion::sql::sqlparser::ast::FunctionArg) -> Option<&mut Expr> {
    use datafusion::sql::sqlparser::ast::{FunctionArg, FunctionArgExpr};
    match arg {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
        _ => None,
    }
}

/// Whether `e` names one of the catalog's array columns kept as text: `pg_index`'s
/// `int2vector`s and `oidvector`s, `pg_constraint`'s `conkey` and `confkey`.
fn is_int2vector(e: &Expr) -> bool {
    let name = match e {
        Expr::Identifier(i) => &i.value,
        Expr::CompoundIdentifier(parts) => match parts.last() {
            Some(i) => &i.value,
            None => return false,
        },
        _ => return false,
    };
    matches!(
        name.to_ascii_lowercase().as_str(),
        "indkey" | "indoption" | "indclass" | "indcollation" | "conkey" | "confkey"
    )
}

/// The numbers of a catalog column kept as text (`"1 2"` for `int2vector`s, `"[2, 20]"`
/// for `pg_constraint.conkey`) as an array: `CAST(string_to_array(btrim(
/// regexp_replace(column, '[^0-9-]+', ' ', 'g')), ' ') AS SMALLINT[])`.
fn int2vector_array(column: Expr) -> Expr {
    use datafusion::sql::sqlparser::ast::{ArrayElemTypeDef, CastKind, DataType, Value};
    let text = |s: &str| Expr::Value(Value::SingleQuotedString(s.into()).into());
    let spaced = call(
        "regexp_replace",
        vec![column, text("[^0-9-]+"), text(" "), text("g")],
    );
    Expr::Cast {
        kind: CastKind::Cast,
        expr: Box::new(call(
            "string_to_array",
            vec![call("btrim", vec![spaced]), text(" ")],
        )),
        data_type: DataType::Array(ArrayElemTypeDef::SquareBracket(
            Box::new(DataType::SmallInt(None)),
            None,
        )),
        array: false,
        format: None,
    }
}

/// `name(args…)`.
fn call(name: &str, args: Vec<Expr>) -> Expr {
    use datafusion::sql::sqlparser::ast::{
        Function, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments, Ident,
        ObjectName,
    };
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a)))
                .collect(),
            clauses: Vec::new(),
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: Vec::new(),
    })
}

/// Whether `e` holds a subquery.
fn has_subquery(e: &Expr) -> bool {
    datafusion::sql::sqlparser::ast::visit_expressions(e, |e| match e {
        Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
            std::ops::ControlFlow::Break(())
        }
        _ => std::ops::ControlFlow::Continue(()),
    })
    .is_break()
}

/// Whether `e` is false in every row of pitwall's `pg_attribute`: `atthasdef`,
/// `attidentity != ''`, `attgenerated != ''`, `attcollation != 0`, or a conjunction
/// holding one of them.
fn never_in_catalog(e: &Expr) -> bool {
    use datafusion::sql::sqlparser::ast::{BinaryOperator, Value};
    let column = |e: &Expr| -> Option<String> {
        match e {
            Expr::Identifier(i) => Some(i.value.to_ascii_lowercase()),
            Expr::CompoundIdentifier(parts) => parts.last().map(|i| i.value.to_ascii_lowercase()),
            _ => None,
        }
    };
    match e {
        Expr::Nested(inner) => never_in_catalog(inner),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => never_in_catalog(left) || never_in_catalog(right),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::NotEq,
            right,
        } => match (column(left).as_deref(), &**right) {
            (Some("attidentity" | "attgenerated"), Expr::Value(v)) => {
                matches!(&v.value, Value::SingleQuotedString(s) if s.is_empty())
            }
            (Some("attcollation"), Expr::Value(v)) => {
                matches!(&v.value, Value::Number(n, _) if n == "0")
            }
            _ => false,
        },
        other => column(other).as_deref() == Some("atthasdef"),
    }
}

/// `LIKE pattern ESCAPE 'c'` with a constant pattern, rewritten to the backslash
/// escapes DataFusion supports (SQLAlchemy's inspector sends `NOT LIKE 'pg/_' || '%'
/// ESCAPE '/'`).
fn backslash_escapes(e: &mut Expr) {
    use datafusion::sql::sqlparser::ast::Value;
    let (Expr::Like {
        pattern,
        escape_char,
        ..
    }
    | Expr::ILike {
        pattern,
        escape_char,
        ..
    }) = e
    else {
        return;
    };
    let Some(Value::SingleQuotedString(escape)) = escape_char.as_ref() else {
        return;
    };
    let mut chars = escape.chars();
    let (Some(esc), None) = (chars.next(), chars.next()) else {
        return;
    };
    if esc == '\\' {
        return;
    }
    let Some(text) = constant_text(pattern) else {
        return;
    };
    let mut out = String::with_capacity(text.len());
    let mut it = text.chars();
    while let Some(c) = it.next() {
        if c == esc {
            if let Some(next) = it.next() {
                out.push('\\');
                out.push(next);
            }
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    **pattern = Expr::value(Value::SingleQuotedString(out));
    *escape_char = None;
}

/// A string literal, or literals joined with `||`.
fn constant_text(e: &Expr) -> Option<String> {
    use datafusion::sql::sqlparser::ast::{BinaryOperator, Value};
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        Expr::Nested(inner) => constant_text(inner),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::StringConcat,
            right,
        } => Some(constant_text(left)? + &constant_text(right)?),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(sql: &str) -> std::result::Result<Vec<String>, String> {
        DFParserBuilder::new(sql)
            .with_dialect(&GenericDialect {})
            .build()
            .and_then(|mut p| p.parse_statements())
            .map(|s| s.iter().map(|s| format!("{s:?}")).collect())
            .map_err(|e| e.to_string())
    }

    /// The fuel changes no answer for the SQL users write.
    #[test]
    fn ordinary_sql_parses_as_the_generic_dialect_parses_it() {
        for sql in [
            "SELECT driver, count(*) AS samples, max(speed_kph) AS top_speed_kph FROM clean.car GROUP BY driver ORDER BY top_speed_kph DESC",
            "SELECT date_bin(INTERVAL '5 seconds', time) AS t, avg(speed_kph) FROM clean.car WHERE time > now() - INTERVAL '1 hour' GROUP BY 1 ORDER BY 1",
            "WITH laps AS (SELECT driver, lap, max(date_part('epoch', time)) - min(date_part('epoch', time)) AS secs FROM clean.car WHERE lap > 0 GROUP BY driver, lap) SELECT * FROM laps l JOIN clean.car c ON l.driver = c.driver",
            "SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY sensor_id ORDER BY time DESC) AS rn FROM clean.sensor) WHERE rn = 1",
            "SELECT s.id FROM anomalies.events s LEFT JOIN anomalies.events e ON e.id = s.id AND e.phase = 'end' WHERE s.phase = 'start' AND e.id IS NULL",
            "SELECT make_array(1, 2)[1], [1, 2, 3], CASE WHEN brake THEN 1 ELSE 0 END, \"time\" FROM clean.car LIMIT 5",
            "EXPLAIN SELECT 1",
            "SHOW TABLES",
            "SELECT 1 +",
        ] {
            let fuelled = statement(sql, 50)
                .map(|s| vec![format!("{s:?}")])
                .map_err(|e| e.to_string());
            match (generic(sql), fuelled) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{sql}"),
                (Err(_), Err(_)) => {}
                (a, b) => panic!("{sql}: generic {a:?}, fuelled {b:?}"),
            }
        }
    }

    /// Shapes that take the generic dialect exponential time (found by the sql_guard
    /// fuzz target, and upstream's reports) are refused at once. Without the fuel this
    /// test does not finish.
    #[test]
    fn exponential_shapes_are_refused_as_too_complex() {
        // On a stack as deep as a query thread's: a debug build's parser frames are big.
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(refuse_exponential_shapes)
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn catalog_branches_that_never_run_are_removed() {
        let sql = "SELECT a.attname, \
            CASE WHEN a.atthasdef THEN (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid) ELSE NULL END AS dflt, \
            CASE WHEN (a.attidentity != '') THEN (SELECT json_build_object('x', s.seqstart) FROM pg_catalog.pg_sequence s WHERE s.seqrelid = CAST(a.attrelid AS REGCLASS)) ELSE NULL END AS ident, \
            CASE WHEN (a.attcollation != 0 AND (SELECT t.typcollation FROM pg_catalog.pg_type t WHERE t.oid = a.atttypid) != a.attcollation) THEN 'c' ELSE NULL END AS coll, \
            CASE WHEN a.attnotnull THEN (SELECT 1) ELSE 2 END AS kept, \
            CASE WHEN a.attidentity != 'a' THEN (SELECT 1) END AS kept_too \
            FROM pg_catalog.pg_attribute a";
        let out = postgres_statements(sql, 50).unwrap()[0].to_string();
        assert!(
            !out.contains("pg_attrdef")
                && !out.contains("pg_sequence")
                && !out.contains("typcollation"),
            "{out}"
        );
        assert!(
            out.contains("NULL AS dflt")
                && out.contains("NULL AS ident")
                && out.contains("NULL AS coll"),
            "{out}"
        );
        assert!(
            out.contains("CASE WHEN a.attnotnull THEN (SELECT 1) ELSE 2 END AS kept"),
            "{out}"
        );
        assert!(
            out.contains("CASE WHEN a.attidentity <> 'a' THEN (SELECT 1) END AS kept_too"),
            "{out}"
        );
    }

    #[test]
    fn int2vectors_are_taken_apart_as_arrays() {
        let sql = "SELECT unnest(ix.indkey) attnum, generate_subscripts(ix.indkey, 1) ord, ix.indkey::varchar \
            FROM pg_index ix JOIN pg_attribute a ON a.attnum = ANY(ix.indkey)";
        let out = postgres_statements(sql, 50).unwrap()[0].to_string();
        let array = "CAST(string_to_array(btrim(regexp_replace(ix.indkey, '[^0-9-]+', ' ', 'g')), ' ') AS SMALLINT[])";
        assert!(out.contains(&format!("unnest({array}) AS attnum")), "{out}");
        assert!(
            out.contains(&format!(
                "unnest(generate_series(1, array_length({array}, 1))) AS ord"
            )),
            "{out}"
        );
        // datafusion-pg-catalog makes `= ANY(v)` array_contains(v, …) first.
        assert!(
            out.contains(&format!("array_contains({array}, a.attnum)")),
            "{out}"
        );
        assert!(
            out.contains("CAST(ix.indkey AS VARCHAR)") || out.contains("ix.indkey::VARCHAR"),
            "{out}"
        );
    }

    #[test]
    fn like_escapes_become_backslashes() {
        let s = postgres_statements(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg/_' || '%' ESCAPE '/' AND x LIKE 'a\\b' ESCAPE '#'",
            50,
        )
        .unwrap();
        let sql = s[0].to_string();
        assert!(sql.contains("NOT LIKE 'pg\\_%'"), "{sql}");
        assert!(sql.contains("LIKE 'a\\\\b'"), "{sql}");
        assert!(!sql.contains("ESCAPE"), "{sql}");
    }

    fn refuse_exponential_shapes() {
        for sql in [
            format!("SELECT {}", "a.b[c. ".repeat(12)),
            format!("SELECT {}", "a.b[c. ".repeat(15)),
            format!("SELECT {}", "x-not-b.".repeat(16)),
            format!("SELECT {}", "x-not-b.".repeat(20)),
            "SELECT Ev. Ea[riv. Eac.e.nSELECT [riv. Ea[r[riv. EELECT [riv. Ea[riv. ri[apZlapn.iv. ri[apZlapac.e.nSELECT [riv. Ea[riv. ri[apZlapn.iv. ri[i[apZlapn.iv]. ri[apZlapn.iv. ri[apZlapac.e.nSELECT [riv. Ea[r. Ea[.e.n.".to_owned(),
        ] {
            let e = statement(&sql, 50).unwrap_err();
            eprintln!("{} bytes: {e}", sql.len());
            assert!(matches!(e, Error::TooComplex { .. }), "{sql}: {e}");
        }
    }
}
