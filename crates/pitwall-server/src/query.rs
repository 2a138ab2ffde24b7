//! `POST /api/v1/query`: read-only SQL over the lake, answered as JSON rows, CSV or
//! Arrow IPC.
//!
//! The body is the SQL itself, or JSON `{"sql": "...", "format": "json|csv|arrow"}`.
//! The format comes from the body, else `?format=`, else the `Accept` header
//! (`text/csv`, `application/vnd.apache.arrow.stream`), else JSON. Each query sees the
//! lake as it is when it starts. DDL, DML and other statements are refused (403) before
//! anything runs; a query past `server.query-timeout` is stopped (408); rows past
//! `server.query-max-rows` are left out, and the answer says so (`"truncated": true`
//! in JSON, the `X-Pitwall-Truncated` header for every format).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pitwall_query::Answer;
use serde::Deserialize;

use crate::{AppState, Reject, error};

#[derive(Debug, Deserialize)]
pub(crate) struct QueryParams {
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    sql: String,
    format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
    Arrow,
}

const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

fn format_of(named: Option<&str>, headers: &HeaderMap) -> Result<Format, Reject> {
    if let Some(name) = named {
        return match name {
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            "arrow" | "arrow-ipc" => Ok(Format::Arrow),
            other => Err(error(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("format {other:?} is not one of json, csv, arrow"),
            )),
        };
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Ok(if accept.contains(ARROW_STREAM) {
        Format::Arrow
    } else if accept.contains("text/csv") {
        Format::Csv
    } else {
        Format::Json
    })
}

pub(crate) async fn query(
    State(state): State<Arc<AppState>>,
    Query(params): Query<QueryParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match run(&state, &params, &headers, &body).await {
        Ok(r) => r,
        Err(r) => r.into_response(),
    }
}

/// The token was checked by the guard middleware before the body was read.
async fn run(
    state: &AppState,
    params: &QueryParams,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Reject> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let (sql, named) = if is_json {
        let b: QueryBody = serde_json::from_slice(body).map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("the body is not {{\"sql\": \"...\", \"format\": ...}}: {e}"),
            )
        })?;
        (b.sql, b.format.or_else(|| params.format.clone()))
    } else {
        let sql = std::str::from_utf8(body)
            .map_err(|_| error(StatusCode::BAD_REQUEST, "invalid", "the SQL is not UTF-8"))?;
        (sql.to_owned(), params.format.clone())
    };
    if sql.trim().is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "no SQL: send the query as the body, or {\"sql\": \"...\"}",
        ));
    }
    let format = format_of(named.as_deref(), headers)?;
    let Some(lake) = &state.lake else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this server has no lake to query",
        ));
    };
    let started = Instant::now();
    let answer = state.engine.read_only(lake, &sql).await.map_err(|e| {
        use pitwall_query::Error as E;
        let (status, code) = match e {
            E::ReadOnly(_) => (StatusCode::FORBIDDEN, "forbidden"),
            E::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "timeout"),
            E::Sql(_) => (StatusCode::BAD_REQUEST, "invalid"),
            E::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "request too large"),
            E::TooDeep { .. } | E::TooComplex { .. } => (StatusCode::BAD_REQUEST, "invalid"),
            // Not the client's fault in its SQL, and another try will not help as it is.
            E::Memory { .. } => (StatusCode::INSUFFICIENT_STORAGE, "query memory"),
            E::Busy { .. } => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    e.to_string(),
                )
                .retry_after(1);
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        };
        error(status, code, e.to_string())
    })?;
    let elapsed = started.elapsed();
    let encoded = encode(&answer, format, elapsed).map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error",
            e.to_string(),
        )
    })?;
    let content_type = match format {
        Format::Json => "application/json",
        Format::Csv => "text/csv; charset=utf-8",
        Format::Arrow => ARROW_STREAM,
    };
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        encoded,
    )
        .into_response();
    let h = r.headers_mut();
    h.insert("x-pitwall-rows", HeaderValue::from(answer.rows));
    h.insert(
        "x-pitwall-truncated",
        HeaderValue::from_static(if answer.truncated { "true" } else { "false" }),
    );
    Ok(r)
}

fn encode(
    answer: &Answer,
    format: Format,
    elapsed: std::time::Duration,
) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut out = Vec::new();
    match format {
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            for b in &answer.batches {
                w.write(b)?;
            }
        }
        Format::Arrow => {
            let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &answer.schema)?;
            for b in &answer.batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        Format::Json => {
            let columns: Vec<_> = answer
                .schema
                .fields()
                .iter()
                .map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string()}))
                .collect();
            out.extend_from_slice(b"{\"columns\":");
            out.extend_from_slice(
                serde_json::to_string(&columns)
                    .unwrap_or_default()
                    .as_bytes(),
            );
            out.extend_from_slice(b",\"rows\":");
            let before = out.len();
            {
                let mut w = arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, arrow::json::writer::JsonArray>(&mut out);
                for b in &answer.batches {
                    w.write(b)?;
                }
                w.finish()?;
            }
            if out.len() == before {
                out.extend_from_slice(b"[]");
            }
            out.extend_from_slice(
                format!(
                    ",\"row_count\":{},\"truncated\":{},\"elapsed_ms\":{:.1}}}",
                    answer.rows,
                    answer.truncated,
                    elapsed.as_secs_f64() * 1000.0
                )
                .as_bytes(),
            );
        }
    }
    Ok(out)
}
