//! `pitwall lake <step>`: one maintenance step now (compaction, snapshot expiry, orphan files, retention).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::*;
use pitwall_runtime::config::Config;

#[derive(Debug, Subcommand)]
pub(crate) enum LakeCommand {
    /// Rewrite each partition's small files into files near the target size and merge
    /// the manifests, in one `replace` snapshot per table.
    Compact {
        #[command(flatten)]
        target: LakeTarget,
        /// Target file size in bytes (lake.maintenance.target-file-size, default 128 MiB).
        #[arg(long, value_name = "BYTES")]
        target_size: Option<u64>,
    },
    /// Drop snapshots older than an age (never the current one) and delete the files
    /// only they referenced.
    Expire {
        #[command(flatten)]
        target: LakeTarget,
        /// Age (lake.maintenance.expire-after, default 1h), e.g. 30m, 7d.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
    },
    /// Delete files under a table that no snapshot references, once older than an age.
    CleanOrphans {
        #[command(flatten)]
        target: LakeTarget,
        /// Age (lake.maintenance.orphan-age, default 1d); younger files may belong to a
        /// commit in progress.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
    },
    /// Drop day partitions older than the table's retention (lake.maintenance.retention).
    Retention {
        #[command(flatten)]
        target: LakeTarget,
        /// Keep this much for every chosen table instead of the configured ages, e.g. 30d.
        #[arg(long, value_parser = humantime::parse_duration)]
        keep: Option<Duration>,
    },
    /// Run every step, as the processor's schedule does.
    Maintain {
        #[command(flatten)]
        target: LakeTarget,
    },
}

#[derive(Debug, Args)]
pub(crate) struct LakeTarget {
    #[command(flatten)]
    common: Common,
    /// Only this table (e.g. raw.events, clean.car); default: every table.
    #[arg(long)]
    table: Option<String>,
}

pub(crate) async fn run(command: LakeCommand) -> anyhow::Result<ExitCode> {
    let target = match &command {
        LakeCommand::Compact { target, .. }
        | LakeCommand::Expire { target, .. }
        | LakeCommand::CleanOrphans { target, .. }
        | LakeCommand::Retention { target, .. }
        | LakeCommand::Maintain { target } => target,
    };
    let only = target.table.clone();
    let config = target
        .common
        .lake
        .apply(Config::load(target.common.config.as_deref())?);
    config.validate()?;
    let m = &config.lake.maintenance;
    let lake = pitwall_lake::Lake::open(config.lake.clone())
        .await
        .with_context(|| format!("opening the lake ({})", config.lake.describe()))?;
    let all = lake.table_idents().await?;
    let tables: Vec<_> = match &only {
        None => all,
        Some(name) => {
            let found: Vec<_> = all.into_iter().filter(|t| &t.to_string() == name).collect();
            if found.is_empty() {
                anyhow::bail!(
                    "--table {name}: no such table; `pitwall query \"SHOW TABLES\"` lists them"
                );
            }
            found
        }
    };
    let mut changed = 0;
    for ident in &tables {
        let name = ident.to_string();
        let line = match &command {
            LakeCommand::Compact { target_size, .. } => {
                let c = lake
                    .compact(ident, target_size.unwrap_or(m.target_file_size))
                    .await?;
                c.committed.then(|| {
                    format!(
                        "compacted {} data files ({} manifests) into {}; {} rows rewritten",
                        c.files_before, c.manifests_before, c.files_after, c.rows_rewritten
                    )
                })
            }
            LakeCommand::Expire { older_than, .. } => {
                let x = lake
                    .expire_snapshots(ident, older_than.unwrap_or(m.expire_after))
                    .await?;
                (x.snapshots > 0).then(|| {
                    format!(
                        "expired {} snapshots; deleted {} files",
                        x.snapshots, x.files_deleted
                    )
                })
            }
            LakeCommand::CleanOrphans { older_than, .. } => {
                let o = lake
                    .clean_orphans(ident, older_than.unwrap_or(m.orphan_age))
                    .await?;
                (!o.is_empty()).then(|| format!("removed {} orphan files", o.len()))
            }
            LakeCommand::Retention { keep, .. } => {
                match keep.or_else(|| m.retention.get(&name).copied()) {
                    Some(keep) => {
                        let r = lake.apply_retention(ident, keep).await?;
                        (r.removed_files > 0).then(|| {
                            format!(
                                "dropped {} rows in {} files older than {}",
                                r.removed_rows,
                                r.removed_files,
                                humantime::format_duration(keep)
                            )
                        })
                    }
                    None => None,
                }
            }
            LakeCommand::Maintain { .. } => {
                let only = pitwall_lake::MaintenanceConfig {
                    retention: m
                        .retention
                        .iter()
                        .filter(|(t, _)| **t == name)
                        .map(|(t, d)| (t.clone(), *d))
                        .collect(),
                    ..m.clone()
                };
                let lines = lake
                    .maintain_tables(std::slice::from_ref(ident), &only)
                    .await?;
                (!lines.is_empty()).then(|| lines.join("; "))
            }
        };
        match line {
            Some(l) => {
                changed += 1;
                println!("{name}: {l}");
            }
            None => println!("{name}: nothing to do"),
        }
    }
    eprintln!("{changed} of {} tables changed", tables.len());
    Ok(ExitCode::SUCCESS)
}
