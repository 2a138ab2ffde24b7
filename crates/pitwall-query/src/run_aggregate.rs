//! Partial aggregation over runs: the lake's tables are compacted in order of their
//! sources and time, so the rows of one group (a driver's lap, a sensor's hour) come one
//! after another. Hashing every row into a table to find its group, as DataFusion's
//! partial aggregation does, is then most of a query's time (100 M car rows grouped by
//! driver and lap: 1.35 s of 1.51). [`RunAggregateExec`] takes the place of a partial
//! `AggregateExec` whose aggregates it knows (`min`, `max` of integers, dates and
//! timestamps, and `count`): it finds the runs of equal group keys in each batch with
//! Arrow's `partition` kernel and emits one partial state per run, which the final
//! aggregation merges as it would the hashed partial's (partial output may repeat a
//! group). When the first batch of a partition shows short runs (input not in group
//! order), that partition goes through DataFusion's own partial aggregation instead.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex};

use arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, PrimitiveArray, RecordBatch, UInt32Array,
};
use arrow::compute::{partition, take};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{StreamExt, TryStreamExt};

/// A partition whose first batch has runs shorter than this on average is aggregated by
/// hashing: below it, one state per run is more than hashing saves.
const MIN_MEAN_RUN: usize = 16;

/// Puts [`RunAggregateExec`] in the place of every partial aggregation it can do.
#[derive(Debug, Default)]
pub(crate) struct RunAggregateRule;

impl PhysicalOptimizerRule for RunAggregateRule {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        crate::rules::replace_each(plan, RunAggregateExec::try_from_aggregate)
    }

    fn name(&self) -> &str {
        "run_aggregate"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// One aggregate as a state per run.
#[derive(Debug, Clone)]
enum RunAgg {
    Min(Arc<dyn PhysicalExpr>),
    Max(Arc<dyn PhysicalExpr>),
    /// Rows of the run (`count(*)`, `count(1)`).
    CountRows,
    /// Non-null values of the argument in the run.
    Count(Arc<dyn PhysicalExpr>),
}

/// Whether min and max of `t` over runs are computed here (the types the lake's
/// integer, date and time columns have; floats are left to DataFusion).
fn orderable(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Date32
            | DataType::Date64
            | DataType::Timestamp(_, _)
    )
}

impl RunAgg {
    fn of(agg: &AggregateFunctionExpr, input: &SchemaRef) -> Option<Self> {
        if agg.is_distinct() || !agg.order_bys().is_empty() || agg.is_reversed() {
            return None;
        }
        let args = agg.expressions();
        let [arg] = args.as_slice() else {
            return None;
        };
        let arg_type = arg.data_type(input).ok()?;
        let state = agg.state_fields().ok()?;
        let [state] = state.as_slice() else {
            return None;
        };
        match agg.fun().name() {
            "min" | "max" if orderable(&arg_type) && state.data_type() == &arg_type => {
                Some(if agg.fun().name() == "min" {
                    RunAgg::Min(Arc::clone(arg))
                } else {
                    RunAgg::Max(Arc::clone(arg))
                })
            }
            "count" if state.data_type() == &DataType::Int64 => {
                let literal = arg
                    .as_any()
                    .downcast_ref::<Literal>()
                    .is_some_and(|l| !l.value().is_null());
                Some(if literal {
                    RunAgg::CountRows
                } else {
                    RunAgg::Count(Arc::clone(arg))
                })
            }
            _ => None,
        }
    }

    /// The partial state of each run of `batch`.
    fn states(&self, batch: &RecordBatch, runs: &[(usize, usize)]) -> Result<ArrayRef> {
        Ok(match self {
            RunAgg::CountRows => Arc::new(Int64Array::from_iter_values(
                runs.iter().map(|&(_, len)| len as i64),
            )),
            RunAgg::Count(arg) => {
                let values = arg.evaluate(batch)?.into_array(batch.num_rows())?;
                Arc::new(Int64Array::from_iter_values(runs.iter().map(
                    |&(start, len)| (len - values.slice(start, len).null_count()) as i64,
                )))
            }
            RunAgg::Min(arg) | RunAgg::Max(arg) => {
                let values = arg.evaluate(batch)?.into_array(batch.num_rows())?;
                let max = matches!(self, RunAgg::Max(_));
                extremes(&values, runs, max)?
            }
        })
    }
}

