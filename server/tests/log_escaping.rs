//! Caller-controlled text in the real binary's diagnostic log, in both
//! formats: a JSON-RPC id with a newline forges no line, and a huge id,
//! method or tool name is not copied whole into a warning.

mod common;

use bulkhead_server::api_keys::generate_api_key;
use bulkhead_server::logging::MAX_LOG_TEXT_BYTES;
use common::{TestServer, config};
use serde_json::{Value, json};

const FORGED: &str = "FORGED ERROR bulkhead_server: the key file was deleted";

/// Sends requests whose id, method and tool name a hostile caller chose
/// and returns the server's stderr.
async fn log_of_hostile_requests(format: &str) -> String {
    let key = generate_api_key().unwrap();
    let server = TestServer::start(
        &format!("log-{format}"),
        &config("acme", "  []", "").replace("maxBodyBytes: 4096", "maxBodyBytes: 2097152"),
        &[("alice", &key)],
        &[("token", "t")],
        &["--log-format", format],
    )
    .await;
    let big = "A".repeat(900 * 1024);
    let id = format!("1\n{FORGED}\r\n{big}");
    for body in [
        // An unknown tool: rmcp logs the id with its error.
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": format!("no_such_tool\n{FORGED}{big}"), "arguments": {}}}),
        // A method the server does not serve.
        json!({"jsonrpc": "2.0", "id": id, "method": format!("x/y\n{FORGED}{big}")}),
    ] {
        let response = server.post(Some(&key), &body.to_string()).await;
        assert_eq!(response.status(), 200);
        let reply: Value = response.json().await.unwrap();
        assert_eq!(reply["id"], id.as_str(), "the reply keeps the id as sent");
        assert!(reply["error"]["code"].is_i64(), "{reply:.200}");
    }
    let server = server.stop().await;
    server.stderr()
}

fn assert_bounded_and_unforged(log: &str) {
    assert!(
        log.contains("FORGED ERROR"),
        "the id is logged: {log:.2000}"
    );
    for line in log.lines() {
        assert!(!line.starts_with("FORGED"), "forged line: {line:.300}");
        assert!(
            line.len() < 8 * MAX_LOG_TEXT_BYTES,
            "{} bytes: {line:.300}",
            line.len()
        );
    }
}

#[tokio::test]
async fn text_log_escapes_and_bounds_caller_text() {
    let log = log_of_hostile_requests("text").await;
    assert_bounded_and_unforged(&log);
    assert!(log.contains(r"id=1\nFORGED ERROR"), "{log:.2000}");
}

#[tokio::test]
async fn json_log_escapes_and_bounds_caller_text() {
    let log = log_of_hostile_requests("json").await;
    assert_bounded_and_unforged(&log);
    let mut ids = 0;
    for line in log.lines() {
        let entry: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:.300}"));
        for value in entry["fields"].as_object().unwrap().values() {
            if let Some(text) = value.as_str() {
                assert!(text.len() <= MAX_LOG_TEXT_BYTES + 32, "{text:.300}");
            }
        }
        if let Some(id) = entry["fields"]["id"].as_str() {
            assert!(id.starts_with(r"1\nFORGED ERROR"), "{id:.300}");
            ids += 1;
        }
    }
    assert!(ids > 0, "the id is logged: {log:.2000}");
}
