//! Shared by the pipeline tests: the run configuration, the two transports (the
//! in-process bus and Kafka on a real broker), a tansu broker per test, and SQL helpers.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pitwall_bus::Publish;
use pitwall_bus::kafka::KafkaTopic;
use pitwall_lake::LakeConfig;
use pitwall_query::{Format, Query, render};
use pitwall_runtime::config::Config;
use pitwall_runtime::kafka::{ProcessOptions, run as run_process};
use pitwall_runtime::{SimRun, Stats, Summary, produce, run_embedded, simulators};
use pitwall_sim::{FaultKind, Simulator};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// 2026-01-01T00:00:00Z: fixed so runs are reproducible.
pub const START: i64 = 1_767_225_600_000_000_000;

pub fn config(dir: &Path, faults: f64, corrupt: f64) -> Config {
    let mut c = Config {
        lake: LakeConfig {
            commit_interval: Duration::from_millis(500),
            commit_rows: 50_000,
            ..LakeConfig::test_config(dir)
        },
        ..Config::default()
    };
    c.sim.speed = 0.0;
    c.sim.seed = 7;
    c.sim.race.faults_per_car_minute = faults;
    c.sim.iot.faults_per_sensor_minute = faults / 2.0;
    c.sim.corrupt_per_minute = corrupt;
    c
}

/// A tansu broker (Kafka API, in memory) on a free loopback port, stopped on drop.
pub struct Broker {
    child: Child,
    pub addr: String,
    pub log: PathBuf,
}

/// The tansu binary: `PITWALL_TANSU`, else where `scripts/test.sh` builds it.
pub fn tansu_binary() -> PathBuf {
    let path = std::env::var_os("PITWALL_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            PathBuf::from(home).join(".cache/pitwall/tansu/bin/tansu")
        });
    assert!(
        path.exists(),
        "the Kafka-API broker tansu is not at {}; run ./scripts/test.sh, which builds it once and caches it",
        path.display()
    );
    path
}

