//! The diagnostic log on stderr, as text or JSON lines, with every field
//! value and message escaped and bounded where the line is formatted.
//!
//! Callers control much of what reaches a log line: JSON-RPC ids, method
//! and tool names, header values, and whatever a library (rmcp, hyper)
//! chooses to log about a request. A newline in an id would forge a line in
//! the text format, and a 900 KB id would be copied into every warning. So
//! no call site has to remember: both formats pass every value, of every
//! event and span from every crate, through [`LogText`].

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::cli::LogFormat;

/// Most bytes of one field value (or message) in a log line; the rest is
/// replaced by `…[N more bytes]`.
pub const MAX_LOG_TEXT_BYTES: usize = 256;

/// Text as it may appear in a log line: control characters, Unicode line
/// and paragraph separators and bidirectional overrides escaped (`\n`,
/// `\u{1b}`, `\u{2028}`), and at most [`MAX_LOG_TEXT_BYTES`] bytes of it.
pub struct LogText<T>(pub T);

impl<T: fmt::Display> fmt::Display for LogText<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bounded = Bounded {
            out: f,
            room: MAX_LOG_TEXT_BYTES,
            cut: 0,
        };
        write!(bounded, "{}", self.0)?;
        let cut = bounded.cut;
        if cut > 0 {
            write!(f, "…[{cut} more bytes]")?;
        }
        Ok(())
    }
}

/// Characters that would break or disguise a line if written as they are.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{feff}'
        )
}

/// Escapes on the fly and drops what does not fit, so a huge value is never
/// copied.
struct Bounded<'a, 'b> {
    out: &'a mut fmt::Formatter<'b>,
    room: usize,
    cut: usize,
}

impl fmt::Write for Bounded<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for c in text.chars() {
            if self.cut > 0 {
                self.cut += c.len_utf8();
                continue;
            }
            let escape = needs_escape(c);
            let len = if escape {
                c.escape_default().len()
            } else {
                c.len_utf8()
            };
            if len > self.room {
                self.cut += c.len_utf8();
                continue;
            }
            self.room -= len;
            if escape {
                write!(self.out, "{}", c.escape_default())?;
            } else {
                self.out.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// Text-format fields (`message key=value ...`) of events and spans, each
/// value through [`LogText`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SafeFields;

impl<'w> FormatFields<'w> for SafeFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = TextVisitor {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct TextVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for TextVisitor<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        let value = LogText(format_args!("{value:?}"));
        self.result = if field.name() == "message" {
            write!(self.writer, "{separator}{value}")
        } else {
            write!(self.writer, "{separator}{}={value}", field.name())
        };
    }
}

/// One JSON object per line: `timestamp`, `level`, `target`, `fields`
/// (every value through [`LogText`]) and `spans` (name and fields).
#[derive(Clone, Copy, Debug, Default)]
pub struct SafeJson;

impl<S, N> FormatEvent<S, N> for SafeJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut fields = JsonVisitor(Map::new());
        event.record(&mut fields);
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            jiff::Timestamp::now().to_string().into(),
        );
        line.insert("level".into(), metadata.level().as_str().into());
        line.insert("target".into(), metadata.target().into());
        line.insert("fields".into(), Value::Object(fields.0));
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| {
                    let extensions = span.extensions();
                    let fields = extensions
                        .get::<FormattedFields<N>>()
                        .map_or("", |f| f.fields.as_str());
                    serde_json::json!({"name": span.name(), "fields": fields})
                })
                .collect();
            line.insert("spans".into(), spans.into());
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

struct JsonVisitor(Map<String, Value>);

impl Visit for JsonVisitor {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), LogText(value).to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(
            field.name().into(),
            LogText(format_args!("{value:?}")).to_string().into(),
        );
    }
}

/// The subscriber of the diagnostic log: `format` lines on `writer`,
/// filtered by `filter`, colours only with `ansi`.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .fmt_fields(SafeFields);
    match format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(builder.event_format(SafeJson).finish()),
    }
}

/// Installs the diagnostic log on stderr (stdout is the audit stream).
/// `RUST_LOG` overrides the default filter, which keeps rmcp (it logs every
/// stateless request at info) to warnings.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rmcp=warn"));
    let ansi = matches!(format, LogFormat::Text) && std::io::stderr().is_terminal();
    if let Err(error) =
        tracing::subscriber::set_global_default(subscriber(format, filter, std::io::stderr, ansi))
    {
        eprintln!("error: cannot install the log: {error}");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn log_text_escapes_line_breaks_and_bounds_length() {
        assert_eq!(
            LogText("a\nb\r\tc\u{1b}[31m").to_string(),
            r"a\nb\r\tc\u{1b}[31m"
        );
        assert_eq!(
            LogText("x\u{2028}y\u{202e}").to_string(),
            r"x\u{2028}y\u{202e}"
        );
        assert_eq!(LogText("ünïcode ok").to_string(), "ünïcode ok");
        let long = LogText("é".repeat(1000)).to_string();
        assert!(long.starts_with(&"é".repeat(128)));
        assert!(long.ends_with("…[1744 more bytes]"), "{long}");
        // An escape that does not fit whole is cut whole.
        let edge = LogText(format!("{}\n", "a".repeat(MAX_LOG_TEXT_BYTES - 1))).to_string();
        assert!(edge.ends_with("a…[1 more bytes]"), "{edge}");
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Logs what a hostile request could put into a warning (an id with a
    /// newline and 900 KB, in the message, an event field and a span field)
    /// and returns the lines.
    fn hostile_lines(format: LogFormat) -> Vec<String> {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = subscriber(
            format,
            EnvFilter::new("warn"),
            move || writer.clone(),
            false,
        );
        let id = format!("1\nFORGED ERROR line{}", "A".repeat(900 * 1024));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::warn_span!("request", id = %id);
            let _entered = span.enter();
            tracing::warn!(%id, method = id.as_str(), "response error for {id}");
            tracing::warn!(?id, count = 3, "debug formatted");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn text_lines_cannot_be_forged_or_grown() {
        let lines = hostile_lines(LogFormat::Text);
        assert_eq!(lines.len(), 2, "{lines:?}");
        for line in &lines {
            assert!(line.len() < 8 * MAX_LOG_TEXT_BYTES, "{} bytes", line.len());
            assert!(line.contains(r"1\nFORGED ERROR line"), "{line}");
            assert!(line.contains("more bytes]"), "{line}");
        }
        assert!(lines[0].contains("request{id="), "{}", lines[0]);
    }

    #[test]
    fn json_lines_cannot_be_forged_or_grown() {
        let lines = hostile_lines(LogFormat::Json);
        assert_eq!(lines.len(), 2, "{lines:?}");
        for line in &lines {
            assert!(line.len() < 8 * MAX_LOG_TEXT_BYTES, "{} bytes", line.len());
            let value: Value = serde_json::from_str(line).unwrap();
            assert_eq!(value["level"], "WARN");
            assert!(
                value["spans"][0]["fields"]
                    .as_str()
                    .unwrap()
                    .contains(r"1\nFORGED")
            );
        }
        let first: Value = serde_json::from_str(&lines[0]).unwrap();
        let id = first["fields"]["id"].as_str().unwrap();
        assert!(id.starts_with(r"1\nFORGED ERROR line"), "{id}");
        assert!(id.len() <= MAX_LOG_TEXT_BYTES + 30, "{id}");
        assert!(first["fields"]["message"].as_str().unwrap().len() <= MAX_LOG_TEXT_BYTES + 30);
        let second: Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(second["fields"]["count"], 3);
    }
}
