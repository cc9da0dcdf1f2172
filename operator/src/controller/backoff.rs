//! Per-tenant exponential back-off for failed reconciles.
//!
//! kube-runtime's `error_policy` is a plain function returning the next
//! requeue; the state of how often a Tenant has failed in a row lives here,
//! keyed by the Tenant's name (Tenants are cluster-scoped, so the name is
//! unique, and `error_policy` gets it even for a Tenant it cannot parse) so
//! one failing Tenant never slows another.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Consecutive failures per Tenant and the delays they lead to.
#[derive(Debug)]
pub struct TenantBackoff {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Default for TenantBackoff {
    /// 1 s doubling up to 5 minutes: quick recovery from a blip, and a
    /// broken API server is not hammered by every Tenant at once.
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(300))
    }
}

impl TenantBackoff {
    /// Back-off starting at `base`, doubling per consecutive failure, capped at `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: Mutex::default(),
        }
    }

    /// Records one more failure of `tenant_key` and returns how long to wait.
    pub fn next_delay(&self, tenant_key: &str) -> Duration {
        let mut failures = match self.failures.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let count = failures.entry(tenant_key.to_owned()).or_insert(0);
        let exponent = (*count).min(20);
        *count = count.saturating_add(1);
        self.base.saturating_mul(1u32 << exponent).min(self.max)
    }

    /// Forgets the failures of `tenant_key` after a successful reconcile.
    pub fn reset(&self, tenant_key: &str) {
        let mut failures = match self.failures.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        failures.remove(tenant_key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_per_tenant_up_to_the_cap_and_reset_on_success() {
        let backoff = TenantBackoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let delays: Vec<u64> = (0..6).map(|_| backoff.next_delay("a").as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(
            backoff.next_delay("b"),
            Duration::from_secs(1),
            "tenants do not share back-off"
        );
        backoff.reset("a");
        assert_eq!(backoff.next_delay("a"), Duration::from_secs(1));
    }
}
