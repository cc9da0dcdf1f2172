//! The audit trail: one JSON line per request on stdout.
//!
//! A request reserves its place in a bounded queue before anything else
//! happens ([`AuditLog::reserve`]); when the queue is full the request is
//! refused (fail closed) instead of being served without a line or buffered
//! without limit. The reserved [`AuditSlot`] then takes the one line of the
//! request without ever blocking, and a dedicated OS thread writes and
//! flushes. So a slow stdout never delays a request, a stopped stdout bounds
//! memory at [`AuditLog::memory_bound`], and shutdown waits for the writer
//! only up to a deadline, then reports on stderr how many lines were lost.
//! Diagnostic logs go to stderr, so stdout carries nothing but audit lines.
//!
//! A stdout that returns an error instead of blocking (`EPIPE` once the
//! reader has closed the pipe: Rust ignores `SIGPIPE`, so the write fails
//! rather than the process being killed) fails closed too, and for good:
//! the first write or flush error marks the trail failed ([`AuditHealth`]),
//! says so once on stderr, and from then on every request is refused and
//! `/readyz` reports not ready. A process cannot reopen the stdout it was
//! given, so there is no recovery short of a restart: the failing
//! readiness probe takes the pod out of the Service, and restarting the pod
//! brings a fresh stdout. `/healthz` stays up, so the kubelet does not
//! restart the container on its own. Requests that had reserved
//! their place before the error was seen are still served; their lines are
//! part of the unwritten count reported at shutdown.
//!
//! The writer is a plain thread with blocking writes rather than a task on
//! the async runtime: tokio's stdout sends every write and flush through its
//! blocking pool, and under load those hand-offs cost more than the request
//! itself (measured with `cargo bench -p bulkhead-server --bench load`).

use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::identity::AuthMethod;
use crate::tools::ToolOutcome;

/// Characters kept of a caller-chosen audit field (method, tool name), so a
/// caller cannot grow a line.
pub const MAX_FIELD_CHARS: usize = 128;

/// Upper bound, in bytes, of the memory one queued record takes (the record
/// itself and the text it owns), with every caller-chosen field at
/// [`MAX_FIELD_CHARS`] characters of the widest kind; a unit test checks it.
pub const MAX_RECORD_BYTES: usize = 4096;

/// Size of the writer's output buffer.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// How a request ended, as recorded in the audit line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Served successfully.
    Ok,
    /// A tool returned an error result (bad input, policy refusal).
    ToolError,
    /// The upstream failed (5xx, timeout, unreachable).
    UpstreamError,
    /// A JSON-RPC error was returned (unknown tool, bad params, ...).
    RpcError,
    /// Missing or unknown API key.
    Unauthenticated,
    /// `Host` or `Origin` not allowed, an access token without a required
    /// scope, or a tool the caller may not use.
    Forbidden,
    /// Over a rate limit.
    RateLimited,
    /// Body larger than the limit.
    PayloadTooLarge,
    /// Not a valid MCP request over HTTP.
    BadRequest,
    /// Did not finish within the request timeout.
    Timeout,
    /// Refused because the server is not ready yet.
    Unavailable,
    /// The caller closed the connection before the response was sent
    /// (`http_status` 499, as nginx logs it; nothing was sent).
    ClientClosed,
    /// Ended by the server's shutdown after the grace period (503).
    Shutdown,
    /// The server failed while serving the request (a 5xx from the MCP
    /// layer, or a panic).
    InternalError,
}

impl Outcome {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ToolError => "tool_error",
            Self::UpstreamError => "upstream_error",
            Self::RpcError => "rpc_error",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::PayloadTooLarge => "payload_too_large",
            Self::BadRequest => "bad_request",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::ClientClosed => "client_closed",
            Self::Shutdown => "shutdown",
            Self::InternalError => "internal_error",
        }
    }
}

