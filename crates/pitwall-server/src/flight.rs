//! Arrow Flight SQL on `server.flight-listen` (off by default): the same read-only SQL,
//! engine, limits and tokens as the HTTP API, for ADBC (`adbc-driver-flightsql`),
//! Grafana's Flight SQL data source and InfluxDB 3 clients.
//!
//! - Authentication: `authorization: Bearer TOKEN` on every call, or a handshake with
//!   HTTP Basic credentials whose password is a token (any user name), which answers
//!   with the bearer header to use. No tokens configured: no authentication.
//! - Statements: `GetFlightInfo` plans the query (its schema); the ticket carries the
//!   SQL, and `DoGet` runs it against the lake as it is then.
//! - Prepared statements are stateless: the handle holds the SQL, and binding
//!   parameters (`DoPut`, one row) answers with a new handle holding them too (Flight
//!   SQL's updated handle), so the server keeps nothing per client.
//! - Metadata: the catalog `pitwall`, its schemas (`clean`, `metrics`, …), tables with
//!   their Arrow schemas, table types, and `SqlInfo` (read-only).
//! - Writes (`DoPut` updates, ingestion, transactions, Substrait) are refused in words.
//!
//! Connections past `server.flight-max-connections` are closed as they arrive.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionBeginTransactionRequest, ActionBeginTransactionResult,
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
    CommandStatementSubstraitPlan, CommandStatementUpdate, DoPutPreparedStatementResult,
    ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use base64::Engine as _;
use bytes::Bytes;
use datafusion::scalar::ScalarValue;
use futures::{Stream, StreamExt, TryStreamExt};
use pitwall_lake::Lake;
use pitwall_query::ParamValues;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Request, Response, Status, Streaming};

use crate::SqlDoors;

/// The one catalog a client sees.
const CATALOG: &str = "pitwall";
/// What a prepared statement's handle starts with (and its version).
const HANDLE_MAGIC: &[u8] = b"pitwall-ps1";
/// Bound parameters a handle may carry, as Arrow IPC.
const MAX_PARAMS_BYTES: usize = 64 * 1024;

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

/// The Flight SQL service over the shared engine.
#[derive(Clone)]
pub struct FlightSql {
    doors: SqlDoors,
    info: Arc<SqlInfoData>,
}

impl std::fmt::Debug for FlightSql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightSql")
            .field("doors", &self.doors)
            .finish_non_exhaustive()
    }
}

impl FlightSql {
    fn new(doors: SqlDoors) -> Result<Self, String> {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "pitwall");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
        info.append(SqlInfo::FlightSqlServerReadOnly, true);
        info.append(SqlInfo::FlightSqlServerSql, true);
        info.append(SqlInfo::FlightSqlServerSubstrait, false);
        info.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        info.append(SqlInfo::FlightSqlServerCancel, false);
        info.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        let info = info.build().map_err(|e| e.to_string())?;
        Ok(FlightSql {
            doors,
            info: Arc::new(info),
        })
    }

    /// The caller's bearer token is one of the tokens (or none are configured).
    #[allow(clippy::result_large_err)]
    fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        if self.doors.tokens.is_empty() {
            return Ok(());
        }
        let header = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "));
        match token {
            Some(t) if crate::token_matches(&self.doors.tokens, t) => Ok(()),
            _ => {
                ::metrics::counter!("pitwall_flight_auth_failures_total").increment(1);
                Err(Status::unauthenticated(
                    "a token is required: send the header 'authorization: Bearer TOKEN', or a handshake with the token as the password",
                ))
            }
        }
    }

    #[allow(clippy::result_large_err)]
    fn lake(&self) -> Result<&Lake, Status> {
        self.doors.lake.as_ref().ok_or_else(|| {
            Status::unavailable(
                "this server has no lake to read yet (it is starting, or runs without one)",
            )
        })
    }

    /// The columns `sql` answers with, and its parameters' schema.
    async fn describe(&self, sql: &str) -> Result<(SchemaRef, Schema), Status> {
        let described = self
            .doors
            .engine
            .describe(self.lake()?, sql)
            .await
            .map_err(|e| status(&e))?;
        let params = Schema::new(
            described
                .params
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    Field::new(
                        format!("${}", i + 1),
                        t.clone().unwrap_or(DataType::Null),
                        true,
                    )
                })
                .collect::<Vec<_>>(),
        );
        Ok((described.schema, params))
    }

    /// Runs `sql` and streams its batches.
    async fn run(&self, sql: &str, params: ParamValues) -> Result<Response<DoGetStream>, Status> {
        let answer = self
            .doors
            .engine
            .run(self.lake()?, sql, params)
            .await
            .map_err(|e| status(&e))?;
        if answer.truncated {
            tracing::debug!(
                rows = answer.rows,
                "Flight SQL answer cut at server.query-max-rows"
            );
        }
        Ok(stream(answer.schema, answer.batches))
    }

    /// The lake's tables as (schema, table, columns if asked), in order.
    async fn tables(
        &self,
        with_columns: bool,
    ) -> Result<Vec<pitwall_query::LakeTableInfo>, Status> {
        self.doors
            .engine
            .tables(self.lake()?, with_columns)
            .await
            .map_err(|e| status(&e))
    }
}

