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
            std::ops::ControlFlow::<()>::Continue(())
        });
    }
    Ok(statements)
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
