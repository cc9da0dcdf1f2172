//! Who sent a request: an API key, an OAuth access token, or (only with
//! `--insecure-no-auth`) nobody.
//!
//! Both arrive as `Authorization: Bearer <value>`. With OAuth configured, a
//! value shaped like a JWT is verified as an access token; any other value
//! is looked up as an API key when API keys are on. The value is never
//! logged, audited or forwarded.

use std::sync::Arc;

use axum::http::{HeaderMap, header};

use crate::api_keys::{ApiKeyStore, AuthFailure};
use crate::identity::{CallerId, TokenGrants};
use crate::oauth::{ResourceServer, TokenRejection, is_jwt_shaped};
use crate::refusal::Refusal;

/// Caller id used with `--insecure-no-auth`.
pub const ANONYMOUS_CALLER: &str = "anonymous";

/// A verified caller and what its token grants.
pub type Authenticated = (CallerId, Arc<TokenGrants>);

/// A refused authentication, with the caller when one was verified (a
/// valid token lacking a scope), for the audit line.
pub struct AuthRefusal {
    /// The refusal to send.
    pub refusal: Refusal,
    /// The verified caller, if any.
    pub caller: Option<CallerId>,
}

impl From<Refusal> for AuthRefusal {
    fn from(refusal: Refusal) -> Self {
        Self {
            refusal,
            caller: None,
        }
    }
}

/// The ways this server accepts callers.
#[derive(Clone, Default)]
pub struct Authenticator {
    /// API keys, when on.
    pub api_keys: Option<ApiKeyStore>,
    /// The OAuth resource server, when configured.
    pub oauth: Option<Arc<ResourceServer>>,
    /// `--insecure-no-auth`: every request is the anonymous caller.
    pub anonymous: bool,
}

impl Authenticator {
    /// Whether every configured method can verify callers: API keys read,
    /// the issuer's keys fetched.
    pub fn is_ready(&self) -> bool {
        self.api_keys.as_ref().is_none_or(ApiKeyStore::is_loaded)
            && self
                .oauth
                .as_ref()
                .is_none_or(|o| o.not_ready_reason().is_none())
    }

    /// Why callers cannot be verified yet, one reason per method.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.api_keys.as_ref().is_some_and(|k| !k.is_loaded()) {
            reasons.push("API keys not loaded yet".to_owned());
        }
        if let Some(reason) = self.oauth.as_ref().and_then(|o| o.not_ready_reason()) {
            reasons.push(reason);
        }
        reasons
    }

    /// The caller of a request, from its `Authorization` header.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Authenticated, AuthRefusal> {
        if self.anonymous {
            return Ok((CallerId::unauthenticated(ANONYMOUS_CALLER), Arc::default()));
        }
        let unauthenticated = |failure| Refusal::Unauthenticated {
            failure,
            challenge: self.oauth.as_ref().map(|o| o.challenge().clone()),
        };
        let Some(value) = bearer_value(headers) else {
            return Err(unauthenticated(AuthFailure::Missing).into());
        };
        if let Some(oauth) = &self.oauth
            && is_jwt_shaped(value)
        {
            return match oauth.verify(value).await {
                Ok(token) => Ok((token.caller, Arc::new(token.grants))),
                Err(TokenRejection::Invalid(_)) => {
                    Err(unauthenticated(AuthFailure::Invalid).into())
                }
                Err(TokenRejection::InsufficientScope(caller)) => Err(AuthRefusal {
                    refusal: Refusal::InsufficientScope(oauth.challenge().clone()),
                    caller: Some(caller),
                }),
            };
        }
        match &self.api_keys {
            Some(keys) => keys
                .verify(value)
                .map(|caller| (caller, Arc::default()))
                .map_err(|failure| unauthenticated(failure).into()),
            None => Err(unauthenticated(AuthFailure::Invalid).into()),
        }
    }
}

/// The value of `Authorization: Bearer <value>` (scheme case-insensitive,
/// RFC 6750 section 2.1), if there is a non-empty one.
fn bearer_value(headers: &HeaderMap) -> Option<&str> {
    let header = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, value) = header.split_once(' ')?;
    let value = value.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !value.is_empty()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api_keys::{generate_api_key, hash_api_key};
    use crate::identity::AuthMethod;
    use axum::http::HeaderValue;
    use secrecy::SecretString;

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn only_a_non_empty_bearer_value_is_taken() {
        assert_eq!(bearer_value(&headers(Some("Bearer abc"))), Some("abc"));
        assert_eq!(bearer_value(&headers(Some("bearer  abc "))), Some("abc"));
        assert_eq!(bearer_value(&headers(Some("Basic abc"))), None);
        assert_eq!(bearer_value(&headers(Some("Bearer "))), None);
        assert_eq!(bearer_value(&headers(None)), None);
    }

    #[tokio::test]
    async fn api_key_callers_are_qualified_and_failures_are_told_apart() {
        let key = generate_api_key().unwrap();
        let store = ApiKeyStore::default();
        store.replace(
            &[("alice".to_owned(), SecretString::from(hash_api_key(&key)))]
                .into_iter()
                .collect(),
        );
        let auth = Authenticator {
            api_keys: Some(store),
            ..Authenticator::default()
        };
        let (caller, grants) = auth
            .authenticate(&headers(Some(&format!("Bearer {key}"))))
            .await
            .ok()
            .unwrap();
        assert_eq!(caller, CallerId::api_key("alice"));
        assert_eq!(caller.method(), AuthMethod::ApiKey);
        assert_eq!(*grants, TokenGrants::default());
        let refused = |result: Result<Authenticated, AuthRefusal>| match result {
            Err(AuthRefusal {
                refusal: Refusal::Unauthenticated { failure, challenge },
                caller: None,
            }) => (failure, challenge.is_some()),
            _ => panic!("not refused as unauthenticated"),
        };
        assert_eq!(
            refused(auth.authenticate(&headers(None)).await),
            (AuthFailure::Missing, false)
        );
        assert_eq!(
            refused(auth.authenticate(&headers(Some("Bearer a.b.c"))).await),
            (AuthFailure::Invalid, false),
            "without OAuth a JWT-shaped value is just an unknown key"
        );
        let anonymous = Authenticator {
            anonymous: true,
            ..Authenticator::default()
        };
        let (caller, _) = anonymous.authenticate(&headers(None)).await.ok().unwrap();
        assert_eq!(caller.method(), AuthMethod::None);
    }
}
