//! The server as an OAuth 2.1 resource server, end to end: the real binary
//! on loopback trusting an issuer that is also on loopback (its OpenID
//! metadata and JWKS served from this test, with P-256 keys generated here
//! and tokens signed with `jsonwebtoken`). Every refusal of a token is
//! checked with its status and `WWW-Authenticate` header; key rotation, the
//! JWKS refresh rate under a flood of unknown `kid`s, two tenants trusting
//! one issuer, and the access rules for API-key and token callers.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bulkhead_server::api_keys::generate_api_key;
use common::{TestServer, Upstream, call_body, config, github_connector, http, serve_on_loopback};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::PublicKeyData;
use serde_json::{Value, json};

const RESOURCE_A: &str = "https://acme.mcp.example/mcp";
const RESOURCE_B: &str = "https://globex.mcp.example/mcp";
const METADATA_A: &str = "https://acme.mcp.example/.well-known/oauth-protected-resource/mcp";

/// A signing key of the test issuer.
struct TestKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
    public_pem: String,
    public_raw: Vec<u8>,
}

impl TestKey {
    fn generate(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let encoding = EncodingKey::from_ec_der(&pair.serialize_der());
        let mut jwk =
            serde_json::to_value(Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap())
                .unwrap();
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        Self {
            kid: kid.to_owned(),
            encoding,
            jwk,
            public_pem: pair.public_key_pem(),
            public_raw: pair.subject_public_key_info(),
        }
    }

    /// An ES256 access token (`typ: at+jwt`) with `claims`.
    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("at+jwt".to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

#[derive(Clone)]
struct IssuerState {
    url: Arc<Mutex<String>>,
    keys: Arc<Mutex<Vec<Value>>>,
    jwks_fetches: Arc<AtomicUsize>,
    available: Arc<AtomicBool>,
}

/// An OpenID Provider's discovery endpoints on loopback: only
/// `/.well-known/openid-configuration` and `/jwks` (the RFC 8414 path is a
/// 404, as with many OpenID Providers, so the fallback is exercised).
struct TestIssuer {
    url: String,
    state: IssuerState,
}

async fn openid_configuration(State(state): State<IssuerState>) -> Response {
    if !state.available.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let url = state.url.lock().unwrap().clone();
    json_response(&json!({
        "issuer": url,
        "jwks_uri": format!("{url}/jwks"),
        "token_endpoint": format!("{url}/token"),
        "response_types_supported": ["code"],
    }))
}

async fn jwks(State(state): State<IssuerState>) -> Response {
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    json_response(&json!({"keys": state.keys.lock().unwrap().clone()}))
}

fn json_response(value: &Value) -> Response {
    ([("content-type", "application/json")], value.to_string()).into_response()
}

impl TestIssuer {
    async fn start(keys: &[&TestKey]) -> Self {
        let state = IssuerState {
            url: Arc::default(),
            keys: Arc::new(Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect())),
            jwks_fetches: Arc::default(),
            available: Arc::new(AtomicBool::new(true)),
        };
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(openid_configuration),
            )
            .route("/jwks", axum::routing::get(jwks))
            .with_state(state.clone());
        // Nobody knows the URL before it is returned, so the metadata
        // cannot be asked for before it names the issuer.
        let url = serve_on_loopback(app).await;
        *state.url.lock().unwrap() = url.clone();
        Self { url, state }
    }

    fn publish(&self, keys: &[&TestKey]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }
}

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// Claims of a token the acme server accepts.
fn claims(issuer: &TestIssuer, sub: &str) -> Value {
    json!({
        "iss": issuer.url,
        "sub": sub,
        "aud": RESOURCE_A,
        "exp": now() + 300,
        "iat": now(),
        "scope": "openid mcp:tools",
        "tenant": "acme",
        "client_id": "test-client",
    })
}

