//! The Tenant's status: conditions computed from what reconcile observed,
//! written by server-side apply on the status subresource, and Events on
//! transitions of `Ready`.
//!
//! Shape for tools that read it:
//! - `kubectl wait --for=condition=Ready tenant/<id>` reads `Ready`.
//! - Flux (kstatus) first compares `status.observedGeneration` with
//!   `metadata.generation`, then reads `Ready`; every condition also carries
//!   `observedGeneration`.
//! - Argo CD: a health check on `Ready` (see the README).
//! - kstatus' "abnormal-true" conventions: while not Ready the status also
//!   carries `Reconciling=True` (the controller is still converging, e.g.
//!   the server is starting) or `Stalled=True` (a person must act: invalid
//!   spec, namespace conflict, malformed object), so Flux fails fast on the
//!   latter instead of waiting for its timeout. Both are absent when Ready.
//!
//! - Advisories (see [`crate::advisories`]): a condition per advisory,
//!   `True` and named after it (`IngressByMutableLabel`,
//!   `RateLimitsPerReplica`) while the spec gives cause, absent otherwise,
//!   like `Reconciling` and `Stalled`. They never change `Ready`: the Tenant
//!   works as written.
//!
//! Each condition keeps its `lastTransitionTime` while its status is
//! unchanged, so an unchanged Tenant computes an identical status and the
//! controller writes nothing.
//!
//! [`verdicts`] judges each situation a reconcile can end in.

pub mod verdicts;

use std::fmt::Debug;

use bulkhead_crds::{Tenant, TenantStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::error::{Error, Result};
use crate::advisories::{Advisory, AdvisoryKind};
use crate::labels::FIELD_MANAGER;

/// `True` only when every other condition is `True`.
pub const READY: &str = "Ready";
/// The tenant namespace exists and belongs to this Tenant.
pub const NAMESPACE_READY: &str = "NamespaceReady";
/// The default-deny NetworkPolicy is in place.
pub const NETWORK_ISOLATED: &str = "NetworkIsolated";
/// The server's ServiceAccount may read exactly its own Secrets.
pub const CREDENTIALS_BOUND: &str = "CredentialsBound";
/// The server Deployment reports itself Available.
pub const SERVER_AVAILABLE: &str = "ServerAvailable";

/// kstatus: the controller is still working towards the spec.
pub const RECONCILING: &str = "Reconciling";
/// kstatus: the controller cannot make progress without a change by a person.
pub const STALLED: &str = "Stalled";

/// The part conditions, in the order they are reported.
pub const PARTS: [&str; 4] = [
    NAMESPACE_READY,
    NETWORK_ISOLATED,
    CREDENTIALS_BOUND,
    SERVER_AVAILABLE,
];

/// Status of one condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truth {
    /// The part is in the wanted state.
    True,
    /// The part is not (yet) in the wanted state.
    False,
    /// The controller could not tell.
    Unknown,
}

impl Truth {
    fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// The `reason` of a condition: CamelCase and stable, so alerts and tools
/// can match on it (Kubernetes API conventions, "typical status properties").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Every part condition is True.
    AllPartsReady,
    /// The tenant namespace exists with Pod Security `restricted`.
    NamespaceReady,
    /// The tenant namespace is being deleted.
    NamespaceTerminating,
    /// The namespace exists and belongs to someone else.
    NamespaceConflict,
    /// The isolation NetworkPolicy is applied.
    NetworkPolicyApplied,
    /// The server may read exactly its own Secrets.
    SecretAccessBound,
    /// The server Deployment is Available and rolled out.
    DeploymentAvailable,
    /// The server Deployment reports itself unavailable.
    DeploymentUnavailable,
    /// The server Deployment is still rolling out.
    DeploymentProgressing,
    /// The spec breaks a validation rule.
    InvalidSpec,
    /// The API server refused a child as invalid.
    ApplyRejected,
    /// The Tenant does not match this operator's schema.
    MalformedTenant,
}

