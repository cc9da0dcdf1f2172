//! The server as an OAuth 2.1 resource server (MCP authorization,
//! revisions 2025-06-18 and 2025-11-25): it publishes Protected Resource
//! Metadata (RFC 9728) naming the tenant's authorization server, answers
//! requests without a usable token with a `WWW-Authenticate: Bearer`
//! challenge (RFC 6750 section 3) that points there, and verifies JWT
//! access tokens (RFC 9068) against the issuer's published keys.
//!
//! A token is accepted only when all hold: signed with a key the issuer
//! published (matched by `kid`) using an algorithm of the configured,
//! asymmetric-only list; `iss` is the issuer; `aud` contains this server's
//! resource identifier (RFC 8707), so a token minted for another tenant's
//! server is refused even when both trust one issuer; `exp` and `nbf` hold
//! within the clock skew; `typ`, when present, is `at+jwt`; the tenant
//! claim, when configured, is this tenant; the caller claim is a string;
//! and the required scopes are granted (else 403 `insufficient_scope`).
//! The token itself is never logged, audited or sent anywhere.

pub mod issuer;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use bulkhead_crds::server_config::{MCP_PATH, OAuthConfig};
use bulkhead_crds::tenant::SigningAlgorithm;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::identity::{CallerId, TenantId, TokenGrants};
use crate::metrics::{Metrics, TokenRejectionLabels};
use issuer::{Issuer, REFRESH_INTERVAL};

/// Well-known path of Protected Resource Metadata (RFC 9728 section 3).
pub const PROTECTED_RESOURCE_METADATA: &str = "/.well-known/oauth-protected-resource";

/// Longest caller id taken from a token claim, in bytes.
pub const MAX_CALLER_ID_BYTES: usize = 256;

/// Why the OAuth configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("auth.oauth: {0}")]
pub struct OAuthSetupError(String);

