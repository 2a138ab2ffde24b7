//! Arrow Flight SQL in the real binary: `pitwall up --flight-listen` with a token, 601
//! points written over HTTP, then ADBC's Flight SQL driver (tests/flight_clients.py):
//! wrong tokens refused, statements, prepared statements with parameters, a
//! time-bucketed series, catalog/schema/table metadata, writes refused.

mod common;
use common::Up;

const TOKEN: &str = "t0ken";
const T0: i64 = 1_767_225_600_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adbc_reads_the_lake_over_flight_sql() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("lake");
    let config = dir.path().join("pitwall.toml");
    std::fs::write(
        &config,
        format!("[sim]\nrace-enabled = false\niot-enabled = false\n\n[server]\ntokens = [\"{TOKEN}\"]\n\n[lake]\ncommit-interval = \"500ms\"\n"),
    )
    .unwrap();
    let up = Up::start(
        &[
            "--config",
            config.to_str().unwrap(),
            "--flight-listen",
            "127.0.0.1:0",
        ],
        &data,
    );
    assert!(
        !up.flight.is_empty(),
        "pitwall up names its Flight SQL address"
    );

    let client = reqwest::Client::new();
    common::write_lines(&client, &up.url, Some(TOKEN), common::sensor_lines(T0)).await;
    common::until_csv(
        &client,
        &up.url,
        Some(TOKEN),
        "SELECT count(*) AS n FROM clean.sensor",
        "n\n601\n",
    )
    .await;

    common::python_checks(
        "flight_clients.py",
        &[
            ("FLIGHT_URI", format!("grpc://{}", up.flight)),
            ("FLIGHT_TOKEN", TOKEN.to_owned()),
            ("T0", T0.to_string()),
        ],
        6,
    );

    let metrics = common::metrics_text(&client, &up.url).await;
    assert!(
        metrics.contains("pitwall_flight_auth_failures_total"),
        "{metrics}"
    );
    let (status, log) = up.stop();
    assert!(status.success(), "pitwall up failed:\n{log}");
}

/// Flight SQL over TLS with a certificate made here: ADBC verifies it against its
/// authority and reads over it; clients that do not trust it, or do not use TLS, get
/// nothing; a key where the certificate should be fails the start, naming the setting;
/// a client that opens a connection and never shakes hands holds up no one else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adbc_reads_over_flight_sql_with_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = common::self_signed(dir.path());
    let listen = "flight-listen = \"127.0.0.1:0\"\n";
    let bad = common::tls_config(
        dir.path(),
        "bad.toml",
        TOKEN,
        listen,
        ("flight", &key, &key),
    );
    common::start_fails(
        &bad,
        &dir.path().join("bad-lake"),
        &["server.flight-tls-cert", "holds no certificate"],
    );

    let good = common::tls_config(
        dir.path(),
        "pitwall.toml",
        TOKEN,
        listen,
        ("flight", &cert, &key),
    );
    let up = Up::start(
        &["--config", good.to_str().unwrap()],
        &dir.path().join("lake"),
    );
    assert!(
        !up.flight.is_empty(),
        "pitwall up names its Flight SQL address"
    );
    let flight = up.flight.clone();
    // A connection that never starts its handshake, held open throughout.
    let _silent = std::net::TcpStream::connect(&up.flight).unwrap();
    common::python_checks(
        "flight_tls.py",
        &[
            ("FLIGHT_ADDR", up.flight.clone()),
            ("FLIGHT_TOKEN", TOKEN.to_owned()),
            ("FLIGHT_CA", cert.to_str().unwrap().to_owned()),
        ],
        4,
    );
    let (status, log) = up.stop();
    assert!(status.success(), "pitwall up failed:\n{log}");
    assert!(
        log.contains(&format!("grpc+tls://{flight}")),
        "the address it prints says TLS:\n{log}"
    );
}
