//! The configuration file: the documented example equals the built-in defaults, and bad
//! files fail with the key and what to do.

use std::path::Path;

use pitwall_runtime::config::Config;

fn repo_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(name)
}

#[test]
fn the_example_file_documents_exactly_the_defaults() {
    let from_file = Config::load(Some(&repo_file("pitwall.toml"))).unwrap();
    assert_eq!(from_file, Config::default());
}

fn load_str(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, toml).unwrap();
    format!("{:#}", Config::load(Some(&p)).unwrap_err())
}

#[test]
fn unknown_keys_name_the_key() {
    let e = load_str("[lake]\ncommit-intervall = \"5s\"\n");
    assert!(e.contains("key `lake.commit-intervall`"), "{e}");
    assert!(
        e.contains("`commit-interval`"),
        "the message lists the keys that exist: {e}"
    );
}

#[test]
fn bad_values_name_the_key_and_the_fix() {
    let e = load_str("[bus]\npartitions = 0\n");
    assert_eq!(e, "config key bus.partitions: is 0; use 1 to 1024");
    let e = load_str("[lake]\ncommit-interval = \"soon\"\n");
    assert!(e.contains("key `lake.commit-interval`"), "{e}");
    let e = load_str(
        "[[processor.rules]]\nname = \"x\"\nmeasurement = \"car\"\nkind = \"rate-of-change\"\nfield = \"rpm\"\ndrop = -5.0\nwithin = \"1s\"\n",
    );
    assert_eq!(
        e,
        "config key processor.rules[0].drop: is -5; it must be more than zero"
    );
    let e = load_str("[lake]\ncatalog = \"mysql://root:secret@db/iceberg\"\n");
    assert!(e.starts_with("config key lake.catalog: \"mysql://root:***@db/iceberg\" is not a catalog pitwall knows: use postgres://"), "{e}");
    let e = load_str("[lake]\nwarehouse = \"gs://bucket/lake\"\n");
    assert!(e.starts_with("config key lake.warehouse: \"gs://bucket/lake\" is not a location pitwall can write: use s3://"), "{e}");
    let e = load_str("[lake.maintenance.retention]\n\"raw.events\" = \"a month\"\n");
    assert!(
        e.contains("key `lake.maintenance.retention`") && e.contains("retention of raw.events"),
        "{e}"
    );
    let e = load_str("[lake.s3]\nendpont = \"http://x\"\n");
    assert!(e.contains("endpont"), "{e}");
}

