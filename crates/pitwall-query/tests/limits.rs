//! The query engine's limits, each tried at and past its edge: the process must come out
//! of every one of these alive, with an error that names the setting.

use std::time::{Duration, Instant};

use pitwall_lake::{Lake, LakeConfig};
use pitwall_query::{Engine, Error, Limits};

async fn lake(dir: &std::path::Path) -> Lake {
    Lake::open(LakeConfig::test_config(dir)).await.unwrap()
}

fn sum(terms: usize) -> String {
    format!("SELECT {} AS total", vec!["1"; terms].join("+"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_and_long_sql_is_refused_before_planning_and_the_limit_itself_runs() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(dir.path()).await;
    let engine = Engine::new(Limits::default()).unwrap();
    let max_depth = engine.limits().max_depth;

    // At the limit: a sum of max_depth - 1 terms is max_depth deep with its query.
    let answer = engine.read_only(&lake, &sum(max_depth - 1)).await.unwrap();
    let total =
        arrow::util::display::array_value_to_string(answer.batches[0].column(0), 0).unwrap();
    assert_eq!(total, (max_depth - 1).to_string());

    // 3,000 terms aborted the whole process on a 2 MiB stack before.
    let err = engine.read_only(&lake, &sum(3_000)).await.unwrap_err();
    assert!(matches!(err, Error::TooDeep { .. }), "{err}");
    assert!(err.to_string().contains("server.query-max-depth"), "{err}");

    // As deep as the size limit allows, as UNIONs and as nested subqueries.
    let unions = vec!["SELECT 1"; 10_000].join(" UNION ALL ");
    assert!(matches!(
        engine.read_only(&lake, &unions).await.unwrap_err(),
        Error::TooDeep { .. }
    ));
    let big = sum(engine.limits().max_sql_bytes / 2 - 20);
    let err = engine.read_only(&lake, &big).await.unwrap_err();
    assert!(matches!(err, Error::TooDeep { .. }), "{err}");
    let over = format!("SELECT 1 -- {}", "x".repeat(engine.limits().max_sql_bytes));
    let err = engine.read_only(&lake, &over).await.unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { .. })
            && err.to_string().contains("server.query-max-sql-bytes"),
        "{err}"
    );

    // Still read-only.
    assert!(matches!(
        engine
            .read_only(&lake, "CREATE TABLE t AS SELECT 1")
            .await
            .unwrap_err(),
        Error::ReadOnly(_)
    ));
}

/// The process's peak resident memory, from the kernel.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_stay_within_the_memory_pool() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(dir.path()).await;
    let engine = Engine::new(Limits {
        memory: 32 * 1024 * 1024,
        timeout: Duration::from_secs(8),
        spill_dir: Some(dir.path().join("tmp")),
        ..Limits::default()
    })
    .unwrap();
    // An aggregate that cannot spill fails naming the pool.
    let err = engine
        .read_only(&lake, "SELECT array_agg(value) FROM range(100000000)")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Memory { .. }), "{err}");
    assert!(err.to_string().contains("server.query-memory"), "{err}");

    // This grew `pitwall up` to 7 GB and killed it. Now its grouping spills to the
    // spill directory within the pool until the time limit (or the pool) stops it.
    let started = Instant::now();
    let err = engine
        .read_only(&lake, "SELECT count(DISTINCT value) FROM range(1000000000)")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Memory { .. } | Error::Timeout(_)),
        "{err}"
    );
    let peak = peak_rss_mib();
    eprintln!(
        "stopped after {:?} ({err}); peak RSS of the test process {peak} MiB",
        started.elapsed()
    );
    assert!(peak < 1024, "peak RSS {peak} MiB with a 32 MiB pool");

    // The pool is whole again for the next query.
    let answer = engine
        .read_only(&lake, "SELECT count(DISTINCT value) FROM range(1000)")
        .await
        .unwrap();
    assert_eq!(answer.rows, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_and_places_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(dir.path()).await;
    let engine = Engine::new(Limits {
        timeout: Duration::from_millis(500),
        concurrency: 1,
        queue_timeout: Duration::from_millis(100),
        ..Limits::default()
    })
    .unwrap();
    let slow = "SELECT sum(value) FROM range(100000000000)";
    let started = Instant::now();
    let (first, second) = tokio::join!(engine.read_only(&lake, slow), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        engine.read_only(&lake, "SELECT 1").await
    });
    let first = first.unwrap_err();
    assert!(
        matches!(first, Error::Timeout(_)) && first.to_string().contains("server.query-timeout"),
        "{first}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the time limit answers at once"
    );
    let second = second.unwrap_err();
    assert!(
        matches!(second, Error::Busy { .. })
            && second.to_string().contains("server.query-concurrency"),
        "{second}"
    );
    // Once the abandoned query lets go of its place, queries run again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match engine.read_only(&lake, "SELECT 1").await {
            Ok(a) => {
                assert_eq!(a.rows, 1);
                break;
            }
            Err(Error::Busy { .. }) if Instant::now() < deadline => continue,
            Err(e) => panic!("{e}"),
        }
    }
}