/// One audit line. Ids come from the verified context only.
#[derive(Clone, Debug, Serialize)]
pub struct AuditRecord {
    /// RFC 3339 time the request arrived.
    pub ts: String,
    /// The configured tenant.
    pub tenant: Arc<str>,
    /// The verified caller; `None` when authentication failed.
    pub caller: Option<Arc<str>>,
    /// How the caller authenticated: `api_key`, `oauth`, or `none` (no
    /// verified caller, or `--insecure-no-auth`).
    pub auth: AuthMethod,
    /// Id of the request (also sent back as `x-request-id`).
    pub request_id: Arc<str>,
    /// JSON-RPC method, when the body could be read.
    pub method: Option<String>,
    /// Tool name for `tools/call`.
    pub tool: Option<String>,
    /// `sha256:<hex>` of the tool arguments exactly as sent.
    pub args_sha256: Option<String>,
    /// How the request ended.
    pub outcome: Outcome,
    /// HTTP status sent to the caller (499 when the caller left first).
    pub http_status: u16,
    /// Time spent serving the request.
    pub latency_ms: f64,
    /// HTTP status of the upstream, if one was called.
    pub upstream_status: Option<u16>,
    /// True when a tool call was still running as the request ended early
    /// (client gone, timeout, shutdown) and was cancelled, together with
    /// any upstream request it had open.
    pub tool_cancelled: bool,
}

/// Digest of tool arguments for the audit line: the bytes as sent, so the
/// line can be matched against a caller's own record without storing them.
pub fn digest_arguments(raw: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(raw)))
}

enum Message {
    /// A line, with the queue place it holds until it is written.
    Record(Box<AuditRecord>, OwnedSemaphorePermit),
    Finish,
}

/// Lines accepted into the queue and lines confirmed written (flushed).
#[derive(Default)]
struct Counts {
    accepted: AtomicU64,
    written: AtomicU64,
}

impl Counts {
    fn unwritten(&self) -> u64 {
        self.accepted
            .load(Ordering::Acquire)
            .saturating_sub(self.written.load(Ordering::Acquire))
    }
}

/// Whether the audit stream still takes lines: once a write or flush has
/// failed it never does again (see the module documentation). Cheap to
/// clone; the default is a healthy stream.
#[derive(Clone, Debug, Default)]
pub struct AuditHealth(Arc<OnceLock<String>>);

impl AuditHealth {
    /// The error that stopped the audit stream, if one did.
    pub fn failure(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }

    /// Marks the stream failed with `error`; reports it on stderr the
    /// first time only.
    fn fail(&self, error: &std::io::Error) {
        if self.0.set(error.to_string()).is_ok() {
            tracing::error!(
                %error,
                "cannot write to the audit stream (stdout); every request is refused from now on and /readyz reports not ready; stdout cannot be reopened, so the server must be restarted"
            );
        }
    }

    /// Why the server is not ready, for `/readyz`; `None` while healthy.
    pub fn not_ready_reason(&self) -> Option<String> {
        self.failure().map(|error| {
            format!("audit trail failed: cannot write to stdout ({error}); restart required")
        })
    }
}

/// Why [`AuditLog::reserve`] found no place for a request's line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditUnavailable {
    /// The queue holds as many unwritten lines as it may: stdout is not
    /// keeping up. Places come back as the writer catches up.
    QueueFull,
    /// A write to stdout failed; the trail stays failed (see
    /// [`AuditHealth`]).
    WriteFailed,
}

impl AuditUnavailable {
    /// Label value for `bulkhead_audit_refused_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::WriteFailed => "write_failed",
        }
    }
}

/// Hands records to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Message>,
    places: Arc<Semaphore>,
    capacity: usize,
    counts: Arc<Counts>,
    health: AuditHealth,
}

/// A reserved place in the audit queue: [`AuditSlot::write`] queues the
/// request's line without blocking and cannot fail for want of room.
pub struct AuditSlot {
    permit: OwnedSemaphorePermit,
    log: AuditLog,
}

impl AuditSlot {
    /// Queues the line.
    pub fn write(self, record: AuditRecord) {
        self.log.counts.accepted.fetch_add(1, Ordering::AcqRel);
        if self
            .log
            .tx
            .send(Message::Record(Box::new(record), self.permit))
            .is_err()
        {
            // Only possible after the writer stopped, i.e. late in shutdown.
            tracing::error!("audit writer has stopped; a record could not be written");
        }
    }
}

