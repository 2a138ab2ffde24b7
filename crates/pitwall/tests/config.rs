//! The configuration file: the documented example equals the built-in defaults, and bad
//! files fail with the key and what to do.

use std::path::Path;

use pitwall::config::Config;

fn repo_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(name)
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
    assert!(e.contains("`commit-interval`"), "the message lists the keys that exist: {e}");
}

#[test]
fn bad_values_name_the_key_and_the_fix() {
    let e = load_str("[bus]\npartitions = 0\n");
    assert_eq!(e, "config key bus.partitions: is 0; use 1 to 1024");
    let e = load_str("[lake]\ncommit-interval = \"soon\"\n");
    assert!(e.contains("key `lake.commit-interval`"), "{e}");
    let e = load_str("[[processor.rules]]\nname = \"x\"\nmeasurement = \"car\"\nkind = \"rate-of-change\"\nfield = \"rpm\"\ndrop = -5.0\nwithin = \"1s\"\n");
    assert_eq!(e, "config key processor.rules[0].drop: is -5; it must be more than zero");
}

#[test]
fn a_missing_file_says_so() {
    let e = format!("{:#}", Config::load(Some(Path::new("/nonexistent/pitwall.toml"))).unwrap_err());
    assert!(e.contains("does not exist"), "{e}");
}
