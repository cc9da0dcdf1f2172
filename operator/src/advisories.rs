//! Advisories: parts of a valid Tenant that work as written but grant or
//! allow more than a reader of the spec would expect. The operator applies
//! such a Tenant, reports each advisory as a status condition and a Warning
//! Event, and `render` prints it on standard error.
//!
//! Pure functions of the spec, shared by the controller and `render` so both
//! say the same thing.

use bulkhead_crds::TenantSpec;
use bulkhead_crds::tenant::RateLimit;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// The namespace label the API server sets to the namespace's name on every
/// namespace and keeps from being changed (Kubernetes 1.22+, "Well-Known
/// Labels, Annotations and Taints": `kubernetes.io/metadata.name`). A
/// selector that requires it admits only namespaces of the names it lists.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// What an advisory is about; also the condition type and the Event reason
/// it is reported under (CamelCase, stable for alerting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdvisoryKind {
    /// A `spec.network.ingressFrom` selector admits namespaces by a label
    /// that whoever may create or label a namespace can set.
    IngressByMutableLabel,
    /// Rate limits are set and more than one replica serves them, each
    /// with its own buckets.
    RateLimitsPerReplica,
}

impl AdvisoryKind {
    /// Every kind, in the order conditions are reported.
    pub const ALL: [Self; 2] = [Self::IngressByMutableLabel, Self::RateLimitsPerReplica];

    /// The condition type and Event reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IngressByMutableLabel => "IngressByMutableLabel",
            Self::RateLimitsPerReplica => "RateLimitsPerReplica",
        }
    }
}

/// One advisory: its kind and a message saying what the spec allows and
/// how to change it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advisory {
    /// What it is about.
    pub kind: AdvisoryKind,
    /// For a person: the fields concerned, what follows, what to do.
    pub message: String,
}

/// Every advisory for `spec`, in [`AdvisoryKind::ALL`] order; empty for a
/// spec that means what it says.
pub fn advisories(spec: &TenantSpec) -> Vec<Advisory> {
    [
        ingress_by_mutable_label(spec),
        rate_limits_per_replica(spec),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Whether `selector` admits only namespaces it names: it requires
/// [`NAMESPACE_NAME_LABEL`] in `matchLabels` or with an `In` expression.
/// Any other requirement it adds only narrows that set.
pub fn selects_by_name(selector: &LabelSelector) -> bool {
    let by_label = selector
        .match_labels
        .as_ref()
        .is_some_and(|labels| labels.contains_key(NAMESPACE_NAME_LABEL));
    let by_expression = selector
        .match_expressions
        .iter()
        .flatten()
        .any(|e| e.key == NAMESPACE_NAME_LABEL && e.operator == "In");
    by_label || by_expression
}

/// The selector in `kubectl`'s label selector syntax (`a=b,c in (d,e),!f`).
fn selector_text(selector: &LabelSelector) -> String {
    let labels = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(key, value)| format!("{key}={value}"));
    let expressions = selector.match_expressions.iter().flatten().map(|e| {
        let values = e.values.as_deref().unwrap_or_default().join(",");
        match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => format!("{} {other} ({values})", e.key),
        }
    });
    labels.chain(expressions).collect::<Vec<_>>().join(",")
}

fn ingress_by_mutable_label(spec: &TenantSpec) -> Option<Advisory> {
    let by_label: Vec<String> = spec
        .network
        .ingress_from
        .iter()
        .enumerate()
        .filter(|(_, selector)| !selects_by_name(selector))
        .map(|(i, selector)| {
            format!(
                "spec.network.ingressFrom[{i}] ({})",
                selector_text(selector)
            )
        })
        .collect();
    if by_label.is_empty() {
        return None;
    }
    Some(Advisory {
        kind: AdvisoryKind::IngressByMutableLabel,
        message: format!(
            "{} {} namespaces by label, not by name: anyone who may create a namespace, or label one, can give it matching labels, and its pods may then open connections to the server's MCP port (they still need an API key or token to be served). Select namespaces by {NAMESPACE_NAME_LABEL}, which the API server sets to the namespace's name",
            by_label.join(", "),
            if by_label.len() == 1 {
                "selects"
            } else {
                "select"
            },
        ),
    })
}

