//! A bound on the requests one caller may have in flight at once.
//!
//! Every request holds a place in the audit queue from its start until its
//! line is written ([`crate::audit`]), and the queue is shared by all
//! callers of the tenant. Without a per-caller bound, one authenticated
//! caller sending many slow bodies (for example hundreds of HTTP/2 streams)
//! could hold every place, and every other caller would get 503. With it,
//! one caller holds at most `maxRequestsInFlightPerCaller` places beyond
//! the short moment before its key or token is verified.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::identity::CallerId;

/// Requests in flight per caller, at most `limit` each.
#[derive(Debug)]
pub struct InFlightLimit {
    limit: usize,
    counts: Arc<Mutex<HashMap<CallerId, usize>>>,
}

/// One request counted against its caller until dropped.
#[derive(Debug)]
pub struct InFlightPermit {
    caller: CallerId,
    counts: Arc<Mutex<HashMap<CallerId, usize>>>,
}

impl InFlightLimit {
    /// A bound of `limit` requests in flight per caller.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            counts: Arc::default(),
        }
    }

    /// Counts a request of `caller`; `None` when the caller already has
    /// `limit` requests in flight.
    pub fn try_acquire(&self, caller: &CallerId) -> Option<InFlightPermit> {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry(caller.clone()).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(InFlightPermit {
            caller: caller.clone(),
            counts: self.counts.clone(),
        })
    }

    /// Requests of `caller` in flight now.
    pub fn in_flight(&self, caller: &CallerId) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(caller)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for InFlightPermit {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.caller) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                // No entry per caller ever seen: the map holds only callers
                // with requests in flight.
                counts.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_caller_has_its_own_bound_and_a_dropped_permit_frees_a_place() {
        let limit = InFlightLimit::new(2);
        let alice = CallerId::api_key("alice");
        let bob = CallerId::api_key("bob");
        let first = limit.try_acquire(&alice).unwrap();
        let _second = limit.try_acquire(&alice).unwrap();
        assert!(limit.try_acquire(&alice).is_none());
        assert!(limit.try_acquire(&bob).is_some(), "bob is not alice");
        assert!(
            limit.try_acquire(&CallerId::token("alice")).is_some(),
            "a token caller is not the API-key caller of the same name"
        );
        drop(first);
        assert_eq!(limit.in_flight(&alice), 1);
        assert!(limit.try_acquire(&alice).is_some());
    }

    #[test]
    fn callers_without_requests_leave_no_entry() {
        let limit = InFlightLimit::new(1);
        drop(limit.try_acquire(&CallerId::api_key("alice")).unwrap());
        assert!(limit.counts.lock().unwrap().is_empty());
    }
}
