//! PostgreSQL's wire protocol over the lake (`server.pg-listen`, 127.0.0.1:5433 by
//! default), so psql, Grafana's and Superset's PostgreSQL sources, Metabase, DBeaver and
//! every PostgreSQL driver read pitwall's tables.
//!
//! It is the SQL API's engine behind another door: the same read-only SQL, the same
//! [`Engine`] (its memory pool, its places, its time, size and depth limits are shared
//! with the HTTP API), the same tokens (any user name; the token is the password, sent
//! as PostgreSQL's cleartext password message); the database is `pitwall`. Each
//! statement is parsed in PostgreSQL's dialect and rewritten where DataFusion plans it
//! differently (`datafusion-pg-catalog`), and a session has `pg_catalog` over the lake's
//! tables, so the catalog queries tools send at connect and while browsing work.
//!
//! What is not a read is answered without touching anything: `SET` keeps the setting
//! for the session (and reports the ones PostgreSQL reports), `SHOW` answers it,
//! `BEGIN`/`COMMIT`/`ROLLBACK` are accepted (every statement reads one snapshot
//! anyway), `DISCARD`/`DEALLOCATE`/`CLOSE` are acknowledged. Writes, DDL and `COPY`
//! get an error with its SQLSTATE and a sentence, and the session goes on.
//!
//! With `server.pg-tls-cert` and `server.pg-tls-key` (PEM files) a client may ask for
//! TLS as PostgreSQL's do (`sslmode=require`, or `verify-full` with the certificate's
//! authority); while `server.pg-tls-required` holds (the default once TLS is set up), a
//! client that does not is refused with SQLSTATE 28000 before any password is sent.
//!
//! Connections are capped (`server.pg-max-connections`; past it a client gets SQLSTATE
//! 53300 and is closed), a client has pgwire's 60 s to finish its start-up, and a
//! prepared statement is planned again on every execution, so it reads the lake's
//! newest commit.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use futures::{Sink, SinkExt, stream};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, METADATA_DATABASE, METADATA_USER, NoopHandler,
    PgWireConnectionState, PgWireServerHandlers, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::response::NoticeResponse;
use pgwire::messages::startup::{Authentication, ParameterStatus};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::types::format::FormatOptions;
use pitwall_lake::Lake;
use pitwall_query::{Described, ParamValues, SqlStatement};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

/// The one database a client may name.
pub const DATABASE: &str = "pitwall";

/// The PostgreSQL door's view of the shared engine, lake and tokens.
type PgService = crate::SqlDoors;

impl PgService {
    fn pg_lake(&self) -> PgWireResult<&Lake> {
        self.lake.as_ref().ok_or_else(|| {
            user_error(
                "57P03",
                "this server has no lake to read yet (it is starting, or runs without one)",
            )
        })
    }
}

/// The PostgreSQL listener, bound and ready to run.
#[derive(Debug)]
pub struct PgBound {
    listener: tokio::net::TcpListener,
    /// Offered to clients that ask for TLS, when it is set up.
    tls: Option<crate::tls::Acceptor>,
    handlers: Arc<Handlers>,
    places: Arc<Semaphore>,
    max_connections: usize,
}

