//! The dashboard in real headless Chromium (Debian's `chromium`, driven by playwright-core
//! from npm; scripts/test.sh installs both): `pitwall up` serves it, and
//! crates/pitwall-server/web/tests/dashboard.mjs checks that the live chart receives
//! points, a fault written through the write API shows in the anomaly feed within 10 s,
//! the comparison view draws two traces, the SQL console returns rows, and the session,
//! health and pipeline views fill. Each check saves a screenshot under the test's
//! target directory (the path is printed).

use std::path::PathBuf;
use std::process::Command;

mod common;
use common::{Up, program};

#[test]
fn the_dashboard_works_in_chromium() {
    let web = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pitwall-server/web");
    assert!(
        web.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci --prefix {}` (scripts/test.sh does)",
        web.display()
    );
    let chromium = program("PITWALL_CHROMIUM", "/usr/bin/chromium", "chromium");
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(&[], &dir.path().join("lake"));
    // Some seconds of race in the lake, so the session and comparison views have laps.
    std::thread::sleep(std::time::Duration::from_secs(15));
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(web.join("tests/dashboard.mjs"))
        .arg(format!("{}/", up.url))
        .arg(&shots)
        .args([
            "live", "anomaly", "compare", "sql", "sessions", "health", "pipeline",
        ])
        .env("PITWALL_CHROMIUM", &chromium)
        .output()
        .expect("node runs (Debian's nodejs)");
    let (status, log) = up.stop();
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "{report}{}\nscreenshots in {}",
        String::from_utf8_lossy(&out.stderr),
        shots.display()
    );
    assert!(
        out.status.success(),
        "browser checks failed:\n{report}\npitwall said:\n{log}"
    );
    for check in [
        "live", "anomaly", "compare", "sql", "sessions", "health", "pipeline",
    ] {
        assert!(
            report.contains(&format!("ok {check}:")),
            "{check} did not pass:\n{report}"
        );
        let png = std::fs::read(shots.join(format!("{check}.png"))).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{check}.png is not a real screenshot"
        );
    }
    assert!(
        status.success(),
        "pitwall up failed after the browser checks:\n{log}"
    );
}
