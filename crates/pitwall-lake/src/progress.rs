//! Where each table stands per bus partition, and how a processor resumes from it.
//!
//! Every commit to a table records, per partition it covers, in the snapshot summary:
//! - `pitwall.offsets`: the next offset to read (everything before is in the table);
//! - `pitwall.progress`: the processor's [`Checkpoint`] at that offset (where a replay
//!   must start to rebuild the window and rule state) and the *round*: every table that
//!   had rows from the partition waiting when the commit began, each with the checkpoint
//!   its waiting rows started after.
//!
//! Tables are committed one by one, so a crash can leave them at different offsets.
//! [`ResumePlan::from_lake`] works out, per partition, the frontier (the newest offset
//! any table records), which tables are behind it (listed in the newest round but not
//! committed in it), where to replay from so the state is exact before the first row
//! any table still needs, and below which offset each table's outputs were already
//! committed and must be suppressed. Outputs are deterministic, so the replay writes
//! every row once.

use std::collections::BTreeMap;

use iceberg::table::Table;
use pitwall_core::{Checkpoint, Outputs, PartitionId};
use serde::{Deserialize, Serialize};

/// Snapshot summary key holding each partition's [`Progress`] as JSON.
pub const PROGRESS_PROPERTY: &str = "pitwall.progress";

/// Snapshot summary key holding the bus offsets a commit covers, as JSON:
/// `{"telemetry.raw/0": 1234, …}` where each value is the next offset to read.
pub const OFFSETS_PROPERTY: &str = "pitwall.offsets";

/// Name of the clean table of `measurement`.
pub fn clean_table(measurement: &str) -> String {
    format!("clean.{measurement}")
}

/// Names of the fixed tables, as progress and suppression refer to them.
pub mod names {
    /// `raw.events`.
    pub const RAW: &str = "raw.events";
    /// `metrics.windows`.
    pub const WINDOWS: &str = "metrics.windows";
    /// `anomalies.events`.
    pub const ANOMALIES: &str = "anomalies.events";
    /// `quarantine.rejects`.
    pub const REJECTS: &str = "quarantine.rejects";
    /// `quarantine.late`.
    pub const LATE: &str = "quarantine.late";
}

/// What a table's newest snapshot says about one partition, beyond its offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The processor's checkpoint at the commit (its `next` is the recorded offset).
    pub checkpoint: Checkpoint,
    /// Tables that had rows from this partition waiting when the commit round began,
    /// each with the checkpoint its waiting rows come after.
    pub round: BTreeMap<String, Checkpoint>,
}

/// How a processor takes up one partition: where to replay from, with which state, and
/// which outputs to drop because the lake already has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePlan {
    /// Replay from `base.replay_from` with `base.max_time`; the state is exact from
    /// `base.next` on.
    pub base: Checkpoint,
    /// The newest offset any table records: outputs of tables not named in `suppress`
    /// are already in the lake below it.
    pub frontier: i64,
    /// Tables that are behind the frontier: their outputs are in the lake below the
    /// given offset.
    pub suppress: BTreeMap<String, i64>,
    /// The offset each table records now, which its next commit claims to move from.
    pub held: BTreeMap<String, i64>,
}

impl ResumePlan {
    /// The plan for `partition` given every table's offsets and
    /// progress, as [`crate::Lake::committed_progress`] reads them.
    pub fn from_lake(tables: &BTreeMap<String, TableProgress>, partition: &PartitionId) -> Self {
        let held: BTreeMap<String, i64> = tables
            .iter()
            .filter_map(|(t, p)| p.offsets.get(partition).map(|o| (t.clone(), *o)))
            .collect();
        let frontier = held.values().copied().max().unwrap_or(0);
        if frontier == 0 {
            return ResumePlan {
                base: Checkpoint {
                    next: 0,
                    replay_from: 0,
                    max_time: i64::MIN,
                },
                frontier,
                suppress: BTreeMap::new(),
                held,
            };
        }
        // The newest round: what the tables at the frontier say. Commits made before
        // progress was recorded have no round and replay from their offset.
        let mut candidates = Vec::new();
        let mut round: BTreeMap<String, Checkpoint> = BTreeMap::new();
        for (t, offset) in &held {
            if *offset != frontier {
                continue;
            }
            match tables[t].progress.get(partition) {
                Some(p) => {
                    candidates.push(p.checkpoint);
                    for (table, since) in &p.round {
                        round.entry(table.clone()).or_insert(*since);
                    }
                }
                None => candidates.push(Checkpoint {
                    next: frontier,
                    replay_from: frontier,
                    max_time: i64::MIN,
                }),
            }
        }
        let mut suppress = BTreeMap::new();
        for (table, since) in round {
            let at = held.get(&table).copied().unwrap_or(0);
            if at < frontier {
                // Rows of this table from the newest round never landed: rebuild them.
                candidates.push(since);
                suppress.insert(table, at.max(since.next));
            }
        }
        let base = candidates
            .into_iter()
            .min_by_key(|c| (c.replay_from, c.next))
            .expect("at least the frontier's checkpoint");
        ResumePlan {
            base,
            frontier,
            suppress,
            held,
        }
    }

    /// Below which offset `table`'s outputs are already in the lake.
    pub fn suppress_below(&self, table: &str) -> i64 {
        self.suppress.get(table).copied().unwrap_or(self.frontier)
    }

    /// The largest suppression offset: from there on nothing is dropped.
    pub fn replay_until(&self) -> i64 {
        self.suppress
            .values()
            .copied()
            .chain([self.frontier])
            .max()
            .unwrap_or(0)
    }