impl PgBound {
    /// Binds `server.pg-listen`; `None` when it is empty (the door is off).
    pub async fn bind(
        config: &crate::ServerConfig,
        service: PgService,
    ) -> Result<Option<Self>, String> {
        let Some(listener) = crate::bind_door(&config.pg_listen, "server.pg-listen").await? else {
            return Ok(None);
        };
        // A bad certificate or key fails the start, before any client is served.
        // PostgreSQL 17's direct TLS connections name the protocol.
        let tls = crate::tls::acceptor(
            ("server.pg-tls-cert", &config.pg_tls_cert),
            ("server.pg-tls-key", &config.pg_tls_key),
            &[b"postgresql"],
        )?;
        let handlers = Arc::new(Handlers {
            query: Arc::new(Queries {
                parser: Arc::new(Parser {
                    service: service.clone(),
                }),
                service: service.clone(),
            }),
            startup: Arc::new(Startup {
                tokens: Arc::clone(&service.tokens),
                parameters: server_parameters(),
                keys: RandomPidSecretKeyGenerator::default(),
                tls_required: tls.is_some() && config.pg_tls_required,
            }),
        });
        Ok(Some(PgBound {
            listener,
            tls,
            handlers,
            places: Arc::new(Semaphore::new(config.pg_max_connections)),
            max_connections: config.pg_max_connections,
        }))
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes; open sessions are dropped then.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let sessions = tokio_util::task::TaskTracker::new();
        tokio::pin!(shutdown);
        loop {
            let (mut socket, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "PostgreSQL listener: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = socket.set_nodelay(true);
            let Ok(place) = Arc::clone(&self.places).try_acquire_owned() else {
                let max = self.max_connections;
                ::metrics::counter!("pitwall_pg_connections_refused_total").increment(1);
                sessions.spawn(async move {
                    let refuse = async {
                        decline_encryption(&mut socket).await?;
                        socket.write_all(&too_many_connections(max)).await?;
                        socket.shutdown().await
                    };
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), refuse).await;
                });
                continue;
            };
            let handlers = Arc::clone(&self.handlers);
            let tls = self.tls.as_ref().map(|t| t.0.clone());
            sessions.spawn(async move {
                let _place = place;
                if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                    tracing::debug!(%peer, error = %e, "PostgreSQL session ended with an error");
                }
            });
        }
        sessions.close();
        Ok(())
    }
}

/// Reads the client's first packets as PostgreSQL does before refusing: an SSL or
/// GSS encryption request is answered `N` (drivers ask for SSL first, and an error in
/// its place reads as a broken exchange), up to the start-up message.
async fn decline_encryption(socket: &mut tokio::net::TcpStream) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    for _ in 0..3 {
        let len = socket.read_u32().await? as usize;
        if !(8..=10_000).contains(&len) {
            return Ok(());
        }
        let mut body = vec![0; len - 4];
        socket.read_exact(&mut body).await?;
        let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        // SSLRequest and GSSENCRequest; anything else is the start-up message.
        if len == 8 && (code == 80_877_103 || code == 80_877_104) {
            socket.write_all(b"N").await?;
        } else {
            return Ok(());
        }
    }
    Ok(())
}

/// An ErrorResponse (FATAL, 53300) in place of the start-up answer, which every
/// PostgreSQL client reads as a refused connection.
fn too_many_connections(max: usize) -> Vec<u8> {
    use pgwire::messages::Message;
    let info = ErrorInfo::new(
        "FATAL".into(),
        "53300".into(),
        format!(
            "too many connections: {max} are open (server.pg-max-connections); close one or retry shortly"
        ),
    );
    let mut out = bytes::BytesMut::new();
    pgwire::messages::response::ErrorResponse::from(info)
        .encode(&mut out)
        .expect("an ErrorResponse always encodes");
    out.to_vec()
}

fn server_parameters() -> DefaultServerParameterProvider {
    let mut p = DefaultServerParameterProvider::default();
    p.server_version = pitwall_query::postgres::SERVER_VERSION.to_owned();
    p.search_path = "clean".to_owned();
    p.is_superuser = false;
    p.default_transaction_read_only = true;
    p.time_zone = "UTC".to_owned();
    p
}

#[derive(Debug)]
struct Handlers {
    query: Arc<Queries>,
    startup: Arc<Startup>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.query)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.query)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.startup)
    }

    fn copy_handler(&self) -> Arc<impl pgwire::api::copy::CopyHandler> {
        Arc::new(NoopHandler)
    }
}

