//! What pitwall's physical optimiser rules ([`crate::band_join`],
//! [`crate::run_aggregate`]) share: replacing each node of one kind that a rule can
//! take over, and, for their tests, seeded data and results compared with and without
//! the rule.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_plan::ExecutionPlan;

/// `plan` with every `T` node that `take` can replace replaced, bottom up.
pub(crate) fn replace_each<T: 'static, R: ExecutionPlan + 'static>(
    plan: Arc<dyn ExecutionPlan>,
    take: impl Fn(&T) -> Option<R>,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|p| {
        let replaced = p.as_any().downcast_ref::<T>().and_then(&take);
        Ok(match replaced {
            Some(r) => Transformed::yes(Arc::new(r) as Arc<dyn ExecutionPlan>),
            None => Transformed::no(p),
        })
    })
    .map(|t| t.data)
}

#[cfg(test)]
pub(crate) mod testing {
    use arrow::util::pretty::pretty_format_batches;
    use datafusion::prelude::SessionContext;

    /// A small deterministic generator, so a failure can be replayed.
    pub(crate) struct Lcg(pub(crate) u64);

    impl Lcg {
        pub(crate) fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    /// `sql`'s result in `ctx`, its rows sorted, and its physical plan.
    pub(crate) async fn sorted_result_and_plan(
        ctx: &SessionContext,
        sql: &str,
    ) -> (String, String) {
        let df = ctx.sql(sql).await.unwrap();
        let plan = df.clone().create_physical_plan().await.unwrap();
        let plan = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string();
        let batches = df.collect().await.unwrap();
        let text = pretty_format_batches(&batches).unwrap().to_string();
        let mut lines: Vec<&str> = text
            .lines()
            .skip(3)
            .filter(|l| l.starts_with('|'))
            .collect();
        lines.sort_unstable();
        (lines.join("\n"), plan)
    }
}