impl Reason {
    /// The reason as written on the condition.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllPartsReady => "AllPartsReady",
            Self::NamespaceReady => "NamespaceReady",
            Self::NamespaceTerminating => "NamespaceTerminating",
            Self::NamespaceConflict => "NamespaceConflict",
            Self::NetworkPolicyApplied => "NetworkPolicyApplied",
            Self::SecretAccessBound => "SecretAccessBound",
            Self::DeploymentAvailable => "DeploymentAvailable",
            Self::DeploymentUnavailable => "DeploymentUnavailable",
            Self::DeploymentProgressing => "DeploymentProgressing",
            Self::InvalidSpec => "InvalidSpec",
            Self::ApplyRejected => "ApplyRejected",
            Self::MalformedTenant => "MalformedTenant",
        }
    }
}

/// One condition as the controller judged it, before timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Condition type, e.g. [`NAMESPACE_READY`].
    pub type_: &'static str,
    /// Its status.
    pub status: Truth,
    /// CamelCase reason, stable for alerting: a [`Reason`], or for a
    /// derived Ready the reason of the first part that is not ready.
    pub reason: String,
    /// What a person should know or do.
    pub message: String,
}

impl Verdict {
    /// A verdict of `type_`.
    pub fn new(
        type_: &'static str,
        status: Truth,
        reason: Reason,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason: reason.as_str().to_owned(),
            message: message.into(),
        }
    }
}

/// Everything the status is computed from.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The tenant namespace, when known.
    pub namespace: Option<String>,
    /// The MCP endpoint, when known.
    pub endpoint: Option<String>,
    /// Verdicts on the parts; missing parts keep their previous condition.
    pub parts: Vec<Verdict>,
    /// A Ready verdict that overrides the one derived from the parts, for
    /// states only a person can resolve (invalid spec, malformed object,
    /// namespace conflict); reported as `Stalled`.
    pub ready: Option<Verdict>,
    /// What the spec allows beyond what it seems to say; each becomes a
    /// condition of its kind. Conditions of kinds not listed are removed.
    pub advisories: Vec<Advisory>,
}

/// Computes the Ready verdict from the part verdicts.
fn derive_ready(parts: &[Condition]) -> Verdict {
    let not_ready: Vec<&Condition> = parts.iter().filter(|c| c.status != "True").collect();
    match not_ready.first() {
        None => Verdict::new(
            READY,
            Truth::True,
            Reason::AllPartsReady,
            "namespace, network isolation, credentials and server are all ready",
        ),
        Some(first) => {
            let status = if not_ready.iter().any(|c| c.status == "False") {
                Truth::False
            } else {
                Truth::Unknown
            };
            let message = not_ready
                .iter()
                .map(|c| format!("{}: {}", c.type_, c.message))
                .collect::<Vec<_>>()
                .join("; ");
            Verdict {
                type_: READY,
                status,
                reason: first.reason.clone(),
                message,
            }
        }
    }
}

/// Builds the status to write, keeping transition times of unchanged conditions.
pub fn desired_status(
    report: &Report,
    generation: Option<i64>,
    previous: Option<&TenantStatus>,
) -> TenantStatus {
    let previous_conditions: &[Condition] = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let now = Timestamp::now();
    let to_condition = |verdict: &Verdict| -> Condition {
        let earlier = previous_conditions
            .iter()
            .find(|c| c.type_ == verdict.type_);
        let last_transition_time = match earlier {
            Some(c) if c.status == verdict.status.as_str() => c.last_transition_time.clone(),
            _ => Time(now),
        };
        Condition {
            type_: verdict.type_.to_owned(),
            status: verdict.status.as_str().to_owned(),
            reason: verdict.reason.clone(),
            message: verdict.message.clone(),
            observed_generation: generation,
            last_transition_time,
        }
    };
    let mut parts = Vec::new();
    for part in PARTS {
        if let Some(verdict) = report.parts.iter().find(|v| v.type_ == part) {
            parts.push(to_condition(verdict));
        } else if let Some(earlier) = previous_conditions.iter().find(|c| c.type_ == part) {
            // Not judged this time (e.g. the spec is invalid): the last
            // judgement stays, with the generation it was made for.
            parts.push(earlier.clone());
        }
    }
    let stalled = report.ready.is_some();
    let ready = report.ready.clone().unwrap_or_else(|| derive_ready(&parts));
    let mut conditions = vec![to_condition(&ready)];
    conditions.extend(parts);
    if ready.status != Truth::True {
        let kstatus_type = if stalled { STALLED } else { RECONCILING };
        conditions.push(to_condition(&Verdict {
            type_: kstatus_type,
            status: Truth::True,
            ..ready
        }));
    }
    for advisory in &report.advisories {
        let type_ = advisory.kind.as_str();
        conditions.push(to_condition(&Verdict {
            type_,
            status: Truth::True,
            reason: type_.to_owned(),
            message: advisory.message.clone(),
        }));
    }
    TenantStatus {
        observed_generation: generation,
        namespace: report
            .namespace
            .clone()
            .or_else(|| previous.and_then(|s| s.namespace.clone())),
        endpoint: report
            .endpoint
            .clone()
            .or_else(|| previous.and_then(|s| s.endpoint.clone())),
        conditions,
    }
}