    /// Drops from `out` (the outputs of the message at `offset`) what the lake has.
    pub fn suppress(&self, offset: i64, out: &mut Outputs) {
        if offset >= self.replay_until() {
            return;
        }
        let drop = |table: &str| offset < self.suppress_below(table);
        if drop(names::RAW) {
            out.raw.clear();
        }
        out.clean.retain(|p| !drop(&clean_table(&p.measurement)));
        if drop(names::WINDOWS) {
            out.windows.clear();
        }
        if drop(names::ANOMALIES) {
            out.anomalies.clear();
        }
        if drop(names::REJECTS) {
            out.rejects.clear();
        }
        if drop(names::LATE) {
            out.late.clear();
        }
    }
}

/// What a table's newest snapshot records for every partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableProgress {
    /// Partition -> next offset.
    pub offsets: BTreeMap<PartitionId, i64>,
    /// Partition -> checkpoint and round.
    pub progress: BTreeMap<PartitionId, Progress>,
}

/// The processor progress recorded by the newest snapshot of `table`, per partition.
pub fn committed_progress(table: &Table) -> BTreeMap<PartitionId, Progress> {
    table
        .metadata()
        .current_snapshot()
        .and_then(|s| s.summary().additional_properties.get(PROGRESS_PROPERTY))
        .and_then(|json| by_partition(table, PROGRESS_PROPERTY, json))
        .unwrap_or_default()
}

/// The bus offsets recorded by the newest snapshot of `table`, if any.
pub fn committed_offsets(table: &Table) -> Option<BTreeMap<PartitionId, i64>> {
    let snapshot = table.metadata().current_snapshot()?;
    let json = snapshot
        .summary()
        .additional_properties
        .get(OFFSETS_PROPERTY)?;
    by_partition(table, OFFSETS_PROPERTY, json)
}

/// A snapshot property's JSON object keyed by `topic/partition`. A key that is not a
/// partition (which pitwall never writes) is skipped with a warning rather than making
/// the table's whole progress unreadable.
fn by_partition<V: serde::de::DeserializeOwned>(
    table: &Table,
    property: &str,
    json: &str,
) -> Option<BTreeMap<PartitionId, V>> {
    let map: BTreeMap<String, V> = serde_json::from_str(json)
        .inspect_err(|e| {
            tracing::warn!(table = %table.identifier(), property, "unreadable snapshot property: {e}");
        })
        .ok()?;
    Some(
        map.into_iter()
            .filter_map(|(key, v)| match key.parse() {
                Ok(p) => Some((p, v)),
                Err(e) => {
                    tracing::warn!(table = %table.identifier(), property, "skipped: {e}");
                    None
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> PartitionId {
        PartitionId::new("t.raw", 0)
    }

    fn cp(next: i64, replay_from: i64) -> Checkpoint {
        Checkpoint {
            next,
            replay_from,
            max_time: replay_from * 10,
        }
    }

    fn table(next: i64, checkpoint: Checkpoint, round: &[(&str, Checkpoint)]) -> TableProgress {
        TableProgress {
            offsets: BTreeMap::from([(p(), next)]),
            progress: BTreeMap::from([(
                p(),
                Progress {
                    checkpoint,
                    round: round.iter().map(|(t, c)| ((*t).to_owned(), *c)).collect(),
                },
            )]),
        }
    }

    #[test]
    fn an_empty_lake_replays_from_the_start() {
        let plan = ResumePlan::from_lake(&BTreeMap::new(), &p());
        assert_eq!(
            plan.base,
            Checkpoint {
                next: 0,
                replay_from: 0,
                max_time: i64::MIN
            }
        );
        assert_eq!(plan.suppress_below(names::RAW), 0);
    }

    #[test]
    fn a_complete_round_resumes_at_its_checkpoint_and_suppresses_below_the_frontier() {
        let round = [(names::RAW, cp(100, 90)), (names::WINDOWS, cp(100, 90))];
        let tables = BTreeMap::from([
            (names::RAW.to_owned(), table(200, cp(200, 180), &round)),
            (names::WINDOWS.to_owned(), table(200, cp(200, 180), &round)),
            // Had no rows in the newest round: complete up to the frontier.
            (names::LATE.to_owned(), table(50, cp(50, 40), &[])),
        ]);
        let plan = ResumePlan::from_lake(&tables, &p());
        assert_eq!(plan.base, cp(200, 180));
        assert_eq!(plan.suppress_below(names::LATE), 200);
        assert_eq!(plan.suppress_below("clean.car"), 200);
        assert_eq!(plan.held[names::LATE], 50);
    }

    #[test]
    fn a_table_left_behind_by_a_crash_is_rebuilt_from_where_its_rows_began() {
        // raw committed the round that ended at 300; windows and clean.car (new) did not.
        let round = [
            (names::RAW, cp(200, 180)),
            (names::WINDOWS, cp(150, 120)),
            ("clean.car", cp(200, 180)),
        ];
        let tables = BTreeMap::from([
            (names::RAW.to_owned(), table(300, cp(300, 280), &round)),
            (names::WINDOWS.to_owned(), table(150, cp(150, 120), &[])),
        ]);
        let plan = ResumePlan::from_lake(&tables, &p());
        assert_eq!(plan.base, cp(150, 120));
        assert_eq!(plan.suppress_below(names::WINDOWS), 150);
        assert_eq!(plan.suppress_below("clean.car"), 200);
        assert_eq!(plan.suppress_below(names::RAW), 300);
        assert_eq!(plan.replay_until(), 300);
    }
}
