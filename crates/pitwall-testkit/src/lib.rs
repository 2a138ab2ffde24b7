//! Real services for pitwall's tests, each started on a free loopback port in its own
//! temporary directory and stopped on drop: PostgreSQL (Debian's server binaries) for
//! the Iceberg SQL catalog, and garage (an S3-compatible object store, built by
//! `scripts/test.sh` and cached) for the warehouse. Nothing here is a mock: the tests
//! talk to the same servers a user would run.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(addr: &str, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() >= deadline {
            // The log's directory goes with the test: show its end here.
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            panic!(
                "{what} did not listen on {addr} within 30 s; the end of its log ({}):\n{tail}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A PostgreSQL server of its own: `initdb` into a temporary directory, trust
/// authentication on 127.0.0.1 only, superuser `pitwall`.
#[derive(Debug)]
pub struct Postgres {
    child: Child,
    dir: tempfile::TempDir,
    /// The port it listens on.
    pub port: u16,
    bin: PathBuf,
}

/// Where Debian keeps PostgreSQL's server programs: `PITWALL_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn postgres_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PITWALL_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p)| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).unwrap_or_else(|| {
        panic!("no PostgreSQL server under /usr/lib/postgresql; run ./scripts/test.sh, which installs Debian's postgresql")
    })
}

/// The uid and gid of the `postgres` account: the server refuses to run as root.
fn postgres_account() -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"postgres"))
            .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

impl Postgres {
    /// Starts a fresh server; panics with what to do if PostgreSQL is not installed.
    pub fn start() -> Postgres {
        use std::os::unix::process::CommandExt;
        let bin = postgres_bin();
        let dir = tempfile::Builder::new()
            .prefix("pitwall-pg")
            .tempdir()
            .unwrap();
        let account = postgres_account();
        let as_owner = |cmd: &mut Command| {
            if let Some((uid, gid)) = account {
                cmd.uid(uid).gid(gid);
            }
        };
        if let Some((uid, gid)) = account {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-U",
            "pitwall",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        as_owner(&mut initdb);
        run(&mut initdb, "initdb");
        let port = free_port();
        let log = dir.path().join("postgres.log");
        let mut server = Command::new(bin.join("postgres"));
        server
            .arg("-D")
            .arg(&data)
            .args([
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ])
            .arg("-k")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        as_owner(&mut server);
        let child = server.spawn().expect("starting postgres");
        let pg = Postgres {
            child,
            dir,
            port,
            bin,
        };
        wait_listening(&format!("127.0.0.1:{port}"), "postgres", &log);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(pg.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "pitwall"])
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not get ready (log: {})",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    /// Creates a database and returns its URL.
    pub fn database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(name)
    }

    /// `postgres://pitwall@127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://pitwall@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL with psql and returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = run(
            Command::new(self.bin.join("psql"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "pitwall",
                    "-d",
                    db,
                ])
                .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql]),
            "psql",
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The server's log file.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A single-node garage S3 server with one bucket and one key allowed on it.
#[derive(Debug)]
pub struct Garage {
    child: Child,
    dir: tempfile::TempDir,
    config: PathBuf,
    /// `http://127.0.0.1:PORT`: the S3 endpoint (path-style).
    pub endpoint: String,
    /// The bucket the tests write into.
    pub bucket: String,
    /// The key's id.
    pub access_key_id: String,
    /// The key's secret.
    pub secret_access_key: String,
    /// The region garage signs for.
    pub region: String,
}

/// The garage binary: `PITWALL_GARAGE`, else where `scripts/test.sh` builds it.
pub fn garage_binary() -> PathBuf {
    let path = std::env::var_os("PITWALL_GARAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            PathBuf::from(home).join(".cache/pitwall/garage/bin/garage")
        });
    assert!(
        path.exists(),
        "the S3 server garage is not at {}; run ./scripts/test.sh, which builds it once and caches it",
        path.display()
    );
    path
}