impl AuditLog {
    /// Starts the writer thread on `out` (stdout in production), with room
    /// for `capacity` lines not yet written (at least 1).
    ///
    /// # Errors
    /// When the operating system refuses a new thread.
    pub fn start<W>(out: W, capacity: usize) -> std::io::Result<(Self, AuditWriter)>
    where
        W: Write + Send + 'static,
    {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        let (tx, rx) = mpsc::channel();
        let (done_tx, done) = oneshot::channel();
        let counts = Arc::new(Counts::default());
        let writer_counts = counts.clone();
        let health = AuditHealth::default();
        let writer_health = health.clone();
        let thread = std::thread::Builder::new()
            .name("audit-writer".to_owned())
            .spawn(move || {
                write_lines(&rx, out, &writer_counts, &writer_health);
                let _ = done_tx.send(());
            })?;
        // Detached on purpose: a writer blocked on a stopped stdout must not
        // keep the process from exiting after the drain deadline.
        drop(thread);
        let log = Self {
            tx: tx.clone(),
            places: Arc::new(Semaphore::new(capacity)),
            capacity,
            counts: counts.clone(),
            health,
        };
        Ok((
            log,
            AuditWriter {
                finish: tx,
                done,
                counts,
            },
        ))
    }

    /// Reserves the place of one line.
    ///
    /// # Errors
    /// [`AuditUnavailable::WriteFailed`] once a write to the output has
    /// failed; [`AuditUnavailable::QueueFull`] when `capacity` lines are
    /// already waiting to be written. Either way the request must be
    /// refused.
    pub fn reserve(&self) -> Result<AuditSlot, AuditUnavailable> {
        if self.health.failure().is_some() {
            return Err(AuditUnavailable::WriteFailed);
        }
        self.places
            .clone()
            .try_acquire_owned()
            .map(|permit| AuditSlot {
                permit,
                log: self.clone(),
            })
            .map_err(|_| AuditUnavailable::QueueFull)
    }

    /// Whether the output still takes lines, for readiness.
    pub fn health(&self) -> AuditHealth {
        self.health.clone()
    }

    /// Most memory, in bytes, the queue and the writer's buffer can hold:
    /// `capacity` × [`MAX_RECORD_BYTES`] plus the 64 KiB output buffer.
    pub fn memory_bound(&self) -> usize {
        self.capacity * MAX_RECORD_BYTES + WRITE_BUFFER_BYTES
    }
}

/// The writer thread; [`AuditWriter::finish`] waits, up to a deadline, until
/// every queued line is written and flushed.
pub struct AuditWriter {
    finish: mpsc::Sender<Message>,
    done: oneshot::Receiver<()>,
    counts: Arc<Counts>,
}

impl AuditWriter {
    /// Writes every line queued so far, flushes, and stops the writer,
    /// waiting at most `deadline`. Returns how many accepted lines were not
    /// written (still queued when the deadline passed, or refused by the
    /// output), and reports a non-zero count on stderr. Call it after the
    /// listeners have closed.
    pub async fn finish(self, deadline: Duration) -> u64 {
        // Queued after every record sent so far, so those are written first.
        let _ = self.finish.send(Message::Finish);
        let finished = tokio::time::timeout(deadline, self.done).await.is_ok();
        let unwritten = self.counts.unwritten();
        if !finished {
            tracing::error!(
                unwritten,
                deadline_seconds = deadline.as_secs_f64(),
                "the audit stream did not drain before the deadline; {unwritten} audit lines could not be written"
            );
        } else if unwritten > 0 {
            tracing::error!(
                unwritten,
                "{unwritten} audit lines could not be written to the audit stream"
            );
        }
        unwritten
    }
}

/// The writer thread's state: the buffered output and what it needs to
/// count lines and report a failure.
struct Writer<'a, W: Write> {
    out: BufWriter<W>,
    line: Vec<u8>,
    /// Lines in the buffer, counted as written once a flush succeeds.
    buffered: u64,
    counts: &'a Counts,
    health: &'a AuditHealth,
}

fn write_lines<W: Write>(
    rx: &mpsc::Receiver<Message>,
    out: W,
    counts: &Counts,
    health: &AuditHealth,
) {
    let mut writer = Writer {
        out: BufWriter::with_capacity(WRITE_BUFFER_BYTES, out),
        line: Vec::with_capacity(512),
        buffered: 0,
        counts,
        health,
    };
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Write everything already queued, then flush once.
        while let Some(message) = next {
            match message {
                Message::Record(record, permit) => {
                    writer.write_record(&record);
                    drop(permit);
                }
                Message::Finish => {
                    // Late records (none once the listeners are closed) still go out.
                    while let Ok(Message::Record(record, _permit)) = rx.try_recv() {
                        writer.write_record(&record);
                    }
                    writer.flush();
                    return;
                }
            }
            next = rx.try_recv().ok();
        }
        writer.flush();
    }
    writer.flush();
}

