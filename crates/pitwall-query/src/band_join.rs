//! Joins on equal keys and a value between two bounds: the join telemetry asks most
//! ("the anomalies of each lap": `a.source_id = l.driver AND a.time >= l.lap_start AND
//! a.time <= l.lap_end`; events in sessions, stints or shifts alike).
//!
//! DataFusion plans it as a hash join on the keys with the bounds as a filter: every row
//! of the probe side meets every build row of its key, and the filter throws away nearly
//! all of the pairs. A driver with 7,000 laps and 500 anomaly starts makes 3.5 million
//! pairs for the 500 that match; at 100 million rows that was most of the query's time.
//! [`BandJoinRule`] swaps such a hash join for a [`BandJoinExec`]: the same inputs,
//! partitioning, output and properties, but the build side indexed per key in value
//! order, so each probe row finds its matches by binary search:
//! - points on the build side: sorted by value; a probe row's interval is a range of it;
//! - intervals on the build side: sorted by lower bound with the running largest upper
//!   bound; a probe row's point walks back from the last interval starting at or before
//!   it, and stops where no earlier interval reaches it (at once for disjoint ones).
//!
//! Taken over only where the result is the same: inner joins, and outer joins keeping
//! the probe side or (partitioned, each partition on its own) the build side; keys of
//! one type on both sides, not floating point, nulls equal to nothing; the filter
//! exactly the two bounds, on integer, date or timestamp values of one type.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, RecordBatchOptions, UInt32Array};
use arrow::compute::{cast, concat_batches, take};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::common::{JoinSide, JoinType, NullEquality};
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, Column};
use datafusion::physical_expr::{PhysicalExpr, PhysicalExprRef};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::utils::JoinFilter;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};

/// Replaces hash joins whose filter is a band on one value (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct BandJoinRule;