#[test]
fn a_missing_file_says_so() {
    let e = format!(
        "{:#}",
        Config::load(Some(Path::new("/nonexistent/pitwall.toml"))).unwrap_err()
    );
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn bad_windows_name_the_key_and_the_fix() {
    let window =
        |extra: &str| format!("[[processor.windows]]\nname = \"w\"\nsize = \"5s\"\n{extra}");
    let e = load_str(&window("slide = \"10s\"\n"));
    assert_eq!(
        e,
        "config key processor.windows[0].slide: is 10s, longer than the window (5s): events between windows would be left out; use a slide of at most the size"
    );
    let e = load_str(&window("slide = \"1001ms\"\n"));
    assert!(
        e.starts_with(
            "config key processor.windows[0].slide: makes each window the merge of 5000 panes"
        ),
        "{e}"
    );
    let e = load_str(&window("slide = \"1s\"\nfields = [\"\"]\n"));
    assert_eq!(
        e,
        "config key processor.windows[0].fields[0]: is empty; name a numeric field"
    );
    let e = load_str(&window("slide = \"soon\"\n"));
    assert!(e.contains("processor.windows"), "{e}");
}

/// `pitwall rules check` validates a file without starting anything and lists what it
/// would run; a bad file fails with the key.
#[test]
fn rules_check_lists_windows_and_rules_or_names_the_bad_key() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pitwall"))
        .args(["rules", "check"])
        .arg(repo_file("pitwall.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok (3 windows, 18 rules)"), "{stdout}");
    assert!(stdout.contains("window car_5s         sliding 5s every 1s over speed_kph, rpm, throttle_pct, brake of car, with p50/p95/p99"), "{stdout}");
    assert!(
        stdout.contains("window sensor_10s     tumbling 10s over temperature_c of sensor"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rule   engine_temp_creep trend on engine_temp_c of car (warning)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rule   rpm_drop         rate-of-change on rpm of car (warning)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rule   sensor_silent    deadman on sensor (warning)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rule   pressure_outlier baseline on pressure_hpa of sensor (warning)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("derive sector of car from distance_m on the track named by tag track"),
        "{stdout}"
    );
    assert!(
        stdout.contains("track  pitwall-park: 4446.55 m, 3 sectors"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[processor.windows]]\nname = \"w\"\nsize = \"0s\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pitwall"))
        .args(["rules", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("processor.windows[0].size"), "{stderr}");
}

/// The distributed stack on paper (deploy/): the config every pitwall service reads
/// loads and validates, each service's command line parses, and Trino's catalog file
/// names the same catalog, database, warehouse and S3 endpoint as pitwall's [lake].
#[test]
fn the_compose_stack_configs_load_and_agree_with_trino() {
    use clap::Parser;
    let stack = repo_file("deploy/pitwall/pitwall.toml");
    let config = Config::load(Some(&stack)).unwrap();
    config.validate().unwrap();
    assert!(
        config.lake.catalog.starts_with("postgres://"),
        "{}",
        config.lake.catalog
    );
    assert!(config.lake.warehouse.starts_with("s3://"));

    let compose = std::fs::read_to_string(repo_file("deploy/docker-compose.yml")).unwrap();
    assert!(compose.contains("./pitwall/pitwall.toml:/etc/pitwall/pitwall.toml"));
    // serve listens on 0.0.0.0 there: the stack does not start without a token.
    assert!(
        compose.contains("PITWALL_TOKEN: ${PITWALL_TOKEN:?"),
        "the compose file requires PITWALL_TOKEN"
    );
    assert!(
        compose
            .contains("./trino/catalog/iceberg.properties:/etc/trino/catalog/iceberg.properties")
    );
    let mut commands = Vec::new();
    for line in compose.lines() {
        let Some(json) = line.trim().strip_prefix("command: ") else {
            continue;
        };
        let Ok(args) = serde_json::from_str::<Vec<String>>(json) else {
            continue;
        };
        if matches!(
            args.first().map(String::as_str),
            Some("ingest" | "process" | "serve")
        ) {
            commands.push(args);
        }
    }
    let names: Vec<&str> = commands.iter().map(|c| c[0].as_str()).collect();
    assert_eq!(
        names,
        ["ingest", "process", "serve"],
        "the stack runs ingest, process and serve"
    );
    for args in &commands {
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("/etc/pitwall/pitwall.toml", stack.to_str().unwrap()))
            .collect();
        let parsed = pitwall::Cli::try_parse_from(
            std::iter::once("pitwall".to_owned()).chain(args.iter().cloned()),
        );
        assert!(parsed.is_ok(), "pitwall {args:?}: {}", parsed.unwrap_err());
    }
    assert!(compose.contains("replicas: 2"), "two processors");

    let props: std::collections::HashMap<String, String> =
        std::fs::read_to_string(repo_file("deploy/trino/catalog/iceberg.properties"))
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            })
            .collect();
    assert_eq!(props["iceberg.catalog.type"], "jdbc");
    assert_eq!(
        props["iceberg.jdbc-catalog.catalog-name"],
        pitwall_lake::CATALOG_NAME
    );
    // postgres://user:password@host:port/db <-> jdbc:postgresql://host:port/db
    let (userinfo, hostdb) = config
        .lake
        .catalog
        .trim_start_matches("postgres://")
        .split_once('@')
        .unwrap();
    assert_eq!(
        props["iceberg.jdbc-catalog.connection-url"],
        format!("jdbc:postgresql://{hostdb}")
    );
    assert_eq!(
        format!(
            "{}:{}",
            props["iceberg.jdbc-catalog.connection-user"],
            props["iceberg.jdbc-catalog.connection-password"]
        ),
        userinfo
    );
    assert_eq!(
        props["iceberg.jdbc-catalog.default-warehouse-dir"],
        config.lake.warehouse
    );
    assert_eq!(props["s3.endpoint"], config.lake.s3.endpoint);
    assert_eq!(
        props["s3.path-style-access"],
        config.lake.s3.path_style.to_string()
    );
    assert_eq!(props["s3.region"], config.lake.s3.region);
    // The S3 credentials Trino uses are the ones the pitwall services get.
    assert!(compose.contains(&format!(
        "AWS_ACCESS_KEY_ID: {}",
        props["s3.aws-access-key"]
    )));
    assert!(compose.contains(&format!(
        "AWS_SECRET_ACCESS_KEY: {}",
        props["s3.aws-secret-key"]
    )));
    assert!(compose.contains(&format!(
        "POSTGRES_PASSWORD: {}",
        props["iceberg.jdbc-catalog.connection-password"]
    )));
}
