//! Storage goes away under a running pipeline: `pitwall up` on a PostgreSQL catalog and
//! an S3 warehouse (garage), points written through the API all along, the S3 server
//! stopped for longer than the old writer's give-up time (about 50 s), then started
//! again. `/health` says what is wrong while it lasts; the commits resume by themselves;
//! every point answered 204 is in its clean table exactly once.

use std::time::{Duration, Instant};

use pitwall_lake::{Lake, LakeConfig};
use pitwall_query::Query;

mod common;
use common::{Up, rows, s3_config};

/// How long the S3 server stays down.
const OUTAGE: Duration = Duration::from_secs(70);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_loses_nothing_and_commits_resume_by_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let pg = pitwall_testkit::Postgres::start();
    let mut s3 = pitwall_testkit::Garage::start();
    let catalog = pg.database("lake");
    let config = dir.path().join("pitwall.toml");
    std::fs::write(
        &config,
        format!(
            "[sim]\nrace-enabled = false\niot-enabled = false\n\n[lake]\ncatalog = \"{catalog}\"\nwarehouse = \"s3://{}/warehouse\"\ncommit-interval = \"500ms\"\n\n[lake.s3]\nendpoint = \"{}\"\nregion = \"{}\"\npath-style = true\naccess-key-id = \"{}\"\nsecret-access-key = \"{}\"\n",
            s3.bucket, s3.endpoint, s3.region, s3.access_key_id, s3.secret_access_key
        ),
    )
    .unwrap();
    let up = Up::start(
        &[
            "--status-interval",
            "2s",
            "--config",
            config.to_str().unwrap(),
        ],
        &dir.path().join("lake"),
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = up.url.clone();
    const T0: i64 = 1_767_225_600_000_000_000;

    // Ten points a batch, one batch every 100 ms, each point's time unique.
    let mut accepted = 0u64;
    let mut sent = 0i64;
    let mut write = async |n: usize| {
        for _ in 0..n {
            let mut lp = String::new();
            for _ in 0..10 {
                lp.push_str(&format!(
                    "press,host=p{} temp={}.5 {}\n",
                    sent % 7,
                    sent % 90,
                    T0 + sent * 1_000_000
                ));
                sent += 1;
            }
            let r = client
                .post(format!("{url}/api/v2/write"))
                .body(lp)
                .send()
                .await
                .unwrap();
            assert!(
                matches!(r.status().as_u16(), 204 | 503),
                "{}",
                r.text().await.unwrap()
            );
            if r.status() == 204 {
                accepted += 10;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let health = async |client: &reqwest::Client| {
        let r = client.get(format!("{url}/health")).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };

    write(30).await;
    assert_eq!(health(&client).await.0, 200);
    s3.stop();
    let down = Instant::now();
    let mut saw_failing = None;
    while down.elapsed() < OUTAGE {
        write(10).await;
        let (status, text) = health(&client).await;
        if status == 503 && saw_failing.is_none() {
            saw_failing = Some(text);
        }
    }
    let failing = saw_failing.expect("/health said nothing while S3 was down");
    assert!(failing.contains("lake commits have failed"), "{failing}");
    let (status, text) = health(&client).await;
    assert_eq!(
        status, 503,
        "still failing at the end of the outage: {text}"
    );

    s3.restart();
    let back = Instant::now();
    loop {
        write(5).await;
        if health(&client).await.0 == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(90),
            "commits did not resume after S3 came back"
        );
    }
    write(20).await;
    let (status, log) = up.stop();
    assert!(status.success(), "pitwall up failed:\n{log}");
    assert!(
        log.contains("LAKE COMMITS FAILING"),
        "the status line said nothing:\n{log}"
    );

    let lake = Lake::open(LakeConfig {
        catalog,
        warehouse: format!("s3://{}/warehouse", s3.bucket),
        s3: s3_config(&s3),
        ..LakeConfig::test_config(&dir.path().join("reader"))
    })
    .await
    .unwrap();
    let q = Query::new(&lake).await.unwrap();
    let counts = rows(
        &q,
        "SELECT count(*) AS n, count(DISTINCT time) AS times FROM clean.press",
    )
    .await;
    eprintln!("accepted {accepted} of {sent} points; the lake holds {counts:?}");
    assert!(
        accepted > 1000,
        "most writes were accepted: {accepted} of {sent}"
    );
    assert_eq!(counts[0]["n"], accepted, "every accepted point, once");
    assert_eq!(counts[0]["times"], accepted, "no point twice");
}