/// The least (or greatest) value of each run, null for a run of nulls.
fn extremes(values: &ArrayRef, runs: &[(usize, usize)], max: bool) -> Result<ArrayRef> {
    fn of<T: ArrowPrimitiveType>(
        values: &ArrayRef,
        runs: &[(usize, usize)],
        max: bool,
    ) -> ArrayRef {
        let values = values.as_primitive::<T>();
        let out: PrimitiveArray<T> = runs
            .iter()
            .map(|&(start, len)| {
                let run = values.slice(start, len);
                if max {
                    arrow::compute::max(&run)
                } else {
                    arrow::compute::min(&run)
                }
            })
            .collect();
        Arc::new(out.with_data_type(values.data_type().clone()))
    }
    use arrow::datatypes::*;
    Ok(match values.data_type() {
        DataType::Int8 => of::<Int8Type>(values, runs, max),
        DataType::Int16 => of::<Int16Type>(values, runs, max),
        DataType::Int32 => of::<Int32Type>(values, runs, max),
        DataType::Int64 => of::<Int64Type>(values, runs, max),
        DataType::UInt8 => of::<UInt8Type>(values, runs, max),
        DataType::UInt16 => of::<UInt16Type>(values, runs, max),
        DataType::UInt32 => of::<UInt32Type>(values, runs, max),
        DataType::UInt64 => of::<UInt64Type>(values, runs, max),
        DataType::Date32 => of::<Date32Type>(values, runs, max),
        DataType::Date64 => of::<Date64Type>(values, runs, max),
        DataType::Timestamp(TimeUnit::Second, _) => of::<TimestampSecondType>(values, runs, max),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            of::<TimestampMillisecondType>(values, runs, max)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            of::<TimestampMicrosecondType>(values, runs, max)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            of::<TimestampNanosecondType>(values, runs, max)
        }
        other => {
            return Err(DataFusionError::Internal(format!(
                "run aggregation of min/max over {other}"
            )));
        }
    })
}

/// A partial aggregation by runs of equal group keys (see the module).
#[derive(Debug, Clone)]
pub(crate) struct RunAggregateExec {
    /// The partial aggregation it replaces: its input, group keys, output schema and
    /// properties, and what a partition of unordered input runs instead.
    hashed: Arc<AggregateExec>,
    groups: Vec<Arc<dyn PhysicalExpr>>,
    aggs: Vec<RunAgg>,
    metrics: ExecutionPlanMetricsSet,
}

impl RunAggregateExec {
    fn try_from_aggregate(agg: &AggregateExec) -> Option<Self> {
        let group_by = agg.group_expr();
        if *agg.mode() != AggregateMode::Partial
            || !group_by.is_single()
            || group_by.has_grouping_set()
            || group_by.expr().is_empty()
            || agg.limit_options().is_some()
            || agg.filter_expr().iter().any(Option::is_some)
        {
            return None;
        }
        let input = agg.input_schema();
        let aggs = agg
            .aggr_expr()
            .iter()
            .map(|a| RunAgg::of(a, &input))
            .collect::<Option<Vec<_>>>()?;
        // The output: the group keys, then one state column per aggregate.
        if agg.schema().fields().len() != group_by.expr().len() + aggs.len() {
            return None;
        }
        Some(RunAggregateExec {
            hashed: Arc::new(agg.clone()),
            groups: group_by.expr().iter().map(|(e, _)| Arc::clone(e)).collect(),
            aggs,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// One state row per run of `batch`; `None` if its runs are too short to be worth it.
    fn aggregate(&self, batch: &RecordBatch, first: bool) -> Result<Option<RecordBatch>> {
        let keys = self
            .groups
            .iter()
            .map(|g| g.evaluate(batch)?.into_array(batch.num_rows()))
            .collect::<Result<Vec<_>>>()?;
        let runs: Vec<(usize, usize)> = partition(&keys)?
            .ranges()
            .into_iter()
            .map(|r| (r.start, r.len()))
            .collect();
        if first && runs.len() * MIN_MEAN_RUN > batch.num_rows() {
            return Ok(None);
        }
        let starts = UInt32Array::from_iter_values(runs.iter().map(|&(s, _)| s as u32));
        let mut columns = keys
            .iter()
            .map(|k| take(k, &starts, None))
            .collect::<Result<Vec<_>, _>>()?;
        for agg in &self.aggs {
            columns.push(agg.states(batch, &runs)?);
        }
        Ok(Some(RecordBatch::try_new(self.schema(), columns)?))
    }
}

impl DisplayAs for RunAggregateExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RunAggregateExec: mode=Partial, by runs of gby=[")?;
        for (i, (_, name)) in self.hashed.group_expr().expr().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(name)?;
        }
        f.write_str("], aggr=[")?;
        for (i, a) in self.hashed.aggr_expr().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(a.name())?;
        }
        f.write_str("]")
    }
}