/// Start-up: the database must be `pitwall`; with tokens configured, the password
/// must be one of them (compared in constant time, every token every time).
struct Startup {
    tokens: Arc<Vec<String>>,
    parameters: DefaultServerParameterProvider,
    keys: RandomPidSecretKeyGenerator,
    /// Refuse clients that did not ask for TLS.
    tls_required: bool,
}

impl Debug for Startup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Startup").finish_non_exhaustive()
    }
}

impl Startup {
    async fn finish<C>(&self, client: &mut C) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (pid, key) = self.keys.generate(client);
        client.set_pid_and_secret_key(pid, key);
        finish_authentication(client, &self.parameters).await
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                if self.tls_required && !client.is_secure() {
                    ::metrics::counter!("pitwall_pg_auth_failures_total").increment(1);
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "FATAL".into(),
                        "28000".into(),
                        "this server takes PostgreSQL connections over TLS only (server.pg-tls-required): connect with sslmode=require, or verify-full with the server's certificate authority".into(),
                    ))));
                }
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                let user = client
                    .metadata()
                    .get(METADATA_USER)
                    .cloned()
                    .unwrap_or_default();
                let database = client
                    .metadata()
                    .get(METADATA_DATABASE)
                    .cloned()
                    .unwrap_or_else(|| user.clone());
                if database != DATABASE {
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "FATAL".into(),
                        "3D000".into(),
                        format!(
                            "database \"{}\" does not exist: pitwall serves one database, \"{DATABASE}\" (e.g. psql -h HOST -p 5433 -U any -d {DATABASE})",
                            truncate(&database, 64)
                        ),
                    ))));
                }
                if self.tokens.is_empty() {
                    self.finish(client).await?;
                } else {
                    client.set_state(PgWireConnectionState::AuthenticationInProgress);
                    client
                        .send(PgWireBackendMessage::Authentication(
                            Authentication::CleartextPassword,
                        ))
                        .await?;
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let pwd = pwd.into_password()?;
                if crate::token_matches(&self.tokens, &pwd.password) {
                    self.finish(client).await?;
                } else {
                    ::metrics::counter!("pitwall_pg_auth_failures_total").increment(1);
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "FATAL".into(),
                        "28P01".into(),
                        "password authentication failed: the password must be one of the server's tokens (server.tokens or PITWALL_TOKEN); any user name is accepted".into(),
                    ))));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A statement as the extended protocol keeps it between Parse and Execute.
#[derive(Debug, Clone)]
enum Prepared {
    Empty,
    /// A read: planned once at Parse for its columns and parameters, planned again
    /// at each Execute against the newest commit.
    Read {
        statement: Box<SqlStatement>,
        described: Described,
    },
    /// Answered by the session itself.
    Command(Command),
}

/// What a parsed statement is.
enum Kind {
    /// A read, run by the engine.
    Read(Box<SqlStatement>),
    /// Answered by the session itself.
    Command(Command),
}

