//! What a POST body must be before rmcp reads it: one JSON-RPC 2.0 message
//! whose params fit the method.
//!
//! rmcp answers any body it cannot turn into a message with HTTP 415, and a
//! `tools/call` whose params do not fit with `-32601 Method not found`. This
//! check runs first and answers as JSON-RPC 2.0 (section 5.1) says: text
//! that cannot be parsed is `-32700 Parse error` (including JSON this server
//! cannot represent: a number outside the range of an IEEE 754 double, or
//! nesting deeper than 128 levels), a value that is not a request object is
//! `-32600 Invalid Request`, and params that do not fit a method this server
//! serves are `-32602 Invalid params`. A member named twice (RFC 8259
//! section 4: names SHOULD be unique; parsers differ on which one counts) is
//! `-32600` in the message object and `-32602` in the params of
//! `tools/call`, so no part of the server reads a different value than
//! another.

use std::borrow::Cow;

use rmcp::model::{
    CallToolRequestParams, ClientJsonRpcMessage, InitializeRequestParams, PaginatedRequestParams,
};
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::refusal::{INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR};

/// Longest error text put into a reply, in bytes (serde's messages can
/// quote the input).
const MAX_MESSAGE_BYTES: usize = 200;

/// Why a body is not an acceptable JSON-RPC message.
#[derive(Debug, PartialEq)]
pub struct Invalid {
    /// [`PARSE_ERROR`], [`INVALID_REQUEST`] or [`INVALID_PARAMS`].
    pub code: i64,
    /// What is wrong, at most [`MAX_MESSAGE_BYTES`] bytes of detail.
    pub message: Cow<'static, str>,
    /// The request's `id`, when it could be read and is a valid id
    /// (string, number or null); the reply then carries it.
    pub id: Option<Value>,
}

/// Checks `body`: one JSON value, a JSON-RPC 2.0 message object, params
/// that fit the method (for `initialize`, `ping`, `tools/list` and
/// `tools/call`, the methods this server serves), and a message rmcp can
/// read. Other methods are left to rmcp (`-32601` for the ones not served).
pub fn check(body: &[u8]) -> Result<(), Invalid> {
    let value: Value = serde_json::from_slice(body).map_err(|error| Invalid {
        code: PARSE_ERROR,
        message: detail("Parse error", &error),
        id: None,
    })?;
    let Value::Object(message) = &value else {
        return Err(Invalid {
            code: INVALID_REQUEST,
            message: "Invalid Request: expected one JSON-RPC 2.0 message object".into(),
            id: None,
        });
    };
    let members = serde_json::from_slice::<Members<'_>>(body).map_err(|error| Invalid {
        code: PARSE_ERROR,
        message: detail("Parse error", &error),
        id: None,
    })?;
    if let Some(name) = members.duplicate() {
        return Err(Invalid {
            code: INVALID_REQUEST,
            message: format!("Invalid Request: member {:?} given twice", bounded(name)).into(),
            // Which id would be meant is unclear when it is given twice.
            id: (name != "id")
                .then(|| message.get("id").filter(|id| is_valid_id(id)).cloned())
                .flatten(),
        });
    }
    let id = message.get("id").filter(|id| is_valid_id(id)).cloned();
    let invalid_request = |text: &'static str| Invalid {
        code: INVALID_REQUEST,
        message: text.into(),
        id: id.clone(),
    };
    if message.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid_request(
            "Invalid Request: expected a JSON-RPC 2.0 message (\"jsonrpc\": \"2.0\")",
        ));
    }
    if message.get("id").is_some_and(|raw| !is_valid_id(raw)) {
        return Err(invalid_request(
            "Invalid Request: id must be a string, a number or null",
        ));
    }
    let method = match message.get("method") {
        Some(Value::String(method)) => Some(method.as_str()),
        Some(_) => return Err(invalid_request("Invalid Request: method must be a string")),
        None if id.is_none() => {
            return Err(invalid_request(
                "Invalid Request: expected a JSON-RPC 2.0 message",
            ));
        }
        None => None,
    };
    if method == Some("tools/call")
        && let Some(params) = members.get("params")
        && params.get().starts_with('{')
    {
        let params =
            serde_json::from_str::<Members<'_>>(params.get()).map_err(|error| Invalid {
                code: PARSE_ERROR,
                message: detail("Parse error", &error),
                id: None,
            })?;
        if let Some(name) = params.duplicate() {
            return Err(Invalid {
                code: INVALID_PARAMS,
                message: format!(
                    "Invalid params for tools/call: member {:?} given twice",
                    bounded(name)
                )
                .into(),
                id: id.clone(),
            });
        }
    }
    if let (Some(method), Some(_)) = (method, &id) {
        check_params(method, message.get("params")).map_err(|text| Invalid {
            code: INVALID_PARAMS,
            message: text,
            id: id.clone(),
        })?;
    }
    let request_id = id.clone();
    serde_json::from_value::<ClientJsonRpcMessage>(value)
        .map(drop)
        .map_err(|error| Invalid {
            code: INVALID_REQUEST,
            message: detail("Invalid Request", &error),
            id: request_id,
        })
}