impl<W: Write> Writer<'_, W> {
    /// Writes one line into the buffer. After the output has failed, lines
    /// are dropped (and stay counted as unwritten) so their places free up
    /// and shutdown is not held up.
    fn write_record(&mut self, record: &AuditRecord) {
        if self.health.failure().is_some() {
            return;
        }
        self.line.clear();
        if serde_json::to_writer(&mut self.line, record).is_err() {
            return;
        }
        self.line.push(b'\n');
        match self.out.write_all(&self.line) {
            Ok(()) => self.buffered += 1,
            Err(error) => self.health.fail(&error),
        }
    }

    fn flush(&mut self) {
        if self.health.failure().is_some() {
            return;
        }
        match self.out.flush() {
            Ok(()) => {
                self.counts
                    .written
                    .fetch_add(self.buffered, Ordering::AcqRel);
            }
            Err(error) => self.health.fail(&error),
        }
        self.buffered = 0;
    }
}

impl From<ToolOutcome> for Outcome {
    fn from(outcome: ToolOutcome) -> Self {
        match outcome {
            ToolOutcome::Ok => Self::Ok,
            ToolOutcome::ToolError => Self::ToolError,
            ToolOutcome::UpstreamError => Self::UpstreamError,
            ToolOutcome::RateLimited => Self::RateLimited,
            ToolOutcome::Forbidden => Self::Forbidden,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize) -> AuditRecord {
        AuditRecord {
            ts: "2026-01-01T00:00:00Z".into(),
            tenant: Arc::from("acme"),
            caller: Some(Arc::from("alice")),
            auth: AuthMethod::ApiKey,
            request_id: Arc::from(format!("r{n}").as_str()),
            method: Some("tools/call".into()),
            tool: Some("whoami".into()),
            args_sha256: Some(digest_arguments(b"{}")),
            outcome: Outcome::Ok,
            http_status: 200,
            latency_ms: 0.1,
            upstream_status: None,
            tool_cancelled: false,
        }
    }

    fn place(log: &AuditLog) -> AuditSlot {
        log.reserve()
            .unwrap_or_else(|refused| panic!("no place: {refused:?}"))
    }

    /// A writer that keeps what it is given, shared with the test.
    #[derive(Clone, Default)]
    struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// An output that blocks every write until the test opens the gate,
    /// telling the test when a write has started: a stdout nobody reads.
    struct Blocked {
        entered: std::sync::mpsc::Sender<()>,
        gate: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    }

    impl Write for Blocked {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            let (open, changed) = &*self.gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = changed.wait(open).unwrap();
            }
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn every_queued_line_is_written_before_finish_returns() {
        let sink = Sink::default();
        let (log, task) = AuditLog::start(sink.clone(), 1000).unwrap();
        for n in 0..500 {
            place(&log).write(record(n));
        }
        // A clone still held elsewhere must not keep finish() waiting.
        let _held = log.clone();
        assert_eq!(task.finish(Duration::from_secs(10)).await, 0);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 500);
        assert_eq!(lines[499]["request_id"], "r499");
        assert_eq!(lines[0]["tenant"], "acme");
        assert_eq!(lines[0]["outcome"], "ok");
        assert_eq!(lines[0]["tool_cancelled"], false);
    }