#[derive(Debug, Clone)]
enum Command {
    Set { name: String, value: String },
    Show(String),
    Begin,
    End(&'static str),
    Ack(&'static str),
}

/// Sorts a parsed statement into a read, a command the session answers, or a refusal.
fn classify(statement: SqlStatement) -> PgWireResult<Kind> {
    use datafusion::sql::sqlparser::ast::{Set, Statement as S};
    Ok(match statement {
        S::Query(_)
        | S::Explain { .. }
        | S::ExplainTable { .. }
        | S::ShowTables { .. }
        | S::ShowColumns { .. } => Kind::Read(Box::new(statement)),
        S::Set(set) => match set {
            Set::SingleAssignment {
                variable, values, ..
            } => Kind::Command(Command::Set {
                name: variable.to_string().to_ascii_lowercase(),
                value: values
                    .iter()
                    .map(setting_text)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
            Set::SetTimeZone { value, .. } => Kind::Command(Command::Set {
                name: "timezone".into(),
                value: setting_text(&value),
            }),
            _ => Kind::Command(Command::Ack("SET")),
        },
        S::ShowVariable { variable } => Kind::Command(Command::Show(
            variable
                .iter()
                .map(|i| i.value.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(" "),
        )),
        S::StartTransaction { .. } => Kind::Command(Command::Begin),
        S::Commit { .. } => Kind::Command(Command::End("COMMIT")),
        S::Rollback { .. } => Kind::Command(Command::End("ROLLBACK")),
        S::Discard { .. } => Kind::Command(Command::Ack("DISCARD ALL")),
        S::Deallocate { .. } => Kind::Command(Command::Ack("DEALLOCATE")),
        S::Close { .. } => Kind::Command(Command::Ack("CLOSE CURSOR")),
        S::Copy { .. } => {
            return Err(user_error(
                "0A000",
                "COPY is not supported: pitwall's PostgreSQL door only reads; use SELECT (psql --csv -c 'SELECT ...' > file writes a file), or write through the write API",
            ));
        }
        other => {
            let what = other.to_string();
            let verb: String = what
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            return Err(user_error(
                "25006",
                &format!(
                    "{} is not allowed: pitwall's SQL is read-only (SELECT, WITH, EXPLAIN, SHOW, SET of session settings); data is written through the write API and the pipeline",
                    truncate(&verb, 40)
                ),
            ));
        }
    })
}

/// A SET value as text: `'ISO, MDY'` → `ISO, MDY`, an identifier (`DEFAULT`) as written.
fn setting_text(e: &datafusion::sql::sqlparser::ast::Expr) -> String {
    use datafusion::sql::sqlparser::ast::{Expr, Value};
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        Expr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}

fn user_error(code: &str, message: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        message.into(),
    )))
}

/// A query error as PostgreSQL's clients expect it: a SQLSTATE and the engine's words.
/// (By value: it is `map_err`'s adaptor.)
#[allow(clippy::needless_pass_by_value)]
fn query_error(e: pitwall_query::Error) -> PgWireError {
    use pitwall_query::Error as E;
    let code = match &e {
        E::ReadOnly(_) => "25006",
        E::Timeout(_) => "57014",
        E::Busy { .. } => "53000",
        E::TooLarge { .. } => "54000",
        E::TooComplex { .. } | E::TooDeep { .. } => "54001",
        E::Memory { .. } => "53200",
        E::Catalog(_) => "58030",
        E::Setup(_) | E::Format(_) => "XX000",
        E::Sql(df) => sql_state(&df.to_string()),
    };
    user_error(code, &e.to_string())
}

/// The SQLSTATE for DataFusion's message: what a client can act on.
fn sql_state(message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if m.contains("sql error")
        || m.contains("parsererror")
        || m.contains("expected") && m.contains("found")
    {
        "42601"
    } else if m.contains("table") && m.contains("not found") {
        "42P01"
    } else if m.contains("no field named") || m.contains("schema error") {
        "42703"
    } else if m.contains("invalid function") || m.contains("no function matches") {
        "42883"
    } else if m.contains("not implemented") || m.contains("unsupported") {
        "0A000"
    } else if m.contains("cast") || m.contains("cannot coerce") {
        "42846"
    } else if m.contains("divide by zero") {
        "22012"
    } else {
        "42000"
    }
}

/// The session's value for a setting `SHOW` asks about.
fn show_value(metadata: &HashMap<String, String>, name: &str) -> PgWireResult<String> {
    let stored = |k: &str| metadata.get(k).cloned();
    let defaults = FormatOptions::default();
    let value = match name {
        "server_version" => Some(pitwall_query::postgres::SERVER_VERSION.to_owned()),
        "server_version_num" => Some("160006".to_owned()),
        "server_encoding" | "client_encoding" => {
            Some(stored("client_encoding").unwrap_or_else(|| "UTF8".into()))
        }
        "standard_conforming_strings" | "integer_datetimes" => Some("on".into()),
        "transaction isolation level"
        | "transaction_isolation"
        | "default_transaction_isolation" => Some("read committed".into()),
        "transaction_read_only" | "default_transaction_read_only" => Some("on".into()),
        "time zone" | "timezone" => Some(stored("timezone").unwrap_or_else(|| "UTC".into())),
        "datestyle" => Some(stored("datestyle").unwrap_or(defaults.date_style)),
        "intervalstyle" => Some(stored("intervalstyle").unwrap_or(defaults.interval_style)),
        "bytea_output" => Some(stored("bytea_output").unwrap_or(defaults.bytea_output)),
        "extra_float_digits" => Some(
            stored("extra_float_digits").unwrap_or_else(|| defaults.extra_float_digits.to_string()),
        ),
        "search_path" => Some(stored("search_path").unwrap_or_else(|| "clean".into())),
        "max_identifier_length" => Some("63".into()),
        "lc_collate" | "lc_ctype" => Some("C".into()),
        "statement_timeout" => Some(stored("statement_timeout").unwrap_or_else(|| "0".into())),
        other => stored(other),
    };
    value.ok_or_else(|| {
        user_error(
            "42704",
            &format!(
                "unrecognized configuration parameter \"{}\"",
                truncate(name, 64)
            ),
        )
    })
}

/// The one text column `SHOW name` answers with, named like PostgreSQL's.
fn show_field(name: &str, format: FieldFormat) -> FieldInfo {
    FieldInfo::new(name.replace(' ', "_"), None, None, Type::TEXT, format)
}

/// Settings PostgreSQL reports back (ParameterStatus) when they change, by their
/// reported spelling.
fn reported_name(name: &str) -> Option<&'static str> {
    Some(match name {
        "application_name" => "application_name",
        "datestyle" => "DateStyle",
        "intervalstyle" => "IntervalStyle",
        "timezone" => "TimeZone",
        "client_encoding" => "client_encoding",
        "search_path" => "search_path",
        "extra_float_digits" => "extra_float_digits",
        _ => return None,
    })
}

/// Runs statements for both protocols.
struct Queries {
    service: PgService,
    parser: Arc<Parser>,
}

impl Debug for Queries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queries").finish_non_exhaustive()
    }
}

