//! `pitwall query SQL`: read-only SQL over the lake's tables.

use std::process::ExitCode;

use clap::Args;

use super::*;
use pitwall_runtime::config::Config;

#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    /// The SQL statement.
    sql: String,
    #[command(flatten)]
    common: Common,
    /// Output: table (aligned), csv or json (one object per line).
    #[arg(long, default_value = "table")]
    format: pitwall_query::Format,
}

pub(crate) async fn run(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let config = args
        .common
        .lake
        .apply(Config::load(args.common.config.as_deref())?);
    if config.lake.is_embedded_catalog() && !config.lake.data_dir.join("catalog.db").exists() {
        anyhow::bail!(
            "no lake in {}: run `pitwall up` first, or pass the --data-dir it used",
            config.lake.data_dir.display()
        );
    }
    // The limits of the SQL API (server.query-*) hold here too: the lake may be the one
    // a running `pitwall up` writes, on the same machine.
    let limits = config
        .server
        .query_limits(Some(config.lake.data_dir.join("tmp")));
    let engine = pitwall_query::Engine::new(limits)?;
    let lake = pitwall_lake::Lake::open(config.lake).await?;
    let answer = engine.read_only(&lake, &args.sql).await?;
    let text = pitwall_query::render(&answer.batches, args.format)?;
    print!("{text}");
    if args.format == pitwall_query::Format::Table {
        println!();
        eprintln!("{} rows", answer.rows);
    }
    if answer.truncated {
        eprintln!(
            "the answer was cut at {} rows (server.query-max-rows); narrow the query or raise the limit",
            answer.rows
        );
    }
    Ok(ExitCode::SUCCESS)
}
