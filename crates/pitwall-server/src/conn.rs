//! Connections: how many, how long they may take to say what they want, how long they
//! may sit idle, and how they end when the server stops.
//!
//! axum's own `serve` holds a connection as long as the client keeps it open, whether
//! it sends nothing, trickles header bytes or idles between requests, and accepts as
//! many as the file limit allows; in `pitwall up` that file limit is also what the lake
//! commits need. Here every connection is served by hyper with a watchdog that knows
//! three states:
//!
//! - waiting for a request's head (a new connection, or the next request on a kept-alive
//!   one once its first byte came): closed after `server.header-read-timeout`;
//! - idle between requests: closed after `server.idle-timeout`;
//! - a request in flight, up to the end of its response: never closed by the watchdog
//!   (the live feed's long responses are requests in flight; bodies have their own
//!   deadline, `server.body-read-timeout`, in [`crate::guard`]).
//!
//! At most `server.max-connections` are open at once (lowered to half the process's
//! file limit, which is raised to its hard limit first, so commits always have
//! descriptors); past that a connection is answered 503 with `Retry-After` and closed.
//! On shutdown each connection finishes its request in flight, for at most
//! [`SHUTDOWN_GRACE`], and is then closed, live feeds included.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

/// How long requests in flight may go on once the server is told to stop.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The connection settings of [`crate::ServerConfig`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Raises the process's open-file limit to its hard limit and returns how many
/// connections may be open: `wanted`, or half the file limit if that is lower.
pub(crate) fn connection_cap(wanted: usize) -> usize {
    let files = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let half = usize::try_from(files / 2).unwrap_or(usize::MAX).max(1);
    if wanted > half {
        tracing::warn!(
            max_connections = wanted,
            open_file_limit = files,
            using = half,
            "server.max-connections is over half the open-file limit; lowered so the lake always has descriptors (raise `ulimit -n` to allow more)"
        );
    }
    wanted.min(half)
}

/// Accepts connections on `listener` and serves `router` on them until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors or memory: wait for some to come back rather
                    // than spin; the connections already open go on.
                    tracing::warn!(error = %e, "cannot accept a connection; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // No Nagle delay: live-feed events are small writes that must go out at once.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        match Arc::clone(&open).try_acquire_owned() {
            Ok(permit) => {
                let (router, stop) = (router.clone(), stop_rx.clone());
                conns.spawn(async move {
                    connection(tcp, router, limits, stop).await;
                    drop(permit);
                });
            }
            Err(_) => {
                ::metrics::counter!("pitwall_http_connections_refused_total").increment(1);
                turn_away(&tcp, limits.max_connections);
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection closes itself within the grace; this only waits for them.
    let all_closed = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), all_closed)
        .await
        .is_err()
    {
        conns.abort_all();
    }
    Ok(())
}

/// Answers a connection over the cap with 503 and closes it, without waiting for
/// anything: what the client already sent is read first (closing on unread bytes would
/// reset the connection before the client reads the answer), the answer fits the
/// socket's send buffer, and the socket is closed when the caller drops it.
fn turn_away(tcp: &TcpStream, cap: usize) {
    let body = format!(
        "{{\"code\":\"unavailable\",\"message\":\"the server has {cap} connections open, its limit (server.max-connections); retry shortly\"}}"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut buf = [0u8; 4096];
    while matches!(tcp.try_read(&mut buf), Ok(n) if n > 0) {}
    let _ = tcp.try_write(answer.as_bytes());
}

/// What the watchdog decides about a connection.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    /// Idle too long: close once nothing is in flight.
    Idle,
    /// A request's head took too long: close now.
    SlowHead,
}

/// What a connection did last, in ms since it was accepted.
#[derive(Debug)]
struct Activity {
    accepted: Instant,
    last_io: AtomicU64,
    /// When the head of the next request began (its first byte, or the accept for a new
    /// connection); `NONE` while a request is in flight or none has begun.
    head_started: AtomicU64,
    in_flight: AtomicUsize,
}

