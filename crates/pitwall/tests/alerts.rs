//! Alerts out, in the real binary: `pitwall up` with four routes, episodes raised by
//! points written through the write API.
//! - A real Alertmanager (Debian's prometheus-alertmanager, on loopback) shows the
//!   episode's alert firing, then resolved once the engine cools.
//! - A webhook that fails its first calls still gets each episode's start and end.
//! - A webhook that hangs holds up nothing: the lake commits every point and the other
//!   routes deliver meanwhile.
//! - A target that stays down has its episodes written to the dead-letter log.
//! - A webhook down across a restart of `pitwall up` gets its episodes after it.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{Up, program};
use pitwall_testkit::free_port;

const T0: i64 = 1_767_225_600_000_000_000;

/// What the test's webhook receiver saw.
#[derive(Default)]
struct Hooks {
    /// Calls to /flaky, failed or not.
    flaky_calls: AtomicUsize,
    /// `route id:phase source` of every episode accepted.
    got: Mutex<BTreeSet<String>>,
    /// Whether /later answers yet.
    later_up: AtomicBool,
    hung_calls: AtomicUsize,
}

impl Hooks {
    fn take(&self, body: &serde_json::Value) {
        let route = body["route"].as_str().unwrap_or("?").to_owned();
        let mut got = self.got.lock().unwrap();
        for e in body["episodes"].as_array().into_iter().flatten() {
            got.insert(format!(
                "{route} {}:{} {} {}",
                e["id"].as_str().unwrap(),
                e["phase"].as_str().unwrap(),
                e["source_id"].as_str().unwrap(),
                e["rule"].as_str().unwrap()
            ));
        }
    }

    fn seen(&self, prefix: &str) -> Vec<String> {
        let got = self.got.lock().unwrap();
        got.iter()
            .filter(|g| g.starts_with(prefix))
            .cloned()
            .collect()
    }
}

