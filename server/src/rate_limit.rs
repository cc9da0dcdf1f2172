//! Rate limits per caller and per (caller, tool), GCRA via `governor`.
//!
//! Each caller has its own bucket, so a noisy caller only spends its own
//! budget. The per-caller limit is enforced at the HTTP layer (429 with
//! `Retry-After`); a per-tool limit inside `tools/call` (a tool error with a
//! retry hint), so a caller keeps using its other tools.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use bulkhead_crds::server_config::RateLimitsConfig;
use bulkhead_crds::tenant::RateLimit;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::identity::CallerId;

/// The limiters of one server.
pub struct RateLimits {
    per_caller: Option<DefaultKeyedRateLimiter<CallerId>>,
    per_tool: HashMap<String, DefaultKeyedRateLimiter<CallerId>>,
    clock: DefaultClock,
}

fn quota(requests_per_minute: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(requests_per_minute)?;
    let burst = NonZeroU32::new(burst.max(1))?;
    Some(Quota::per_minute(rate).allow_burst(burst))
}

fn limiter(limit: &RateLimit) -> Option<DefaultKeyedRateLimiter<CallerId>> {
    quota(limit.requests_per_minute, limit.burst).map(RateLimiter::keyed)
}

impl RateLimits {
    /// Limiters for the configured limits (validated to be positive).
    pub fn new(config: &RateLimitsConfig) -> Self {
        Self {
            per_caller: config.per_caller.as_ref().and_then(limiter),
            per_tool: config
                .per_tool
                .iter()
                .filter_map(|t| {
                    quota(t.requests_per_minute, t.burst)
                        .map(|q| (t.tool.clone(), RateLimiter::keyed(q)))
                })
                .collect(),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request from the caller's budget; `Err` carries the wait
    /// until the next request would be admitted.
    pub fn check_caller(&self, caller: &CallerId) -> Result<(), Duration> {
        match &self.per_caller {
            Some(limiter) => limiter
                .check_key(caller)
                .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
            None => Ok(()),
        }
    }

    /// Takes one call of `tool` from the caller's budget for that tool.
    pub fn check_tool(&self, caller: &CallerId, tool: &str) -> Result<(), Duration> {
        match self.per_tool.get(tool) {
            Some(limiter) => limiter
                .check_key(caller)
                .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
            None => Ok(()),
        }
    }

    /// Forgets callers whose buckets are full again, bounding memory.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.per_caller {
            limiter.retain_recent();
        }
        for limiter in self.per_tool.values() {
            limiter.retain_recent();
        }
    }
}

/// Whole seconds to put in `Retry-After` (at least 1).
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_crds::tenant::ToolRateLimit;

    fn limits() -> RateLimits {
        RateLimits::new(&RateLimitsConfig {
            per_caller: Some(RateLimit {
                requests_per_minute: 60,
                burst: 3,
            }),
            per_tool: vec![ToolRateLimit {
                tool: "whoami".into(),
                requests_per_minute: 1,
                burst: 1,
            }],
        })
    }

    #[test]
    fn a_caller_is_refused_after_its_burst_and_others_are_not() {
        let limits = limits();
        let alice = CallerId::api_key("alice");
        let bob = CallerId::api_key("bob");
        for _ in 0..3 {
            assert!(limits.check_caller(&alice).is_ok());
        }
        let wait = limits.check_caller(&alice).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert_eq!(retry_after_seconds(wait), 1);
        assert!(limits.check_caller(&bob).is_ok());
        // The same id authenticated by token has its own budget.
        assert!(limits.check_caller(&CallerId::token("alice")).is_ok());
    }

    #[test]
    fn tool_limits_apply_per_caller_and_tool() {
        let limits = limits();
        let alice = CallerId::api_key("alice");
        assert!(limits.check_tool(&alice, "whoami").is_ok());
        assert!(limits.check_tool(&alice, "whoami").is_err());
        assert!(limits.check_tool(&alice, "other").is_ok());
        assert!(
            limits
                .check_tool(&CallerId::api_key("bob"), "whoami")
                .is_ok()
        );
    }
}
