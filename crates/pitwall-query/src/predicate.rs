//! A query's filters as an Iceberg predicate, so a scan skips the files and row groups
//! whose column bounds rule them out. DataFusion still filters the rows it reads
//! (pushdown is `Inexact`), so a predicate may admit more than the filters do, never
//! less: a top-level conjunct that cannot be expressed is left out; inside `OR` and
//! `NOT` every part must be expressed or the whole is left out.

use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::scalar::ScalarValue;
use iceberg::expr::{Predicate, Reference};
use iceberg::spec::{Datum, PrimitiveType, Schema, Type};

/// The conjunction of the filters' expressible parts, or `None` when no part is.
pub(crate) fn to_predicate(schema: &Schema, filters: &[Expr]) -> Option<Predicate> {
    let mut conjuncts = Vec::new();
    for f in filters {
        split_and(f, &mut conjuncts);
    }
    conjuncts
        .into_iter()
        .filter_map(|e| exact(schema, e))
        .reduce(Predicate::and)
}

fn split_and<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            split_and(left, out);
            split_and(right, out);
        }
        other => out.push(other),
    }
}

/// The predicate that holds exactly when `e` does, if there is one.
fn exact(schema: &Schema, e: &Expr) -> Option<Predicate> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And => Some(exact(schema, left)?.and(exact(schema, right)?)),
            Operator::Or => Some(exact(schema, left)?.or(exact(schema, right)?)),
            _ => compare(schema, left, *op, right),
        },
        Expr::Not(inner) => Some(exact(schema, inner)?.negate()),
        Expr::IsNull(inner) => Some(column(schema, inner)?.0.is_null()),
        Expr::IsNotNull(inner) => Some(column(schema, inner)?.0.is_not_null()),
        Expr::InList(list) => {
            let (reference, ty) = column(schema, &list.expr)?;
            let values = list
                .list
                .iter()
                .map(|v| datum(ty, literal(v)?))
                .collect::<Option<Vec<_>>>()?;
            Some(if list.negated {
                reference.is_not_in(values)
            } else {
                reference.is_in(values)
            })
        }
        _ => None,
    }
}

/// `column op literal`, or `literal op column` turned round.
fn compare(schema: &Schema, left: &Expr, op: Operator, right: &Expr) -> Option<Predicate> {
    let (reference, ty, value, op) = match (column(schema, left), column(schema, right)) {
        (Some((r, ty)), None) => (r, ty, literal(right)?, op),
        (None, Some((r, ty))) => (r, ty, literal(left)?, op.swap()?),
        _ => return None,
    };
    let value = datum(ty, value)?;
    Some(match op {
        Operator::Eq => reference.equal_to(value),
        Operator::NotEq => reference.not_equal_to(value),
        Operator::Lt => reference.less_than(value),
        Operator::LtEq => reference.less_than_or_equal_to(value),
        Operator::Gt => reference.greater_than(value),
        Operator::GtEq => reference.greater_than_or_equal_to(value),
        _ => return None,
    })
}

/// A top-level column of the table and its Iceberg type.
fn column<'s>(schema: &'s Schema, e: &Expr) -> Option<(Reference, &'s PrimitiveType)> {
    let Expr::Column(c) = e else { return None };
    let field = schema.field_by_name(&c.name)?;
    match field.field_type.as_ref() {
        Type::Primitive(p) => Some((Reference::new(c.name.clone()), p)),
        _ => None,
    }
}

fn literal(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) if !v.is_null() => Some(v),
        _ => None,
    }
}

