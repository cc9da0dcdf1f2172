//! Drift detection: does a live object already carry every field Bulkhead
//! wants it to have?
//!
//! A no-op reconcile must not write, yet a hand edit must be healed. So the
//! controller compares the object it would apply with the live object and
//! applies only when some desired field is missing or different. The live
//! object may carry more (defaults the API server filled in, fields other
//! controllers own, annotations such as the Deployment revision); those are
//! not drift.
//!
//! Two normalisations the API server performs are tolerated so a healthy
//! object never looks drifted: quantities are compared by value (`0.5` equals
//! `500m`, `1024Mi` equals `1Gi`), and an empty desired value (`false`, `0`,
//! `""`, `{}`, `[]`) matches a field the server omitted.

use serde_json::Value;

/// True when every field of `desired` is present in `live` with the same value.
pub fn is_semantic_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(want), Value::Object(have)) => {
            want.iter().all(|(key, value)| match have.get(key) {
                Some(live_value) => is_semantic_subset(value, live_value),
                None => is_empty(value),
            })
        }
        // Lists are compared element by element in order: the API server keeps
        // the order of applied list items, and defaults inside items (e.g. a
        // container port's protocol) are covered by the element-wise subset.
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len() && want.iter().zip(have).all(|(w, h)| is_semantic_subset(w, h))
        }
        (Value::String(want), Value::String(have)) => want == have || quantities_equal(want, have),
        (Value::Number(want), Value::Number(have)) => want.as_f64() == have.as_f64(),
        (want, Value::Null) => is_empty(want),
        (want, have) => want == have,
    }
}

/// Values the API server drops on the way in (Go `omitempty`).
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Compares two strings as Kubernetes quantities; false if either is not one.
fn quantities_equal(a: &str, b: &str) -> bool {
    match (parse_quantity(a), parse_quantity(b)) {
        (Some(x), Some(y)) => {
            let scale = x.abs().max(y.abs()).max(f64::MIN_POSITIVE);
            (x - y).abs() / scale < 1e-12
        }
        _ => false,
    }
}

/// Parses a Kubernetes quantity (`500m`, `2Gi`, `1.5`, `1e3`) into its value.
fn parse_quantity(text: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 15] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let text = text.trim();
    let starts_numeric = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == '.' || c == '+' || c == '-');
    if !starts_numeric {
        return None;
    }
    for (suffix, factor) in SUFFIXES {
        if let Some(number) = text.strip_suffix(suffix) {
            return parse_plain_number(number).map(|n| n * factor);
        }
    }
    parse_plain_number(text)
}

/// A decimal number, optionally in exponent form; no other characters.
fn parse_plain_number(text: &str) -> Option<f64> {
    let valid = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '+' | '-' | 'e' | 'E'));
    if valid { text.parse().ok() } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn live_object_with_server_defaults_is_not_drift() {
        let desired = json!({"spec": {"ports": [{"port": 8080}], "selector": {"app": "mcp"}}});
        let live = json!({"spec": {"ports": [{"port": 8080, "protocol": "TCP"}],
            "selector": {"app": "mcp"}, "clusterIP": "10.96.0.7"}, "status": {}});
        assert!(is_semantic_subset(&desired, &live));
    }

    #[test]
    fn changed_missing_or_extra_list_items_are_drift() {
        let desired = json!({"spec": {"replicas": 2, "ports": [{"port": 8080}]}});
        assert!(!is_semantic_subset(
            &desired,
            &json!({"spec": {"replicas": 1, "ports": [{"port": 8080}]}})
        ));
        assert!(!is_semantic_subset(
            &desired,
            &json!({"spec": {"ports": [{"port": 8080}]}})
        ));
        assert!(!is_semantic_subset(
            &desired,
            &json!({"spec": {"replicas": 2, "ports": [{"port": 8080}, {"port": 9090}]}})
        ));
        let labels = json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "bulkhead"}}});
        assert!(!is_semantic_subset(
            &labels,
            &json!({"metadata": {"labels": {}}})
        ));
    }

    #[test]
    fn quantities_compare_by_value() {
        assert!(is_semantic_subset(
            &json!({"cpu": "0.5"}),
            &json!({"cpu": "500m"})
        ));
        assert!(is_semantic_subset(
            &json!({"memory": "1024Mi"}),
            &json!({"memory": "1Gi"})
        ));
        assert!(is_semantic_subset(
            &json!({"cpu": "2"}),
            &json!({"cpu": "2000m"})
        ));
        assert!(!is_semantic_subset(
            &json!({"cpu": "2"}),
            &json!({"cpu": "200m"})
        ));
        assert!(!is_semantic_subset(
            &json!({"name": "Mi"}),
            &json!({"name": "Gi"})
        ));
    }

    #[test]
    fn empty_desired_values_match_omitted_fields() {
        let desired = json!({"readOnly": false, "items": [], "emptyDir": {}, "x": null});
        assert!(is_semantic_subset(&desired, &json!({})));
        assert!(!is_semantic_subset(&json!({"readOnly": true}), &json!({})));
    }
}