fn rate_limits_per_replica(spec: &TenantSpec) -> Option<Advisory> {
    let replicas = spec.server.replicas.unwrap_or(1);
    let limits = &spec.rate_limits;
    if replicas < 2 || (limits.per_caller.is_none() && limits.per_tool.is_empty()) {
        return None;
    }
    let n = u64::try_from(replicas).unwrap_or(1);
    let scaled = |limit: RateLimit| {
        format!(
            "{}/min with burst {} on each replica, up to {}/min with burst {} in all",
            limit.requests_per_minute,
            limit.burst,
            u64::from(limit.requests_per_minute) * n,
            u64::from(limit.burst) * n,
        )
    };
    let mut limited = Vec::new();
    if let Some(per_caller) = limits.per_caller {
        limited.push(format!(
            "spec.rateLimits.perCaller ({})",
            scaled(per_caller)
        ));
    }
    for (i, tool) in limits.per_tool.iter().enumerate() {
        let limit = RateLimit {
            requests_per_minute: tool.requests_per_minute,
            burst: tool.burst,
        };
        limited.push(format!(
            "spec.rateLimits.perTool[{i}] for {} ({})",
            tool.tool,
            scaled(limit)
        ));
    }
    Some(Advisory {
        kind: AdvisoryKind::RateLimitsPerReplica,
        message: format!(
            "spec.server.replicas is {replicas} and each replica keeps its own rate-limit buckets, so a caller whose requests are spread over the replicas gets up to {replicas} times each limit: {}. Set the limits to the budget per replica, or use one replica where the exact limit matters",
            limited.join("; "),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_crds::tenant::ToolRateLimit;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            match_expressions: None,
        }
    }

    fn expression(key: &str, operator: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.to_owned(),
                operator: operator.to_owned(),
                values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
            }]),
        }
    }

    fn with_ingress(selectors: Vec<LabelSelector>) -> TenantSpec {
        let mut spec: TenantSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        spec.network.ingress_from = selectors;
        spec
    }

    fn kinds(spec: &TenantSpec) -> Vec<AdvisoryKind> {
        advisories(spec).into_iter().map(|a| a.kind).collect()
    }

    #[test]
    fn selectors_that_require_the_namespace_name_are_by_name() {
        assert!(selects_by_name(&labels(&[(NAMESPACE_NAME_LABEL, "gw")])));
        assert!(selects_by_name(&expression(
            NAMESPACE_NAME_LABEL,
            "In",
            &["gw", "agents"]
        )));
        // An extra label narrows a named set; it cannot widen it.
        assert!(selects_by_name(&labels(&[
            (NAMESPACE_NAME_LABEL, "gw"),
            ("team", "a")
        ])));
        assert!(!selects_by_name(&labels(&[(
            "bulkhead.dev/gateway",
            "true"
        )])));
        assert!(!selects_by_name(&expression("team", "In", &["a"])));
        // NotIn on the name admits every other name, however it is labelled.
        let mut not_in = expression("team", "In", &["a"]);
        if let Some(e) = not_in.match_expressions.as_mut() {
            e.push(LabelSelectorRequirement {
                key: NAMESPACE_NAME_LABEL.to_owned(),
                operator: "NotIn".to_owned(),
                values: Some(vec!["kube-system".to_owned()]),
            });
        }
        assert!(!selects_by_name(&not_in));
    }

    #[test]
    fn ingress_by_name_gives_no_advisory() {
        let spec = with_ingress(vec![
            labels(&[(NAMESPACE_NAME_LABEL, "mcp-gateway")]),
            expression(NAMESPACE_NAME_LABEL, "In", &["agents"]),
        ]);
        assert!(advisories(&spec).is_empty());
        assert!(advisories(&with_ingress(Vec::new())).is_empty());
    }

    #[test]
    fn ingress_by_label_names_each_selector_and_who_could_reach_the_server() {
        let spec = with_ingress(vec![
            labels(&[("bulkhead.dev/gateway", "true")]),
            labels(&[(NAMESPACE_NAME_LABEL, "mcp-gateway")]),
            expression("bulkhead.dev/team", "In", &["a", "b"]),
        ]);
        let found = advisories(&spec);
        assert_eq!(kinds(&spec), [AdvisoryKind::IngressByMutableLabel]);
        let message = &found[0].message;
        assert!(
            message.contains("spec.network.ingressFrom[0] (bulkhead.dev/gateway=true)"),
            "{message}"
        );
        assert!(
            message.contains("spec.network.ingressFrom[2] (bulkhead.dev/team in (a,b))"),
            "{message}"
        );
        assert!(!message.contains("ingressFrom[1]"), "{message}");
        assert!(
            message.contains("anyone who may create a namespace, or label one"),
            "{message}"
        );
        assert!(message.contains(NAMESPACE_NAME_LABEL), "{message}");
    }

    fn limited(replicas: Option<i32>, per_caller: bool, per_tool: bool) -> TenantSpec {
        let mut spec = with_ingress(Vec::new());
        spec.server.replicas = replicas;
        if per_caller {
            spec.rate_limits.per_caller = Some(RateLimit {
                requests_per_minute: 120,
                burst: 20,
            });
        }
        if per_tool {
            spec.rate_limits.per_tool = vec![ToolRateLimit {
                tool: "billing_post".to_owned(),
                requests_per_minute: 10,
                burst: 2,
            }];
        }
        spec
    }

    #[test]
    fn rate_limits_with_one_replica_give_no_advisory() {
        for replicas in [None, Some(0), Some(1)] {
            assert!(
                kinds(&limited(replicas, true, true)).is_empty(),
                "{replicas:?}"
            );
        }
        assert!(kinds(&limited(Some(3), false, false)).is_empty());
    }

    #[test]
    fn rate_limits_with_several_replicas_say_what_a_caller_gets() {
        for (per_caller, per_tool) in [(true, false), (false, true), (true, true)] {
            let spec = limited(Some(3), per_caller, per_tool);
            assert_eq!(kinds(&spec), [AdvisoryKind::RateLimitsPerReplica]);
            let message = &advisories(&spec)[0].message;
            assert!(message.contains("spec.server.replicas is 3"), "{message}");
            assert!(message.contains("up to 3 times each limit"), "{message}");
            assert_eq!(
                message.contains(
                    "spec.rateLimits.perCaller (120/min with burst 20 on each replica, up to 360/min with burst 60 in all)"
                ),
                per_caller,
                "{message}"
            );
            assert_eq!(
                message.contains("spec.rateLimits.perTool[0] for billing_post (10/min with burst 2 on each replica, up to 30/min with burst 6 in all)"),
                per_tool,
                "{message}"
            );
        }
    }

    #[test]
    fn both_advisories_come_in_order() {
        let mut spec = limited(Some(2), true, false);
        spec.network.ingress_from = vec![labels(&[("team", "a")])];
        assert_eq!(
            kinds(&spec),
            [
                AdvisoryKind::IngressByMutableLabel,
                AdvisoryKind::RateLimitsPerReplica
            ]
        );
    }
}