/// The members of a JSON object in the order given, names unescaped and
/// repeated names kept (`serde_json::Map` keeps only the last).
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Members<'a> {
    /// A name given more than once, if any.
    fn duplicate(&self) -> Option<&str> {
        let mut seen = std::collections::HashSet::with_capacity(self.0.len());
        self.0
            .iter()
            .map(|(name, _)| name.as_ref())
            .find(|name| !seen.insert(*name))
    }

    /// The first value of `name`.
    fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

/// A member name cut to 64 characters for an error message.
fn bounded(name: &str) -> String {
    name.chars().take(64).collect()
}

/// JSON-RPC 2.0 section 4: an id is a string, a number or null.
fn is_valid_id(id: &Value) -> bool {
    matches!(id, Value::String(_) | Value::Number(_) | Value::Null)
}

/// Params of the methods this server serves, read with rmcp's own types.
fn check_params(method: &str, params: Option<&Value>) -> Result<(), Cow<'static, str>> {
    match method {
        "initialize" => fits::<InitializeRequestParams>(method, params, true),
        "tools/call" => fits::<CallToolRequestParams>(method, params, true),
        "tools/list" => fits::<PaginatedRequestParams>(method, params, false),
        "ping" => fits::<serde_json::Map<String, Value>>(method, params, false),
        _ => Ok(()),
    }
}

fn fits<T: DeserializeOwned>(
    method: &str,
    params: Option<&Value>,
    required: bool,
) -> Result<(), Cow<'static, str>> {
    match params {
        None if required => Err(format!("Invalid params: {method} needs params").into()),
        None => Ok(()),
        Some(params @ Value::Object(_)) => T::deserialize(params)
            .map(drop)
            .map_err(|error| detail(&format!("Invalid params for {method}"), &error)),
        Some(_) => Err(format!("Invalid params: params of {method} must be an object").into()),
    }
}

/// `what: error`, the error text cut to [`MAX_MESSAGE_BYTES`].
fn detail(what: &str, error: &serde_json::Error) -> Cow<'static, str> {
    let text = error.to_string();
    let mut end = text.len().min(MAX_MESSAGE_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{what}: {}", &text[..end]).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(body: &str) -> Option<i64> {
        check(body.as_bytes()).err().map(|invalid| invalid.code)
    }

    #[test]
    fn text_that_cannot_be_parsed_is_a_parse_error() {
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"x":{}{}}}}}"#,
            "[".repeat(5000),
            "]".repeat(5000)
        );
        for body in [
            "{not json",
            "",
            r#"{"jsonrpc":"2.0","id":1,"method":"ping""#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{"n":1e400}}}"#,
            r#"{"jsonrpc":"2.0","id":1e400,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"n":-1e309}}"#,
            &deep,
            &"[".repeat(5000),
        ] {
            let invalid = check(body.as_bytes()).unwrap_err();
            assert_eq!(invalid.code, PARSE_ERROR, "{body:.80}");
            assert_eq!(invalid.id, None);
            assert!(invalid.message.len() < 300);
        }
    }

    #[test]
    fn values_that_are_not_one_request_object_are_invalid_requests() {
        for body in [
            r#"{"hello":"world"}"#,
            "[]",
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
            "1",
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            r#"{"id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":[1],"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
        ] {
            assert_eq!(code(body), Some(INVALID_REQUEST), "{body}");
        }
        let invalid = check(br#"{"jsonrpc":"1.0","id":"a\nb","method":"ping"}"#).unwrap_err();
        assert_eq!(invalid.id, Some(json!("a\nb")));
    }

    #[test]
    fn params_that_do_not_fit_the_method_are_invalid_params() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":[1,2]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":null}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":[1]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":5}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":1}}"#,
        ] {
            let invalid = check(body.as_bytes()).unwrap_err();
            assert_eq!(invalid.code, INVALID_PARAMS, "{body}");
            assert_eq!(invalid.id, Some(json!(1)), "{body}");
        }
    }

    #[test]
    fn members_named_twice_are_refused() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{},"params":{}}"#,
            r#"{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","meth\u006fd":"tools/list"}"#,
        ] {
            let invalid = check(body.as_bytes()).unwrap_err();
            assert_eq!(invalid.code, INVALID_REQUEST, "{body}");
            assert_eq!(invalid.id, Some(json!(1)), "{body}");
        }
        let invalid = check(br#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#).unwrap_err();
        assert_eq!(invalid.code, INVALID_REQUEST);
        assert_eq!(invalid.id, None, "no id when it is given twice");
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","name":"other"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{},"arguments":{}}}"#,
        ] {
            let invalid = check(body.as_bytes()).unwrap_err();
            assert_eq!(invalid.code, INVALID_PARAMS, "{body}");
            assert_eq!(invalid.id, Some(json!(1)), "{body}");
            assert!(
                invalid.message.contains("given twice"),
                "{}",
                invalid.message
            );
        }
        // Members of different objects may share a name.
        assert_eq!(
            check(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{"name":"x","id":2}}}"#),
            Ok(())
        );
    }

    #[test]
    fn well_formed_messages_pass() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#,
            r#"{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"whoami"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/list"}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{"n":1e300}}}"#,
        ] {
            assert_eq!(check(body.as_bytes()), Ok(()), "{body}");
        }
    }
}
