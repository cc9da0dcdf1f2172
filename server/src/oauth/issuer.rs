//! The authorization server this tenant trusts: its metadata (RFC 8414, or
//! OpenID Connect Discovery 1.0) and its signing keys (JWKS, RFC 7517).
//!
//! The keys are fetched once before the server is ready, refreshed every
//! [`REFRESH_INTERVAL`] (so a key the issuer withdraws stops verifying),
//! and fetched again when a token names an unknown `kid` (the issuer
//! rotated its key). Only those unknown-`kid` fetches are rate limited —
//! one at a time, at most one per `jwksMinRefreshSeconds` — so a flood of
//! tokens with made-up `kid`s cannot turn into a flood of requests to the
//! issuer, while a key rotated right after start or after a periodic
//! refresh is still picked up at once. Fetches go through the same address
//! guard as connectors: private addresses only with `allowPrivateIssuer`,
//! cloud metadata and link-local addresses never; no redirects, bounded
//! time and size.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use url::Url;

use crate::connectors::upstream::{guarded_resolver, literal_host_allowed, refused_by_resolver};
use crate::metrics::{JwksFetchLabels, Metrics};

/// Time one metadata or JWKS request may take, connecting included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest metadata document or JWKS accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// How often the metadata and keys are fetched again while all is well.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(300);

/// Why the issuer's metadata or keys could not be fetched. Messages name
/// the URL (configuration, not a secret) and never carry a response body.
#[derive(Clone, Debug, thiserror::Error)]
pub enum IssuerError {
    /// The URL's address is not one this server may connect to.
    #[error(
        "{0}: address not allowed (a private issuer needs allowPrivateIssuer; cloud metadata and link-local addresses are never allowed)"
    )]
    Refused(String),
    /// No answer (DNS, connection, TLS, timeout).
    #[error("{url}: unreachable ({reason})")]
    Unreachable {
        /// The URL.
        url: String,
        /// What failed.
        reason: &'static str,
    },
    /// An HTTP status other than 200.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// Larger than [`MAX_DOCUMENT_BYTES`].
    #[error("{0}: response larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge(String),
    /// Not the JSON document expected.
    #[error("{0}: not a valid document: {1}")]
    Invalid(String, String),
    /// None of the well-known metadata URLs answered.
    #[error("no authorization server metadata found (tried {0})")]
    NoMetadata(String),
    /// The metadata names another issuer (RFC 8414 section 3.3).
    #[error("the metadata at {url} names issuer {found:?}, not the configured {expected:?}")]
    IssuerMismatch {
        /// Where the metadata was read.
        url: String,
        /// The configured issuer.
        expected: String,
        /// The issuer the metadata names.
        found: String,
    },
}

/// A key the issuer published for signing.
pub struct SigningKey {
    /// The key, ready for verification.
    pub key: DecodingKey,
    /// The algorithm the JWK is restricted to (`alg`), if any.
    pub algorithm: Option<Algorithm>,
}

/// The keys of one JWKS, by `kid`.
#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<SigningKey>>,
    /// The only key, when the set has exactly one: a token without `kid`
    /// may use it.
    sole: Option<Arc<SigningKey>>,
}

impl KeySet {
    fn find(&self, kid: Option<&str>) -> Option<Arc<SigningKey>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None => self.sole.clone(),
        }
    }
}

#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    jwks_uri: Option<String>,
}

#[derive(Deserialize)]
struct RawKeySet {
    keys: Vec<serde_json::Value>,
}

/// What is known of the issuer, and the connection to it.
pub struct Issuer {
    issuer: String,
    issuer_url: Url,
    allow_private: bool,
    min_refresh: Duration,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    keys: RwLock<Option<Arc<KeySet>>>,
    /// The `jwks_uri` from the metadata, once read.
    jwks_uri: RwLock<Option<Url>>,
    /// When a token's unknown `kid` last caused a JWKS fetch (the start-up
    /// and periodic fetches do not count against the rate limit). Held
    /// across every JWKS fetch, so concurrent requests with an unknown
    /// `kid` wait for one fetch instead of each starting their own.
    unknown_kid_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// The last error, for readiness.
    last_error: Mutex<Option<IssuerError>>,
}