/// The `auth` (and `access`) block for a server trusting `issuer`.
fn oauth_config(issuer: &TestIssuer, resource: &str, extra: &str) -> String {
    format!(
        "auth:\n  apiKeys: true\n  oauth:\n    issuer: \"{}\"\n    resource: \"{resource}\"\n    requiredScopes: [\"mcp:tools\"]\n    tenantClaim: tenant\n    clockSkewSeconds: 30\n    jwksMinRefreshSeconds: 2\n    allowPrivateIssuer: true\n{extra}",
        issuer.url
    )
}

fn www_authenticate(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn whoami() -> String {
    call_body(1, "whoami", json!({}))
}

/// The audit line of the last request, waiting (bounded) for `count` lines.
async fn audit_lines(server: &TestServer, count: usize) -> Vec<Value> {
    for _ in 0..200 {
        let lines = server.audit();
        if lines.len() >= count {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {count} audit lines: {}", server.audit_text());
}

/// An unsecured JWS (`alg: none`, RFC 7519 section 6).
fn unsecured(kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "at+jwt", "kid": kid});
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// An HS256 token whose HMAC secret is the issuer's public key: the
/// algorithm-confusion attack.
fn hs256_with_public_key(key: &TestKey, secret: &[u8], claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.kid.clone());
    header.typ = Some("at+jwt".to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()
}

#[tokio::test]
async fn every_refused_token_gets_its_status_and_challenge() {
    let key = TestKey::generate("k1");
    let issuer = TestIssuer::start(&[&key]).await;
    let upstream = Upstream::start("github").await;
    let server = TestServer::start(
        "oauth-refusals",
        &config(
            "acme",
            &github_connector(&upstream.url),
            &oauth_config(&issuer, RESOURCE_A, ""),
        ),
        &[],
        &[("token", "upstream-credential")],
        &[],
    )
    .await;
    let missing = format!(r#"Bearer resource_metadata="{METADATA_A}", scope="mcp:tools""#);
    let invalid = format!(
        r#"Bearer error="invalid_token", resource_metadata="{METADATA_A}", scope="mcp:tools""#
    );

    // No token.
    let response = server.post(None, &whoami()).await;
    assert_eq!(response.status(), 401);
    assert_eq!(www_authenticate(&response), missing);

    // A valid token.
    let good = key.sign(&claims(&issuer, "user-1"));
    let response = server.post(Some(&good), &whoami()).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["result"]["structuredContent"],
        json!({"tenantId": "acme", "callerId": "user-1"})
    );

    let other = TestKey::generate("not-published");
    let mut refused: Vec<(&str, String)> = Vec::new();
    let mut c = claims(&issuer, "user-1");
    c["exp"] = json!(now() - 120);
    refused.push(("expired", key.sign(&c)));
    let mut c = claims(&issuer, "user-1");
    c["nbf"] = json!(now() + 120);
    refused.push(("not yet valid", key.sign(&c)));
    let mut c = claims(&issuer, "user-1");
    c["iss"] = json!("https://other-issuer.example");
    refused.push(("wrong issuer", key.sign(&c)));
    // RFC 7519 section 4.1.1: `iss` is one string, not a list naming the
    // issuer among others.
    let mut c = claims(&issuer, "user-1");
    c["iss"] = json!([issuer.url, "https://other-issuer.example"]);
    refused.push(("iss an array containing the issuer", key.sign(&c)));
    let mut c = claims(&issuer, "user-1");
    c["iss"] = json!([issuer.url]);
    refused.push(("iss an array of only the issuer", key.sign(&c)));
    let mut c = claims(&issuer, "user-1");
    c["aud"] = json!(RESOURCE_B);
    refused.push(("audience of another tenant's server", key.sign(&c)));
    let mut c = claims(&issuer, "user-1");
    c.as_object_mut().unwrap().remove("aud");
    refused.push(("no audience", key.sign(&c)));
    refused.push(("alg none", unsecured(&key.kid, &claims(&issuer, "user-1"))));
    refused.push((
        "HS256 keyed with the public key (PEM)",
        hs256_with_public_key(&key, key.public_pem.as_bytes(), &claims(&issuer, "user-1")),
    ));
    refused.push((
        "HS256 keyed with the public key (DER)",
        hs256_with_public_key(&key, &key.public_raw, &claims(&issuer, "user-1")),
    ));
    refused.push((
        "HS256 keyed with the JWK",
        hs256_with_public_key(
            &key,
            key.jwk.to_string().as_bytes(),
            &claims(&issuer, "user-1"),
        ),
    ));
    refused.push(("unknown kid", other.sign(&claims(&issuer, "user-1"))));
    // A key the issuer did not publish, claiming the published key's kid.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    header.typ = Some("at+jwt".to_owned());
    let forged_kid =
        jsonwebtoken::encode(&header, &claims(&issuer, "user-1"), &other.encoding).unwrap();
    refused.push(("signed by another key under the published kid", forged_kid));
    let mut c = claims(&issuer, "user-1");
    c["tenant"] = json!("globex");
    refused.push(("tenant claim of another tenant", key.sign(&c)));
    let mut c = claims(&issuer, "user-1");
    c.as_object_mut().unwrap().remove("tenant");
    refused.push(("no tenant claim", key.sign(&c)));
    let mut c = claims(&issuer, "user-1");
    c.as_object_mut().unwrap().remove("sub");
    refused.push(("no caller claim", key.sign(&c)));
    // The caller id is written as it is in the audit line: no character
    // that would make it show as another caller.
    for (case, sub) in [
        ("caller claim with a bidi override", "al\u{202e}ice"),
        ("caller claim with a zero-width space", "alice\u{200b}"),
        ("caller claim with a bidi isolate", "\u{2066}alice"),
        ("caller claim with a control character", "alice\u{7}"),
    ] {
        refused.push((case, key.sign(&claims(&issuer, sub))));
    }
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    header.typ = Some("JWT".to_owned());
    refused.push((
        "typ JWT (an ID token, not an access token)",
        jsonwebtoken::encode(&header, &claims(&issuer, "user-1"), &key.encoding).unwrap(),
    ));
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    header.typ = Some("at+jwt".to_owned());
    header.crit = Some(vec!["exp-ext".to_owned()]);
    header.extras.insert("exp-ext", json!(true));
    refused.push((
        "a critical header extension",
        jsonwebtoken::encode(&header, &claims(&issuer, "user-1"), &key.encoding).unwrap(),
    ));
    let tampered = {
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let mut c = claims(&issuer, "admin");
        c["exp"] = json!(now() + 300);
        parts[1] = URL_SAFE_NO_PAD.encode(c.to_string());
        parts.join(".")
    };
    refused.push(("payload changed after signing", tampered));
    refused.push(("not a key nor a token", "bhk_nonsense".to_owned()));

    for (case, token) in &refused {
        let response = server.post(Some(token), &whoami()).await;
        assert_eq!(response.status(), 401, "{case}");
        assert_eq!(www_authenticate(&response), invalid, "{case}");
        let body = response.text().await.unwrap();
        assert!(
            !body.contains(token.as_str()),
            "{case}: body echoes the token"
        );
    }

    // A valid token without the required scope: 403 insufficient_scope.
    let mut c = claims(&issuer, "user-1");
    c["scope"] = json!("openid");
    let unscoped = key.sign(&c);
    let response = server.post(Some(&unscoped), &whoami()).await;
    assert_eq!(response.status(), 403);
    assert_eq!(
        www_authenticate(&response),
        format!(
            r#"Bearer error="insufficient_scope", resource_metadata="{METADATA_A}", scope="mcp:tools""#
        )
    );
    // `scp` as an array is accepted too.
    let mut c = claims(&issuer, "user-2");
    c.as_object_mut().unwrap().remove("scope");
    c["scp"] = json!(["mcp:tools"]);
    let response = server.post(Some(&key.sign(&c)), &whoami()).await;
    assert_eq!(response.status(), 200);

    // The token reaches no upstream: the connector sends its own credential.
    let response = server
        .post(
            Some(&good),
            &call_body(
                2,
                "github_get_repository",
                json!({"owner": "o", "repo": "r"}),
            ),
        )
        .await;
    assert_eq!(response.status(), 200);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some("Bearer upstream-credential")
    );

    // Audit: the refusals carry no caller and `auth: none`; the token never
    // appears in a line.
    let expected = 2 + refused.len() + 3;
    let lines = audit_lines(&server, expected).await;
    assert_eq!(lines[0]["outcome"], "unauthenticated");
    assert_eq!(lines[0]["auth"], "none");
    assert_eq!(lines[1]["caller"], "user-1");
    assert_eq!(lines[1]["auth"], "oauth");
    for line in &lines[2..2 + refused.len()] {
        assert_eq!(line["outcome"], "unauthenticated", "{line}");
        assert_eq!(line["caller"], Value::Null, "{line}");
        assert_eq!(line["auth"], "none", "{line}");
    }
    let scope_line = &lines[2 + refused.len()];
    assert_eq!(scope_line["outcome"], "forbidden");
    assert_eq!(scope_line["http_status"], 403);
    let text = server.audit_text() + &server.stderr();
    for (_, token) in &refused {
        assert!(!text.contains(token.as_str()));
    }
    assert!(!text.contains(good.as_str()));

    let metrics = server.metrics().await;
    for reason in [
        "expired",
        "not_yet_valid",
        "issuer",
        "audience",
        "malformed",
        "algorithm",
        "unknown_key",
        "signature",
        "tenant",
        "typ",
        "insufficient_scope",
    ] {
        assert!(
            metrics.contains(&format!(
                "bulkhead_oauth_token_rejections_total{{reason=\"{reason}\"}}"
            )),
            "{reason} not counted: {metrics}"
        );
    }
}

#[tokio::test]
async fn protected_resource_metadata_is_served_without_a_token() {
    let key = TestKey::generate("k1");
    let issuer = TestIssuer::start(&[&key]).await;
    let resource = "https://mcp.example.com/tenants/acme/mcp";
    let server = TestServer::start(
        "oauth-metadata",
        &config("acme", "  []", &oauth_config(&issuer, resource, "")),
        &[],
        &[("token", "upstream-credential")],
        &[],
    )
    .await;
    let origin = server.mcp_url.trim_end_matches("/mcp").to_owned();
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource/tenants/acme/mcp",
    ] {
        let response = http().get(format!("{origin}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let document: Value = response.json().await.unwrap();
        assert_eq!(document["resource"], resource);
        assert_eq!(document["authorization_servers"], json!([issuer.url]));
        assert_eq!(document["scopes_supported"], json!(["mcp:tools"]));
        assert_eq!(document["bearer_methods_supported"], json!(["header"]));
    }
    let response = http()
        .get(format!(
            "{origin}/.well-known/oauth-protected-resource/other"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    // The Host check applies here too (DNS rebinding).
    let response = http()
        .get(format!("{origin}/.well-known/oauth-protected-resource"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // The challenge points at the path-suffixed metadata of the resource.
    let response = server.post(None, &whoami()).await;
    assert_eq!(
        www_authenticate(&response),
        r#"Bearer resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/tenants/acme/mcp", scope="mcp:tools""#
    );
}

#[tokio::test]
async fn a_rotated_key_works_without_restart_and_bogus_kids_cannot_hammer_the_issuer() {
    let old = TestKey::generate("old");
    let issuer = TestIssuer::start(&[&old]).await;
    let server = TestServer::start(
        "oauth-rotation",
        &config("acme", "  []", &oauth_config(&issuer, RESOURCE_A, "")),
        &[],
        &[("token", "upstream-credential")],
        &[],
    )
    .await;
    assert_eq!(issuer.jwks_fetches(), 1, "fetched once before ready");
    let response = server
        .post(Some(&old.sign(&claims(&issuer, "u"))), &whoami())
        .await;
    assert_eq!(response.status(), 200);

    // A flood of tokens with made-up kids, bounded in count and time.
    let started = Instant::now();
    let flood: Vec<TestKey> = (0..5)
        .map(|n| TestKey::generate(&format!("bogus-{n}")))
        .collect();
    flood_of_unknown_kids(&server, &flood, &claims(&issuer, "u"), 40).await;
    // Sequential bogus kids over about 3 s.
    for n in 0..30 {
        let response = server
            .post(
                Some(&flood[n % flood.len()].sign(&claims(&issuer, "u"))),
                &whoami(),
            )
            .await;
        assert_eq!(response.status(), 401);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let fetches = issuer.jwks_fetches() - 1;
    // jwksMinRefreshSeconds: 2, so at most one fetch per 2 s window.
    let allowed = (elapsed / 2.0).floor() as usize + 1;
    assert!(
        fetches <= allowed,
        "{fetches} JWKS fetches in {elapsed:.1} s (at most {allowed} allowed)"
    );
    assert!(fetches >= 1, "an unknown kid after the interval refetches");

    // The issuer rotates: a new key, the old one withdrawn.
    let new = TestKey::generate("new");
    issuer.publish(&[&new]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = issuer.jwks_fetches();
    let response = server
        .post(Some(&new.sign(&claims(&issuer, "u"))), &whoami())
        .await;
    assert_eq!(response.status(), 200, "{}", server.stderr());
    assert_eq!(issuer.jwks_fetches(), before + 1);
    // The withdrawn key no longer verifies.
    let response = server
        .post(Some(&old.sign(&claims(&issuer, "u"))), &whoami())
        .await;
    assert_eq!(response.status(), 401);
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(&format!(
            "bulkhead_oauth_jwks_fetches_total{{outcome=\"ok\"}} {}",
            issuer.jwks_fetches()
        )),
        "{metrics}"
    );
}

/// Sends `count` concurrent `whoami` requests, with tokens signed by
/// `keys` in turn (kids the issuer never published), and checks that
/// every one is refused with 401.
async fn flood_of_unknown_kids(
    server: &TestServer,
    keys: &[TestKey],
    claims: &Value,
    count: usize,
) {
    let mut requests = Vec::new();
    for round in 0..count {
        let token = keys[round % keys.len()].sign(claims);
        let url = server.mcp_url.clone();
        requests.push(tokio::spawn(async move {
            http()
                .post(url)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .bearer_auth(token)
                .body(whoami())
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for request in requests {
        assert_eq!(request.await.unwrap(), 401);
    }
}

#[tokio::test]
async fn a_key_rotated_right_after_start_is_accepted_at_once() {
    let old = TestKey::generate("old");
    let issuer = TestIssuer::start(&[&old]).await;
    // A long interval: a start-up fetch that counted against it would
    // refuse the rotated key for a minute.
    let auth = oauth_config(&issuer, RESOURCE_A, "")
        .replace("jwksMinRefreshSeconds: 2", "jwksMinRefreshSeconds: 60");
    let server = TestServer::start(
        "oauth-early-rotation",
        &config("acme", "  []", &auth),
        &[],
        &[("token", "upstream-credential")],
        &[],
    )
    .await;
    assert_eq!(issuer.jwks_fetches(), 1, "fetched once before ready");

    // The issuer rotates within a second of the start-up fetch.
    let new = TestKey::generate("new");
    issuer.publish(&[&new]);
    let response = server
        .post(Some(&new.sign(&claims(&issuer, "u"))), &whoami())
        .await;
    assert_eq!(response.status(), 200, "{}", server.stderr());
    assert_eq!(issuer.jwks_fetches(), 2, "one fetch for the new kid");

    // That fetch counts: within the interval, a flood of unknown kids and
    // a second rotation cause no further fetch.
    let bogus: Vec<TestKey> = (0..5)
        .map(|n| TestKey::generate(&format!("bogus-{n}")))
        .collect();
    flood_of_unknown_kids(&server, &bogus, &claims(&issuer, "u"), 40).await;
    let newer = TestKey::generate("newer");
    issuer.publish(&[&new, &newer]);
    let response = server
        .post(Some(&newer.sign(&claims(&issuer, "u"))), &whoami())
        .await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        issuer.jwks_fetches(),
        2,
        "no fetch within jwksMinRefreshSeconds of the last unknown-kid fetch"
    );
    let response = server
        .post(Some(&new.sign(&claims(&issuer, "u"))), &whoami())
        .await;
    assert_eq!(response.status(), 200, "known keys keep working");
}

#[tokio::test]
async fn a_token_for_one_tenant_is_refused_by_another_trusting_the_same_issuer() {
    let key = TestKey::generate("k1");
    let issuer = TestIssuer::start(&[&key]).await;
    let a = TestServer::start(
        "oauth-tenant-a",
        &config("acme", "  []", &oauth_config(&issuer, RESOURCE_A, "")),
        &[],
        &[("token", "upstream-credential")],
        &[],
    )
    .await;
    let no_tenant_claim = |config: String| config.replace("    tenantClaim: tenant\n", "");
    let b = TestServer::start(
        "oauth-tenant-b",
        &config(
            "globex",
            "  []",
            &no_tenant_claim(oauth_config(&issuer, RESOURCE_B, "")),
        ),
        &[],
        &[("token", "upstream-credential")],
        &[],
    )
    .await;
    let token = key.sign(&claims(&issuer, "user-a"));
    assert_eq!(a.post(Some(&token), &whoami()).await.status(), 200);
    let response = b.post(Some(&token), &whoami()).await;
    assert_eq!(response.status(), 401);
    assert!(www_authenticate(&response).starts_with(r#"Bearer error="invalid_token""#));
    let lines = audit_lines(&b, 1).await;
    assert_eq!(lines[0]["tenant"], "globex");
    assert_eq!(lines[0]["caller"], Value::Null);
    assert_eq!(lines[0]["auth"], "none");
    assert_eq!(lines[0]["outcome"], "unauthenticated");
    // B's own token works at B.
    let mut c = claims(&issuer, "user-b");
    c["aud"] = json!([RESOURCE_B, "another-api"]);
    assert_eq!(b.post(Some(&key.sign(&c)), &whoami()).await.status(), 200);
}

const ACCESS: &str = r#"access:
  - subjects: [{apiKeyCaller: alice}, {tokenSubject: alice-sub}]
    tools: [whoami]
  - subjects: [{group: ops}, {scope: "repo:read"}]
    tools: ["github_get_*"]
"#;

async fn tool_names(server: &TestServer, bearer: &str) -> Vec<String> {
    let response = server
        .post(
            Some(bearer),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#,
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn call_error(server: &TestServer, bearer: &str, tool: &str) -> Value {
    let response = server
        .post(
            Some(bearer),
            &call_body(9, tool, json!({"owner": "o", "repo": "r"})),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["result"].is_null(), "{tool} was served: {body}");
    body["error"].clone()
}

#[tokio::test]
async fn access_rules_apply_alike_to_api_key_and_token_callers() {
    let key = TestKey::generate("k1");
    let issuer = TestIssuer::start(&[&key]).await;
    let upstream = Upstream::start("github").await;
    let alice_key = generate_api_key().unwrap();
    let bob_key = generate_api_key().unwrap();
    let server = TestServer::start(
        "oauth-access",
        &config(
            "acme",
            &github_connector(&upstream.url),
            &oauth_config(&issuer, RESOURCE_A, ACCESS),
        ),
        &[("alice", &alice_key), ("bob", &bob_key)],
        &[("token", "upstream-credential")],
        &[],
    )
    .await;
    let alice_token = key.sign(&claims(&issuer, "alice-sub"));
    // A token whose subject is the API-key caller id "alice": another caller.
    let alice_by_token = key.sign(&claims(&issuer, "alice"));
    let mut c = claims(&issuer, "carol");
    c["groups"] = json!(["ops"]);
    let ops_token = key.sign(&c);
    let mut c = claims(&issuer, "dave");
    c["scope"] = json!("mcp:tools repo:read");
    let scoped_token = key.sign(&c);

    assert_eq!(tool_names(&server, &alice_key).await, ["whoami"]);
    assert_eq!(tool_names(&server, &alice_token).await, ["whoami"]);
    assert!(tool_names(&server, &alice_by_token).await.is_empty());
    assert!(tool_names(&server, &bob_key).await.is_empty());
    for token in [&ops_token, &scoped_token] {
        let names = tool_names(&server, token).await;
        assert!(!names.is_empty());
        assert!(
            names.iter().all(|n| n.starts_with("github_get_")),
            "{names:?}"
        );
    }

    // A refused call looks exactly like a call of a tool that does not exist.
    let unknown = call_error(&server, &alice_key, "no_such_tool").await;
    // Its line is written after the response: wait for it before counting.
    let mut lines_before = 0;
    for _ in 0..200 {
        let lines = server.audit();
        if lines.last().is_some_and(|l| l["tool"] == "no_such_tool") {
            lines_before = lines.len();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(lines_before > 0, "no audit line for the unknown tool");
    for bearer in [&alice_key, &alice_token] {
        assert_eq!(
            call_error(&server, bearer, "github_get_repository").await,
            unknown
        );
    }
    assert_eq!(call_error(&server, &ops_token, "whoami").await, unknown);
    let lines = audit_lines(&server, lines_before + 3).await;
    let refused = &lines[lines_before..];
    for (line, (caller, auth, tool)) in refused.iter().zip([
        ("alice", "api_key", "github_get_repository"),
        ("alice-sub", "oauth", "github_get_repository"),
        ("carol", "oauth", "whoami"),
    ]) {
        assert_eq!(line["caller"], caller, "{line}");
        assert_eq!(line["auth"], auth, "{line}");
        assert_eq!(line["tool"], tool, "{line}");
        assert_eq!(line["outcome"], "forbidden", "{line}");
    }
    // The unknown tool's own line is an RPC error, not `forbidden`.
    assert_eq!(lines[lines_before - 1]["outcome"], "rpc_error");
    assert!(
        upstream.seen().is_empty(),
        "a refused call reached the upstream"
    );

    // Allowed calls go through, for both kinds of caller.
    let response = server.post(Some(&alice_key), &whoami()).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["result"]["structuredContent"]["callerId"], "alice");
    let response = server
        .post(
            Some(&ops_token),
            &call_body(
                3,
                "github_get_repository",
                json!({"owner": "o", "repo": "r"}),
            ),
        )
        .await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["result"]["isError"], false, "{body}");
}

#[tokio::test]
async fn the_server_is_not_ready_until_the_issuer_answers() {
    let key = TestKey::generate("k1");
    let issuer = TestIssuer::start(&[&key]).await;
    issuer.state.available.store(false, Ordering::SeqCst);
    let dir = common::Scratch::new("oauth-readiness");
    std::fs::write(
        dir.0.join("server.yaml"),
        config("acme", "  []", &oauth_config(&issuer, RESOURCE_A, "")),
    )
    .unwrap();
    common::write_map(&dir.0.join("keys.yaml"), &[]);
    common::write_map(&dir.0.join("credentials.yaml"), &[("token", "x")]);
    let cli = <bulkhead_server::cli::Cli as clap::Parser>::parse_from([
        "bulkhead-server",
        "--config",
        dir.0.join("server.yaml").to_str().unwrap(),
        "--secret-poll-seconds",
        "1",
    ]);
    let server = bulkhead_server::app::Server::with_audit(cli.serve, std::io::sink())
        .await
        .unwrap();
    let readyz = || async {
        use tower::ServiceExt;
        let response = server
            .admin_router()
            .oneshot(
                axum::http::Request::get("/readyz")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = readyz().await;
    assert_eq!(status, 503);
    assert!(body.contains(&issuer.url), "{body}");
    assert!(body.contains("HTTP 503"), "{body}");
    issuer.state.available.store(true, Ordering::SeqCst);
    // Retried with a backoff of 1, 2, 4 ... s.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = readyz().await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
