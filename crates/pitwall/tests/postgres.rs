//! The PostgreSQL wire protocol in the real binary: `pitwall up` with a token, 600
//! points written over HTTP, then psql, psycopg2 with parameters, SQLAlchemy's
//! inspector (what Superset and Metabase call), pg8000 over the extended protocol with
//! the shape of Grafana's time-series query, refused writes with SQLSTATEs, and the
//! connection cap (tests/postgres_clients.py holds the clients' checks).

use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::Up;

const TOKEN: &str = "t0ken";
const T0: i64 = 1_767_225_600_000_000_000;
const CAP: usize = 4;

fn psql(pg: &str, password: &str, command: &str) -> std::process::Output {
    psql_with(pg, password, command, &[])
}

/// psql with more of libpq's environment (`PGSSLMODE`, `PGSSLROOTCERT`).
fn psql_with(
    pg: &str,
    password: &str,
    command: &str,
    env: &[(&str, &std::ffi::OsStr)],
) -> std::process::Output {
    let (host, port) = pg.split_once(':').unwrap();
    Command::new("psql")
        .args([
            "-h", host, "-p", port, "-U", "engineer", "-d", "pitwall", "-X", "-c", command,
        ])
        .envs(env.iter().copied())
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql runs (scripts/test.sh installs postgresql)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_clients_read_the_lake() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("lake");
    let config = dir.path().join("pitwall.toml");
    std::fs::write(
        &config,
        format!("[sim]\nrace-enabled = false\niot-enabled = false\n\n[server]\ntokens = [\"{TOKEN}\"]\npg-max-connections = {CAP}\n\n[lake]\ncommit-interval = \"500ms\"\n"),
    )
    .unwrap();
    let up = Up::start(&["--config", config.to_str().unwrap()], &data);
    assert!(!up.pg.is_empty(), "pitwall up names its PostgreSQL address");

    // 10 sensors at 1 Hz for 60 s, then one more point from s-99 at another site.
    let client = reqwest::Client::new();
    common::write_lines(&client, &up.url, Some(TOKEN), common::sensor_lines(T0)).await;

    // Until the lake has committed every point (psql itself asks).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = psql(&up.pg, TOKEN, "SELECT count(*) AS n FROM clean.sensor");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains(" 601\n") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "601 rows never showed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // psql: its catalog queries behind \dn, \dt and \d, and a wrong password.
    let out = psql(&up.pg, TOKEN, "\\dt clean.*");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(" clean  | sensor | table"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = psql(&up.pg, TOKEN, "\\d clean.sensor");
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        " time          | timestamp with time zone |           | not null |",
        " temperature_c | double precision         |           |          |",
        " sensor_id     | text                     |           |          |",
    ] {
        assert!(
            text.contains(line),
            "\\d clean.sensor lacks {line:?}:\n{text}"
        );
    }
    let out = psql(&up.pg, TOKEN, "\\dn");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" anomalies ") && text.contains(" quarantine "),
        "{text}"
    );
    let out = psql(&up.pg, "not-the-token", "SELECT 1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("password authentication failed"),
        "{err}"
    );

    // The drivers' checks.
    let (host, port) = up.pg.split_once(':').unwrap();
    common::python_checks(
        "postgres_clients.py",
        &[
            ("PG_HOST", host.to_owned()),
            ("PG_PORT", port.to_owned()),
            ("PG_TOKEN", TOKEN.to_owned()),
            ("PG_CAP", CAP.to_string()),
            ("T0", T0.to_string()),
        ],
        6,
    );

    let (status, log) = up.stop();
    assert!(status.success(), "pitwall up failed:\n{log}");
}

/// TLS on the PostgreSQL wire with a certificate made here: psql verifies it against
/// its authority (verify-full) and reads over it; a client that does not ask for TLS is
/// refused before any password is sent, a wrong password over TLS is refused as
/// without; a key where the certificate should be fails the start, naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = common::self_signed(dir.path());
    // The key where the certificate should be: the start fails and says which setting.
    let bad = common::tls_config(dir.path(), "bad.toml", TOKEN, "", ("pg", &key, &key));
    common::start_fails(
        &bad,
        &dir.path().join("bad-lake"),
        &["server.pg-tls-cert", "holds no certificate"],
    );

    let good = common::tls_config(dir.path(), "pitwall.toml", TOKEN, "", ("pg", &cert, &key));
    let up = Up::start(
        &["--config", good.to_str().unwrap()],
        &dir.path().join("lake"),
    );
    let verify = [
        ("PGSSLMODE", std::ffi::OsStr::new("verify-full")),
        ("PGSSLROOTCERT", cert.as_os_str()),
    ];
    let out = psql_with(&up.pg, TOKEN, "SELECT 40 + 2 AS answer", &verify);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(" 42"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = psql_with(&up.pg, TOKEN, "\\conninfo", &verify);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SSL connection"), "{text}");

    let plain = [("PGSSLMODE", std::ffi::OsStr::new("disable"))];
    let out = psql_with(&up.pg, TOKEN, "SELECT 1", &plain);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("over TLS only") && err.contains("sslmode=require"),
        "{err}"
    );
    let out = psql_with(&up.pg, "not-the-token", "SELECT 1", &verify);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("password authentication failed"),
        "{err}"
    );

    let (status, log) = up.stop();
    assert!(status.success(), "pitwall up failed:\n{log}");
}
