//! API keys: how they are made, how they are stored, and how a presented key
//! is verified.
//!
//! A key is `bhk_` followed by 43 base64url characters (32 random bytes). The
//! prefix lets secret scanners recognise a leaked key. Only the hash of a key
//! is stored (`sha256:<hex>`): the keys are 256-bit random values, so a plain
//! SHA-256 is enough (a slow password hash protects guessable secrets, which
//! these are not). The store maps caller id to hash: in a cluster the Secret
//! `bulkhead-api-keys` has one data key per caller id, locally a YAML file or
//! a directory does the same.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::identity::{CallerId, is_valid_caller_id};
use crate::secret_source::SecretData;

/// Prefix of every API key, so scanners can find leaked ones.
pub const API_KEY_PREFIX: &str = "bhk_";
/// Prefix of a stored key hash.
pub const HASH_PREFIX: &str = "sha256:";

/// Makes a new API key: `bhk_` and 32 random bytes in base64url (43 chars).
///
/// # Errors
/// When the operating system's random source is unavailable.
pub fn generate_api_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{API_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// The value stored for a key: `sha256:` and the hex SHA-256 of the key.
pub fn hash_api_key(key: &str) -> String {
    format!(
        "{HASH_PREFIX}{}",
        hex::encode(Sha256::digest(key.as_bytes()))
    )
}

/// Decodes a stored hash into its 32 digest bytes.
fn parse_hash(stored: &str) -> Option<[u8; 32]> {
    let hex_digest = stored.trim().strip_prefix(HASH_PREFIX)?;
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut digest).ok()?;
    Some(digest)
}

/// The current set of valid keys, by digest.
#[derive(Default)]
struct KeyTable {
    by_digest: HashMap<[u8; 32], CallerId>,
}

impl KeyTable {
    fn from_secret_data(data: &SecretData) -> Self {
        let mut by_digest = HashMap::new();
        for (caller, stored) in data {
            if caller.starts_with(API_KEY_PREFIX) {
                // Key and caller swapped: the "caller id" is a raw key, so
                // it must not reach the log.
                tracing::warn!(
                    "ignoring API key entry: its caller id looks like a raw API key (store `<caller>: <hash>`, never the key)"
                );
                continue;
            }
            if !is_valid_caller_id(caller) {
                tracing::warn!(caller = %caller.escape_debug(), "ignoring API key entry: invalid caller id");
                continue;
            }
            match parse_hash(stored.expose_secret()) {
                Some(digest) => {
                    if let Some(previous) = by_digest.insert(digest, CallerId::api_key(caller)) {
                        tracing::warn!(
                            caller = %caller,
                            previous = %previous,
                            "two callers share one API key hash; the key authenticates as the later one"
                        );
                    }
                }
                None => tracing::warn!(
                    caller = %caller,
                    "ignoring API key entry: the value is not a `sha256:<64 hex>` hash made by `bulkhead-server keygen`"
                ),
            }
        }
        Self { by_digest }
    }
}

/// Why a presented key was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A key that is not (or no longer) in the store, or an access token
    /// that failed verification.
    Invalid,
    /// A valid access token without a required scope.
    InsufficientScope,
}

impl AuthFailure {
    /// Label for metrics and audit.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid => "invalid",
            Self::InsufficientScope => "insufficient_scope",
        }
    }
}

/// The API keys of the tenant, kept current from the key source.
#[derive(Clone, Default)]
pub struct ApiKeyStore {
    table: Arc<RwLock<Arc<KeyTable>>>,
    loaded: Arc<std::sync::atomic::AtomicBool>,
}

impl ApiKeyStore {
    /// A store that follows `updates` (from [`crate::secret_source`]).
    pub fn follow(mut updates: watch::Receiver<Option<Arc<SecretData>>>) -> Self {
        let store = Self::default();
        let follower = store.clone();
        tokio::spawn(async move {
            loop {
                if let Some(data) = updates.borrow_and_update().clone() {
                    follower.replace(&data);
                }
                if updates.changed().await.is_err() {
                    break;
                }
            }
        });
        store
    }

    /// Replaces the whole key table.
    pub fn replace(&self, data: &SecretData) {
        let table = Arc::new(KeyTable::from_secret_data(data));
        let count = table.by_digest.len();
        if let Ok(mut current) = self.table.write() {
            *current = table;
        }
        self.loaded
            .store(true, std::sync::atomic::Ordering::Release);
        tracing::info!(keys = count, "API keys loaded");
    }