/// Batches as Flight data, with the schema first (also when there are no rows).
fn stream(schema: SchemaRef, batches: Vec<RecordBatch>) -> Response<DoGetStream> {
    let data = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::iter(batches.into_iter().map(Ok)))
        .map_err(Status::from);
    Response::new(Box::pin(data))
}

/// One batch built by a metadata builder, as a stream.
fn one<E: std::fmt::Display>(
    schema: SchemaRef,
    batch: Result<RecordBatch, E>,
) -> Result<Response<DoGetStream>, Status> {
    let batch = batch.map_err(|e| Status::internal(e.to_string()))?;
    Ok(stream(schema, vec![batch]))
}

/// A query error as a gRPC status with the engine's sentence.
fn status(e: &pitwall_query::Error) -> Status {
    use pitwall_query::Error;
    let message = e.to_string();
    match e {
        Error::ReadOnly(_) => Status::permission_denied(message),
        Error::Timeout(_) => Status::deadline_exceeded(message),
        Error::Busy { .. } | Error::Memory { .. } => Status::resource_exhausted(message),
        Error::TooLarge { .. } | Error::TooComplex { .. } | Error::TooDeep { .. } => {
            Status::invalid_argument(message)
        }
        Error::Sql(_) => {
            let m = message.to_ascii_lowercase();
            if m.contains("not found") {
                Status::not_found(message)
            } else {
                Status::invalid_argument(message)
            }
        }
        _ => Status::internal(message),
    }
}

/// A prepared statement's handle: the SQL, then the bound parameters (one row, IPC).
fn encode_handle(sql: &str, params: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(HANDLE_MAGIC.len() + 4 + sql.len() + params.len());
    out.extend_from_slice(HANDLE_MAGIC);
    out.extend_from_slice(&(sql.len() as u32).to_le_bytes());
    out.extend_from_slice(sql.as_bytes());
    out.extend_from_slice(params);
    out.into()
}

#[allow(clippy::result_large_err)]
fn decode_handle(handle: &[u8]) -> Result<(&str, &[u8]), Status> {
    let bad = || Status::invalid_argument("not a prepared statement handle from this server");
    let rest = handle.strip_prefix(HANDLE_MAGIC).ok_or_else(bad)?;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return Err(bad());
    }
    let (sql, params) = rest.split_at(len);
    Ok((std::str::from_utf8(sql).map_err(|_| bad())?, params))
}

