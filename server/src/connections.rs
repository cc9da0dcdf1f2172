//! Serving a listener with bounded connections: how many may be open, how
//! long a client may take to send its headers, and how long a connection
//! may stay idle.
//!
//! `axum::serve` has none of these, so slowloris clients, connections with
//! unfinished headers and idle connections could hold memory and file
//! descriptors for as long as they liked and lock out everyone else. Here
//! each accepted connection first takes a permit (none left: it is closed at
//! once and counted), hyper closes an HTTP/1 connection whose headers do not
//! arrive in time and buffers at most `maxHeaderBytes` of them, HTTP/2 is
//! kept alive by PINGs, and a watchdog closes a connection that starts no
//! request within the header timeout of connecting or stays without a
//! request in flight for the idle timeout. An HTTP/2 connection carries at
//! most `http2MaxConcurrentStreams` requests at once (hyper's default is
//! 200), so one connection cannot stand for hundreds of requests.

use std::convert::Infallible;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use bulkhead_crds::server_config::TransportLimits;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::metrics::{ListenerLabels, Metrics};
use prometheus_client::metrics::gauge::Gauge;

/// A connection that was told to close gets this long to finish what it
/// is writing before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Wait after an `accept` error (for example out of file descriptors)
/// before accepting again, so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The connection limits of one listener, from
/// [`TransportLimits`] (times in seconds there).
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Time to send a request's headers.
    pub header_read_timeout: Duration,
    /// Time a connection may stay without a request in flight.
    pub idle_timeout: Duration,
    /// HTTP/2 PING interval and acknowledgement timeout.
    pub http2_keep_alive: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Largest request head or HTTP/2 header list, in bytes.
    pub max_header_bytes: usize,
    /// HTTP/2 streams open at once on one connection.
    pub http2_max_concurrent_streams: u32,
}

impl From<&TransportLimits> for ConnectionLimits {
    fn from(limits: &TransportLimits) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(limits.header_read_timeout_seconds),
            idle_timeout: Duration::from_secs(limits.idle_timeout_seconds),
            http2_keep_alive: Duration::from_secs(limits.http2_keep_alive_seconds),
            max_connections: limits.max_connections,
            max_header_bytes: limits.max_header_bytes,
            http2_max_concurrent_streams: limits.http2_max_concurrent_streams,
        }
    }
}

/// Serves `router` on `listener` until `stop` fires; then stops accepting,
/// asks every connection to close once its requests are answered, and
/// returns when all have closed. `name` labels the listener's connection
/// metrics (`mcp` or `admin`).
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: axum::Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let labels = ListenerLabels { listener: name };
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let builder = Arc::new(connection_builder(&limits));
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.connections_refused.get_or_create(&labels).inc();
            drop(stream);
            continue;
        };
        // TCP_NODELAY: without it small responses wait for delayed ACKs
        // (about 40 ms each).
        let _ = stream.set_nodelay(true);
        let connection = serve_connection(
            stream,
            router.clone(),
            builder.clone(),
            limits.clone(),
            metrics.connections_open.get_or_create(&labels).clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            connection.await;
            drop(permit);
        });
    }
    drop(listener);
    // Every permit back means every connection has closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}

fn connection_builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keep_alive)
        .keep_alive_timeout(limits.http2_keep_alive)
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// One connection, until it ends, idles out or the server stops.
async fn serve_connection(
    stream: TcpStream,
    router: axum::Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: ConnectionLimits,
    open: Gauge,
    stop: CancellationToken,
) {
    open.inc();
    let activity = Activity::default();
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let busy = activity.begin();
            let router = router.clone();
            async move {
                let response: Result<Response, Infallible> =
                    router.oneshot(request.map(axum::body::Body::new)).await;
                drop(busy);
                response
            }
        })
    };
    let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
    // Closing asks hyper to end the connection once its requests are
    // answered (HTTP/2: GOAWAY). At shutdown the caller bounds the wait by
    // the grace period; an idle connection has nothing in flight and gets
    // CLOSE_GRACE to finish writing.
    tokio::select! {
        _ = connection.as_mut() => {}
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
        () = activity.idle(limits.header_read_timeout, limits.idle_timeout) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
        }
    }
    open.dec();
}

/// Requests in flight on one connection and when the last one began or
/// ended.
#[derive(Clone)]
struct Activity(Arc<ActivityState>);

struct ActivityState {
    in_flight: AtomicUsize,
    last: Mutex<Option<Instant>>,
    opened: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Self(Arc::new(ActivityState {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(None),
            opened: Instant::now(),
        }))
    }
}

/// Marks a request in flight until dropped (also when the client goes away
/// and the request is dropped).
struct Busy(Activity);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    fn begin(&self) -> Busy {
        self.0.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        Busy(self.clone())
    }

    fn touch(&self) {
        if let Ok(mut last) = self.0.last.lock() {
            *last = Some(Instant::now());
        }
    }

    fn last(&self) -> Option<Instant> {
        self.0.last.lock().ok().and_then(|last| *last)
    }

    /// Resolves when the connection has started no request within
    /// `first_request` of opening, or has had none in flight for `idle`.
    async fn idle(&self, first_request: Duration, idle: Duration) {
        loop {
            let deadline = match self.last() {
                None => self.0.opened + first_request,
                Some(last) => last + idle,
            };
            if self.0.in_flight.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(idle).await;
                continue;
            }
            if deadline <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_first_request_idles_out_at_the_header_timeout() {
        let activity = Activity::default();
        let started = Instant::now();
        activity
            .idle(Duration::from_secs(10), Duration::from_secs(60))
            .await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_keeps_the_connection_and_idle_time_counts_from_its_end() {
        let activity = Activity::default();
        let busy = activity.begin();
        let started = Instant::now();
        let watch = activity.clone();
        let idle = tokio::spawn(async move {
            watch
                .idle(Duration::from_secs(10), Duration::from_secs(60))
                .await;
        });
        tokio::time::sleep(Duration::from_secs(200)).await;
        assert!(!idle.is_finished(), "idled out with a request in flight");
        drop(busy);
        idle.await.unwrap();
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_secs(260) && elapsed <= Duration::from_secs(320),
            "{elapsed:?}"
        );
    }
}
