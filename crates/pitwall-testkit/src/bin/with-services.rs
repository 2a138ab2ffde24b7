//! Runs a command against real services: starts PostgreSQL and garage (S3) on loopback,
//! points pitwall's lake at them through `PITWALL_LAKE__*` environment variables (the
//! SQL catalog on PostgreSQL, the warehouse in a garage bucket), runs the command, and
//! stops both when it ends. For benchmarks and trials of the shared lake by hand:
//!
//! ```sh
//! cargo run -p pitwall-testkit --bin with-services -- target/release/pitwall bench lake
//! ```

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((program, rest)) = args.split_first() else {
        eprintln!(
            "usage: with-services COMMAND [ARGS...]\nstarts PostgreSQL and garage on 127.0.0.1, runs COMMAND with PITWALL_LAKE__* pointing at them, stops them afterwards"
        );
        return ExitCode::from(2);
    };
    let pg = pitwall_testkit::Postgres::start();
    let s3 = pitwall_testkit::Garage::start();
    let vars = [
        ("PITWALL_LAKE__CATALOG", pg.database("catalog")),
        (
            "PITWALL_LAKE__WAREHOUSE",
            format!("s3://{}/warehouse", s3.bucket),
        ),
        ("PITWALL_LAKE__S3__ENDPOINT", s3.endpoint.clone()),
        ("PITWALL_LAKE__S3__REGION", s3.region.clone()),
        ("PITWALL_LAKE__S3__PATH_STYLE", "true".to_owned()),
        ("PITWALL_LAKE__S3__ACCESS_KEY_ID", s3.access_key_id.clone()),
        (
            "PITWALL_LAKE__S3__SECRET_ACCESS_KEY",
            s3.secret_access_key.clone(),
        ),
    ];
    for (k, v) in &vars {
        if k.ends_with("SECRET_ACCESS_KEY") {
            eprintln!("{k}=(hidden)");
        } else {
            eprintln!("{k}={v}");
        }
    }
    let status = Command::new(program)
        .args(rest)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .status();
    // The services stop when dropped, whatever the command did.
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("{program} ended with {s}");
            ExitCode::from(u8::try_from(s.code().unwrap_or(1)).unwrap_or(1))
        }
        Err(e) => {
            eprintln!("cannot run {program}: {e}");
            ExitCode::from(1)
        }
    }
}