impl ExecutionPlan for RunAggregateExec {
    fn name(&self) -> &str {
        "RunAggregateExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.hashed.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.hashed.input()]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let hashed = Arc::clone(&self.hashed).with_new_children(children)?;
        let agg = hashed
            .as_any()
            .downcast_ref::<AggregateExec>()
            .ok_or_else(|| DataFusionError::Internal("not an aggregation".into()))?;
        match RunAggregateExec::try_from_aggregate(agg) {
            Some(r) => Ok(Arc::new(r)),
            None => Ok(hashed),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let mut input = self
            .hashed
            .input()
            .execute(partition, Arc::clone(&context))?;
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let this = Arc::new(self.clone());
        let schema = self.schema();
        let stream = futures::stream::once(async move {
            // The first batch with rows decides how the partition is aggregated.
            let mut first = None;
            while let Some(batch) = input.next().await {
                let batch = batch?;
                if batch.num_rows() > 0 {
                    first = Some(batch);
                    break;
                }
            }
            let Some(first) = first else {
                return Ok::<_, DataFusionError>(
                    futures::stream::empty().boxed() as futures::stream::BoxStream<'static, _>
                );
            };
            let timer = metrics.elapsed_compute().timer();
            let by_runs = this.aggregate(&first, true)?;
            timer.done();
            let Some(by_runs) = by_runs else {
                // Not in group order: DataFusion's partial aggregation, fed the batch
                // taken and the rest.
                let rest = futures::stream::iter([Ok(first)]).chain(input);
                let replay = Arc::new(Replay::new(
                    Arc::clone(this.hashed.input()),
                    Box::pin(RecordBatchStreamAdapter::new(
                        this.hashed.input().schema(),
                        rest,
                    )),
                ));
                let hashed = Arc::clone(&this.hashed).with_new_children(vec![replay])?;
                return Ok(hashed.execute(partition, context)?.boxed());
            };
            let rest = input.map(move |batch| {
                let batch = batch?;
                let _timer = metrics.elapsed_compute().timer();
                let out = this
                    .aggregate(&batch, false)?
                    .expect("only a first batch is refused");
                metrics.record_output(out.num_rows());
                Ok(out)
            });
            Ok(futures::stream::iter([Ok(by_runs)]).chain(rest).boxed())
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// An input already being read, handed to DataFusion's partial aggregation as its child:
/// executes once, into the stream it holds.
struct Replay {
    input: Arc<dyn ExecutionPlan>,
    stream: Mutex<Option<SendableRecordBatchStream>>,
}

impl Replay {
    fn new(input: Arc<dyn ExecutionPlan>, stream: SendableRecordBatchStream) -> Self {
        Replay {
            input,
            stream: Mutex::new(Some(stream)),
        }
    }
}

impl fmt::Debug for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Replay")
    }
}

impl DisplayAs for Replay {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Replay")
    }
}

impl ExecutionPlan for Replay {
    fn name(&self) -> &str {
        "Replay"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn with_new_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(&self, _: usize, _: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        self.stream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .ok_or_else(|| DataFusionError::Internal("a replayed input executed twice".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int32Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{Field, Schema, TimeUnit};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use crate::rules::testing::{Lcg, sorted_result_and_plan};
    use datafusion::common::tree_node::TreeNode;

    type Row = (Option<&'static str>, i32, Option<i64>, Option<i64>, f64);

    /// Car rows as compaction leaves them (`ordered`: by driver, then time, laps
    /// following each other, with a few null drivers, times and values), or the same
    /// rows shuffled; in batches of uneven size over two partitions.
    fn table(seed: u64, rows: usize, ordered: bool) -> MemTable {
        let mut g = Lcg(seed);
        let drivers = [Some("ALB"), Some("HAM"), None, Some("VER")];
        let mut all: Vec<Row> = Vec::with_capacity(rows);
        for (d, driver) in drivers.iter().enumerate() {
            let mut lap = 0;
            for i in 0..rows / drivers.len() {
                if g.next(30) == 0 {
                    lap += 1;
                }
                let time = (g.next(50) != 0).then_some(d as i64 * 1_000_000 + i as i64 * 100);
                let v = (g.next(10) != 0).then(|| g.next(1000) as i64 - 500);
                all.push((*driver, lap, time, v, g.next(100) as f64 / 3.0));
            }
        }
        if !ordered {
            for i in (1..all.len()).rev() {
                all.swap(i, g.next(i as u64 + 1) as usize);
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("driver", DataType::Utf8, true),
            Field::new("lap", DataType::Int32, false),
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("v", DataType::Int64, true),
            Field::new("f", DataType::Float64, false),
        ]));
        let batch = |rows: &[Row]| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(StringArray::from(
                        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                    )),
                    Arc::new(Int32Array::from(
                        rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                    )),
                    Arc::new(
                        TimestampMicrosecondArray::from(
                            rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                        )
                        .with_timezone("UTC"),
                    ),
                    Arc::new(Int64Array::from(
                        rows.iter().map(|r| r.3).collect::<Vec<_>>(),
                    )),
                    Arc::new(Float64Array::from(
                        rows.iter().map(|r| r.4).collect::<Vec<_>>(),
                    )),
                ],
            )
            .unwrap()
        };
        let mut partitions = vec![Vec::new(), Vec::new()];
        let mut at = 0;
        let mut p = 0;
        while at < all.len() {
            let n = (50 + g.next(300) as usize).min(all.len() - at);
            partitions[p].push(batch(&all[at..at + n]));
            at += n;
            // The first half of the rows in one partition, the rest in the other.
            if at >= all.len() / 2 {
                p = 1;
            }
        }
        MemTable::try_new(schema, partitions).unwrap()
    }

    /// `sql`'s result, sorted, and its plan, with or without the rule.
    async fn run(sql: &str, seed: u64, ordered: bool, runs: bool) -> (String, String) {
        let config = SessionConfig::new().with_target_partitions(2);
        let mut builder = datafusion::execution::SessionStateBuilder::new()
            .with_config(config)
            .with_default_features();
        if runs {
            builder = builder.with_physical_optimizer_rule(Arc::new(RunAggregateRule));
        }
        let ctx = SessionContext::new_with_state(builder.build());
        ctx.register_table("t", Arc::new(table(seed, 4000, ordered)))
            .unwrap();
        sorted_result_and_plan(&ctx, sql).await
    }

    /// In group order or not, every aggregation the rule takes gives DataFusion's own
    /// result; it takes the ones it knows and leaves the rest.
    #[tokio::test]
    async fn runs_give_the_hashed_aggregations_result() {
        let taken = [
            // The lap question's laps.
            "SELECT driver, lap, min(time) AS s, max(time) AS e, count(*) AS n FROM t GROUP BY driver, lap",
            "SELECT driver, lap, count(v) AS n, min(v) AS lo, max(v) AS hi, count(time) AS t FROM t GROUP BY lap, driver",
            "SELECT driver, count(*) AS n FROM t GROUP BY driver",
            "SELECT lap % 3 AS k, max(v) AS hi, count(1) AS n FROM t GROUP BY lap % 3",
            "SELECT driver, max(time) AS e FROM t WHERE v > 0 GROUP BY driver",
            // Its inner grouping by driver and lap (no aggregate: each key once).
            "SELECT driver, count(DISTINCT lap) AS n FROM t GROUP BY driver",
        ];
        let left = [
            "SELECT driver, max(f) AS hi FROM t GROUP BY driver",
            "SELECT driver, avg(v) AS m FROM t GROUP BY driver",
            "SELECT count(*) AS n, min(v) AS lo FROM t",
        ];
        for (seed, ordered) in [(1, true), (2, true), (3, false), (4, false)] {
            for sql in taken.iter().chain(&left) {
                let (want, hashed_plan) = run(sql, seed, ordered, false).await;
                let (got, plan) = run(sql, seed, ordered, true).await;
                assert!(!hashed_plan.contains("RunAggregateExec"));
                assert!(!want.is_empty(), "{sql}");
                assert_eq!(got, want, "{sql} (seed {seed}, ordered {ordered})\n{plan}");
                assert_eq!(
                    plan.contains("RunAggregateExec"),
                    taken.contains(sql),
                    "{sql}\n{plan}"
                );
            }
        }
    }

    /// Ordered input is aggregated by runs: one state per run, far fewer than the rows;
    /// shuffled input goes to the hashed aggregation (no state rows from runs).
    #[tokio::test]
    async fn ordered_input_goes_by_runs_and_shuffled_input_is_hashed() {
        for (ordered, by_runs) in [(true, true), (false, false)] {
            let ctx = SessionContext::new_with_state(
                datafusion::execution::SessionStateBuilder::new()
                    .with_config(SessionConfig::new().with_target_partitions(2))
                    .with_default_features()
                    .with_physical_optimizer_rule(Arc::new(RunAggregateRule))
                    .build(),
            );
            ctx.register_table("t", Arc::new(table(5, 4000, ordered)))
                .unwrap();
            let df = ctx
                .sql("SELECT driver, lap, count(*) AS n FROM t GROUP BY driver, lap")
                .await
                .unwrap();
            let plan = df.create_physical_plan().await.unwrap();
            let task = ctx.task_ctx();
            datafusion::physical_plan::collect(Arc::clone(&plan), task)
                .await
                .unwrap();
            let mut states = None;
            plan.apply(|p| {
                if p.name() == "RunAggregateExec" {
                    states = p.metrics().and_then(|m| m.output_rows());
                }
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            })
            .unwrap();
            let states = states.unwrap_or(0);
            if by_runs {
                assert!(
                    states > 0 && states < 1000,
                    "{states} states for 4,000 rows"
                );
            } else {
                assert_eq!(states, 0, "shuffled rows are hashed");
            }
        }
    }
}
