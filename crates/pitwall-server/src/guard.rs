//! What every request passes before a handler sees it.
//!
//! - Browser safety: with no token configured (the laptop default) anything that can
//!   reach the port could write and query, including a web page the user happens to
//!   open (a cross-origin `fetch` or form) or a name the attacker's DNS points at
//!   127.0.0.1 (DNS rebinding). So without a token only loopback host names are served
//!   and requests from another origin are refused; a server meant for other hosts needs
//!   a token, and then these checks step aside.
//! - Request bodies (every `POST`): the token is checked before a byte of the body is
//!   read; the body is read within `server.body-read-timeout` (a slow upload gets 408,
//!   never a connection held open for good) and `server.max-body-bytes` (413), and all
//!   bodies held at once share `server.body-memory` (past it, 503 with `Retry-After`).
//! - Every answer carries security headers: a content security policy that lets the
//!   dashboard load only its own files and never be framed, `nosniff`, no referrer.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{AppState, Reject, error};

/// The dashboard's policy: its own scripts, styles and API only, never in a frame.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Bodies are counted against `server.body-memory` in KiB, so the semaphore's
/// permits fit the `u32` it takes at once.
pub(crate) const BODY_UNIT: usize = 1024;

pub(crate) async fn guard(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let mut response = match check(&state, req, next).await {
        Ok(r) => r,
        Err(r) => r.into_response(),
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn check(state: &AppState, req: Request, next: Next) -> Result<Response, Reject> {
    if state.tokens.is_empty() {
        browser_safe(req.headers(), req.method())?;
    }
    if req.method() != Method::POST {
        return Ok(next.run(req).await);
    }
    crate::authorize(state, req.headers(), None)?;
    let (parts, body) = req.into_parts();
    let gzip = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_body as u64) {
        return Err(too_large(state.max_body));
    }
    // A gzip body may grow to the limit once decompressed; an unknown length may be as
    // long as the limit.
    let held = match declared {
        Some(n) if !gzip => usize::try_from(n).unwrap_or(state.max_body),
        _ => state.max_body,
    };
    let units = u32::try_from(held.div_ceil(BODY_UNIT).max(1)).unwrap_or(u32::MAX);
    let permit = match tokio::time::timeout(
        Duration::from_secs(1),
        Arc::clone(&state.bodies).acquire_many_owned(units),
    )
    .await
    {
        Ok(Ok(p)) => p,
        _ => {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!(
                    "the server is holding as many request bodies as server.body-memory ({} MiB) allows; retry shortly",
                    state.body_memory / (1024 * 1024)
                ),
            )
            .retry_after(1));
        }
    };
    let bytes = match tokio::time::timeout(
        state.body_read_timeout,
        axum::body::to_bytes(body, state.max_body),
    )
    .await
    {
        Err(_) => {
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!(
                    "the request body did not arrive within {:?} (server.body-read-timeout); send smaller batches or raise it",
                    state.body_read_timeout
                ),
            ));
        }
        Ok(Err(e)) => {
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            {
                return Err(too_large(state.max_body));
            }
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("the request body could not be read: {e}"),
            ));
        }
        Ok(Ok(b)) => b,
    };
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    drop(permit);
    Ok(response)
}

fn too_large(limit: usize) -> Reject {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request too large",
        format!("the body is over {limit} bytes (server.max-body-bytes); send smaller batches"),
    )
}

/// Without a token: loopback host names only, and no requests from other origins.
fn browser_safe(headers: &HeaderMap, method: &Method) -> Result<(), Reject> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(host) = host
        && !is_loopback_host(host)
    {
        return Err(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "host {host:?} is not a loopback name; with no token set only localhost is served: set server.tokens (or PITWALL_TOKEN) to serve other hosts"
            ),
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(scheme, rest)| matches!(scheme, "http" | "https") && Some(rest) == host);
        if !same {
            return Err(cross_origin());
        }
    }
    // Browsers that send no Origin on a simple GET still say where a request came from.
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    let navigation = headers.get("sec-fetch-mode").and_then(|v| v.to_str().ok())
        == Some("navigate")
        && method == Method::GET;
    if matches!(site, Some("cross-site" | "same-site")) && !navigation {
        return Err(cross_origin());
    }
    Ok(())
}

fn cross_origin() -> Reject {
    error(
        StatusCode::FORBIDDEN,
        "forbidden",
        "requests from another origin are refused while no token is set; set server.tokens (or PITWALL_TOKEN) and send the token",
    )
}

/// `localhost`, `*.localhost`, 127.0.0.0/8 and `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(ip, _)| ip)
    } else {
        host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        })
    };
    let name = name.trim_end_matches('.');
    name.eq_ignore_ascii_case("localhost")
        || name.len() > 10 && name[name.len() - 10..].eq_ignore_ascii_case(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for ok in [
            "localhost",
            "localhost:8086",
            "LOCALHOST.",
            "app.localhost:1",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]:8086",
            "[::1]",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.com",
            "127.0.0.1.evil.com",
            "localhost.evil.com",
            "10.0.0.1:8086",
            "[::2]:1",
            "0.0.0.0",
            "xlocalhost",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn other_origins_are_refused_without_a_token() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        let post = Method::POST;
        assert!(browser_safe(&headers(&[("host", "127.0.0.1:8086")]), &post).is_ok());
        assert!(
            browser_safe(
                &headers(&[
                    ("host", "127.0.0.1:8086"),
                    ("origin", "http://127.0.0.1:8086")
                ]),
                &post
            )
            .is_ok()
        );
        assert!(
            browser_safe(
                &headers(&[
                    ("host", "127.0.0.1:8086"),
                    ("origin", "http://evil.example")
                ]),
                &post
            )
            .is_err()
        );
        assert!(
            browser_safe(
                &headers(&[("host", "127.0.0.1:8086"), ("origin", "null")]),
                &post
            )
            .is_err()
        );
        assert!(browser_safe(&headers(&[("host", "rebound.example:8086")]), &Method::GET).is_err());
        assert!(
            browser_safe(
                &headers(&[("host", "localhost"), ("sec-fetch-site", "cross-site")]),
                &post
            )
            .is_err()
        );
        // A link from another site to the dashboard still opens it.
        assert!(
            browser_safe(
                &headers(&[
                    ("host", "localhost"),
                    ("sec-fetch-site", "cross-site"),
                    ("sec-fetch-mode", "navigate")
                ]),
                &Method::GET
            )
            .is_ok()
        );
    }
}