/// Writes `status` by server-side apply unless the live status is already
/// equal. Returns whether it wrote.
///
/// Generic over the Tenant type so a Tenant this operator cannot read
/// (`DeserializeGuard<Tenant>`) gets its status the same way.
pub async fn write_status<K>(
    api: &Api<K>,
    name: &str,
    status: &TenantStatus,
    live: Option<&TenantStatus>,
) -> Result<bool>
where
    K: Clone + DeserializeOwned + Debug,
{
    if live == Some(status) {
        return Ok(false);
    }
    let body = json!({
        "apiVersion": Tenant::api_version(&()),
        "kind": Tenant::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|e| Error::kube(format!("write status of Tenant {name}"), e))?;
    Ok(true)
}

/// The Ready condition of a status, if any.
pub fn ready_condition(status: Option<&TenantStatus>) -> Option<&Condition> {
    status.and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
}

/// An Event worth publishing when Ready changed between two statuses.
pub fn ready_transition(
    previous: Option<&TenantStatus>,
    next: &TenantStatus,
) -> Option<(EventType, String, String)> {
    let next_ready = ready_condition(Some(next))?;
    let unchanged = ready_condition(previous).is_some_and(|before| {
        before.status == next_ready.status && before.reason == next_ready.reason
    });
    if unchanged {
        return None;
    }
    let event_type = match next_ready.status.as_str() {
        "True" => EventType::Normal,
        // A server still starting is expected, not a warning.
        _ if next_ready.reason == Reason::DeploymentProgressing.as_str() => EventType::Normal,
        _ => EventType::Warning,
    };
    Some((
        event_type,
        next_ready.reason.clone(),
        next_ready.message.clone(),
    ))
}

/// The advisories in `next` that are new since `previous` or say something
/// else now, each worth a Warning Event.
pub fn new_advisories(
    previous: Option<&TenantStatus>,
    next: &TenantStatus,
) -> Vec<(AdvisoryKind, String)> {
    let find = |status: Option<&TenantStatus>, type_: &str| {
        status.and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == "True")
                .map(|c| c.message.clone())
        })
    };
    AdvisoryKind::ALL
        .into_iter()
        .filter_map(|kind| {
            let now = find(Some(next), kind.as_str())?;
            (find(previous, kind.as_str()).as_ref() != Some(&now)).then_some((kind, now))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_parts(status: Truth) -> Vec<Verdict> {
        PARTS
            .iter()
            .map(|p| Verdict::new(p, status, Reason::NamespaceReady, "said so"))
            .collect()
    }

    #[test]
    fn ready_is_true_only_when_every_part_is_true() {
        let ok = desired_status(
            &Report {
                parts: all_parts(Truth::True),
                ..Report::default()
            },
            Some(3),
            None,
        );
        assert_eq!(
            ready_condition(Some(&ok)).map(|c| c.status.as_str()),
            Some("True")
        );
        assert_eq!(ok.observed_generation, Some(3));
        assert!(
            ok.conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );
        assert_eq!(
            ok.conditions.len(),
            5,
            "no Reconciling or Stalled when Ready"
        );

        let mut parts = all_parts(Truth::True);
        parts[3] = Verdict::new(
            SERVER_AVAILABLE,
            Truth::False,
            Reason::DeploymentProgressing,
            "0/1 available",
        );
        let waiting = desired_status(
            &Report {
                parts,
                ..Report::default()
            },
            Some(3),
            None,
        );
        let ready = ready_condition(Some(&waiting));
        assert_eq!(
            ready.map(|c| (c.status.as_str(), c.reason.as_str())),
            Some(("False", "DeploymentProgressing"))
        );
        assert!(ready.is_some_and(|c| c.message.contains("ServerAvailable: 0/1 available")));
        assert!(
            waiting
                .conditions
                .iter()
                .any(|c| c.type_ == RECONCILING && c.status == "True")
        );
        assert!(!waiting.conditions.iter().any(|c| c.type_ == STALLED));
    }

    #[test]
    fn unchanged_verdicts_give_an_identical_status_and_no_event() {
        let report = Report {
            parts: all_parts(Truth::True),
            ..Report::default()
        };
        let first = desired_status(&report, Some(1), None);
        let second = desired_status(&report, Some(1), Some(&first));
        assert_eq!(first, second);
        assert!(ready_transition(Some(&first), &second).is_none());
        let event = ready_transition(None, &first);
        assert_eq!(
            event.map(|(t, r, _)| (t, r)),
            Some((EventType::Normal, "AllPartsReady".to_owned()))
        );
    }

    #[test]
    fn an_override_keeps_earlier_part_conditions() {
        let first = desired_status(
            &Report {
                parts: all_parts(Truth::True),
                ..Report::default()
            },
            Some(1),
            None,
        );
        let invalid = Report {
            ready: Some(Verdict::new(
                READY,
                Truth::False,
                Reason::InvalidSpec,
                "spec.connectors[0].credential: undeclared",
            )),
            ..Report::default()
        };
        let second = desired_status(&invalid, Some(2), Some(&first));
        assert_eq!(second.conditions.len(), 6);
        assert!(
            second
                .conditions
                .iter()
                .any(|c| c.type_ == STALLED && c.reason == "InvalidSpec")
        );
        let parts: Vec<_> = second
            .conditions
            .iter()
            .filter(|c| PARTS.contains(&c.type_.as_str()))
            .collect();
        assert_eq!(parts.len(), 4);
        assert!(
            parts
                .iter()
                .all(|c| c.observed_generation == Some(1) && c.status == "True")
        );
        let event = ready_transition(Some(&first), &second);
        assert_eq!(
            event.map(|(t, r, _)| (t, r)),
            Some((EventType::Warning, "InvalidSpec".to_owned()))
        );
    }

    fn advisory(kind: AdvisoryKind, message: &str) -> Advisory {
        Advisory {
            kind,
            message: message.to_owned(),
        }
    }

    #[test]
    fn advisories_are_conditions_that_leave_ready_alone_and_go_when_resolved() {
        let advised = Report {
            parts: all_parts(Truth::True),
            advisories: vec![
                advisory(AdvisoryKind::IngressByMutableLabel, "by label"),
                advisory(AdvisoryKind::RateLimitsPerReplica, "3 replicas"),
            ],
            ..Report::default()
        };
        let first = desired_status(&advised, Some(1), None);
        assert_eq!(
            ready_condition(Some(&first)).map(|c| c.status.as_str()),
            Some("True")
        );
        let ingress = first
            .conditions
            .iter()
            .find(|c| c.type_ == "IngressByMutableLabel");
        assert_eq!(
            ingress.map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str())),
            Some(("True", "IngressByMutableLabel", "by label"))
        );
        assert_eq!(
            new_advisories(None, &first),
            [
                (AdvisoryKind::IngressByMutableLabel, "by label".to_owned()),
                (AdvisoryKind::RateLimitsPerReplica, "3 replicas".to_owned())
            ]
        );

        // Unchanged: the same status, so no write and no Event.
        let again = desired_status(&advised, Some(1), Some(&first));
        assert_eq!(again, first);
        assert!(new_advisories(Some(&first), &again).is_empty());

        // A changed message is worth an Event; a resolved advisory goes.
        let changed = Report {
            advisories: vec![advisory(AdvisoryKind::RateLimitsPerReplica, "4 replicas")],
            ..advised.clone()
        };
        let second = desired_status(&changed, Some(2), Some(&first));
        assert!(
            !second
                .conditions
                .iter()
                .any(|c| c.type_ == "IngressByMutableLabel")
        );
        assert_eq!(
            new_advisories(Some(&first), &second),
            [(AdvisoryKind::RateLimitsPerReplica, "4 replicas".to_owned())]
        );
        let resolved = Report {
            advisories: Vec::new(),
            ..advised
        };
        let third = desired_status(&resolved, Some(3), Some(&second));
        assert_eq!(third.conditions.len(), 5, "{:?}", third.conditions);
        assert!(new_advisories(Some(&second), &third).is_empty());
    }
}