/// The literal as a value of the column's type, when it is one exactly.
fn datum(ty: &PrimitiveType, v: &ScalarValue) -> Option<Datum> {
    use ScalarValue as S;
    let int = || -> Option<i64> {
        Some(match v {
            S::Int8(Some(x)) => i64::from(*x),
            S::Int16(Some(x)) => i64::from(*x),
            S::Int32(Some(x)) => i64::from(*x),
            S::Int64(Some(x)) => *x,
            S::UInt8(Some(x)) => i64::from(*x),
            S::UInt16(Some(x)) => i64::from(*x),
            S::UInt32(Some(x)) => i64::from(*x),
            S::UInt64(Some(x)) => i64::try_from(*x).ok()?,
            _ => return None,
        })
    };
    // Microseconds (or nanoseconds) since the epoch, only when the literal is whole in
    // the column's unit.
    let instant = |per_second: i64| -> Option<i64> {
        let (value, unit_per_second) = match v {
            S::TimestampSecond(Some(x), _) => (*x, 1),
            S::TimestampMillisecond(Some(x), _) => (*x, 1_000),
            S::TimestampMicrosecond(Some(x), _) => (*x, 1_000_000),
            S::TimestampNanosecond(Some(x), _) => (*x, 1_000_000_000),
            _ => return None,
        };
        if unit_per_second <= per_second {
            value.checked_mul(per_second / unit_per_second)
        } else {
            let step = unit_per_second / per_second;
            (value % step == 0).then_some(value / step)
        }
    };
    Some(match ty {
        PrimitiveType::Boolean => match v {
            S::Boolean(Some(b)) => Datum::bool(*b),
            _ => return None,
        },
        PrimitiveType::Int => Datum::int(i32::try_from(int()?).ok()?),
        PrimitiveType::Long => Datum::long(int()?),
        PrimitiveType::Float => match v {
            S::Float32(Some(x)) => Datum::float(*x),
            _ => return None,
        },
        PrimitiveType::Double => match v {
            S::Float64(Some(x)) => Datum::double(*x),
            S::Float32(Some(x)) => Datum::double(f64::from(*x)),
            _ => return None,
        },
        PrimitiveType::String => match v {
            S::Utf8(Some(s)) | S::LargeUtf8(Some(s)) | S::Utf8View(Some(s)) => Datum::string(s),
            _ => return None,
        },
        PrimitiveType::Timestamp => Datum::timestamp_micros(instant(1_000_000)?),
        PrimitiveType::Timestamptz => Datum::timestamptz_micros(instant(1_000_000)?),
        PrimitiveType::TimestampNs => Datum::timestamp_nanos(instant(1_000_000_000)?),
        PrimitiveType::TimestamptzNs => Datum::timestamptz_nanos(instant(1_000_000_000)?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};
    use iceberg::spec::NestedField;
    use std::sync::Arc;

    fn schema() -> Schema {
        Schema::builder()
            .with_fields(vec![
                Arc::new(NestedField::required(
                    1,
                    "time",
                    Type::Primitive(PrimitiveType::Timestamptz),
                )),
                Arc::new(NestedField::optional(
                    2,
                    "driver",
                    Type::Primitive(PrimitiveType::String),
                )),
                Arc::new(NestedField::optional(
                    3,
                    "lap",
                    Type::Primitive(PrimitiveType::Int),
                )),
                Arc::new(NestedField::optional(
                    4,
                    "speed",
                    Type::Primitive(PrimitiveType::Double),
                )),
            ])
            .build()
            .unwrap()
    }

    fn shown(filters: &[Expr]) -> String {
        to_predicate(&schema(), filters).map_or("none".into(), |p| p.to_string())
    }

    fn micros(v: i64) -> Expr {
        lit(ScalarValue::TimestampMicrosecond(
            Some(v),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn comparisons_both_ways_round() {
        assert_eq!(shown(&[col("lap").gt_eq(lit(3i32))]), "lap >= 3");
        assert_eq!(shown(&[lit(3i64).lt(col("lap"))]), "lap > 3");
        assert_eq!(
            shown(&[col("driver")
                .eq(lit("VER"))
                .and(col("speed").lt(lit(200.5)))]),
            "(driver = \"VER\") AND (speed < 200.5)"
        );
    }

    #[test]
    fn instants_convert_only_when_whole() {
        let ns = |v| lit(ScalarValue::TimestampNanosecond(Some(v), None));
        assert!(shown(&[col("time").gt(micros(1_000))]).contains("time >"));
        assert!(shown(&[col("time").gt(ns(2_000_000))]).contains("time >"));
        // 1,500 ns is not a whole microsecond: left out rather than rounded.
        assert_eq!(shown(&[col("time").gt(ns(1_500))]), "none");
    }

    #[test]
    fn a_part_that_cannot_be_said_is_dropped_only_at_the_top() {
        let odd = col("speed").gt(col("lap"));
        // At the top level, the other conjunct still prunes.
        assert_eq!(
            shown(&[odd.clone().and(col("lap").eq(lit(2i32)))]),
            "lap = 2"
        );
        // Under OR or NOT, dropping it would prune rows that match: nothing is said.
        assert_eq!(shown(&[odd.clone().or(col("lap").eq(lit(2i32)))]), "none");
        assert_eq!(
            shown(&[Expr::Not(Box::new(odd.and(col("lap").eq(lit(2i32)))))]),
            "none"
        );
        // Unknown columns, overflowing ints and mismatched types say nothing.
        assert_eq!(shown(&[col("nope").eq(lit(1i32))]), "none");
        assert_eq!(shown(&[col("lap").eq(lit(1i64 << 40))]), "none");
        assert_eq!(shown(&[col("driver").eq(lit(1i32))]), "none");
    }

    #[test]
    fn nulls_lists_and_negation() {
        assert_eq!(shown(&[col("driver").is_null()]), "driver IS NULL");
        assert!(shown(&[col("lap").in_list(vec![lit(1i32), lit(2i32)], false)]).contains("IN"));
        assert!(shown(&[col("lap").in_list(vec![lit(1i32), lit(2i32)], true)]).contains("NOT IN"));
        assert_eq!(
            shown(&[Expr::Not(Box::new(col("lap").lt(lit(3i32))))]),
            "lap >= 3"
        );
    }
}