/// A verified access token: who it names and what it grants.
#[derive(Clone, Debug)]
pub struct VerifiedToken {
    /// The caller named by the caller claim.
    pub caller: CallerId,
    /// Groups and scopes, for access rules.
    pub grants: TokenGrants,
}

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenRejection {
    /// Not a valid token for this server (401 `invalid_token`); the reason
    /// is a fixed label for metrics and logs, never sent to the caller.
    Invalid(&'static str),
    /// A valid token without a required scope (403 `insufficient_scope`).
    InsufficientScope(CallerId),
}

/// The `WWW-Authenticate` values this server sends (RFC 6750 section 3;
/// MCP authorization 2025-11-25, "Protected Resource Metadata Discovery"
/// and "Scope Selection Strategy").
#[derive(Clone, Debug)]
pub struct BearerChallenge {
    /// No token: `Bearer resource_metadata="…"[, scope="…"]`.
    pub missing: HeaderValue,
    /// A token that failed: `error="invalid_token"` added.
    pub invalid: HeaderValue,
    /// A valid token lacking scopes: `error="insufficient_scope"`.
    pub insufficient_scope: HeaderValue,
}

fn quoted(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

impl BearerChallenge {
    fn new(resource_metadata: &str, scopes: &[String]) -> Result<Self, OAuthSetupError> {
        let mut params = vec![format!("resource_metadata={}", quoted(resource_metadata))];
        if !scopes.is_empty() {
            params.push(format!("scope={}", quoted(&scopes.join(" "))));
        }
        let header = |error: Option<&str>| {
            let mut all = Vec::new();
            if let Some(error) = error {
                all.push(format!("error={}", quoted(error)));
            }
            all.extend(params.iter().cloned());
            HeaderValue::from_str(&format!("Bearer {}", all.join(", "))).map_err(|_| {
                OAuthSetupError("resource or scopes cannot be sent in a header".to_owned())
            })
        };
        Ok(Self {
            missing: header(None)?,
            invalid: header(Some("invalid_token"))?,
            insufficient_scope: header(Some("insufficient_scope"))?,
        })
    }
}

/// The tenant's resource server: configuration, the issuer's keys, the
/// metadata document and the challenges.
pub struct ResourceServer {
    config: OAuthConfig,
    tenant: TenantId,
    algorithms: Vec<Algorithm>,
    issuer: Issuer,
    metrics: Arc<Metrics>,
    challenge: BearerChallenge,
    metadata_document: String,
    metadata_paths: BTreeSet<String>,
}

fn algorithm(alg: SigningAlgorithm) -> Algorithm {
    match alg {
        SigningAlgorithm::RS256 => Algorithm::RS256,
        SigningAlgorithm::RS384 => Algorithm::RS384,
        SigningAlgorithm::RS512 => Algorithm::RS512,
        SigningAlgorithm::PS256 => Algorithm::PS256,
        SigningAlgorithm::PS384 => Algorithm::PS384,
        SigningAlgorithm::PS512 => Algorithm::PS512,
        SigningAlgorithm::ES256 => Algorithm::ES256,
        SigningAlgorithm::ES384 => Algorithm::ES384,
        SigningAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

/// Where the metadata of `resource` lives: the well-known path with the
/// resource's path appended (RFC 9728 section 3.1).
pub fn metadata_path(resource: &Url) -> String {
    let path = resource.path().trim_end_matches('/');
    format!("{PROTECTED_RESOURCE_METADATA}{path}")
}

/// Whether a bearer value has the shape of a JWS in compact serialization
/// (RFC 7515 section 7.1): three base64url segments separated by dots (the
/// last may be empty, as in an unsecured `alg: none` token, which is then
/// refused as a token rather than tried as an API key).
pub fn is_jwt_shaped(value: &str) -> bool {
    let segments: Vec<&str> = value.split('.').collect();
    segments.len() == 3
        && !segments[0].is_empty()
        && !segments[1].is_empty()
        && segments.iter().all(|s| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl ResourceServer {
    /// The resource server for `config`, serving tenant `tenant`.
    ///
    /// # Errors
    /// When the issuer or resource is not a usable URL.
    pub fn new(
        config: &OAuthConfig,
        tenant: TenantId,
        metrics: Arc<Metrics>,
    ) -> Result<Self, OAuthSetupError> {
        let resource = Url::parse(&config.resource)
            .map_err(|e| OAuthSetupError(format!("resource is not a URL: {e}")))?;
        let issuer = Issuer::new(
            &config.issuer,
            config.allow_private_issuer,
            Duration::from_secs(config.jwks_min_refresh_seconds),
            metrics.clone(),
        )
        .map_err(OAuthSetupError)?;
        let path = metadata_path(&resource);
        let resource_metadata = format!("{}{path}", resource.origin().ascii_serialization());
        let challenge = BearerChallenge::new(&resource_metadata, &config.required_scopes)?;
        let mut document = serde_json::json!({
            "resource": config.resource,
            "authorization_servers": [config.issuer],
            "bearer_methods_supported": ["header"],
            "resource_name": format!("Bulkhead MCP server of tenant {tenant}"),
        });
        if !config.required_scopes.is_empty() {
            document["scopes_supported"] = serde_json::json!(config.required_scopes);
        }
        Ok(Self {
            algorithms: config.algorithms.iter().copied().map(algorithm).collect(),
            config: config.clone(),
            tenant,
            issuer,
            metrics,
            challenge,
            metadata_document: document.to_string(),
            metadata_paths: BTreeSet::from([
                PROTECTED_RESOURCE_METADATA.to_owned(),
                format!("{PROTECTED_RESOURCE_METADATA}{MCP_PATH}"),
                path,
            ]),
        })
    }

    /// The challenges to send.
    pub fn challenge(&self) -> &BearerChallenge {
        &self.challenge
    }

    /// The Protected Resource Metadata document (RFC 9728 section 2).
    pub fn metadata_document(&self) -> &str {
        &self.metadata_document
    }

    /// Whether `path` is one where the metadata is served: the bare
    /// well-known path, the one suffixed with `/mcp`, and the one suffixed
    /// with the resource identifier's path.
    pub fn serves_metadata_at(&self, path: &str) -> bool {
        self.metadata_paths.contains(path)
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        self.issuer.issuer()
    }

    /// Why tokens cannot be verified yet (the issuer's metadata and keys
    /// were never fetched), naming the issuer.
    pub fn not_ready_reason(&self) -> Option<String> {
        self.issuer.not_ready_reason()
    }

    /// Fetches the issuer's metadata and keys until the first success
    /// (retrying with a backoff from 1 s up to 60 s), then again every
    /// [`REFRESH_INTERVAL`], until `shutdown`.
    pub fn spawn_issuer_refresh(self: &Arc<Self>, shutdown: CancellationToken) {
        let server = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                let wait = match server.issuer.load().await {
                    Ok(()) => {
                        backoff = Duration::from_secs(1);
                        REFRESH_INTERVAL
                    }
                    Err(error) => {
                        tracing::warn!(issuer = %server.issuer(), %error, "cannot fetch the OAuth issuer's metadata or keys");
                        let wait = backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                        wait
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        });
    }

    /// Verifies an access token; the refusal reason is counted in
    /// `bulkhead_oauth_token_rejections_total`.
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, TokenRejection> {
        let result = self.verify_inner(token).await;
        if let Err(rejection) = &result {
            let reason = match rejection {
                TokenRejection::Invalid(reason) => reason,
                TokenRejection::InsufficientScope(_) => "insufficient_scope",
            };
            tracing::debug!(reason, "access token refused");
            self.metrics
                .token_rejections
                .get_or_create(&TokenRejectionLabels { reason })
                .inc();
        }
        result
    }

    async fn verify_inner(&self, token: &str) -> Result<VerifiedToken, TokenRejection> {
        use TokenRejection::Invalid;
        // `alg: none` and unknown algorithms fail here already.
        let header = jsonwebtoken::decode_header(token).map_err(|_| Invalid("malformed"))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(Invalid("algorithm"));
        }
        // RFC 7515 section 4.1.11: critical extensions this server does not
        // understand (it understands none) make the token invalid.
        if header.crit.as_ref().is_some_and(|crit| !crit.is_empty()) {
            return Err(Invalid("malformed"));
        }
        // RFC 9068 section 4: an access token's type is `at+jwt`.
        if let Some(typ) = &header.typ
            && !typ.eq_ignore_ascii_case("at+jwt")
            && !typ.eq_ignore_ascii_case("application/at+jwt")
        {
            return Err(Invalid("typ"));
        }
        let key = self
            .issuer
            .key(header.kid.as_deref())
            .await
            .ok_or(Invalid("unknown_key"))?;
        if key.algorithm.is_some_and(|alg| alg != header.alg)
            || key.key.family() != header.alg.family()
        {
            return Err(Invalid("algorithm"));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.resource]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = u64::from(self.config.clock_skew_seconds);
        validation.validate_nbf = true;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|error| {
                Invalid(match error.kind() {
                    ErrorKind::InvalidSignature => "signature",
                    ErrorKind::ExpiredSignature => "expired",
                    ErrorKind::ImmatureSignature => "not_yet_valid",
                    ErrorKind::InvalidIssuer => "issuer",
                    ErrorKind::InvalidAudience => "audience",
                    ErrorKind::MissingRequiredClaim(_) => "missing_claim",
                    ErrorKind::InvalidAlgorithm => "algorithm",
                    _ => "malformed",
                })
            })?
            .claims;
        // RFC 7519 section 4.1.1 and RFC 9068 section 2.2: `iss` is one
        // StringOrURI equal to the issuer; jsonwebtoken also accepts an
        // array containing it.
        if claims.get("iss").and_then(Value::as_str) != Some(self.config.issuer.as_str()) {
            return Err(Invalid("issuer"));
        }
        if let Some(claim) = &self.config.tenant_claim
            && claims.get(claim).and_then(Value::as_str) != Some(self.tenant.as_str())
        {
            return Err(Invalid("tenant"));
        }
        let caller = claims
            .get(&self.config.caller_claim)
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty() && id.len() <= MAX_CALLER_ID_BYTES && is_printable(id))
            .map(CallerId::token)
            .ok_or(Invalid("caller_claim"))?;
        let grants = TokenGrants {
            groups: strings(claims.get(&self.config.groups_claim)),
            scopes: scopes(&claims),
        };
        if !self
            .config
            .required_scopes
            .iter()
            .all(|s| grants.scopes.contains(s))
        {
            return Err(TokenRejection::InsufficientScope(caller));
        }
        Ok(VerifiedToken { caller, grants })
    }
}

/// Whether a caller id shows as what it is: no control characters, no
/// format characters (Unicode category Cf: bidirectional overrides and
/// isolates, zero-width characters, BOM), no separators other than the
/// space, nothing unassigned. These are the characters Rust's
/// `str::escape_debug` escapes besides `\\`, `"` and `'` (a combining mark
/// is checked after a base character, where it is printable). The caller
/// id is written as it is in the audit line, where such characters would
/// let one caller pass for another.
fn is_printable(id: &str) -> bool {
    id.chars().all(|c| {
        let mut pair = String::from("a");
        pair.push(c);
        matches!(c, '\\' | '"' | '\'') || pair.escape_debug().count() == 2
    })
}

/// A claim that is a string or an array of strings.
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// The granted scopes: `scope`, space-separated (RFC 9068 section 2.2.3,
/// RFC 8693 section 4.2), or else `scp` as an array or a string (as some
/// issuers send it).
fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    match claims.get("scope") {
        Some(Value::String(s)) => s.split_ascii_whitespace().map(str::to_owned).collect(),
        _ => match claims.get("scp") {
            Some(Value::String(s)) => s.split_ascii_whitespace().map(str::to_owned).collect(),
            other => strings(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_ids_with_control_format_or_separator_characters_are_not_printable() {
        for id in [
            "alice",
            "José",
            "Jose\u{301}",
            "a b",
            "o'brien",
            "x\\\"y",
            "名前",
            "user@example.com",
        ] {
            assert!(is_printable(id), "{id:?}");
        }
        for id in [
            "al\u{202e}ice",
            "alice\u{200b}",
            "\u{2066}alice",
            "ali\u{200d}ce",
            "\u{feff}alice",
            "a\u{ad}b",
            "a\tb",
            "a\u{85}b",
            "a\u{a0}b",
            "a\u{2028}b",
            "a\u{e000}b",
        ] {
            assert!(!is_printable(id), "{id:?}");
        }
    }

    #[test]
    fn jwt_shape_is_three_base64url_segments() {
        assert!(is_jwt_shaped("eyJh.eyJi.c2ln"));
        assert!(is_jwt_shaped("eyJh.eyJi."));
        assert!(!is_jwt_shaped(
            "bhk_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
        ));
        assert!(!is_jwt_shaped("a.b"));
        assert!(!is_jwt_shaped("a.b.c.d"));
        assert!(!is_jwt_shaped(".b.c"));
        assert!(!is_jwt_shaped("a+.b.c"));
    }

    #[test]
    fn metadata_path_appends_the_resource_path() {
        let url = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            metadata_path(&url("https://mcp.example.com/acme/mcp")),
            "/.well-known/oauth-protected-resource/acme/mcp"
        );
        assert_eq!(
            metadata_path(&url("https://mcp.example.com/")),
            "/.well-known/oauth-protected-resource"
        );
    }

    #[test]
    fn challenges_name_the_metadata_and_scopes() {
        let challenge = BearerChallenge::new(
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp",
            &["mcp:tools".to_owned(), "profile".to_owned()],
        )
        .unwrap();
        assert_eq!(
            challenge.missing,
            r#"Bearer resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp", scope="mcp:tools profile""#
        );
        assert_eq!(
            challenge.invalid,
            r#"Bearer error="invalid_token", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp", scope="mcp:tools profile""#
        );
        assert!(
            challenge
                .insufficient_scope
                .to_str()
                .unwrap()
                .starts_with(r#"Bearer error="insufficient_scope", "#)
        );
        let no_scopes =
            BearerChallenge::new("https://h/.well-known/oauth-protected-resource", &[]).unwrap();
        assert_eq!(
            no_scopes.missing,
            r#"Bearer resource_metadata="https://h/.well-known/oauth-protected-resource""#
        );
    }

    #[test]
    fn scopes_come_from_scope_or_scp() {
        let claims = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            scopes(&claims(serde_json::json!({"scope": "a  b"}))),
            ["a", "b"]
        );
        assert_eq!(
            scopes(&claims(serde_json::json!({"scp": ["a", "b", 1]}))),
            ["a", "b"]
        );
        assert!(scopes(&claims(serde_json::json!({"scope": ["a"]}))).is_empty());
    }
}
