//! Upstream credentials: read through a [`CredentialProvider`] so a rotated
//! value is picked up without a restart: a Kubernetes Secret is followed by
//! its watch and read from that snapshot on every call; files are cached
//! for a bounded time and read again.
//!
//! Values are [`SecretString`]s: their `Debug` output is redacted and the
//! only way to read one is an explicit `expose_secret()` at the point where
//! the upstream request is built.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_crds::server_config::CredentialKey;
use secrecy::SecretString;
use tokio::sync::watch;

use crate::identity::TenantId;
use crate::secret_source::{SecretData, SecretLocation, SecretSourceError};

/// Why a credential is not available. Names the credential, never a value.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The credential name is not in `credentialKeys`.
    #[error("credential {0:?} is not declared in credentialKeys")]
    Undeclared(String),
    /// The source has no value under the declared key.
    #[error("credential {name:?}: key {key:?} is missing from the credential source")]
    Missing {
        /// Credential name.
        name: String,
        /// Key in the source.
        key: String,
    },
    /// The source could not be read.
    #[error("credential {name:?}: {source}")]
    Source {
        /// Credential name.
        name: String,
        /// What went wrong.
        source: SecretSourceError,
    },
}

/// Boxed future returned by [`CredentialProvider::read`].
pub type ReadFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<SecretString>, SecretSourceError>> + Send + 'a>>;

/// Where credential values come from.
pub trait CredentialProvider: Send + Sync {
    /// Reads the current value stored under `key`; `None` if absent.
    fn read<'a>(&'a self, key: &'a str) -> ReadFuture<'a>;
}

/// Reads from a configured [`SecretLocation`]: the tenant's Kubernetes
/// Secret (a `get` through the pod's own ServiceAccount), a YAML file or a
/// directory with one file per key.
pub struct SourceCredentialProvider {
    location: SecretLocation,
}

impl SourceCredentialProvider {
    /// A provider over `location`.
    pub fn new(location: SecretLocation) -> Self {
        Self { location }
    }
}

impl CredentialProvider for SourceCredentialProvider {
    fn read<'a>(&'a self, key: &'a str) -> ReadFuture<'a> {
        Box::pin(self.location.load_key(key))
    }
}

/// Reads from the snapshot [`SecretLocation::watch`] keeps current (for the
/// tenant's Secret: `get`, then `watch` of that name), so the call after a
/// rotation already carries the new value. Use it with a zero TTL: the
/// snapshot is the cache.
pub struct WatchedCredentialProvider {
    location: String,
    snapshot: watch::Receiver<Option<Arc<SecretData>>>,
}

impl WatchedCredentialProvider {
    /// A provider over `snapshot`; `location` names the source in errors.
    pub fn new(location: String, snapshot: watch::Receiver<Option<Arc<SecretData>>>) -> Self {
        Self { location, snapshot }
    }
}

impl CredentialProvider for WatchedCredentialProvider {
    fn read<'a>(&'a self, key: &'a str) -> ReadFuture<'a> {
        let value = match self.snapshot.borrow().as_deref() {
            Some(data) => Ok(data.get(key).cloned()),
            None => Err(SecretSourceError::NotYetRead {
                location: self.location.clone(),
            }),
        };
        Box::pin(std::future::ready(value))
    }
}

/// Cached credential values by (tenant id, credential name), with the time
/// each was read.
type CredentialCache = HashMap<(TenantId, String), (Instant, SecretString)>;

/// The tenant's credentials, cached per (tenant id, credential name) for at
/// most the configured TTL.
#[derive(Clone)]
pub struct CredentialStore {
    tenant: TenantId,
    keys: Arc<HashMap<String, String>>,
    provider: Arc<dyn CredentialProvider>,
    ttl: Duration,
    cache: Arc<Mutex<CredentialCache>>,
}

impl CredentialStore {
    /// A store for `tenant` with the declared credential keys.
    pub fn new(
        tenant: TenantId,
        declared: &[CredentialKey],
        provider: Arc<dyn CredentialProvider>,
        ttl: Duration,
    ) -> Self {
        Self {
            tenant,
            keys: Arc::new(
                declared
                    .iter()
                    .map(|c| (c.name.clone(), c.key.clone()))
                    .collect(),
            ),
            provider,
            ttl,
            cache: Arc::default(),
        }
    }