    #[tokio::test]
    async fn a_stopped_output_fills_the_queue_then_refuses_and_finish_keeps_its_deadline() {
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let out = Blocked {
            entered: entered_tx,
            gate: gate.clone(),
        };
        let (log, task) = AuditLog::start(out, 4).unwrap();
        // The first line leaves the queue and blocks the writer in its flush.
        place(&log).write(record(0));
        entered.recv_timeout(Duration::from_secs(5)).unwrap();
        // Four more fill the queue; the fifth finds no place.
        for n in 1..=4 {
            place(&log).write(record(n));
        }
        assert_eq!(log.reserve().err(), Some(AuditUnavailable::QueueFull));
        assert!(
            log.health().failure().is_none(),
            "a slow output is not a failed one"
        );
        assert_eq!(log.memory_bound(), 4 * MAX_RECORD_BYTES + 64 * 1024);

        let started = std::time::Instant::now();
        let unwritten = task.finish(Duration::from_millis(300)).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(unwritten, 5);

        // Once the output moves again, places come back.
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let mut freed = false;
        for _ in 0..200 {
            if log.reserve().is_ok() {
                freed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(freed, "no place came back after the output resumed");
    }

    /// An output whose reader has gone: the first `accepted` bytes go
    /// through, then every write fails with `EPIPE`.
    struct Broken {
        accepted: usize,
        writes: Arc<AtomicU64>,
    }

    impl Write for Broken {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            if self.accepted == 0 {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            let taken = bytes.len().min(self.accepted);
            self.accepted -= taken;
            Ok(taken)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_write_error_fails_the_trail_for_good() {
        let writes = Arc::new(AtomicU64::new(0));
        let out = Broken {
            accepted: 1000,
            writes: writes.clone(),
        };
        let (log, task) = AuditLog::start(out, 64).unwrap();
        let health = log.health();
        assert!(health.not_ready_reason().is_none());
        // Lines go out one flush at a time until the output breaks.
        let mut queued = 0;
        for n in 0..200 {
            if health.failure().is_some() {
                break;
            }
            place(&log).write(record(n));
            queued += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let error = health.failure().expect("the broken output was not noticed");
        assert!(error.contains("roken pipe"), "{error}");
        assert!(queued > 1 && queued < 200, "{queued} lines queued");
        assert!(
            health
                .not_ready_reason()
                .unwrap()
                .starts_with("audit trail failed")
        );
        // Refused from now on, and no further writes are attempted.
        let writes_at_failure = writes.load(Ordering::SeqCst);
        for _ in 0..10 {
            assert_eq!(log.reserve().err(), Some(AuditUnavailable::WriteFailed));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(writes.load(Ordering::SeqCst), writes_at_failure);
        // The lines that fit in the 1000 bytes count as written, the rest
        // as lost.
        let line_bytes = serde_json::to_vec(&record(0)).unwrap().len() as u64 + 1;
        let unwritten = task.finish(Duration::from_secs(5)).await;
        assert!(
            unwritten < queued && unwritten >= queued - 1000 / line_bytes,
            "{unwritten} of {queued} unwritten, {line_bytes}-byte lines"
        );
        assert!(health.failure().is_some(), "a failed trail stays failed");
    }

    #[test]
    fn the_largest_record_fits_the_stated_bound() {
        // Every caller-chosen field at its bound, in the characters that
        // take the most room: 4-byte characters in memory, control
        // characters (escaped as \u00XX) on the line.
        let wide = "\u{10FFFF}".repeat(MAX_FIELD_CHARS);
        let escaped = "\u{1}".repeat(MAX_FIELD_CHARS);
        for text in [wide, escaped] {
            let record = AuditRecord {
                ts: jiff::Timestamp::MAX.to_string(),
                // Tenant ids are DNS labels (63); caller ids are Secret keys
                // (253) or a token claim of at most 256 bytes.
                tenant: Arc::from("t".repeat(63).as_str()),
                caller: Some(Arc::from("\u{1}".repeat(256).as_str())),
                auth: AuthMethod::OAuth,
                request_id: Arc::from(uuid::Uuid::new_v4().to_string().as_str()),
                method: Some(text.clone()),
                tool: Some(text),
                args_sha256: Some(digest_arguments(b"{}")),
                outcome: Outcome::InternalError,
                http_status: 599,
                latency_ms: f64::MAX,
                upstream_status: Some(599),
                tool_cancelled: true,
            };
            let owned = [
                record.ts.len(),
                record.tenant.len(),
                record.caller.as_ref().map_or(0, |c| c.len()),
                record.request_id.len(),
                record.method.as_ref().map_or(0, String::len),
                record.tool.as_ref().map_or(0, String::len),
                record.args_sha256.as_ref().map_or(0, String::len),
            ]
            .iter()
            .sum::<usize>()
                // Arc headers of the four shared strings.
                + 4 * 16;
            let in_memory = std::mem::size_of::<AuditRecord>() + owned;
            let line = serde_json::to_vec(&record).unwrap().len() + 1;
            assert!(in_memory <= MAX_RECORD_BYTES, "{in_memory} bytes in memory");
            assert!(line <= MAX_RECORD_BYTES, "{line} bytes on the line");
        }
    }

    #[test]
    fn argument_digest_is_sha256_of_the_bytes() {
        assert_eq!(
            digest_arguments(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
