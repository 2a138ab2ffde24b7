//! One hostile client against the real binary: `pitwall up` with a token, then every
//! probe that stopped or bloated the process before (deep SQL, a memory-hungry query, a
//! bad-line flood, a gzip bomb, a future-stamped point, sources whose clocks run ahead, over-long and colliding names,
//! idle and slow connections, random bytes on every route, a cross-origin write, more
//! connections than the cap) while good points are written before, during and after.
//! Afterwards the process is alive, `/ping` answers within 100 ms, its peak RSS stayed
//! under [`PEAK_RSS_MIB`], and every good point is in its clean table exactly once.
//! Each probe's answer, time and the RSS around it are printed (`--no-capture`).

use std::io::Write;
use std::time::{Duration, Instant};

use pitwall_lake::{Lake, LakeConfig};
use pitwall_query::Query;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{Up, rows};

/// The bound on the process's peak resident memory over the whole test. The query pool
/// is 256 MiB here; the rest is the pipeline, the bodies in flight (at most
/// `server.body-memory`, 256 MiB) and the allocator's slack.
const PEAK_RSS_MIB: u64 = 1024;

const TOKEN: &str = "hostile-t0ken";
const T0: i64 = 1_767_225_600_000_000_000;

/// (current, peak) resident memory of `pid`, MiB.
fn rss_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Probe<'a> {
    pid: u32,
    client: &'a reqwest::Client,
    url: &'a str,
}