/// The parameters bound in a handle, `$1` first.
#[allow(clippy::result_large_err)]
fn param_values(ipc: &[u8]) -> Result<ParamValues, Status> {
    if ipc.is_empty() {
        return Ok(ParamValues::List(Vec::new()));
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)
        .map_err(|e| Status::invalid_argument(format!("reading the bound parameters: {e}")))?;
    let mut values = Vec::new();
    for batch in reader {
        let batch = batch
            .map_err(|e| Status::invalid_argument(format!("reading the bound parameters: {e}")))?;
        for column in batch.columns() {
            let v = ScalarValue::try_from_array(column, 0)
                .map_err(|e| Status::invalid_argument(format!("reading a bound parameter: {e}")))?;
            values.push(v.into());
        }
    }
    Ok(ParamValues::List(values))
}

fn info(
    schema: &Schema,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("encoding the schema: {e}")))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

fn read_only(what: &str) -> Status {
    Status::permission_denied(format!(
        "{what}: pitwall's SQL is read-only; write points with the write API (/api/v2/write) or to Kafka's raw topic"
    ))
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let token = if let Some(basic) = header.strip_prefix("Basic ") {
            // With or without padding: Go's Flight client leaves it out.
            let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(basic.trim().trim_end_matches('='))
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            decoded
                .split_once(':')
                .map(|(_, p)| p.to_owned())
                .unwrap_or_default()
        } else if let Some(bearer) = header.strip_prefix("Bearer ") {
            bearer.to_owned()
        } else {
            String::new()
        };
        if !self.doors.tokens.is_empty() && !crate::token_matches(&self.doors.tokens, &token) {
            ::metrics::counter!("pitwall_flight_auth_failures_total").increment(1);
            return Err(Status::unauthenticated(
                "wrong token: give a token as the password (any user name) or as 'authorization: Bearer TOKEN'",
            ));
        }
        let token = if self.doors.tokens.is_empty() {
            "none".to_owned()
        } else {
            token
        };
        let output = futures::stream::iter([Ok(HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into(),
        })]);
        let mut response: Response<Pin<Box<dyn Stream<Item = _> + Send>>> =
            Response::new(Box::pin(output));
        if let Ok(value) = MetadataValue::try_from(format!("Bearer {token}")) {
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        let (schema, _) = self.describe(&query.query).await?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        info(
            &schema,
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.check(request.metadata())?;
        let sql = std::str::from_utf8(&ticket.statement_handle)
            .map_err(|_| Status::invalid_argument("the ticket's SQL is not UTF-8"))?;
        self.run(sql, ParamValues::List(Vec::new())).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        self.check(request.metadata())?;
        let (schema, params) = self.describe(&query.query).await?;
        let options = IpcWriteOptions::default();
        let ipc = |s: &Schema| -> Result<Bytes, Status> {
            let IpcMessage(bytes) = SchemaAsIpc::new(s, &options)
                .try_into()
                .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
            Ok(bytes)
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: encode_handle(&query.query, &[]),
            dataset_schema: ipc(&schema)?,
            parameter_schema: ipc(&params)?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        self.check(request.metadata())?;
        let (sql, _) = decode_handle(&query.prepared_statement_handle)?;
        let mut batches = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
            request
                .into_inner()
                .map_err(arrow_flight::error::FlightError::from),
        );
        let mut bound: Option<RecordBatch> = None;
        while let Some(batch) = batches.next().await {
            let batch = batch
                .map_err(|e| Status::invalid_argument(format!("reading the parameters: {e}")))?;
            if batch.num_rows() == 0 {
                continue;
            }
            if bound.is_some() || batch.num_rows() > 1 {
                return Err(Status::invalid_argument(
                    "bind one row of parameters to a query (several rows are for updates, which are refused)",
                ));
            }
            bound = Some(batch);
        }
        let mut ipc = Vec::new();
        if let Some(batch) = bound {
            let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &batch.schema())
                .map_err(|e| Status::internal(e.to_string()))?;
            writer
                .write(&batch)
                .map_err(|e| Status::internal(e.to_string()))?;
            writer
                .finish()
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        if ipc.len() > MAX_PARAMS_BYTES {
            return Err(Status::invalid_argument(format!(
                "the bound parameters take {} bytes; at most {MAX_PARAMS_BYTES} are allowed",
                ipc.len()
            )));
        }
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(encode_handle(sql, &ipc)),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        let (sql, _) = decode_handle(&query.prepared_statement_handle)?;
        let (schema, _) = self.describe(sql).await?;
        info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.check(request.metadata())?;
        let (sql, params) = decode_handle(&query.prepared_statement_handle)?;
        self.run(sql, param_values(params)?).await
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        // Handles hold everything: nothing to free.
        self.check(request.metadata())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        info(
            &query.into_builder().schema(),
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.check(request.metadata())?;
        let mut builder = query.into_builder();
        builder.append(CATALOG);
        one(builder.schema(), builder.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        info(
            &query.clone().into_builder().schema(),
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.check(request.metadata())?;
        let tables = self.tables(false).await?;
        let mut builder = query.into_builder();
        let mut last = None;
        for (schema, _, _) in &tables {
            if last != Some(schema) {
                builder.append(CATALOG, schema);
                last = Some(schema);
            }
        }
        one(builder.schema(), builder.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        info(
            &query.clone().into_builder().schema(),
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.check(request.metadata())?;
        let tables = self.tables(query.include_schema).await?;
        let mut builder = query.into_builder();
        for (schema, table, columns) in &tables {
            let columns = columns.clone().unwrap_or_else(|| Arc::new(Schema::empty()));
            builder
                .append(CATALOG, schema, table, "TABLE", &columns)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        one(builder.schema(), builder.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        info(
            &table_types_schema(),
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_table_types(
        &self,
        _query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.check(request.metadata())?;
        let schema = Arc::new(table_types_schema());
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(StringArray::from(vec!["TABLE"]))],
        );
        one(schema, batch)
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        let schema = query.clone().into_builder(&self.info).schema();
        info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.check(request.metadata())?;
        let builder = query.into_builder(&self.info);
        one(builder.schema(), builder.build())
    }

    async fn do_put_statement_update(
        &self,
        _ticket: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only("an update statement"))
    }

    async fn do_put_statement_ingest(
        &self,
        _ticket: CommandStatementIngest,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only("bulk ingestion"))
    }

    async fn do_put_prepared_statement_update(
        &self,
        _query: CommandPreparedStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only("a prepared update"))
    }

    async fn do_put_substrait_plan(
        &self,
        _ticket: CommandStatementSubstraitPlan,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(Status::unimplemented(
            "Substrait plans are not taken; send SQL",
        ))
    }

    async fn get_flight_info_substrait_plan(
        &self,
        _query: CommandStatementSubstraitPlan,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented(
            "Substrait plans are not taken; send SQL",
        ))
    }

    async fn do_action_begin_transaction(
        &self,
        _query: ActionBeginTransactionRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<ActionBeginTransactionResult, Status> {
        Err(Status::unimplemented(
            "transactions are not offered: every query reads the lake's latest commit",
        ))
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<DoGetStream>, Status> {
        Err(Status::unimplemented(format!(
            "{} is not offered by pitwall's Flight SQL",
            message.type_url
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

fn table_types_schema() -> Schema {
    Schema::new(vec![Field::new("table_type", DataType::Utf8, false)])
}

/// A client's connection: plain TCP, or TLS over it when TLS is set up.
type Conn = tokio_util::either::Either<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>;

/// A connection holding one of the places `server.flight-max-connections` allows.
#[derive(Debug)]
struct Held {
    stream: Conn,
    _place: OwnedSemaphorePermit,
}

impl Connected for Held {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match &self.stream {
            Conn::Left(s) => s.connect_info(),
            Conn::Right(s) => s.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for Held {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Held {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The longest a client may take over its TLS handshake (it holds a place meanwhile).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The Flight SQL listener, bound and ready to run.
#[derive(Debug)]
pub struct FlightBound {
    listener: TcpListener,
    /// Every connection goes through it, when TLS is set up.
    tls: Option<crate::tls::Acceptor>,
    service: FlightSql,
    places: Arc<Semaphore>,
    query_timeout: Duration,
}

impl FlightBound {
    /// Binds `server.flight-listen`; `None` when it is empty (off).
    pub async fn bind(
        config: &crate::ServerConfig,
        doors: SqlDoors,
    ) -> Result<Option<Self>, String> {
        let Some(listener) =
            crate::bind_door(&config.flight_listen, "server.flight-listen").await?
        else {
            return Ok(None);
        };
        // A bad certificate or key fails the start, before any client is served.
        let tls = crate::tls::acceptor(
            ("server.flight-tls-cert", &config.flight_tls_cert),
            ("server.flight-tls-key", &config.flight_tls_key),
            &[b"h2"],
        )?;
        Ok(Some(FlightBound {
            listener,
            tls,
            service: FlightSql::new(doors)?,
            places: Arc::new(Semaphore::new(config.flight_max_connections)),
            query_timeout: config.query_timeout,
        }))
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Whether clients must connect over TLS (`grpc+tls://`).
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` completes.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), String> {
        let FlightBound {
            listener,
            tls,
            service,
            places,
            query_timeout,
        } = self;
        // Connections are accepted, given a place and (with TLS) shaken hands with on
        // tasks of their own, so a client slow to finish its handshake holds up no one
        // else; the server takes them as they become ready.
        let (ready, mut incoming) = tokio::sync::mpsc::channel::<Held>(16);
        let accepting = tokio::spawn(accept(listener, tls, places, ready));
        let _stop_accepting = AbortOnDrop(accepting);
        let incoming = futures::stream::poll_fn(move |cx| {
            incoming
                .poll_recv(cx)
                .map(|held| held.map(Ok::<_, std::io::Error>))
        });
        tonic::transport::Server::builder()
            // A stream of results may take as long as the query, and then some to send.
            .timeout(query_timeout + Duration::from_secs(60))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .concurrency_limit_per_connection(32)
            .add_service(FlightServiceServer::new(service))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(|e| format!("Flight SQL server: {e}"))
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Accepts connections while `ready` has a reader: each takes a place (or is closed at
/// once when there is none) and, with TLS, completes its handshake on a task of its own
/// within [`HANDSHAKE_TIMEOUT`] before it is handed over.
async fn accept(
    listener: TcpListener,
    tls: Option<crate::tls::Acceptor>,
    places: Arc<Semaphore>,
    ready: tokio::sync::mpsc::Sender<Held>,
) {
    while !ready.is_closed() {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "Flight SQL: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(place) = Arc::clone(&places).try_acquire_owned() else {
            ::metrics::counter!("pitwall_flight_connections_refused_total").increment(1);
            tracing::debug!(%peer, "Flight SQL: at server.flight-max-connections; closing a new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ready = ready.clone();
        match &tls {
            None => {
                let held = Held {
                    stream: Conn::Left(stream),
                    _place: place,
                };
                if ready.send(held).await.is_err() {
                    return;
                }
            }
            Some(tls) => {
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.0.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let held = Held {
                                stream: Conn::Right(Box::new(stream)),
                                _place: place,
                            };
                            let _ = ready.send(held).await;
                        }
                        Ok(Err(e)) => {
                            ::metrics::counter!("pitwall_flight_tls_failures_total").increment(1);
                            tracing::debug!(%peer, error = %e, "Flight SQL: TLS handshake failed (a client without TLS, or one that does not trust the certificate)");
                        }
                        Err(_) => {
                            ::metrics::counter!("pitwall_flight_tls_failures_total").increment(1);
                            tracing::debug!(%peer, "Flight SQL: no TLS handshake within {HANDSHAKE_TIMEOUT:?}; closing");
                        }
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_carry_sql_and_parameters() {
        let h = encode_handle("SELECT $1", b"ipc");
        assert_eq!(decode_handle(&h).unwrap(), ("SELECT $1", &b"ipc"[..]));
        assert!(
            decode_handle(b"pitwall-ps1\xff\xff\xff\x7f").is_err(),
            "a length past the end"
        );
        assert!(decode_handle(b"other").is_err());
        assert!(decode_handle(&h[..h.len() - 6]).is_err());
    }
}
