//! The dashboard in real headless Chromium (Debian's `chromium`, driven by playwright-core
//! from npm; scripts/test.sh installs both): `pitwall up` serves it, and
//! crates/pitwall-server/web/tests/dashboard.mjs checks that the live chart receives
//! points, a fault written through the write API shows in the anomaly feed within 10 s,
//! the comparison view draws two traces, the SQL console returns rows, and the session,
//! health and pipeline views fill. Each check saves a screenshot under the test's
//! target directory (the path is printed).

use std::path::PathBuf;
use std::process::{Command, Stdio};

mod common;
use common::write_api_url;

#[test]
fn the_dashboard_works_in_chromium() {
    let web = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pitwall-server/web");
    assert!(
        web.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci --prefix {}` (scripts/test.sh does)",
        web.display()
    );
    let chromium = std::env::var("PITWALL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no Chromium at {chromium}: install Debian's chromium package (scripts/test.sh does) or set PITWALL_CHROMIUM"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pitwall"))
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("lake"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (url, stderr, _) = write_api_url(&mut child);
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut { stderr }, &mut s).ok();
        s
    });
    // Some seconds of race in the lake, so the session and comparison views have laps.
    std::thread::sleep(std::time::Duration::from_secs(15));
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(web.join("tests/dashboard.mjs"))
        .arg(format!("{url}/"))
        .arg(&shots)
        .args(["live", "anomaly", "compare", "sql", "sessions", "health", "pipeline"])
        .env("PITWALL_CHROMIUM", &chromium)
        .output()
        .expect("node runs (Debian's nodejs)");
    Command::new("kill").arg("-INT").arg(child.id().to_string()).status().unwrap();
    let status = child.wait().unwrap();
    let log = log.join().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}{}\nscreenshots in {}", String::from_utf8_lossy(&out.stderr), shots.display());
    assert!(out.status.success(), "browser checks failed:\n{report}\npitwall said:\n{log}");
    for check in ["live", "anomaly", "compare", "sql", "sessions", "health", "pipeline"] {
        assert!(report.contains(&format!("ok {check}:")), "{check} did not pass:\n{report}");
        let png = std::fs::read(shots.join(format!("{check}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{check}.png is not a real screenshot");
    }
    assert!(status.success(), "pitwall up failed after the browser checks:\n{log}");
}