    /// The current value of credential `name`, from the cache if it is
    /// younger than the TTL, else read again.
    pub async fn get(&self, name: &str) -> Result<SecretString, CredentialError> {
        let cache_key = (self.tenant.clone(), name.to_owned());
        if let Ok(cache) = self.cache.lock()
            && let Some((read_at, value)) = cache.get(&cache_key)
            && read_at.elapsed() < self.ttl
        {
            return Ok(value.clone());
        }
        let key = self
            .keys
            .get(name)
            .ok_or_else(|| CredentialError::Undeclared(name.to_owned()))?;
        let value = self
            .provider
            .read(key)
            .await
            .map_err(|source| CredentialError::Source {
                name: name.to_owned(),
                source,
            })?
            .ok_or_else(|| CredentialError::Missing {
                name: name.to_owned(),
                key: key.clone(),
            })?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(cache_key, (Instant::now(), value.clone()));
        }
        Ok(value)
    }

    /// Reads every declared credential once (for readiness).
    pub async fn load_all(&self) -> Result<(), CredentialError> {
        for name in self.keys.keys() {
            self.get(name).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting {
        reads: AtomicUsize,
        value: Mutex<String>,
    }

    impl CredentialProvider for Counting {
        fn read<'a>(&'a self, key: &'a str) -> ReadFuture<'a> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let value =
                (key == "token").then(|| SecretString::from(self.value.lock().unwrap().as_str()));
            Box::pin(async move { Ok(value) })
        }
    }

    fn store(ttl: Duration) -> (CredentialStore, Arc<Counting>) {
        let provider = Arc::new(Counting {
            reads: AtomicUsize::new(0),
            value: Mutex::new("v1".into()),
        });
        let declared = vec![
            CredentialKey {
                name: "gh".into(),
                key: "token".into(),
            },
            CredentialKey {
                name: "absent".into(),
                key: "nope".into(),
            },
        ];
        (
            CredentialStore::new(TenantId::new("acme"), &declared, provider.clone(), ttl),
            provider,
        )
    }

    #[tokio::test]
    async fn values_are_cached_until_the_ttl_then_reread() {
        let (store, provider) = store(Duration::from_millis(50));
        assert_eq!(store.get("gh").await.unwrap().expose_secret(), "v1");
        *provider.value.lock().unwrap() = "v2".into();
        assert_eq!(store.get("gh").await.unwrap().expose_secret(), "v1");
        assert_eq!(provider.reads.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(store.get("gh").await.unwrap().expose_secret(), "v2");
        assert_eq!(provider.reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn errors_name_the_credential_but_not_a_value() {
        let (store, _) = store(Duration::from_secs(60));
        let missing = store.get("absent").await.unwrap_err().to_string();
        assert!(
            missing.contains("absent") && missing.contains("nope"),
            "{missing}"
        );
        assert!(matches!(
            store.get("undeclared").await,
            Err(CredentialError::Undeclared(_))
        ));
        assert!(store.load_all().await.is_err());
    }

    #[tokio::test]
    async fn a_watched_source_is_used_on_the_next_call_and_fails_until_first_read() {
        let (tx, rx) = watch::channel(None);
        let declared = vec![CredentialKey {
            name: "gh".into(),
            key: "token".into(),
        }];
        let provider = WatchedCredentialProvider::new("Secret ns/creds".into(), rx);
        let store = CredentialStore::new(
            TenantId::new("acme"),
            &declared,
            Arc::new(provider),
            Duration::ZERO,
        );
        let unread = store.get("gh").await.unwrap_err().to_string();
        assert!(unread.contains("not been read yet"), "{unread}");
        let snapshot = |value: &str| {
            Some(Arc::new(SecretData::from([(
                "token".to_owned(),
                SecretString::from(value),
            )])))
        };
        tx.send(snapshot("v1")).unwrap();
        assert_eq!(store.get("gh").await.unwrap().expose_secret(), "v1");
        tx.send(snapshot("v2")).unwrap();
        assert_eq!(store.get("gh").await.unwrap().expose_secret(), "v2");
        tx.send(Some(Arc::new(SecretData::new()))).unwrap();
        assert!(matches!(
            store.get("gh").await,
            Err(CredentialError::Missing { .. })
        ));
    }

    #[test]
    fn debug_output_of_a_value_is_redacted() {
        let value = SecretString::from("ghp_supersecret");
        assert!(!format!("{value:?}").contains("supersecret"));
    }
}
