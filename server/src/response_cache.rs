//! A short-lived cache of successful upstream GET responses.
//!
//! Every key carries the tenant id, the caller id, the connector name and
//! the request, so one tenant's entry never answers another tenant, and one
//! caller's entry never answers another caller of the same tenant (whose
//! access, or credential, may differ). Off unless `--response-cache-seconds`
//! is set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::identity::{CallerId, TenantId};

/// What a cached entry is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The tenant the response was fetched for.
    pub tenant: TenantId,
    /// The authenticated caller it was fetched for.
    pub caller: CallerId,
    /// The connector that fetched it.
    pub connector: String,
    /// The request: the upstream resource (full URL with query) fetched
    /// with `GET`, the only method cached.
    pub resource: String,
}

/// A cached upstream answer.
#[derive(Clone, Debug)]
pub struct CachedResponse {
    /// Upstream HTTP status.
    pub status: u16,
    /// Parsed JSON body.
    pub body: Arc<serde_json::Value>,
}

/// The cache; cheap to clone.
#[derive(Clone)]
pub struct ResponseCache {
    ttl: Duration,
    max_entries: usize,
    entries: Arc<Mutex<HashMap<CacheKey, (Instant, CachedResponse)>>>,
}

impl ResponseCache {
    /// A cache keeping entries for `ttl` (zero disables it), at most
    /// `max_entries` of them.
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries,
            entries: Arc::default(),
        }
    }

    /// Whether caching is on.
    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// A fresh entry for `key`, if any.
    pub fn get(&self, key: &CacheKey) -> Option<CachedResponse> {
        if !self.enabled() {
            return None;
        }
        let entries = self.entries.lock().ok()?;
        let (stored_at, response) = entries.get(key)?;
        (stored_at.elapsed() < self.ttl).then(|| response.clone())
    }

    /// Stores a response; drops expired entries first when full.
    pub fn put(&self, key: CacheKey, response: CachedResponse) {
        if !self.enabled() {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= self.max_entries {
                let ttl = self.ttl;
                entries.retain(|_, (stored_at, _)| stored_at.elapsed() < ttl);
            }
            if entries.len() < self.max_entries {
                entries.insert(key, (Instant::now(), response));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_for(tenant: &str, caller: &str) -> CacheKey {
        CacheKey {
            tenant: TenantId::new(tenant),
            caller: CallerId::api_key(caller),
            connector: "github".into(),
            resource: "https://api.github.com/repos/o/r".into(),
        }
    }

    fn key(tenant: &str) -> CacheKey {
        key_for(tenant, "alice")
    }

    #[test]
    fn an_entry_answers_only_its_own_caller() {
        let cache = ResponseCache::new(Duration::from_secs(60), 10);
        cache.put(
            key_for("a", "alice"),
            CachedResponse {
                status: 200,
                body: Arc::new(serde_json::json!({"for": "alice"})),
            },
        );
        assert_eq!(
            cache.get(&key_for("a", "alice")).unwrap().body["for"],
            "alice"
        );
        assert!(cache.get(&key_for("a", "bob")).is_none());
        // A token caller with the same id is another caller.
        let token_alice = CacheKey {
            caller: CallerId::token("alice"),
            ..key_for("a", "alice")
        };
        assert!(cache.get(&token_alice).is_none());
    }

    #[test]
    fn an_entry_answers_only_its_own_tenant() {
        let cache = ResponseCache::new(Duration::from_secs(60), 10);
        cache.put(
            key("a"),
            CachedResponse {
                status: 200,
                body: Arc::new(serde_json::json!({"owner": "a"})),
            },
        );
        assert_eq!(cache.get(&key("a")).unwrap().body["owner"], "a");
        assert!(cache.get(&key("b")).is_none());
    }

    #[test]
    fn zero_ttl_disables_the_cache() {
        let cache = ResponseCache::new(Duration::ZERO, 10);
        cache.put(
            key("a"),
            CachedResponse {
                status: 200,
                body: Arc::new(serde_json::Value::Null),
            },
        );
        assert!(cache.get(&key("a")).is_none());
    }
}
