//! Prometheus metrics of the controller, served on the admin port.
//!
//! No metric carries a tenant label: with thousands of Tenants a per-tenant
//! series would make the operator the largest source of series in the
//! cluster. Per-tenant state is on the Tenant's status instead.

use std::collections::HashMap;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How one reconcile ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Outcome {
    /// Every child is in place and the status is written.
    Applied,
    /// The spec is invalid; the Tenant waits for a change.
    InvalidSpec,
    /// The namespace exists and is not this Tenant's; nothing was touched.
    NamespaceConflict,
    /// The Tenant is being deleted and was released.
    Finalized,
    /// A step failed and is retried with back-off.
    Error,
}

/// The Ready condition of one Tenant as last reported.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ReadyState {
    /// `Ready=True`.
    True,
    /// `Ready=False`.
    False,
    /// No verdict yet (for example a malformed object).
    Unknown,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadyLabels {
    ready: ReadyState,
}

/// The controller's metrics and the registry that exposes them.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<OutcomeLabels, Counter>,
    errors: Family<ReasonLabels, Counter>,
    duration: Histogram,
    tenants: Family<ReadyLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = Family::<OutcomeLabels, Counter>::default();
        let errors = Family::<ReasonLabels, Counter>::default();
        // 1 ms .. ~16 s: a no-op reconcile takes milliseconds, a first one
        // with a slow API server a few seconds.
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let tenants = Family::<ReadyLabels, Gauge>::default();
        let mut registry = Registry::with_prefix("bulkhead_operator");
        registry.register(
            "reconciles",
            "Reconciles of Tenants by outcome",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by reason (retried with back-off)",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile of a Tenant took",
            duration.clone(),
        );
        registry.register(
            "tenants",
            "Tenants by their Ready condition",
            tenants.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            tenants,
        }
    }
}

impl Metrics {
    /// Counts one finished reconcile and its duration.
    pub fn observe_reconcile(&self, outcome: Outcome, took: Duration) {
        self.reconciles
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// Counts one failed reconcile by its bounded reason label.
    pub fn observe_error(&self, reason: &str) {
        self.errors
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Sets the tenants gauge from the Ready state of every Tenant known now.
    ///
    /// Called at scrape time with the controller's cache of Tenants, so a
    /// deleted Tenant disappears from the counts without any bookkeeping.
    pub fn set_tenant_states(&self, states: impl IntoIterator<Item = ReadyState>) {
        let mut counts: HashMap<ReadyState, i64> = HashMap::new();
        for state in states {
            *counts.entry(state).or_default() += 1;
        }
        for state in [ReadyState::True, ReadyState::False, ReadyState::Unknown] {
            let count = counts.get(&state).copied().unwrap_or_default();
            self.tenants
                .get_or_create(&ReadyLabels { ready: state })
                .set(count);
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_gauge_reflects_the_latest_states_only() -> Result<(), std::fmt::Error> {
        let metrics = Metrics::default();
        metrics.set_tenant_states([ReadyState::False, ReadyState::True]);
        metrics.set_tenant_states([ReadyState::True, ReadyState::True, ReadyState::Unknown]);
        metrics.observe_reconcile(Outcome::Applied, Duration::from_millis(3));
        metrics.observe_error("api_server_error");
        let text = metrics.encode()?;
        assert!(
            text.contains("bulkhead_operator_tenants{ready=\"True\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("bulkhead_operator_tenants{ready=\"False\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("bulkhead_operator_tenants{ready=\"Unknown\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("bulkhead_operator_reconciles_total{outcome=\"Applied\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "bulkhead_operator_reconcile_errors_total{reason=\"api_server_error\"} 1"
            )
        );
        Ok(())
    }
}