async fn receiver(hooks: Arc<Hooks>) -> u16 {
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::post;
    let app = axum::Router::new()
        .route(
            "/flaky",
            post(
                |State(h): State<Arc<Hooks>>, body: axum::Json<serde_json::Value>| async move {
                    // The first three calls fail, as a receiver restarting would.
                    if h.flaky_calls.fetch_add(1, Ordering::SeqCst) < 3 {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    h.take(&body);
                    StatusCode::OK
                },
            ),
        )
        .route(
            "/later",
            post(
                |State(h): State<Arc<Hooks>>, body: axum::Json<serde_json::Value>| async move {
                    if !h.later_up.load(Ordering::SeqCst) {
                        return StatusCode::BAD_GATEWAY;
                    }
                    h.take(&body);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/hang",
            post(|State(h): State<Arc<Hooks>>| async move {
                h.hung_calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(3600)).await;
                StatusCode::OK
            }),
        )
        .with_state(hooks);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// Line protocol, a point a second from `from` s to `to` s for each driver, in time
/// order as cars send them: each driver's engine at the temperature `temp` gives it.
fn engines(from: i64, to: i64, temp: impl Fn(&str, i64) -> f64) -> String {
    let mut lp = String::new();
    for s in from..to {
        for driver in ["VER", "HAM", "LEC"] {
            lp += &format!(
                "car,driver={driver} engine_temp_c={},oil_temp_c=100 {}\n",
                temp(driver, s),
                T0 + s * 1_000_000_000
            );
        }
    }
    lp
}

/// Alertmanager's alerts named `engine_overheat` on `source`, as (state, endsAt).
async fn am_alerts(client: &reqwest::Client, am: &str, source: &str) -> Vec<serde_json::Value> {
    let url = format!("{am}/api/v2/alerts");
    let Ok(r) = client
        .get(&url)
        .query(&[
            ("filter", "alertname=\"engine_overheat\""),
            ("filter", &format!("source_id=\"{source}\"")),
        ])
        .send()
        .await
    else {
        return Vec::new();
    };
    r.json::<Vec<serde_json::Value>>().await.unwrap_or_default()
}

async fn until<F: Future<Output = bool>>(what: &str, secs: u64, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn episodes_reach_alertmanager_and_webhooks() {
    let alertmanager = program(
        "PITWALL_ALERTMANAGER",
        "/usr/bin/prometheus-alertmanager",
        "prometheus-alertmanager",
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("am.yml"),
        "route:\n  receiver: none\n  group_wait: 1s\n  group_interval: 1s\nreceivers:\n  - name: none\n",
    )
    .unwrap();
    let am_port = free_port();
    let mut am = Command::new(&alertmanager)
        .arg(format!(
            "--config.file={}",
            dir.path().join("am.yml").display()
        ))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("am").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let am_url = format!("http://127.0.0.1:{am_port}");
    let client = reqwest::Client::new();
    until("Alertmanager to be ready", 30, || {
        let r = client.get(format!("{am_url}/-/ready")).send();
        async move { r.await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;

    let hooks = Arc::new(Hooks::default());
    let hook = receiver(Arc::clone(&hooks)).await;
    let down = free_port();
    let config = dir.path().join("pitwall.toml");
    std::fs::write(
        &config,
        format!(
            r#"[sim]
race-enabled = false
iot-enabled = false

[lake]
commit-interval = "300ms"

[[alerts.routes]]
name = "am"
kind = "alertmanager"
url = "{am_url}"
severities = ["critical"]
resend-interval = "2s"

[[alerts.routes]]
name = "flaky"
url = "http://127.0.0.1:{hook}/flaky"
rules = ["engine_overheat"]

[[alerts.routes]]
name = "hung"
url = "http://127.0.0.1:{hook}/hang"
timeout = "1s"
rules = ["engine_overheat"]

[[alerts.routes]]
name = "down"
url = "http://127.0.0.1:{down}/nobody"
rules = ["engine_overheat"]
sources = ["HAM*"]
timeout = "1s"
give-up-after = "2s"

[[alerts.routes]]
name = "later"
url = "http://127.0.0.1:{hook}/later"
rules = ["engine_overheat"]
sources = ["VER"]
"#
        ),
    )
    .unwrap();
    let data = dir.path().join("lake");
    let up = Up::start(&["--config", config.to_str().unwrap()], &data);

    // VER and HAM run hot from 20 s to 40 s (over 120 °C), LEC stays cool.
    let hot = |driver: &str, s: i64| {
        if s >= 20 && driver != "LEC" {
            125.0
        } else {
            100.0
        }
    };
    common::write_lines(&client, &up.url, None, engines(0, 40, hot)).await;

    // Firing in Alertmanager, with the episode's labels and message.
    let deadline = Instant::now() + Duration::from_secs(60);
    let alert = loop {
        if let Some(a) = am_alerts(&client, &am_url, "VER").await.pop() {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "VER's alert never fired in Alertmanager"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(alert["status"]["state"], "active", "{alert}");
    assert_eq!(alert["labels"]["severity"], "critical", "{alert}");
    assert_eq!(alert["labels"]["field"], "engine_temp_c", "{alert}");
    assert_eq!(alert["startsAt"], "2026-01-01T00:00:20.000Z", "{alert}");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("engine_temp_c"),
        "{alert}"
    );
    let episode = alert["labels"]["episode"].as_str().unwrap().to_owned();
    assert!(
        am_alerts(&client, &am_url, "LEC").await.is_empty(),
        "LEC never ran hot"
    );

    // A resend every 2 s keeps it firing past its first endsAt (8 s).
    tokio::time::sleep(Duration::from_secs(10)).await;
    let alerts = am_alerts(&client, &am_url, "VER").await;
    assert_eq!(alerts.len(), 1, "still firing after 10 s: {alerts:?}");

    // Cooling: the episodes end and Alertmanager's alert is resolved.
    common::write_lines(&client, &up.url, None, engines(40, 50, |_, _| 100.0)).await;
    until("VER's alert to resolve", 60, || {
        let (client, am_url) = (&client, &am_url);
        async move { am_alerts(client, am_url, "VER").await.is_empty() }
    })
    .await;

    // The flaky webhook failed three calls and still has both ends of both episodes.
    until("the flaky webhook to get every episode", 60, || {
        let hooks = &hooks;
        async move { hooks.seen("flaky ").len() == 4 }
    })
    .await;
    let flaky = hooks.seen("flaky ");
    assert!(hooks.flaky_calls.load(Ordering::SeqCst) >= 4, "{flaky:?}");
    for want in [
        format!("flaky {episode}:start VER engine_overheat"),
        format!("flaky {episode}:end VER engine_overheat"),
    ] {
        assert!(flaky.contains(&want), "{want} not in {flaky:?}");
    }
    assert_eq!(
        flaky.iter().filter(|g| g.contains(" HAM ")).count(),
        2,
        "{flaky:?}"
    );

    // The target that stays down: HAM's two ends in the dead-letter log, with why.
    let dead_letter = data.join("alerts/dead-letter.jsonl");
    until("the dead-letter log", 60, || {
        let dead_letter = &dead_letter;
        async move {
            std::fs::read_to_string(dead_letter)
                .map(|t| t.matches("\"phase\":\"").count() == 2)
                .unwrap_or(false)
        }
    })
    .await;
    let text = std::fs::read_to_string(&dead_letter).unwrap();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["route"], "down", "{line}");
        assert!(
            v["reason"].as_str().unwrap().contains("cannot connect"),
            "{line}"
        );
        assert!(v["attempts"].as_u64().unwrap() >= 2, "{line}");
        assert_eq!(v["episodes"][0]["source_id"], "HAM", "{line}");
    }

    // The hung webhook was called and holds nothing up: every point is in the lake.
    assert!(hooks.hung_calls.load(Ordering::SeqCst) >= 1);
    // 3 drivers for 50 s.
    common::until_csv(
        &client,
        &up.url,
        None,
        "SELECT count(*) AS n FROM clean.car",
        "n\n150\n",
    )
    .await;
    let metrics = common::metrics_text(&client, &up.url).await;
    assert!(
        metrics.contains("pitwall_alerts_dead_lettered_total{route=\"down\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pitwall_alert_calls_failed_total{route=\"hung\"}"),
        "{metrics}"
    );
    assert!(hooks.seen("later ").is_empty(), "/later is down");

    // /later was down the whole run: its episodes wait in the outbox across a restart.
    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
    hooks.later_up.store(true, Ordering::SeqCst);
    let up = Up::start(&["--config", config.to_str().unwrap()], &data);
    until("/later to get VER's episode after the restart", 60, || {
        let hooks = &hooks;
        async move { hooks.seen("later ").len() == 2 }
    })
    .await;
    assert_eq!(
        hooks.seen("later "),
        [
            format!("later {episode}:end VER engine_overheat"),
            format!("later {episode}:start VER engine_overheat"),
        ]
    );
    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
    let _ = am.kill();
    let _ = am.wait();
}
