//! JSON-RPC 2.0 error replies (section 5.1) of the real binary for bodies
//! rmcp alone would answer wrongly: invalid params are `-32602` (not
//! `-32601`), text that cannot be parsed is HTTP 400 with `-32700` and a
//! null id (not HTTP 415), a member named twice is `-32600` in the message
//! and `-32602` in the params of `tools/call` (not HTTP 415 or `-32601`),
//! and the server keeps serving.

mod common;

use bulkhead_server::api_keys::generate_api_key;
use common::{TestServer, call_body, config};
use serde_json::{Value, json};

#[tokio::test]
async fn malformed_messages_get_the_json_rpc_error_for_them() {
    let key = generate_api_key().unwrap();
    // A body limit large enough for 5,000 nested arrays.
    let server = TestServer::start(
        "jsonrpc",
        &config("acme", "  []", "").replace("maxBodyBytes: 4096", "maxBodyBytes: 65536"),
        &[("alice", &key)],
        &[("token", "t")],
        &[],
    )
    .await;

    let invalid_params = [
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"whoami","arguments":[1,2]}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"whoami","arguments":"x"}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call"}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":[1,2]}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"arguments":{}}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/list","params":{"cursor":5}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":7,"method":"initialize","params":{}}"#.to_owned(),
        // A member named twice in the params of tools/call.
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"whoami","name":"other"}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"whoami","arguments":{},"arguments":{"a":1}}}"#.to_owned(),
    ];
    for body in &invalid_params {
        let response = server.post(Some(&key), body).await;
        assert_eq!(response.status(), 200, "{body}");
        let reply: Value = response.json().await.unwrap();
        assert_eq!(reply["error"]["code"], -32602, "{body}: {reply}");
        assert_eq!(reply["id"], 7, "{body}");
    }

    let nested = |depth: usize| {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"whoami","arguments":{{"a":{}{}}}}}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )
    };
    let unparsable = [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{"n":1e400}}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"n":-1e309}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":1e400,"method":"ping"}"#.to_owned(),
        nested(5000),
        nested(200),
        "[".repeat(5000),
        "{not json".to_owned(),
        r#"{"jsonrpc":"2.0","id":1,"method":"ping""#.to_owned(),
        "\u{feff}{}".to_owned(),
    ];
    for body in &unparsable {
        let response = server.post(Some(&key), body).await;
        assert_eq!(response.status(), 400, "{body:.80}");
        let reply: Value = response.json().await.unwrap();
        assert_eq!(reply["error"]["code"], -32700, "{body:.80}: {reply}");
        assert_eq!(reply["id"], Value::Null, "{body:.80}");
    }

    // Not a request object: -32600, with the id when there is a valid one.
    for (body, id) in [
        (
            r#"{"jsonrpc":"2.0","id":{"x":1},"method":"ping"}"#,
            Value::Null,
        ),
        (r#"{"jsonrpc":"2.0","id":3,"method":["ping"]}"#, json!(3)),
        (r#"[{"jsonrpc":"2.0","id":3,"method":"ping"}]"#, Value::Null),
        // A member named twice in the message object.
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"ping","method":"tools/list"}"#,
            json!(3),
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"ping","params":{},"params":[]}"#,
            json!(3),
        ),
        (
            r#"{"jsonrpc":"2.0","jsonrpc":"2.0","id":3,"method":"ping"}"#,
            json!(3),
        ),
    ] {
        let response = server.post(Some(&key), body).await;
        assert_eq!(response.status(), 400, "{body}");
        let reply: Value = response.json().await.unwrap();
        assert_eq!(reply["error"]["code"], -32600, "{body}: {reply}");
        assert_eq!(reply["id"], id, "{body}");
    }

    // Nesting within the limit and well-formed calls still work; a method
    // the server does not serve is still -32601.
    let shallow: Value = server
        .post(Some(&key), &nested(100))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shallow["result"]["isError"], false, "{shallow}");
    let unknown: Value = server
        .post(
            Some(&key),
            r#"{"jsonrpc":"2.0","id":9,"method":"resources/read","params":{"uri":"x"}}"#,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unknown["error"]["code"], -32601, "{unknown}");
    let ok: Value = server
        .post(Some(&key), &call_body(2, "whoami", json!({})))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ok["result"]["structuredContent"]["callerId"], "alice");

    let server = server.stop().await;
    let audit = server.audit();
    let calls = invalid_params.len() + unparsable.len() + 6 + 3;
    assert_eq!(audit.len(), calls, "one audit line per request");
    let tool_call_rpc_errors = audit
        .iter()
        .filter(|l| l["method"] == "tools/call" && l["outcome"] == "rpc_error")
        .count();
    assert_eq!(tool_call_rpc_errors, 7);
}