impl Garage {
    /// Starts garage and makes the bucket `pitwall` with a read-write key.
    pub fn start() -> Garage {
        let dir = tempfile::Builder::new()
            .prefix("pitwall-garage")
            .tempdir()
            .unwrap();
        let (s3, rpc, admin) = (free_port(), free_port(), free_port());
        let config = dir.path().join("garage.toml");
        let region = "us-east-1".to_owned();
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + s3 as usize) % 256))
            .collect();
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{region}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
                meta = dir.path().join("meta").display(),
                data = dir.path().join("data").display(),
            ),
        )
        .unwrap();
        let log = dir.path().join("garage.log");
        let child = Self::spawn(&config, &log);
        let endpoint = format!("http://127.0.0.1:{s3}");
        let mut g = Garage {
            child,
            dir,
            config,
            endpoint,
            bucket: "pitwall".to_owned(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            region,
        };
        wait_listening(&format!("127.0.0.1:{rpc}"), "garage", &log);
        // The node's id, then a one-node layout.
        let node = g.cli_retrying(&["node", "id", "-q"]);
        let node = node.trim().split('@').next().unwrap().to_owned();
        g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        g.cli(&["layout", "apply", "--version", "1"]);
        g.cli_retrying(&["bucket", "create", "pitwall"]);
        let key = g.cli(&["key", "create", "pitwall-tests"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| {
                    l.trim()
                        .strip_prefix(name)
                        .map(|v| v.trim_start_matches(':').trim().to_owned())
                })
                .unwrap_or_else(|| panic!("no {name:?} in garage's answer:\n{key}"))
        };
        g.access_key_id = field("Key ID");
        g.secret_access_key = field("Secret key");
        g.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            "pitwall",
            "--key",
            "pitwall-tests",
        ]);
        wait_listening(&format!("127.0.0.1:{s3}"), "garage's S3 API", &log);
        g
    }

    fn spawn(config: &Path, log: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Command::new(garage_binary())
            .arg("-c")
            .arg(config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting garage")
    }

    /// Stops the server (an outage); [`Garage::restart`] brings it back with its data.
    pub fn stop(&mut self) {
        stop(&mut self.child);
    }

    /// Starts the server again on the same ports and data, and waits until S3 answers.
    pub fn restart(&mut self) {
        self.child = Self::spawn(&self.config, &self.log());
        let s3 = self.endpoint.trim_start_matches("http://").to_owned();
        wait_listening(&s3, "garage's S3 API", &self.log());
    }

    /// Runs a garage admin command against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = run(
            Command::new(garage_binary())
                .arg("-c")
                .arg(&self.config)
                .args(args),
            "garage",
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// As [`Garage::cli`], retried for a while: right after start the node may not answer yet.
    fn cli_retrying(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new(garage_binary())
                .arg("-c")
                .arg(&self.config)
                .args(args)
                .output()
                .unwrap();
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "garage {args:?} kept failing: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The server's log file.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("garage.log")
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// An Iceberg REST catalog of its own: rustberg (crates.io, built by `scripts/test.sh`
/// and cached), its catalog in a temporary directory, its warehouse in a directory or
/// a garage bucket, an admin API key required on every request.
#[derive(Debug)]
pub struct Rustberg {
    child: Child,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`: the catalog's URI.
    pub uri: String,
    /// The API key, sent as `Authorization: Bearer …`.
    pub token: String,
    /// Where the catalog puts tables (`file:///…` or `s3://bucket/prefix`).
    pub warehouse: String,
}

/// The rustberg binary: `PITWALL_RUSTBERG`, else where `scripts/test.sh` builds it.
pub fn rustberg_binary() -> PathBuf {
    let path = std::env::var_os("PITWALL_RUSTBERG")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            PathBuf::from(home).join(".cache/pitwall/rustberg/bin/rustberg")
        });
    assert!(
        path.exists(),
        "the Iceberg REST catalog rustberg is not at {}; run ./scripts/test.sh, which builds it once and caches it",
        path.display()
    );
    path
}

impl Rustberg {
    /// Starts rustberg with its warehouse in a local directory of its own.
    pub fn start() -> Rustberg {
        Self::start_with(None)
    }

    /// Starts rustberg with its warehouse under `s3://{bucket}/rest` on `garage`.
    pub fn start_on(garage: &Garage) -> Rustberg {
        Self::start_with(Some(garage))
    }

    fn start_with(garage: Option<&Garage>) -> Rustberg {
        let dir = tempfile::Builder::new()
            .prefix("pitwall-rustberg")
            .tempdir()
            .unwrap();
        let port = free_port();
        let token: String = format!(
            "rb_{}",
            (0..40)
                .map(|i| char::from(b'a' + ((i * 7 + port as usize) % 26) as u8))
                .collect::<String>()
        );
        std::fs::create_dir_all(dir.path().join("catalog")).unwrap();
        let (warehouse, storage) = match garage {
            Some(g) => (
                format!("s3://{}/rest", g.bucket),
                format!(
                    "[storage.properties]\n\"s3.endpoint\" = \"{}\"\n\"s3.path-style-access\" = \"true\"\n\"s3.region\" = \"{}\"\n\"s3.access-key-id\" = \"{}\"\n\"s3.secret-access-key\" = \"env:PITWALL_TEST_S3_SECRET\"\n",
                    g.endpoint, g.region, g.access_key_id
                ),
            ),
            None => {
                std::fs::create_dir_all(dir.path().join("warehouse")).unwrap();
                (
                    format!("file://{}", dir.path().join("warehouse").display()),
                    String::new(),
                )
            }
        };
        let config = dir.path().join("rustberg.toml");
        std::fs::write(
            &config,
            format!(
                r#"[server]
host = "127.0.0.1"
port = {port}

[server.auth]
api_key_enabled = true

[[server.auth.api_keys]]
name = "pitwall-tests"
tenant = "default"
roles = ["admin"]
key_env = "PITWALL_TEST_RUSTBERG_KEY"

[tls]
enabled = false
insecure_http = true

[storage]
catalog_url = "file://{catalog}"
warehouse_location = "{warehouse}"

{storage}
[rate_limit]
enabled = false

[audit]
sink = "none"
fail_closed = false
"#,
                catalog = dir.path().join("catalog").display(),
            ),
        )
        .unwrap();
        let log = dir.path().join("rustberg.log");
        let mut cmd = Command::new(rustberg_binary());
        // Built without TLS, rustberg serves plain HTTP only when told on its command line.
        cmd.arg("--config")
            .arg(&config)
            .arg("--insecure-http")
            .current_dir(dir.path())
            .env("PITWALL_TEST_RUSTBERG_KEY", &token)
            .env("RUST_LOG", "warn")
            .stdout(std::fs::File::create(dir.path().join("rustberg.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(g) = garage {
            cmd.env("PITWALL_TEST_S3_SECRET", &g.secret_access_key);
        }
        let child = cmd.spawn().expect("starting rustberg");
        wait_listening(&format!("127.0.0.1:{port}"), "rustberg", &log);
        Rustberg {
            child,
            dir,
            uri: format!("http://127.0.0.1:{port}"),
            token,
            warehouse,
        }
    }

    /// The server's log file.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("rustberg.log")
    }
}

impl Drop for Rustberg {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}