impl Queries {
    async fn command<C>(&self, client: &mut C, command: &Command) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        Ok(match command {
            Command::Set { name, value } => {
                let name = name.as_str();
                let value = if value.eq_ignore_ascii_case("default")
                    || value.eq_ignore_ascii_case("local")
                {
                    show_value(&HashMap::new(), name).unwrap_or_default()
                } else {
                    truncate(value, 256).to_owned()
                };
                client.metadata_mut().insert(name.to_owned(), value.clone());
                if let Some(reported) = reported_name(name) {
                    client
                        .send(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
                            reported.to_owned(),
                            value,
                        )))
                        .await?;
                }
                Response::Execution(Tag::new("SET"))
            }
            Command::Show(name) => {
                let value = show_value(client.metadata(), name)?;
                let fields = Arc::new(vec![show_field(name, FieldFormat::Text)]);
                let mut row = DataRowEncoder::new(Arc::clone(&fields));
                row.encode_field(&Some(value))?;
                let row = row.take_row();
                Response::Query(QueryResponse::new(fields, stream::iter(vec![Ok(row)])))
            }
            Command::Begin => Response::TransactionStart(Tag::new("BEGIN")),
            Command::End(tag) => Response::TransactionEnd(Tag::new(tag)),
            Command::Ack(tag) => Response::Execution(Tag::new(tag)),
        })
    }

    /// Runs a read with its parameters and encodes its rows in `format`; a result cut
    /// at the row limit is said in a NOTICE first.
    async fn read<C>(
        &self,
        client: &mut C,
        statement: SqlStatement,
        params: ParamValues,
        format: &Format,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let lake = self.service.pg_lake()?;
        let answer = self
            .service
            .engine
            .run_postgres(lake, statement, params)
            .await
            .map_err(query_error)?;
        if answer.truncated {
            let notice = ErrorInfo::new(
                "NOTICE".into(),
                "01000".into(),
                format!(
                    "the result was cut at {} rows (server.query-max-rows); narrow the query or page with LIMIT/OFFSET",
                    answer.rows
                ),
            );
            client
                .send(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(
                    notice,
                )))
                .await?;
        }
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let fields = Arc::new(arrow_pg::datatypes::arrow_schema_to_pg_fields(
            &answer.schema,
            format,
            Some(options),
        )?);
        let rows = answer.batches.into_iter().flat_map({
            let fields = Arc::clone(&fields);
            move |batch| arrow_pg::datatypes::encode_recordbatch(Arc::clone(&fields), batch)
        });
        Ok(Response::Query(QueryResponse::new(
            fields,
            stream::iter(rows),
        )))
    }
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = self
            .service
            .engine
            .parse_postgres(query)
            .await
            .map_err(query_error)?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        for statement in statements {
            let done = match classify(statement) {
                Ok(Kind::Read(statement)) => {
                    self.read(
                        client,
                        *statement,
                        ParamValues::List(Vec::new()),
                        &Format::UnifiedText,
                    )
                    .await
                }
                Ok(Kind::Command(c)) => self.command(client, &c).await,
                Err(e) => Err(e),
            };
            match done {
                Ok(r) => responses.push(r),
                // PostgreSQL stops at the first failing statement of a query string.
                Err(e) if responses.is_empty() => return Err(e),
                Err(e) => {
                    responses.push(Response::Error(Box::new(e.into())));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

/// Parses (and, for a read, plans) a statement of the extended protocol.
struct Parser {
    service: PgService,
}

impl Debug for Parser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parser").finish_non_exhaustive()
    }
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Prepared>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut statements = self
            .service
            .engine
            .parse_postgres(sql)
            .await
            .map_err(query_error)?;
        if statements.len() > 1 {
            return Err(user_error(
                "42601",
                "cannot insert multiple commands into a prepared statement",
            ));
        }
        let Some(statement) = statements.pop() else {
            return Ok(Prepared::Empty);
        };
        match classify(statement)? {
            Kind::Read(statement) => {
                let lake = self.service.pg_lake()?;
                let described = self
                    .service
                    .engine
                    .describe_postgres(lake, (*statement).clone())
                    .await
                    .map_err(query_error)?;
                Ok(Prepared::Read {
                    statement,
                    described,
                })
            }
            Kind::Command(c) => Ok(Prepared::Command(c)),
        }
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        match stmt {
            Prepared::Read { described, .. } => described
                .params
                .iter()
                .map(|t| match t {
                    Some(t) => arrow_pg::datatypes::into_pg_type(t),
                    None => Ok(Type::UNKNOWN),
                })
                .collect(),
            _ => Ok(Vec::new()),
        }
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match stmt {
            Prepared::Read { described, .. } => arrow_pg::datatypes::arrow_schema_to_pg_fields(
                &described.schema,
                format.unwrap_or(&Format::UnifiedText),
                None,
            ),
            Prepared::Command(Command::Show(name)) => Ok(vec![show_field(
                name,
                format.map_or(FieldFormat::Text, |f| f.format_for(0)),
            )]),
            _ => Ok(Vec::new()),
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        Arc::clone(&self.parser)
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stored: &StoredStatement<Prepared> = &portal.statement;
        match &stored.statement {
            Prepared::Empty => Ok(Response::EmptyQuery),
            Prepared::Command(c) => self.command(client, c).await,
            Prepared::Read {
                statement,
                described,
            } => {
                let types: Vec<Option<&DataType>> =
                    described.params.iter().map(Option::as_ref).collect();
                let params = arrow_pg::datatypes::df::deserialize_parameters(portal, &types)?;
                self.read(
                    client,
                    (**statement).clone(),
                    params,
                    &portal.result_column_format,
                )
                .await
            }
        }
    }
}