const NONE: u64 = u64::MAX;

impl Activity {
    fn new() -> Self {
        Activity {
            accepted: Instant::now(),
            last_io: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn read_some(&self) {
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == NONE
        {
            self.head_started.store(now, Ordering::Relaxed);
        }
    }

    fn request_began(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(NONE, Ordering::Relaxed);
    }

    fn response_ended(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    fn verdict(&self, limits: &ConnLimits) -> Verdict {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Verdict::Keep;
        }
        let now = self.now();
        let head = self.head_started.load(Ordering::Relaxed);
        if head != NONE && now.saturating_sub(head) > millis(limits.header_read_timeout) {
            return Verdict::SlowHead;
        }
        if now.saturating_sub(self.last_io.load(Ordering::Relaxed)) > millis(limits.idle_timeout) {
            return Verdict::Idle;
        }
        Verdict::Keep
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(NONE - 1)
}

/// Marks a response as ended when hyper drops its body (sent, or the client left).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.response_ended();
    }
}

/// A response body that holds its request's [`InFlight`] mark until it is dropped.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The socket, noting when bytes arrive.
struct Watched {
    tcp: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read_some();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// Serves one connection under the watchdog until it ends, is timed out, or the server
/// stops.
async fn connection(
    tcp: TcpStream,
    router: Router,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        tcp,
        activity: Arc::clone(&activity),
    });
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |req: Request<Incoming>| {
            activity.request_began();
            let in_flight = InFlight(Arc::clone(&activity));
            let call = router.clone().oneshot(req.map(Body::new));
            async move {
                let response = call.await?;
                Ok::<_, std::convert::Infallible>(response.map(|body| Tracked {
                    body,
                    _in_flight: in_flight,
                }))
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing_by: Option<Instant> = None;
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tick.tick() => {
                if let Some(by) = closing_by {
                    if Instant::now() >= by {
                        return;
                    }
                    continue;
                }
                match activity.verdict(&limits) {
                    Verdict::Keep => {}
                    Verdict::SlowHead => {
                        ::metrics::counter!("pitwall_http_connections_timed_out_total", "phase" => "header").increment(1);
                        return;
                    }
                    Verdict::Idle => {
                        ::metrics::counter!("pitwall_http_connections_timed_out_total", "phase" => "idle").increment(1);
                        conn.as_mut().graceful_shutdown();
                        closing_by = Some(Instant::now() + Duration::from_secs(1));
                    }
                }
            }
            _ = stop.changed(), if closing_by.is_none() => {
                // Told to stop, or the server is gone: finish what is in flight.
                conn.as_mut().graceful_shutdown();
                closing_by = Some(Instant::now() + SHUTDOWN_GRACE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_times_heads_and_idleness_but_never_a_request_in_flight() {
        let limits = ConnLimits {
            max_connections: 1,
            header_read_timeout: Duration::from_millis(0),
            idle_timeout: Duration::from_millis(0),
        };
        let a = Activity::new();
        std::thread::sleep(Duration::from_millis(3));
        // A new connection that sent nothing is waiting for a head.
        assert_eq!(a.verdict(&limits), Verdict::SlowHead);
        a.request_began();
        std::thread::sleep(Duration::from_millis(3));
        assert_eq!(
            a.verdict(&limits),
            Verdict::Keep,
            "a request in flight is never timed out"
        );
        a.response_ended();
        std::thread::sleep(Duration::from_millis(3));
        assert_eq!(
            a.verdict(&limits),
            Verdict::Idle,
            "after the response, idle time counts"
        );
        a.read_some();
        std::thread::sleep(Duration::from_millis(3));
        assert_eq!(
            a.verdict(&limits),
            Verdict::SlowHead,
            "a head begun and not finished"
        );
        let generous = ConnLimits {
            header_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            ..limits
        };
        assert_eq!(a.verdict(&generous), Verdict::Keep);
    }
}