impl Issuer {
    /// The issuer `issuer` (an `https` or `http` URL), fetched through an
    /// address guard (`allow_private`: `allowPrivateIssuer`); JWKS fetches
    /// for unknown `kid`s at most every `min_refresh`.
    ///
    /// # Errors
    /// When the issuer is not a URL or the HTTP client cannot be built.
    pub fn new(
        issuer: &str,
        allow_private: bool,
        min_refresh: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let issuer_url = Url::parse(issuer).map_err(|e| format!("issuer is not a URL: {e}"))?;
        if !matches!(issuer_url.scheme(), "https" | "http") {
            return Err("issuer must be an https URL".to_owned());
        }
        crate::connectors::upstream::install_crypto_provider();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .user_agent(concat!("bulkhead-server/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(guarded_resolver(allow_private))
            .build()
            .map_err(|e| format!("cannot build the issuer's HTTP client: {e}"))?;
        Ok(Self {
            issuer: issuer.to_owned(),
            issuer_url,
            allow_private,
            min_refresh,
            client,
            metrics,
            keys: RwLock::default(),
            jwks_uri: RwLock::default(),
            unknown_kid_fetch: tokio::sync::Mutex::default(),
            last_error: Mutex::default(),
        })
    }

    /// The configured issuer identifier.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Whether metadata and keys have been fetched at least once.
    pub fn is_loaded(&self) -> bool {
        self.keys.read().is_ok_and(|k| k.is_some())
    }

    /// Why the issuer is not usable yet, for `/readyz`.
    pub fn not_ready_reason(&self) -> Option<String> {
        if self.is_loaded() {
            return None;
        }
        let error = self.last_error.lock().ok().and_then(|e| e.clone());
        Some(match error {
            Some(error) => format!("OAuth issuer {} not reachable yet: {error}", self.issuer),
            None => format!(
                "OAuth issuer {}: metadata and JWKS not fetched yet",
                self.issuer
            ),
        })
    }

    /// Reads the metadata and the JWKS it names, and keeps both.
    ///
    /// # Errors
    /// When either cannot be fetched or is not valid; the keys known
    /// before stay in use.
    pub async fn load(&self) -> Result<(), IssuerError> {
        let result = self.load_inner().await;
        if let Ok(mut last) = self.last_error.lock() {
            *last = result.as_ref().err().cloned();
        }
        result
    }

    async fn load_inner(&self) -> Result<(), IssuerError> {
        let jwks_uri = self.discover().await?;
        if let Ok(mut current) = self.jwks_uri.write() {
            *current = Some(jwks_uri.clone());
        }
        // Serialised with unknown-kid fetches, but not counted against
        // their rate limit.
        let _fetching = self.unknown_kid_fetch.lock().await;
        let keys = self.fetch_keys(&jwks_uri).await?;
        self.replace_keys(keys);
        Ok(())
    }

    /// The key for a token's `kid` (or the sole key, for a token without
    /// one). An unknown `kid` fetches the JWKS again, unless an unknown
    /// `kid` already caused a fetch within the last `jwksMinRefreshSeconds`
    /// (the start-up and periodic fetches do not count).
    pub async fn key(&self, kid: Option<&str>) -> Option<Arc<SigningKey>> {
        if let Some(key) = self.current_keys()?.find(kid) {
            return Some(key);
        }
        let mut last = self.unknown_kid_fetch.lock().await;
        // Another request may have fetched while this one waited.
        if let Some(key) = self.current_keys()?.find(kid) {
            return Some(key);
        }
        if last.is_some_and(|at| at.elapsed() < self.min_refresh) {
            return None;
        }
        let jwks_uri = self.jwks_uri.read().ok()?.clone()?;
        *last = Some(Instant::now());
        match self.fetch_keys(&jwks_uri).await {
            Ok(keys) => {
                let found = keys.find(kid);
                self.replace_keys(keys);
                found
            }
            Err(error) => {
                tracing::warn!(issuer = %self.issuer, %error, "cannot refresh the issuer's JWKS");
                None
            }
        }
    }

    fn current_keys(&self) -> Option<Arc<KeySet>> {
        self.keys.read().ok()?.clone()
    }

    fn replace_keys(&self, keys: KeySet) {
        tracing::info!(issuer = %self.issuer, keys = keys.by_kid.len(), "issuer signing keys loaded");
        if let Ok(mut current) = self.keys.write() {
            *current = Some(Arc::new(keys));
        }
    }

    /// The metadata URLs to try, in the order the MCP authorization spec
    /// (2025-11-25, "Authorization Server Metadata Discovery") gives: RFC
    /// 8414 with the well-known segment inserted before the issuer's path,
    /// then OpenID Connect Discovery inserted, then appended.
    pub fn metadata_urls(&self) -> Vec<Url> {
        let path = self.issuer_url.path().trim_end_matches('/');
        let mut paths = vec![format!("/.well-known/oauth-authorization-server{path}")];
        if path.is_empty() {
            paths.push("/.well-known/openid-configuration".to_owned());
        } else {
            paths.push(format!("/.well-known/openid-configuration{path}"));
            paths.push(format!("{path}/.well-known/openid-configuration"));
        }
        paths
            .into_iter()
            .map(|p| {
                let mut url = self.issuer_url.clone();
                url.set_path(&p);
                url.set_query(None);
                url.set_fragment(None);
                url
            })
            .collect()
    }

    /// The `jwks_uri` of the first metadata document found, after checking
    /// that it names the configured issuer.
    async fn discover(&self) -> Result<Url, IssuerError> {
        let urls = self.metadata_urls();
        for url in &urls {
            let body = match self.fetch(url).await {
                Ok(body) => body,
                Err(IssuerError::Status { status: 404, .. }) => continue,
                Err(error) => return Err(error),
            };
            let metadata: Metadata = serde_json::from_slice(&body)
                .map_err(|e| IssuerError::Invalid(url.to_string(), e.to_string()))?;
            if metadata.issuer != self.issuer {
                return Err(IssuerError::IssuerMismatch {
                    url: url.to_string(),
                    expected: self.issuer.clone(),
                    found: metadata.issuer,
                });
            }
            let jwks_uri = metadata
                .jwks_uri
                .ok_or_else(|| IssuerError::Invalid(url.to_string(), "no jwks_uri".to_owned()))?;
            let jwks_uri = Url::parse(&jwks_uri)
                .map_err(|e| IssuerError::Invalid(url.to_string(), format!("jwks_uri: {e}")))?;
            // An https issuer's keys come over https too.
            if jwks_uri.scheme() != "https"
                && (self.issuer_url.scheme() == "https" || jwks_uri.scheme() != "http")
            {
                return Err(IssuerError::Invalid(
                    url.to_string(),
                    "jwks_uri must be https".to_owned(),
                ));
            }
            return Ok(jwks_uri);
        }
        Err(IssuerError::NoMetadata(
            urls.iter().map(Url::as_str).collect::<Vec<_>>().join(", "),
        ))
    }

    async fn fetch_keys(&self, url: &Url) -> Result<KeySet, IssuerError> {
        let result = self.fetch(url).await.and_then(|body| {
            let raw: RawKeySet = serde_json::from_slice(&body)
                .map_err(|e| IssuerError::Invalid(url.to_string(), e.to_string()))?;
            Ok(key_set(raw))
        });
        self.metrics
            .jwks_fetches
            .get_or_create(&JwksFetchLabels {
                outcome: if result.is_ok() { "ok" } else { "error" },
            })
            .inc();
        result
    }

    /// GET `url` as JSON: 200 only, no redirects, at most
    /// [`MAX_DOCUMENT_BYTES`].
    async fn fetch(&self, url: &Url) -> Result<Vec<u8>, IssuerError> {
        let shown = url.to_string();
        if !literal_host_allowed(url, self.allow_private) {
            return Err(IssuerError::Refused(shown));
        }
        let unreachable = |error: &reqwest::Error| {
            if refused_by_resolver(error) {
                IssuerError::Refused(shown.clone())
            } else {
                IssuerError::Unreachable {
                    url: shown.clone(),
                    reason: if error.is_timeout() {
                        "timed out"
                    } else {
                        "connection failed"
                    },
                }
            }
        };
        let mut response = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| unreachable(&e))?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(IssuerError::Status {
                url: shown,
                status: response.status().as_u16(),
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| unreachable(&e))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(IssuerError::TooLarge(shown));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// The signing keys of a JWKS. Keys this server cannot use (encryption
/// keys, symmetric keys, unknown types, no `kid` in a set of several) are
/// skipped rather than failing the whole set.
fn key_set(raw: RawKeySet) -> KeySet {
    let mut set = KeySet::default();
    let mut usable = Vec::new();
    for value in raw.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if let Some(key) = signing_key(&jwk) {
            let key = Arc::new(key);
            if let Some(kid) = &jwk.common.key_id {
                set.by_kid.insert(kid.clone(), key.clone());
            }
            usable.push(key);
        }
    }
    if usable.len() == 1 {
        set.sole = usable.pop();
    }
    set
}

fn signing_key(jwk: &Jwk) -> Option<SigningKey> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let algorithm = match jwk.common.key_algorithm {
        Some(alg) => Some(alg.to_string().parse::<Algorithm>().ok()?),
        None => None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    // Only public keys: a symmetric key in a JWKS is never trusted.
    if key.family() == jsonwebtoken::AlgorithmFamily::Hmac {
        return None;
    }
    Some(SigningKey { key, algorithm })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(url: &str) -> Issuer {
        Issuer::new(url, false, Duration::from_secs(30), Arc::default()).unwrap()
    }

    fn metadata_urls(url: &str) -> Vec<String> {
        issuer(url)
            .metadata_urls()
            .iter()
            .map(Url::to_string)
            .collect()
    }

    #[test]
    fn metadata_urls_follow_the_path_insertion_rule() {
        assert_eq!(
            metadata_urls("https://idp.example/realms/acme"),
            [
                "https://idp.example/.well-known/oauth-authorization-server/realms/acme",
                "https://idp.example/.well-known/openid-configuration/realms/acme",
                "https://idp.example/realms/acme/.well-known/openid-configuration",
            ]
        );
        assert_eq!(
            metadata_urls("https://idp.example"),
            [
                "https://idp.example/.well-known/oauth-authorization-server",
                "https://idp.example/.well-known/openid-configuration",
            ]
        );
    }

    #[test]
    fn symmetric_and_encryption_keys_are_skipped() {
        let set = key_set(RawKeySet {
            keys: vec![
                serde_json::json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0"}),
                serde_json::json!({"kty": "EC", "kid": "e", "use": "enc", "crv": "P-256",
                    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}),
                serde_json::json!({"kty": "EC", "kid": "s", "use": "sig", "crv": "P-256",
                    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}),
                serde_json::json!({"kty": "unknown", "kid": "u"}),
            ],
        });
        assert!(set.find(Some("h")).is_none());
        assert!(set.find(Some("e")).is_none());
        assert!(set.find(Some("s")).is_some());
        assert!(set.find(Some("u")).is_none());
        assert!(
            set.find(None).is_some(),
            "one usable key serves a token without kid"
        );
    }

    #[tokio::test]
    async fn cloud_metadata_issuers_are_refused_even_when_private_ones_are_allowed() {
        let issuer = Issuer::new(
            "http://169.254.169.254/",
            true,
            Duration::from_secs(30),
            Arc::default(),
        )
        .unwrap();
        let error = issuer.load().await.unwrap_err();
        assert!(matches!(error, IssuerError::Refused(_)), "{error}");
        assert!(
            issuer
                .not_ready_reason()
                .unwrap()
                .contains("http://169.254.169.254/"),
        );
        let private = issuer_with("http://127.0.0.1:9/", false);
        assert!(matches!(
            private.load().await.unwrap_err(),
            IssuerError::Refused(_)
        ));
    }

    fn issuer_with(url: &str, allow_private: bool) -> Issuer {
        Issuer::new(url, allow_private, Duration::from_secs(30), Arc::default()).unwrap()
    }
}