impl Broker {
    pub fn start(dir: &Path) -> Broker {
        let port = pitwall_testkit::free_port();
        let addr = format!("127.0.0.1:{port}");
        let log = dir.join(format!("tansu-{port}.log"));
        let child = Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{addr}"),
                "--advertised-listener-url",
                &format!("tcp://{addr}"),
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting tansu");
        let b = Broker { child, addr, log };
        b.wait_ready();
        b
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {} (log: {})",
                self.addr,
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Freezes the broker (SIGSTOP): connections stay open but nothing answers.
    pub fn pause(&self) {
        signal(self.child.id(), "STOP");
    }

    /// Thaws a paused broker.
    pub fn resume(&self) {
        signal(self.child.id(), "CONT");
    }
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

impl Drop for Broker {
    fn drop(&mut self) {
        signal(self.child.id(), "CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which bus a pipeline test runs over.
pub enum Transport<'a> {
    /// Everything in this process: `pitwall up`.
    InProcess,
    /// `pitwall ingest` and `pitwall process` over a real broker.
    Kafka(&'a Broker),
}

/// Runs the simulators for `minutes` of simulated time through `transport` into the
/// lake `config` names.
pub async fn run(transport: &Transport<'_>, mut config: Config, minutes: u64) -> Summary {
    let run = SimRun {
        start_time: START,
        sim_duration: Some(Duration::from_secs(minutes * 60)),
        serve: None,
        hold_open: false,
        replay: None,
    };
    match transport {
        Transport::InProcess => run_embedded(
            config,
            run,
            CancellationToken::new(),
            Arc::new(Stats::default()),
        )
        .await
        .expect("pipeline run"),
        Transport::Kafka(broker) => {
            let started = Instant::now();
            config.kafka.brokers = broker.addr.clone();
            let topics = pitwall_bus::Topics::with_prefix(&config.bus.topic_prefix);
            pitwall_bus::kafka::ensure_topics(&config.kafka, &topics.all())
                .await
                .unwrap();
            let stats = Arc::new(Stats::default());
            let mut sink = KafkaTopic::new(&config.kafka, &topics.raw).unwrap();
            let mut sim = simulators(&config, run.start_time);
            produce(
                &config,
                &run,
                &mut sim,
                &mut sink,
                &CancellationToken::new(),
                &stats,
            )
            .await
            .unwrap();
            sink.finish().await.unwrap();
            let options = ProcessOptions {
                exit_when_idle: Some(Duration::from_secs(3)),
            };
            run_process(
                config,
                options,
                CancellationToken::new(),
                Arc::clone(&stats),
            )
            .await
            .expect("pitwall process");
            let g = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            Summary {
                produced: g(&stats.produced),
                rows_committed: g(&stats.rows_committed),
                anomalies: g(&stats.anomalies),
                rejects: g(&stats.rejects),
                corrupted: g(&stats.corrupted),
                faults: sim.faults(),
                elapsed: started.elapsed(),
            }
        }
    }
}

pub async fn rows(q: &Query, sql: &str) -> Vec<Value> {
    let batches = q.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    render(&batches, Format::Json)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub async fn count(q: &Query, table: &str) -> i64 {
    rows(q, &format!("SELECT count(*) AS n FROM {table}")).await[0]["n"]
        .as_i64()
        .unwrap()
}

pub fn rule_for(kind: FaultKind) -> &'static str {
    match kind {
        FaultKind::Overheating => "engine_overheat",
        FaultKind::RpmDrop => "rpm_drop",
        FaultKind::GearMismatch => "gear_mismatch",
        FaultKind::TyreOverheat => "tyre_fl_overheat",
        FaultKind::SensorOverheat => "sensor_overheat",
        FaultKind::SensorStuck => "sensor_stuck",
        FaultKind::SensorDropout => "sensor_silent",
        FaultKind::PressureSpike => "pressure_outlier",
        // Caught first by the trend rule (then by engine_overheat): tests/trend.rs.
        FaultKind::TempCreep => "engine_temp_creep",
    }
}

/// Reads `child`'s stderr up to the line where it says where the write API listens;
/// returns the URL, the reader (to read the rest) and what it read so far.
pub fn write_api_url(
    child: &mut Child,
) -> (
    String,
    std::io::BufReader<std::process::ChildStderr>,
    String,
) {
    use std::io::BufRead;
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr piped"));
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "pitwall ended before serving:\n{seen}"
        );
        seen.push_str(&line);
        if let Some(rest) = line.strip_prefix("write API on ") {
            let url = rest
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches(':')
                .to_owned();
            return (url, stderr, seen);
        }
    }
}

/// `pitwall up --listen 127.0.0.1:0 --pg-listen 127.0.0.1:0 ARGS --data-dir DATA`.
pub fn up_command(args: &[&str], data: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pitwall"));
    command
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--pg-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .arg("--data-dir")
        .arg(data);
    command
}

/// `pitwall up` serving on a free loopback port, its stderr collected in the background.
pub struct Up {
    pub child: Child,
    /// The server's base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// The PostgreSQL wire protocol's address, `127.0.0.1:PORT`.
    pub pg: String,
    /// Flight SQL's address, `127.0.0.1:PORT`, when it was turned on.
    pub flight: String,
    log: Option<std::thread::JoinHandle<String>>,
}

impl Up {
    /// Starts `pitwall up --listen 127.0.0.1:0 ARGS --data-dir DATA` and waits until it
    /// serves.
    pub fn start(args: &[&str], data: &Path) -> Up {
        let mut child = up_command(args, data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (url, mut stderr, seen) = write_api_url(&mut child);
        let address = |prefix: &str| {
            seen.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|rest| rest.split_whitespace().next())
                .map(|addr| addr.trim_end_matches(':').to_owned())
                .unwrap_or_default()
        };
        let (pg, flight) = (address("PostgreSQL on "), address("Flight SQL on "));
        let log = std::thread::spawn(move || {
            let mut rest = String::new();
            std::io::Read::read_to_string(&mut stderr, &mut rest).ok();
            seen + &rest
        });
        Up {
            child,
            url,
            pg,
            flight,
            log: Some(log),
        }
    }

    /// Ctrl-C, then waits: whether it exited cleanly, and all it wrote to stderr.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        signal(self.child.id(), "INT");
        let status = self.child.wait().unwrap();
        let log = self
            .log
            .take()
            .map(|l| l.join().unwrap())
            .unwrap_or_default();
        (status, log)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.log.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Line protocol of 10 sensors (`s-0`…`s-9`, site `plant-a`) at 1 Hz for 60 s from `t0`,
/// then one point from `s-99` at `plant-b`: 601 points, for the SQL doors' tests.
pub fn sensor_lines(t0: i64) -> String {
    let mut lp = String::new();
    for i in 0..60i64 {
        for s in 0..10 {
            lp.push_str(&format!(
                "sensor,sensor_id=s-{s},site=plant-a temperature_c={},pressure_hpa=1010 {}\n",
                20.0 + s as f64 + (i % 3) as f64,
                t0 + i * 1_000_000_000
            ));
        }
    }
    lp.push_str(&format!(
        "sensor,sensor_id=s-99,site=plant-b temperature_c=1.5 {}\n",
        t0 + 59_000_000_000
    ));
    lp
}

/// A request to `url` + `path`, with the token when there is one.
fn authorized(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
) -> reqwest::RequestBuilder {
    let request = client.request(method, url);
    match token {
        Some(t) => request.header("Authorization", format!("Token {t}")),
        None => request,
    }
}

/// Writes line protocol through `base`'s write API; it must be taken (204).
pub async fn write_lines(client: &reqwest::Client, base: &str, token: Option<&str>, lp: String) {
    let r = authorized(
        client,
        reqwest::Method::POST,
        &format!("{base}/api/v2/write"),
        token,
    )
    .body(lp)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap_or_default());
}

/// The HTTP SQL API's answer to `sql` as CSV (the error's text when it fails).
pub async fn sql_csv(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    sql: &str,
) -> String {
    authorized(
        client,
        reqwest::Method::POST,
        &format!("{base}/api/v1/query?format=csv"),
        token,
    )
    .body(sql.to_owned())
    .send()
    .await
    .unwrap()
    .text()
    .await
    .unwrap()
}

/// Waits (60 s at most) until `sql` answers `want` as CSV.
pub async fn until_csv(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    sql: &str,
    want: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = sql_csv(client, base, token, sql).await;
        if text == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql} never answered {want:?}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `base`'s Prometheus metrics, as text.
pub async fn metrics_text(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Runs `tests/SCRIPT` with the test venv's Python and `env`; it must pass and print
/// `checks` lines starting `ok: ` (one per check).
pub fn python_checks(script: &str, env: &[(&str, String)], checks: usize) {
    let python = program("PITWALL_PYTHON", "python3", "the venv of scripts/test.sh");
    let out = Command::new(python)
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests")
                .join(script),
        )
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "{script}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("ok: ").count(), checks, "{script}: {stdout}");
}

/// A self-signed certificate for 127.0.0.1 and its key, made by openssl in `dir`:
/// `(cert.pem, key.pem)`.
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=pitwall test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    (cert, key)
}

/// A config file `name` in `dir` for `pitwall up` with the simulators off, `token` as
/// its one token, `extra` server settings, and `door` (`pg` or `flight`) over TLS with
/// `cert` and `key`.
pub fn tls_config(
    dir: &Path,
    name: &str,
    token: &str,
    extra: &str,
    (door, cert, key): (&str, &Path, &Path),
) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[sim]\nrace-enabled = false\niot-enabled = false\n\n[server]\ntokens = [\"{token}\"]\n{extra}{door}-tls-cert = {:?}\n{door}-tls-key = {:?}\n",
            cert.to_str().unwrap(),
            key.to_str().unwrap()
        ),
    )
    .unwrap();
    path
}

/// `pitwall up --config CONFIG` fails to start and its error says every one of `words`.
pub fn start_fails(config: &Path, data: &Path, words: &[&str]) {
    let out = up_command(&["--config", config.to_str().unwrap()], data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && words.iter().all(|w| err.contains(w)),
        "{err}"
    );
}

/// The path of an external program the tests need (`env` overrides `default`); fails,
/// saying what to install, when it is not there.
pub fn program(env: &str, default: &str, package: &str) -> String {
    let path = std::env::var(env).unwrap_or_else(|_| default.into());
    assert!(
        Path::new(&path).exists(),
        "no {package} at {path}: install Debian's {package} package (scripts/test.sh does) or set {env}"
    );
    path
}

/// The lake's S3 settings for the test's garage server.
pub fn s3_config(s3: &pitwall_testkit::Garage) -> pitwall_lake::S3Config {
    pitwall_lake::S3Config {
        endpoint: s3.endpoint.clone(),
        region: s3.region.clone(),
        path_style: true,
        access_key_id: s3.access_key_id.clone(),
        secret_access_key: s3.secret_access_key.clone(),
        ..Default::default()
    }
}