impl Probe<'_> {
    /// Runs one probe, printing its answer, time and RSS before and after.
    async fn run<F: Future<Output = String>>(&self, name: &str, probe: F) -> String {
        let before = rss_mib(self.pid).0;
        let started = Instant::now();
        let answer = probe.await;
        let (after, peak) = rss_mib(self.pid);
        let short: String = answer.chars().take(140).collect();
        eprintln!(
            "probe {name:<28} {:>7.0} ms  RSS {before:>5} -> {after:>5} MiB (peak {peak:>5})  {short}",
            started.elapsed().as_secs_f64() * 1000.0
        );
        answer
    }

    async fn post(&self, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> String {
        let mut req = self
            .client
            .post(format!("{}{path}", self.url))
            .header("Authorization", format!("Token {TOKEN}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        match req.body(body).send().await {
            Ok(r) => format!(
                "{} {}",
                r.status().as_u16(),
                r.text().await.unwrap_or_default()
            ),
            Err(e) => format!("error: {e}"),
        }
    }
}

/// `n` good points at `first`, one source each of seven, on their own times.
/// Now, in nanoseconds since the epoch.
fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// `n` good points stamped as a device with a right clock would: just before they are
/// sent, a microsecond apart (so every point's time is its own).
fn good(first: i64, n: i64) -> Vec<u8> {
    let mut lp = String::new();
    let base = now_ns() - 100_000_000;
    for i in first..first + n {
        lp.push_str(&format!(
            "press,host=p{} temp={}.5 {}\n",
            i % 7,
            i % 90,
            base + (i - first) * 1_000
        ));
    }
    lp.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_client_cannot_stop_or_poison_pitwall_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pitwall.toml");
    std::fs::write(
        &config,
        format!(
            "[sim]\nrace-enabled = false\niot-enabled = false\n\n[server]\ntokens = [\"{TOKEN}\"]\nheader-read-timeout = \"2s\"\nidle-timeout = \"5s\"\nbody-read-timeout = \"5s\"\nquery-timeout = \"5s\"\nquery-memory = 268435456\n\n[lake]\ncommit-interval = \"500ms\"\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("lake");
    let up = Up::start(&["--config", config.to_str().unwrap()], &data);
    let pid = up.child.id();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let url = up.url.clone();
    let addr = url.trim_start_matches("http://").to_owned();
    let p = Probe {
        pid,
        client: &client,
        url: &url,
    };
    let mut written = 0i64;
    let mut write_good = async |n: i64| {
        let answer = p.post("/api/v2/write", good(written, n), &[]).await;
        assert!(
            answer.starts_with("204"),
            "a good write was refused: {answer}"
        );
        written += n;
    };

    write_good(500).await;

    // SQL.
    let deep = format!("SELECT {}", vec!["1"; 3000].join("+"));
    let a = p
        .run(
            "deep SQL (3,000 terms)",
            p.post("/api/v1/query", deep.into_bytes(), &[]),
        )
        .await;
    assert!(
        a.starts_with("400") && a.contains("server.query-max-depth"),
        "{a}"
    );
    // 211 bytes the parser would take minutes over (found by the sql_guard fuzz target),
    // ten at once: each is refused at once and ingestion never notices.
    let cursed = "SELECT Ev. Ea[riv. Eac.e.nSELECT [riv. Ea[r[riv. EELECT [riv. Ea[riv. ri[apZlapn.iv. ri[apZlapac.e.nSELECT [riv. Ea[riv. ri[apZlapn.iv. ri[i[apZlapn.iv]. ri[apZlapn.iv. ri[apZlapac.e.nSELECT [riv. Ea[r. Ea[.e.n.";
    let a = p
        .run("ten queries of exponential parse time", async {
            let answers = futures::future::join_all(
                (0..10).map(|_| p.post("/api/v1/query", cursed.as_bytes().to_vec(), &[])),
            )
            .await;
            answers.join(" | ")
        })
        .await;
    assert!(
        a.split(" | ")
            .all(|x| x.starts_with("400") && x.contains("too complex to parse")),
        "{a}"
    );
    let a = p
        .run(
            "count(DISTINCT) over 1e9",
            p.post(
                "/api/v1/query",
                b"SELECT count(DISTINCT value) FROM range(1000000000)".to_vec(),
                &[],
            ),
        )
        .await;
    assert!(a.starts_with("408") || a.starts_with("507"), "{a}");
    let a = p
        .run(
            "array_agg over 1e8",
            p.post(
                "/api/v1/query",
                b"SELECT array_agg(value) FROM range(100000000)".to_vec(),
                &[],
            ),
        )
        .await;
    // Over the pool (507) or, in a debug build, past the time limit first (408).
    assert!(
        (a.starts_with("507") && a.contains("server.query-memory")) || a.starts_with("408"),
        "{a}"
    );
    write_good(500).await;

    // Write bodies.
    let flood = "x\n".repeat(4 * 1024 * 1024).into_bytes();
    let a = p
        .run(
            "bad-line flood (8 MiB)",
            p.post("/api/v2/write", flood, &[]),
        )
        .await;
    assert!(
        a.starts_with("400") && a.len() < 20_000 && a.contains("more not listed"),
        "{}",
        &a[..a.len().min(300)]
    );
    let bomb = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![b'0'; 1 << 20];
        for _ in 0..256 {
            e.write_all(&zeros).unwrap();
        }
        e.finish().unwrap()
    };
    let a = p
        .run(
            "gzip bomb (256 MiB inside)",
            p.post("/api/v2/write", bomb, &[("Content-Encoding", "gzip")]),
        )
        .await;
    assert!(a.starts_with("413"), "{a}");
    let future = format!(
        "press,host=p1 temp=1 {}\n",
        T0 + 5 * 365 * 86_400 * 1_000_000_000
    )
    .into_bytes();
    let a = p
        .run("point 5 years ahead", p.post("/api/v2/write", future, &[]))
        .await;
    assert!(
        a.starts_with("400") && a.contains("processor.max-future"),
        "{a}"
    );
    // Devices whose clocks run 10 minutes ahead, on every partition: accepted, judged
    // by their own clocks, and the good points written after them are not late.
    let ahead: String = (0..16)
        .map(|h| {
            format!(
                "press,host=skew{h} temp=1 {}\n",
                now_ns() + 600 * 1_000_000_000
            )
        })
        .collect();
    let a = p
        .run(
            "16 sources 10 minutes ahead",
            p.post("/api/v2/write", ahead.into_bytes(), &[]),
        )
        .await;
    assert!(a.starts_with("204"), "{a}");
    write_good(500).await;
    let names = format!("{},host=a v=1\npress,host=p1,temp=hot v=1\npress,host=p1 host=1\npress,host=p1 time_day=1\n", "m".repeat(300)).into_bytes();
    let a = p
        .run(
            "over-long, colliding names",
            p.post("/api/v2/write", names, &[]),
        )
        .await;
    assert!(a.starts_with("400") && a.contains("\"accepted\":0"), "{a}");
    let a = p
        .run("cross-origin, no token", async {
            match client
                .post(format!("{url}/api/v2/write"))
                .header("Origin", "http://evil.example")
                .body("press,host=p1 temp=1\n")
                .send()
                .await
            {
                Ok(r) => r.status().as_u16().to_string(),
                Err(e) => e.to_string(),
            }
        })
        .await;
    assert!(a == "401" || a == "403", "{a}");
    write_good(500).await;

    // Random bytes on every route, as bodies and as whole requests.
    let routes = [
        "/api/v2/write",
        "/write",
        "/api/v1/telegraf",
        "/api/v1/query",
        "/api/v1/live",
        "/api/v1/sources",
        "/health",
        "/metrics",
        "/",
        "/nope",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = |n: usize| {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 24) as u8
            })
            .collect::<Vec<u8>>()
    };
    let a = p
        .run("random bytes on every route", async {
            let mut statuses = Vec::new();
            for route in routes {
                for size in [1, 100, 10_000] {
                    let answer = p
                        .post(
                            route,
                            random(size),
                            &[(
                                "Content-Encoding",
                                if size == 100 { "gzip" } else { "identity" },
                            )],
                        )
                        .await;
                    statuses.push(answer.split(' ').next().unwrap_or("").to_owned());
                }
                let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
                let _ = tcp.write_all(&random(4096)).await;
                let mut buf = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
            }
            statuses.sort();
            statuses.dedup();
            statuses.join(",")
        })
        .await;
    assert!(!a.contains("500") && !a.contains("error"), "{a}");
    write_good(500).await;

    // Connections: 500 idle, a few trickling heads, then 1,100 more than the cap allows.
    let a = p
        .run("480 idle + 20 slow heads", async {
            let mut idle = Vec::new();
            for _ in 0..480 {
                idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
            }
            let mut slow = Vec::new();
            for _ in 0..20 {
                let mut t = tokio::net::TcpStream::connect(&addr).await.unwrap();
                t.write_all(b"POST /api/v2/write HTTP/1.1\r\nHo")
                    .await
                    .unwrap();
                slow.push(t);
            }
            let ping = Instant::now();
            let r = client
                .get(format!("{url}/ping"))
                .send()
                .await
                .map(|r| r.status().as_u16());
            let ping_ms = ping.elapsed().as_millis();
            // The header timeout (2 s here) closes them all.
            tokio::time::sleep(Duration::from_secs(4)).await;
            let mut closed = 0;
            for t in idle.iter_mut().chain(slow.iter_mut()) {
                let mut b = [0u8; 1];
                if matches!(
                    tokio::time::timeout(Duration::from_millis(50), t.read(&mut b)).await,
                    Ok(Ok(0) | Err(_))
                ) {
                    closed += 1;
                }
            }
            format!("ping {r:?} in {ping_ms} ms while held; {closed} of 500 closed by the server")
        })
        .await;
    assert!(
        a.contains("Ok(204)") && a.contains("500 of 500 closed"),
        "{a}"
    );
    let a = p
        .run("1,100 connections at once", async {
            let mut held = Vec::new();
            for _ in 0..1100 {
                match tokio::net::TcpStream::connect(&addr).await {
                    Ok(t) => held.push((Instant::now(), t)),
                    Err(e) => return format!("connect failed: {e}"),
                }
            }
            // Past the cap (512) connections are answered 503 and closed; none is closed
            // without an answer. A connection the server accepted once a held one's header
            // timeout (2 s) freed a place is closed by that same timeout, 2 s after it was
            // accepted: a close that late is the timeout, not a refusal.
            let reads = held.iter_mut().skip(600).map(|(connected, t)| async move {
                let mut buf = [0u8; 64];
                match tokio::time::timeout(Duration::from_secs(3), t.read(&mut buf)).await {
                    Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 503") => (1, 0),
                    Ok(_) if connected.elapsed() < Duration::from_millis(1500) => (0, 1),
                    _ => (0, 0),
                }
            });
            let (refused, silent) = futures::future::join_all(reads)
                .await
                .into_iter()
                .fold((0, 0), |(r, s), (a, b)| (r + a, s + b));
            drop(held);
            format!("{refused} of the last 500 answered 503, {silent} closed without an answer")
        })
        .await;
    // Usually about 490 of them: the rest were accepted once a header timeout freed a
    // place. On a machine so busy that the server accepts the backlog seconds late, most
    // are accepted that way; what must never happen is a close without an answer.
    let refused: usize = a.split(' ').next().unwrap().parse().unwrap_or(0);
    assert!(
        refused >= 50 && a.ends_with(", 0 closed without an answer"),
        "{a}"
    );
    // The cap's connections go; writes and commits go on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    write_good(500).await;

    // Still alive: /ping at once, the lake committing, memory bounded.
    let started = Instant::now();
    let r = client.get(format!("{url}/ping")).send().await.unwrap();
    let ping = started.elapsed();
    assert_eq!(r.status(), 204);
    assert!(ping < Duration::from_millis(100), "/ping took {ping:?}");
    let r = client.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (_, peak) = rss_mib(pid);
    eprintln!("peak RSS over the whole test: {peak} MiB (bound {PEAK_RSS_MIB})");
    assert!(peak < PEAK_RSS_MIB, "peak RSS {peak} MiB");

    let (status, log) = up.stop();
    assert!(status.success(), "pitwall up failed:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    let lake = Lake::open(LakeConfig::test_config(&data)).await.unwrap();
    let q = Query::new(&lake).await.unwrap();
    let counts = rows(
        &q,
        "SELECT count(*) AS n, count(DISTINCT time) AS times FROM clean.press WHERE host LIKE 'p%'",
    )
    .await;
    let skewed = rows(
        &q,
        "SELECT count(*) AS n FROM clean.press WHERE host LIKE 'skew%'",
    )
    .await;
    assert_eq!(
        skewed[0]["n"], 16,
        "the sources ahead are data too: {skewed:?}"
    );
    let late = rows(&q, "SELECT count(*) AS n FROM quarantine.late").await;
    assert_eq!(late[0]["n"], 0, "nothing late: {late:?}");
    assert_eq!(counts[0]["n"], written, "every good point: {counts:?}");
    assert_eq!(counts[0]["times"], written, "each once: {counts:?}");
    let tables = rows(
        &q,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'clean'",
    )
    .await;
    assert_eq!(tables.len(), 1, "no table made by the probes: {tables:?}");
}
