//! The audit trail: one JSON line per request on stdout.
//!
//! Request handlers hand a record to an unbounded channel and move on; a
//! dedicated OS thread writes and flushes. So a slow stdout never delays a
//! request, and no line is ever dropped: on shutdown the writer drains the
//! channel and flushes before the process exits. Diagnostic logs go to
//! stderr, so stdout carries nothing but audit lines.
//!
//! The writer is a plain thread with blocking writes rather than a task on
//! the async runtime: tokio's stdout sends every write and flush through its
//! blocking pool, and under load those hand-offs cost more than the request
//! itself (measured with `cargo bench -p bulkhead-server --bench load`).

use std::io::{BufWriter, Write};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::identity::AuthMethod;
use crate::tools::ToolOutcome;

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
    /// HTTP status sent to the caller.
    pub http_status: u16,
    /// Time spent serving the request.
    pub latency_ms: f64,
    /// HTTP status of the upstream, if one was called.
    pub upstream_status: Option<u16>,
}

/// Digest of tool arguments for the audit line: the bytes as sent, so the
/// line can be matched against a caller's own record without storing them.
pub fn digest_arguments(raw: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(raw)))
}

enum Message {
    Record(AuditRecord),
    Finish,
}

/// Sends records to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::UnboundedSender<Message>,
}

impl AuditLog {
    /// Starts the writer thread on `out` (stdout in production).
    ///
    /// # Errors
    /// When the operating system refuses a new thread.
    pub fn start<W>(out: W) -> std::io::Result<(Self, AuditWriter)>
    where
        W: Write + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("audit-writer".to_owned())
            .spawn(move || write_lines(rx, out))?;
        Ok((Self { tx: tx.clone() }, AuditWriter { thread, finish: tx }))
    }

    /// Queues one record; never blocks.
    pub fn record(&self, record: AuditRecord) {
        if self.tx.send(Message::Record(record)).is_err() {
            // Only possible after the writer stopped, i.e. during shutdown
            // after the listeners closed.
            tracing::error!("audit writer has stopped; a record could not be written");
        }
    }
}

/// The writer thread; [`AuditWriter::finish`] waits until every queued line
/// is written and flushed.
pub struct AuditWriter {
    thread: JoinHandle<()>,
    finish: mpsc::UnboundedSender<Message>,
}

impl AuditWriter {
    /// Writes every line queued so far, flushes, and stops the writer. Call
    /// it after the listeners have closed.
    pub async fn finish(self) {
        // Queued after every record sent so far, so those are written first.
        if self.finish.send(Message::Finish).is_err() {
            tracing::error!("audit writer stopped before shutdown");
        }
        let thread = self.thread;
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => tracing::error!("audit writer panicked"),
            Err(error) => tracing::error!(%error, "audit writer could not be joined"),
        }
    }
}

fn write_lines<W: Write>(mut rx: mpsc::UnboundedReceiver<Message>, out: W) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(512);
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        // Write everything already queued, then flush once.
        while let Some(message) = next {
            match message {
                Message::Record(record) => write_record(&mut out, &mut line, &record),
                Message::Finish => {
                    // Late records (none once the listeners are closed) still go out.
                    while let Ok(Message::Record(record)) = rx.try_recv() {
                        write_record(&mut out, &mut line, &record);
                    }
                    flush(&mut out);
                    return;
                }
            }
            next = rx.try_recv().ok();
        }
        flush(&mut out);
    }
    flush(&mut out);
}

fn write_record<W: Write>(out: &mut W, line: &mut Vec<u8>, record: &AuditRecord) {
    line.clear();
    if serde_json::to_writer(&mut *line, record).is_ok() {
        line.push(b'\n');
        if let Err(error) = out.write_all(line) {
            tracing::error!(%error, "cannot write audit line");
        }
    }
}

fn flush<W: Write>(out: &mut W) {
    if let Err(error) = out.flush() {
        tracing::error!(%error, "cannot flush audit stream");
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
        }
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

    #[tokio::test]
    async fn every_queued_line_is_written_before_finish_returns() {
        let sink = Sink::default();
        let (log, task) = AuditLog::start(sink.clone()).unwrap();
        for n in 0..500 {
            log.record(record(n));
        }
        // A clone still held elsewhere must not keep finish() waiting.
        let _held = log.clone();
        task.finish().await;
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 500);
        assert_eq!(lines[499]["request_id"], "r499");
        assert_eq!(lines[0]["tenant"], "acme");
        assert_eq!(lines[0]["outcome"], "ok");
    }

    #[test]
    fn argument_digest_is_sha256_of_the_bytes() {
        assert_eq!(
            digest_arguments(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