    /// Whether the key source has been read at least once.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The caller a presented key belongs to.
    ///
    /// The lookup is by SHA-256 of the presented key, so its timing depends
    /// only on a digest the caller cannot steer; the stored digest is then
    /// compared in constant time, so a match is never decided by an
    /// early-exit byte comparison.
    pub fn verify(&self, presented: &str) -> Result<CallerId, AuthFailure> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let table = self
            .table
            .read()
            .map(|t| Arc::clone(&t))
            .map_err(|_| AuthFailure::Invalid)?;
        match table.by_digest.get_key_value(&digest) {
            Some((stored, caller)) if bool::from(stored.ct_eq(&digest)) => Ok(caller.clone()),
            _ => Err(AuthFailure::Invalid),
        }
    }
}

/// The text `keygen` prints: the key once, and the entry to store.
pub fn keygen_instructions(caller: &str, key: &str, namespace: Option<&str>) -> String {
    let hash = hash_api_key(key);
    let namespace = namespace.unwrap_or("bulkhead-<tenant>");
    format!(
        "API key for caller {caller} (shown once; give it to the caller, store only the hash):\n\
         \n  {key}\n\n\
         Local key file (YAML map of caller id to hash), add:\n\
         \n  {caller}: {hash}\n\n\
         Kubernetes (Secret {secret} in the tenant namespace):\n\
         \n  kubectl -n {namespace} create secret generic {secret} --from-literal={caller}={hash}\n\
         \n  or, to add a caller to an existing Secret:\n\
         \n  kubectl -n {namespace} patch secret {secret} --type merge -p '{{\"stringData\":{{\"{caller}\":\"{hash}\"}}}}'\n",
        secret = bulkhead_crds::server_config::API_KEYS_SECRET_NAME,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn store_with(entries: &[(&str, &str)]) -> ApiKeyStore {
        let store = ApiKeyStore::default();
        let data: SecretData = entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), SecretString::from(*v)))
            .collect();
        store.replace(&data);
        store
    }

    #[test]
    fn generated_keys_are_prefixed_random_and_long() {
        let a = generate_api_key().unwrap();
        let b = generate_api_key().unwrap();
        assert!(a.starts_with("bhk_"));
        assert!(a.len() >= 4 + 43, "{a}");
        assert_ne!(a, b);
        assert!(
            a[4..]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn hash_is_sha256_hex_with_prefix() {
        assert_eq!(
            hash_api_key("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn verify_maps_a_stored_key_to_its_caller_and_refuses_others() {
        let key = generate_api_key().unwrap();
        let store = store_with(&[("alice", &hash_api_key(&key))]);
        assert_eq!(store.verify(&key).unwrap().as_str(), "alice");
        assert_eq!(
            store.verify(&generate_api_key().unwrap()),
            Err(AuthFailure::Invalid)
        );
        // The stored hash itself is not a key.
        assert_eq!(store.verify(&hash_api_key(&key)), Err(AuthFailure::Invalid));
    }

    #[test]
    fn replacing_the_table_revokes_removed_keys() {
        let key = generate_api_key().unwrap();
        let store = store_with(&[("alice", &hash_api_key(&key))]);
        store.replace(&SecretData::new());
        assert_eq!(store.verify(&key), Err(AuthFailure::Invalid));
    }

    #[test]
    fn malformed_entries_are_ignored() {
        let key = generate_api_key().unwrap();
        let store = store_with(&[("alice", &key), ("bad id", &hash_api_key(&key))]);
        assert_eq!(store.verify(&key), Err(AuthFailure::Invalid));
    }

    #[test]
    fn an_entry_named_by_a_raw_key_is_ignored() {
        let key = generate_api_key().unwrap();
        let store = store_with(&[(&key, &hash_api_key(&key))]);
        assert_eq!(store.verify(&key), Err(AuthFailure::Invalid));
    }

    #[test]
    fn keygen_output_contains_key_hash_and_kubectl_hint() {
        let text = keygen_instructions("alice", "bhk_x", Some("bulkhead-acme"));
        assert!(text.contains("bhk_x"));
        assert!(text.contains(&format!("alice: {}", hash_api_key("bhk_x"))));
        assert!(text.contains("kubectl -n bulkhead-acme create secret generic bulkhead-api-keys"));
    }
}
