//! The dashboard in real headless Chromium (Debian's `chromium`, driven by playwright-core
//! from npm; scripts/test.sh installs both): `pitwall up` serves it, and
//! crates/pitwall-server/web/tests/dashboard.mjs checks each page as a user would (live
//! charts that read like an instrument, anomaly episodes with filters and a shaded
//! trace, lap comparison, sessions, Health against the lake's open episodes, the fleet,
//! pipeline health, the SQL console, the view in the URL, layouts at 1280 and 400 px).
//! Then, with a tab open, Ctrl-C: the page says "stopped" and pitwall exits within 5 s.
//! Each check saves a screenshot under the test's target directory (the path is printed).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{Up, program};

// Compare last: by then both drivers have completed a lap.
const CHECKS: [&str; 10] = [
    "live", "anomaly", "sql", "sessions", "health", "fleet", "pipeline", "url", "layout", "compare",
];

fn node(web: &Path, url: &str, shots: &Path, checks: &[&str], chromium: &str) -> Command {
    let mut c = Command::new("node");
    c.arg(web.join("tests/dashboard.mjs"))
        .arg(format!("{url}/"))
        .arg(shots)
        .args(checks)
        .env("PITWALL_CHROMIUM", chromium);
    c
}

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
    // The simulators inject no faults here, so every episode is one the checks write.
    let config = dir.path().join("pitwall.toml");
    std::fs::write(
        &config,
        "[sim.race]\nfaults-per-car-minute = 0.0\n\n[sim.iot]\nfaults-per-sensor-minute = 0.0\n\n[lake]\ncommit-interval = \"1s\"\n",
    )
    .unwrap();
    let up = Up::start(
        &["--config", config.to_str().unwrap()],
        &dir.path().join("lake"),
    );
    // Some seconds of race in the lake, so the session and comparison views have laps.
    std::thread::sleep(Duration::from_secs(15));
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = node(&web, &up.url, &shots, &CHECKS, &chromium)
        .output()
        .expect("node runs (Debian's nodejs)");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "{report}{}\nscreenshots in {}",
        String::from_utf8_lossy(&out.stderr),
        shots.display()
    );

    // A tab stays open while pitwall is stopped.
    let mut tab = node(&web, &up.url, &shots, &["shutdown"], &chromium)
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs");
    // The tab's lines, each with when it came.
    let (line_tx, lines) = std::sync::mpsc::channel();
    let stdout = tab.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = line_tx.send((Instant::now(), line));
        }
    });
    let ready = lines
        .iter()
        .find(|(_, l)| l == "ready" || l.starts_with("FAIL"))
        .map(|(_, l)| l);
    let asked = Instant::now();
    let (status, log) = up.stop();
    let took = asked.elapsed();
    let tab_status = tab.wait().unwrap();
    let tab_said: Vec<(Instant, String)> = lines.try_iter().collect();
    let told = tab_said
        .iter()
        .find(|(_, l)| l.starts_with("ok shutdown:"))
        .map(|(at, _)| at.duration_since(asked));
    eprintln!(
        "Ctrl-C with a tab open: the tab said stopped after {told:?}, pitwall exited in {took:?}; the tab: {:?}",
        tab_said.iter().map(|(_, l)| l).collect::<Vec<_>>()
    );

    assert!(
        out.status.success(),
        "browser checks failed:\n{report}\npitwall said:\n{log}"
    );
    for check in CHECKS {
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
    assert_eq!(
        ready.as_deref(),
        Some("ready"),
        "the open tab never connected: {tab_said:?}"
    );
    assert!(
        tab_status.success() && told.is_some(),
        "the open tab did not say stopped: {tab_said:?}"
    );
    assert!(
        status.success(),
        "pitwall up failed after the browser checks:\n{log}"
    );
    // Before, an open tab held `pitwall up` until the browser closed (46 s). Now the
    // server ends the live feed as Ctrl-C arrives (the tab polls every 100 ms), and the
    // stop takes what draining and the last commit take: under 1 s on an idle machine,
    // so 5 s leaves room for a busy one.
    assert!(
        told.is_some_and(|t| t < Duration::from_secs(3)),
        "the tab was told after {told:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "Ctrl-C with a tab open took {took:?}:\n{log}"
    );
}