impl PhysicalOptimizerRule for BandJoinRule {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        crate::rules::replace_each(plan, BandJoinExec::try_from_hash_join)
    }

    fn name(&self) -> &str {
        "band_join"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A column of a join's input: its side and its index there.
type SideColumn = (JoinSide, usize);

/// A comparison read as "subject op other".
type Reading = (SideColumn, Operator, SideColumn);

/// Build rows of one key as `(value or lower bound, upper bound, row)`.
type Entries = Vec<(i64, i64, u32)>;

/// `point >= lo AND point <= hi` (either bound may be strict), the point a column of
/// one side and the bounds columns of the other.
#[derive(Debug, Clone)]
struct Band {
    /// The side whose column is the point.
    point_side: JoinSide,
    point: PhysicalExprRef,
    lo: PhysicalExprRef,
    lo_strict: bool,
    hi: PhysicalExprRef,
    hi_strict: bool,
}

/// A hash join on keys whose filter is a [`Band`], executed by binary search in the
/// build side's values per key (see the module docs).
#[derive(Debug)]
pub(crate) struct BandJoinExec {
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    on: Vec<(PhysicalExprRef, PhysicalExprRef)>,
    band: Band,
    join_type: JoinType,
    mode: PartitionMode,
    /// Columns of the joined row (the left's, then the right's) that are output.
    projection: Option<Vec<usize>>,
    join_schema: SchemaRef,
    properties: Arc<PlanProperties>,
    /// The build side of a `CollectLeft` join, indexed once for every partition.
    shared: Arc<tokio::sync::OnceCell<Arc<Build>>>,
    metrics: ExecutionPlanMetricsSet,
}

impl BandJoinExec {
    /// The band join doing what `hj` does, if it can (see the module docs).
    fn try_from_hash_join(hj: &HashJoinExec) -> Option<Self> {
        // A left join keeps the build side's unmatched rows: partitioned, each partition
        // knows its own; collected once for every partition, none would know.
        match (hj.join_type(), hj.partition_mode()) {
            (
                JoinType::Inner | JoinType::Right,
                PartitionMode::Partitioned | PartitionMode::CollectLeft,
            )
            | (JoinType::Left, PartitionMode::Partitioned) => {}
            _ => return None,
        }
        if hj.null_equality() != NullEquality::NullEqualsNothing
            || hj.null_aware
            || hj.fetch().is_some()
            || hj.on().is_empty()
        {
            return None;
        }
        let (left_schema, right_schema) = (hj.left().schema(), hj.right().schema());
        for (l, r) in hj.on() {
            let (lt, rt) = (
                l.data_type(&left_schema).ok()?,
                r.data_type(&right_schema).ok()?,
            );
            if lt != rt
                || lt.is_floating()
                || RowConverter::new(vec![SortField::new(lt.clone())]).is_err()
            {
                return None;
            }
        }
        let band = band_of(hj.filter()?, &left_schema, &right_schema)?;
        Some(BandJoinExec {
            left: Arc::clone(hj.left()),
            right: Arc::clone(hj.right()),
            on: hj.on().to_vec(),
            band,
            join_type: *hj.join_type(),
            mode: *hj.partition_mode(),
            projection: hj.projection.as_ref().map(|p| p.to_vec()),
            join_schema: Arc::clone(hj.join_schema()),
            properties: Arc::clone(hj.properties()),
            shared: Arc::default(),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// Reads and indexes the build side (the left) of `partition`: once for every
    /// partition when the build side is collected whole.
    fn build(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> impl Future<Output = Result<Arc<Build>>> + Send + 'static {
        let left = Arc::clone(&self.left);
        let keys: Vec<_> = self.on.iter().map(|(l, _)| Arc::clone(l)).collect();
        let band = self.band.clone();
        let shared = (self.mode == PartitionMode::CollectLeft).then(|| Arc::clone(&self.shared));
        async move {
            let make = |partition: usize| async move {
                let reservation =
                    MemoryConsumer::new("BandJoinExec build side").register(context.memory_pool());
                let batches: Vec<RecordBatch> = left
                    .execute(partition, Arc::clone(&context))?
                    .try_collect()
                    .await?;
                Build::new(&left.schema(), &batches, &keys, &band, reservation).map(Arc::new)
            };
            match shared {
                Some(shared) => shared.get_or_try_init(|| make(0)).await.cloned(),
                None => make(partition).await,
            }
        }
    }
}

/// The band in `filter`, if the filter is exactly one (see [`Band`]).
fn band_of(filter: &JoinFilter, left: &SchemaRef, right: &SchemaRef) -> Option<Band> {
    let and = filter.expression().as_any().downcast_ref::<BinaryExpr>()?;
    if *and.op() != Operator::And {
        return None;
    }
    // Each comparison as "subject op other", read both ways round.
    let column = |e: &Arc<dyn PhysicalExpr>| -> Option<SideColumn> {
        let c = e.as_any().downcast_ref::<Column>()?;
        let i = filter.column_indices().get(c.index())?;
        matches!(i.side, JoinSide::Left | JoinSide::Right).then_some((i.side, i.index))
    };
    let readings = |e: &Arc<dyn PhysicalExpr>| -> Option<[Reading; 2]> {
        let cmp = e.as_any().downcast_ref::<BinaryExpr>()?;
        let (a, b) = (column(cmp.left())?, column(cmp.right())?);
        let flipped = match cmp.op() {
            Operator::Lt => Operator::Gt,
            Operator::LtEq => Operator::GtEq,
            Operator::Gt => Operator::Lt,
            Operator::GtEq => Operator::LtEq,
            _ => return None,
        };
        (a.0 != b.0).then_some([(a, *cmp.op(), b), (b, flipped, a)])
    };
    let (first, second) = (readings(and.left())?, readings(and.right())?);
    let lower = |op: Operator| matches!(op, Operator::Gt | Operator::GtEq);
    let (point, (lo, lo_op), (hi, hi_op)) = first
        .iter()
        .flat_map(|x| second.iter().map(move |y| (x, y)))
        .find_map(|(x, y)| {
            if x.0 != y.0 || lower(x.1) == lower(y.1) {
                return None;
            }
            let (l, h) = if lower(x.1) { (x, y) } else { (y, x) };
            Some((x.0, (l.2, l.1), (h.2, h.1)))
        })?;
    let schema = |side: JoinSide| if side == JoinSide::Left { left } else { right };
    let col = |(side, i): SideColumn| -> Option<(PhysicalExprRef, DataType)> {
        let field = schema(side).fields().get(i)?;
        Some((
            Arc::new(Column::new(field.name(), i)) as PhysicalExprRef,
            field.data_type().clone(),
        ))
    };
    let ((p, pt), (l, lt), (h, ht)) = (col(point)?, col(lo)?, col(hi)?);
    let banded = |t: &DataType| {
        matches!(
            t,
            DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::UInt8
                | DataType::UInt16
                | DataType::UInt32
                | DataType::Date32
                | DataType::Date64
                | DataType::Timestamp(..)
        )
    };
    (pt == lt && pt == ht && banded(&pt)).then(|| Band {
        point_side: point.0,
        point: p,
        lo: l,
        lo_strict: lo_op == Operator::Gt,
        hi: h,
        hi_strict: hi_op == Operator::Lt,
    })
}

/// Values as `i64` (their type is one [`band_of`] accepts), nulls as `None`.
fn values(e: &PhysicalExprRef, batch: &RecordBatch) -> Result<Int64Array> {
    let array = e.evaluate(batch)?.into_array(batch.num_rows())?;
    let array = cast(&array, &DataType::Int64)?;
    array
        .as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| DataFusionError::Internal("band join: values did not cast to i64".into()))
}

/// Each row's key in one encoding for both sides (arrow's row format).
struct Keys {
    rows: arrow::row::Rows,
    /// Rows whose key columns are all set (a null key matches nothing).
    valid: Vec<bool>,
}

impl Keys {
    fn of(
        converter: &RowConverter,
        exprs: &[PhysicalExprRef],
        batch: &RecordBatch,
    ) -> Result<Self> {
        let columns = exprs
            .iter()
            .map(|e| e.evaluate(batch)?.into_array(batch.num_rows()))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let rows = converter.convert_columns(&columns)?;
        let valid = (0..batch.num_rows())
            .map(|i| columns.iter().all(|c| c.is_valid(i)))
            .collect();
        Ok(Keys { rows, valid })
    }

    /// Row `i`'s key, `None` where it is null; borrowed, so a probe allocates nothing.
    fn get(&self, i: usize) -> Option<&[u8]> {
        self.valid[i].then(|| self.rows.row(i).data())
    }
}

/// One key's build rows.
#[derive(Debug, Default)]
struct Rows {
    /// Points: their values, ascending; intervals: their lower bounds, ascending.
    at: Vec<i64>,
    /// Intervals: upper bounds; the largest of them up to each position.
    hi: Vec<i64>,
    reach: Vec<i64>,
    /// The build side's row of each.
    row: Vec<u32>,
}

/// The build side, read whole and indexed by key.
#[derive(Debug)]
struct Build {
    batch: RecordBatch,
    converter: RowConverter,
    by_key: HashMap<Box<[u8]>, Rows>,
    /// Whether the build side holds the points (else the intervals).
    points: bool,
    _reservation: MemoryReservation,
}

/// Inclusive bounds from possibly strict ones; `None` when nothing fits between.
fn inclusive(lo: i64, lo_strict: bool, hi: i64, hi_strict: bool) -> Option<(i64, i64)> {
    let lo = if lo_strict { lo.checked_add(1)? } else { lo };
    let hi = if hi_strict { hi.checked_sub(1)? } else { hi };
    (lo <= hi).then_some((lo, hi))
}

impl Build {
    fn new(
        schema: &SchemaRef,
        batches: &[RecordBatch],
        key_exprs: &[PhysicalExprRef],
        band: &Band,
        reservation: MemoryReservation,
    ) -> Result<Self> {
        let batch = concat_batches(schema, batches)?;
        reservation.try_grow(batch.get_array_memory_size())?;
        let fields = key_exprs
            .iter()
            .map(|e| Ok(SortField::new(e.data_type(schema)?)))
            .collect::<Result<Vec<_>>>()?;
        let converter = RowConverter::new(fields)?;
        let keys = Keys::of(&converter, key_exprs, &batch)?;
        let points = band.point_side == JoinSide::Left;
        let mut by_key: HashMap<Box<[u8]>, Entries> = HashMap::new();
        if points {
            let v = values(&band.point, &batch)?;
            for i in 0..batch.num_rows() {
                if let Some(key) = keys.get(i)
                    && v.is_valid(i)
                {
                    by_key
                        .entry(key.into())
                        .or_default()
                        .push((v.value(i), 0, i as u32));
                }
            }
        } else {
            let (lo, hi) = (values(&band.lo, &batch)?, values(&band.hi, &batch)?);
            for i in 0..batch.num_rows() {
                if let Some(key) = keys.get(i)
                    && lo.is_valid(i)
                    && hi.is_valid(i)
                    && let Some((l, h)) =
                        inclusive(lo.value(i), band.lo_strict, hi.value(i), band.hi_strict)
                {
                    by_key.entry(key.into()).or_default().push((l, h, i as u32));
                }
            }
        }
        let mut size = 0;
        let by_key = by_key
            .into_iter()
            .map(|(key, mut list)| {
                list.sort_unstable();
                let mut reach = i64::MIN;
                let rows = Rows {
                    at: list.iter().map(|x| x.0).collect(),
                    hi: if points {
                        Vec::new()
                    } else {
                        list.iter().map(|x| x.1).collect()
                    },
                    reach: if points {
                        Vec::new()
                    } else {
                        list.iter()
                            .map(|x| {
                                reach = reach.max(x.1);
                                reach
                            })
                            .collect()
                    },
                    row: list.iter().map(|x| x.2).collect(),
                };
                size += key.len() + list.len() * if points { 12 } else { 28 } + 64;
                (key, rows)
            })
            .collect();
        reservation.try_grow(size)?;
        Ok(Build {
            batch,
            converter,
            by_key,
            points,
            _reservation: reservation,
        })
    }

    /// Calls `found` with each build row that matches the probe row whose value is
    /// `point` (build side: intervals) or whose interval is `lo..=hi` (build side:
    /// points), as `(lo, hi)` with `lo == hi` for a point.
    fn matches(&self, key: &[u8], (lo, hi): (i64, i64), mut found: impl FnMut(u32)) {
        let Some(rows) = self.by_key.get(key) else {
            return;
        };
        if self.points {
            let start = rows.at.partition_point(|&v| v < lo);
            let end = rows.at.partition_point(|&v| v <= hi);
            for &r in &rows.row[start..end.max(start)] {
                found(r);
            }
        } else {
            let point = lo;
            let end = rows.at.partition_point(|&l| l <= point);
            for j in (0..end).rev() {
                if rows.reach[j] < point {
                    break;
                }
                if rows.hi[j] >= point {
                    found(rows.row[j]);
                }
            }
        }
    }
}

/// One partition's join: the probe side streamed through the build side's index.
struct Probe {
    build: Arc<Build>,
    keys: Vec<PhysicalExprRef>,
    band: Band,
    join_type: JoinType,
    projection: Vec<usize>,
    left_columns: usize,
    schema: SchemaRef,
    batch_size: usize,
    /// Build rows matched so far (a left join emits the others at the end; empty for
    /// the other joins).
    matched: Vec<bool>,
    metrics: BaselineMetrics,
}

impl Probe {
    /// The joined rows of `(build row, probe row)` pairs, `None` for the null side of
    /// an outer join's unmatched row.
    fn output(
        &self,
        probe: Option<&RecordBatch>,
        build_rows: &UInt32Array,
        probe_rows: &UInt32Array,
    ) -> Result<RecordBatch> {
        let columns = self
            .projection
            .iter()
            .enumerate()
            .map(|(pos, &i)| {
                if i < self.left_columns {
                    Ok(take(self.build.batch.column(i), build_rows, None)?)
                } else {
                    let c = i - self.left_columns;
                    match probe {
                        Some(p) => Ok(take(p.column(c), probe_rows, None)?),
                        None => Ok(arrow::array::new_null_array(
                            self.schema.field(pos).data_type(),
                            probe_rows.len(),
                        )),
                    }
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(build_rows.len())),
        )?)
    }

    /// Joins one probe batch.
    fn join(&mut self, batch: &RecordBatch) -> Result<Vec<RecordBatch>> {
        let timer = self.metrics.elapsed_compute().timer();
        let keys = Keys::of(&self.build.converter, &self.keys, batch)?;
        let (lo, hi) = if self.build.points {
            (values(&self.band.lo, batch)?, values(&self.band.hi, batch)?)
        } else {
            let v = values(&self.band.point, batch)?;
            (v.clone(), v)
        };
        let keep_probe = self.join_type == JoinType::Right;
        let mut out = Vec::new();
        let (mut b, mut p): (Vec<Option<u32>>, Vec<u32>) = (Vec::new(), Vec::new());
        for i in 0..batch.num_rows() {
            let before = b.len();
            if let Some(key) = keys.get(i)
                && lo.is_valid(i)
                && hi.is_valid(i)
            {
                let bounds = if self.build.points {
                    inclusive(
                        lo.value(i),
                        self.band.lo_strict,
                        hi.value(i),
                        self.band.hi_strict,
                    )
                } else {
                    Some((lo.value(i), lo.value(i)))
                };
                if let Some(bounds) = bounds {
                    let matched = &mut self.matched;
                    self.build.matches(key, bounds, |r| {
                        b.push(Some(r));
                        p.push(i as u32);
                        if let Some(m) = matched.get_mut(r as usize) {
                            *m = true;
                        }
                    });
                }
            }
            if keep_probe && b.len() == before {
                b.push(None);
                p.push(i as u32);
            }
            if b.len() >= self.batch_size {
                out.push(self.output(
                    Some(batch),
                    &UInt32Array::from(std::mem::take(&mut b)),
                    &UInt32Array::from(std::mem::take(&mut p)),
                )?);
            }
        }
        if !b.is_empty() {
            out.push(self.output(Some(batch), &UInt32Array::from(b), &UInt32Array::from(p))?);
        }
        drop(timer);
        self.record(&out);
        Ok(out)
    }

    /// Counts `out` in the metrics `EXPLAIN ANALYZE` shows.
    fn record(&self, out: &[RecordBatch]) {
        for o in out {
            self.metrics.record_output(o.num_rows());
            self.metrics.output_batches().add(1);
        }
    }

    /// A left join's build rows that matched nothing, with nulls for the probe side.
    fn unmatched(&mut self) -> Result<Vec<RecordBatch>> {
        if self.join_type != JoinType::Left {
            return Ok(Vec::new());
        }
        let rows: Vec<u32> = (0..self.build.batch.num_rows() as u32)
            .filter(|&r| !self.matched[r as usize])
            .collect();
        let out = rows
            .chunks(self.batch_size.max(1))
            .map(|chunk| {
                let n = chunk.len();
                self.output(
                    None,
                    &UInt32Array::from(chunk.to_vec()),
                    &UInt32Array::from(vec![0u32; n]),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        self.record(&out);
        Ok(out)
    }
}

impl DisplayAs for BandJoinExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on: Vec<String> = self.on.iter().map(|(l, r)| format!("({l}, {r})")).collect();
        let b = &self.band;
        write!(
            f,
            "BandJoinExec: mode={:?}, join_type={:?}, on=[{}], band={} {} {} {} {}, point on the {} side",
            self.mode,
            self.join_type,
            on.join(", "),
            b.lo,
            if b.lo_strict { "<" } else { "<=" },
            b.point,
            if b.hi_strict { "<" } else { "<=" },
            b.hi,
            if b.point_side == JoinSide::Left {
                "build"
            } else {
                "probe"
            },
        )
    }
}

impl ExecutionPlan for BandJoinExec {
    fn name(&self) -> &str {
        "BandJoinExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        match self.mode {
            PartitionMode::Partitioned => {
                let (l, r) = self
                    .on
                    .iter()
                    .map(|(l, r)| (Arc::clone(l), Arc::clone(r)))
                    .unzip();
                vec![
                    Distribution::HashPartitioned(l),
                    Distribution::HashPartitioned(r),
                ]
            }
            _ => vec![
                Distribution::SinglePartition,
                Distribution::UnspecifiedDistribution,
            ],
        }
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        // Probe rows are joined in their order, as the hash join does.
        vec![
            false,
            matches!(self.join_type, JoinType::Inner | JoinType::Right),
        ]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.left, &self.right]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [left, right]: [Arc<dyn ExecutionPlan>; 2] = children
            .try_into()
            .map_err(|_| DataFusionError::Internal("BandJoinExec has two children".into()))?;
        Ok(Arc::new(BandJoinExec {
            left,
            right,
            on: self.on.clone(),
            band: self.band.clone(),
            join_type: self.join_type,
            mode: self.mode,
            projection: self.projection.clone(),
            join_schema: Arc::clone(&self.join_schema),
            properties: Arc::clone(&self.properties),
            shared: Arc::default(),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let probe_stream = self.right.execute(partition, Arc::clone(&context))?;
        let schema = self.schema();
        let projection = self
            .projection
            .clone()
            .unwrap_or_else(|| (0..self.join_schema.fields().len()).collect());
        let build = self.build(partition, Arc::clone(&context));
        let (keys, band, join_type) = (
            self.on
                .iter()
                .map(|(_, r)| Arc::clone(r))
                .collect::<Vec<_>>(),
            self.band.clone(),
            self.join_type,
        );
        let left_columns = self.left.schema().fields().len();
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let out_schema = Arc::clone(&schema);
        let batch_size = context.session_config().batch_size();
        let started = async move {
            let build = build.await?;
            // Only a left join asks which build rows matched.
            let matched = if join_type == JoinType::Left {
                vec![false; build.batch.num_rows()]
            } else {
                Vec::new()
            };
            Ok::<_, DataFusionError>((
                Probe {
                    build,
                    keys,
                    band,
                    join_type,
                    projection,
                    left_columns,
                    schema: out_schema,
                    batch_size,
                    matched,
                    metrics,
                },
                probe_stream,
            ))
        };
        let stream = futures::stream::once(started)
            .map_ok(|(probe, probe_stream)| {
                futures::stream::unfold(Some((probe, probe_stream)), |state| async move {
                    let (mut probe, mut input) = state?;
                    match input.next().await {
                        Some(Ok(batch)) => {
                            let out = probe.join(&batch);
                            let done = out.is_err();
                            Some((out, (!done).then_some((probe, input))))
                        }
                        Some(Err(e)) => Some((Err(e), None)),
                        None => Some((probe.unmatched(), None)),
                    }
                })
                .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
                .try_flatten()
            })
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{Field, Schema, TimeUnit};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// A lap as the tests make it: driver, lap, start, end.
    type LapRow<'a> = (Option<&'a str>, i64, Option<i64>, Option<i64>);

    use crate::rules::testing::{Lcg, sorted_result_and_plan};

    /// Laps: per driver, back-to-back intervals (some overlapping, some empty, some
    /// null); events: points per driver, a few with null keys or times. In two
    /// partitions each.
    fn tables(seed: u64, laps: usize, events: usize) -> (MemTable, MemTable) {
        let mut g = Lcg(seed);
        let drivers = ["VER", "HAM", "LEC", "NOR"];
        let lap_schema = Arc::new(Schema::new(vec![
            Field::new("driver", DataType::Utf8, true),
            Field::new("lap", DataType::Int64, false),
            Field::new(
                "lap_start",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new(
                "lap_end",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ]));
        let event_schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("source_id", DataType::Utf8, true),
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ]));
        let mut lap_rows = Vec::new();
        let mut at = [0i64; 4];
        for lap in 0..laps {
            let d = g.next(4) as usize;
            let start = at[d] - g.next(3) as i64; // sometimes overlapping the last
            let len = g.next(20) as i64 - 1; // sometimes empty (end before start)
            at[d] = start + len.max(0) + 1;
            let driver = (g.next(25) != 0).then_some(drivers[d]);
            let start = (g.next(30) != 0).then_some(start);
            lap_rows.push((driver, lap as i64, start, Some(start.unwrap_or(0) + len)));
        }
        let end = at.iter().max().copied().unwrap_or(0) + 5;
        let event_rows: Vec<_> = (0..events)
            .map(|id| {
                let driver = (g.next(25) != 0).then(|| drivers[g.next(4) as usize]);
                let time = (g.next(30) != 0).then(|| g.next(end as u64 + 10) as i64 - 5);
                (id as i64, driver, time)
            })
            .collect();
        let lap_batch = |rows: &[LapRow<'_>]| {
            RecordBatch::try_new(
                Arc::clone(&lap_schema),
                vec![
                    Arc::new(StringArray::from(
                        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                    )),
                    Arc::new(Int64Array::from(
                        rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                    )),
                    Arc::new(
                        TimestampMicrosecondArray::from(
                            rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                        )
                        .with_timezone("UTC"),
                    ),
                    Arc::new(
                        TimestampMicrosecondArray::from(
                            rows.iter().map(|r| r.3).collect::<Vec<_>>(),
                        )
                        .with_timezone("UTC"),
                    ),
                ],
            )
            .unwrap()
        };
        let event_batch = |rows: &[(i64, Option<&str>, Option<i64>)]| {
            RecordBatch::try_new(
                Arc::clone(&event_schema),
                vec![
                    Arc::new(Int64Array::from(
                        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                    )),
                    Arc::new(StringArray::from(
                        rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                    )),
                    Arc::new(
                        TimestampMicrosecondArray::from(
                            rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                        )
                        .with_timezone("UTC"),
                    ),
                ],
            )
            .unwrap()
        };
        let (l1, l2) = lap_rows.split_at(laps / 2);
        let (e1, e2) = event_rows.split_at(events / 3);
        (
            MemTable::try_new(
                Arc::clone(&lap_schema),
                vec![vec![lap_batch(l1)], vec![lap_batch(l2)]],
            )
            .unwrap(),
            MemTable::try_new(
                Arc::clone(&event_schema),
                vec![vec![event_batch(e1)], vec![event_batch(e2)]],
            )
            .unwrap(),
        )
    }

    /// `sql`'s result, sorted, and its plan, with or without the band join.
    async fn run(
        sql: &str,
        seed: u64,
        sizes: (usize, usize),
        band: bool,
        collect_left: bool,
    ) -> (String, String) {
        let mut config = SessionConfig::new()
            .with_target_partitions(2)
            .with_batch_size(7);
        let threshold = if collect_left { usize::MAX } else { 0 };
        config
            .options_mut()
            .optimizer
            .hash_join_single_partition_threshold = threshold;
        config
            .options_mut()
            .optimizer
            .hash_join_single_partition_threshold_rows = threshold;
        let mut builder = datafusion::execution::SessionStateBuilder::new()
            .with_config(config)
            .with_default_features();
        if band {
            builder = builder.with_physical_optimizer_rule(Arc::new(BandJoinRule));
        }
        let ctx = SessionContext::new_with_state(builder.build());
        let (laps, events) = tables(seed, sizes.0, sizes.1);
        ctx.register_table("laps", Arc::new(laps)).unwrap();
        ctx.register_table("events", Arc::new(events)).unwrap();
        sorted_result_and_plan(&ctx, sql).await
    }

    /// Every shape the rule takes over gives the hash join's rows, and the rule does take
    /// it over.
    #[tokio::test]
    async fn band_joins_give_the_hash_joins_rows() {
        let joins = [
            // The lap question's shape: intervals keep their rows.
            "SELECT l.driver, l.lap, count(e.id) AS n FROM laps l LEFT JOIN events e ON e.source_id = l.driver AND e.time >= l.lap_start AND e.time <= l.lap_end GROUP BY l.driver, l.lap",
            "SELECT l.lap, e.id FROM laps l JOIN events e ON l.driver = e.source_id AND l.lap_start <= e.time AND e.time < l.lap_end",
            "SELECT l.lap, e.id, e.time FROM events e RIGHT JOIN laps l ON e.source_id = l.driver AND e.time > l.lap_start AND l.lap_end >= e.time",
            // Points keep theirs.
            "SELECT e.id, l.lap FROM events e LEFT JOIN laps l ON e.source_id = l.driver AND e.time BETWEEN l.lap_start AND l.lap_end",
            "SELECT e.id, l.lap FROM laps l RIGHT JOIN events e ON e.source_id = l.driver AND e.time >= l.lap_start AND e.time < l.lap_end",
        ];
        // Many laps and few events, and the other way round: each side gets to be the
        // build side.
        let mut sides = std::collections::BTreeSet::new();
        for (sizes, seed) in [((300, 40), 1), ((20, 500), 2), ((150, 150), 3)] {
            for collect_left in [false, true] {
                for sql in joins {
                    let (want, hash_plan) = run(sql, seed, sizes, false, collect_left).await;
                    let (got, plan) = run(sql, seed, sizes, true, collect_left).await;
                    assert!(hash_plan.contains("HashJoinExec"), "{hash_plan}");
                    assert_eq!(
                        got, want,
                        "{sql}\nsizes {sizes:?}, collect_left {collect_left}\n{plan}"
                    );
                    assert!(!want.is_empty(), "{sql}: no rows to compare");
                    for side in ["point on the build side", "point on the probe side"] {
                        if plan.contains(side) {
                            sides.insert(side);
                        }
                    }
                    if !plan.contains("BandJoinExec") {
                        // Only a left join collected whole stays a hash join.
                        assert!(
                            collect_left && hash_plan.contains("join_type=Left"),
                            "{sql}\n{plan}"
                        );
                    }
                }
            }
        }
    }

    /// Filters that are not exactly a band on one value stay with the hash join.
    #[tokio::test]
    async fn other_filters_stay_hash_joins() {
        for sql in [
            "SELECT l.lap, e.id FROM laps l JOIN events e ON l.driver = e.source_id AND e.time >= l.lap_start",
            "SELECT l.lap, e.id FROM laps l JOIN events e ON l.driver = e.source_id AND e.time >= l.lap_start AND e.time <= l.lap_end AND e.id <> l.lap",
            "SELECT l.lap, e.id FROM laps l JOIN events e ON l.driver = e.source_id AND e.time >= l.lap_start AND e.id <= l.lap",
            "SELECT l.lap, e.id FROM laps l FULL JOIN events e ON l.driver = e.source_id AND e.time >= l.lap_start AND e.time <= l.lap_end",
        ] {
            let (want, _) = run(sql, 4, (100, 100), false, false).await;
            let (got, plan) = run(sql, 4, (100, 100), true, false).await;
            assert_eq!(got, want, "{sql}");
            assert!(!plan.contains("BandJoinExec"), "{sql}\n{plan}");
        }
    }
}
