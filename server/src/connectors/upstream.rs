//! The HTTP client every connector uses, and the rules it enforces: only the
//! connector's own origin, no redirects, no proxies, no private, loopback or
//! link-local addresses unless the configuration allows them (checked on the
//! resolved IPs at connect time, so DNS cannot point a name elsewhere), a
//! bounded response size, and errors that never carry an upstream body,
//! token or address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bulkhead_crds::server_config::ConnectorConfig;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use secrecy::ExposeSecret;
use url::Url;

use crate::credentials::CredentialStore;

/// Largest upstream response body read.
pub const MAX_UPSTREAM_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Why an upstream call failed, in words safe to show the caller.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The target is not the connector's base URL origin, or resolves only
    /// to addresses the connector may not reach.
    #[error("the request target is not allowed for this connector")]
    RefusedTarget,
    /// No answer in time.
    #[error("the upstream did not answer within {0} s")]
    Timeout(u64),
    /// Could not connect.
    #[error("the upstream could not be reached")]
    Unreachable,
    /// The upstream answered with a redirect, which is never followed.
    #[error("the upstream answered with a redirect (HTTP {0}), which is not followed")]
    Redirect(u16),
    /// The upstream answered with an error status.
    #[error("the upstream answered HTTP {0}")]
    Status(u16),
    /// The response was larger than the limit.
    #[error("the upstream response is larger than {MAX_UPSTREAM_BODY_BYTES} bytes")]
    TooLarge,
    /// The connector's credential is not available.
    #[error(
        "the connector's credential is not available; the tenant's administrator has been told in the server log"
    )]
    Credential,
}

impl UpstreamError {
    /// Metric label for this failure.
    pub fn metric_kind(&self) -> &'static str {
        match self {
            Self::RefusedTarget => "refused_target",
            Self::Timeout(_) => "timeout",
            Self::Unreachable => "unreachable",
            Self::Redirect(_) => "redirect",
            Self::Status(s) if *s >= 500 => "status_5xx",
            Self::Status(_) => "status_4xx",
            Self::TooLarge => "too_large",
            Self::Credential => "credential",
        }
    }

    /// Whether the fault lies with the upstream (as opposed to the request).
    pub fn is_upstream_fault(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::Unreachable | Self::Redirect(_) | Self::TooLarge => true,
            Self::Status(s) => *s >= 500,
            Self::RefusedTarget | Self::Credential => false,
        }
    }

    /// The upstream status, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status(s) | Self::Redirect(s) => Some(*s),
            _ => None,
        }
    }
}

/// A successful upstream answer.
#[derive(Debug)]
pub struct UpstreamResponse {
    /// HTTP status (2xx).
    pub status: u16,
    /// Content type, if sent.
    pub content_type: Option<String>,
    /// The body, at most [`MAX_UPSTREAM_BODY_BYTES`].
    pub body: Vec<u8>,
}

/// Whether an address is one a connector may reach without
/// `allowPrivateTargets`: not loopback, private, link-local (cloud metadata
/// lives there), shared (CGNAT), unspecified, multicast or reserved.
pub fn is_public_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0)
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_ipv4(v6) {
                return is_public_address(IpAddr::V4(v4));
            }
            let [first, second, ..] = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                // Site-local (deprecated, still routed by some stacks).
                || (first & 0xffc0) == 0xfec0
                || (first == 0x64 && second == 0xff9b)
                // Teredo tunnels to an arbitrary IPv4 address.
                || (first == 0x2001 && second == 0)
                || (first == 0x2001 && second == 0x0db8))
        }
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`) or 6to4 (`2002:AABB:CCDD::/48`) IPv6
/// address, which reaches that IPv4 address.
fn embedded_ipv4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let segments = v6.segments();
    let join =
        |high: u16, low: u16| std::net::Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    if segments[..6] == [0; 6] && !(v6.is_loopback() || v6.is_unspecified()) {
        return Some(join(segments[6], segments[7]));
    }
    if segments[0] == 0x2002 {
        return Some(join(segments[1], segments[2]));
    }
    None
}

/// Whether a connector may connect to `ip`. Link-local addresses (cloud
/// metadata at 169.254.169.254, `fe80::/10`) are refused even where
/// `allowPrivateTargets` opens private and loopback ones.
pub fn may_connect(ip: IpAddr, allow_private: bool) -> bool {
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            embedded_ipv4(v6).is_some_and(|v4| v4.is_link_local())
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    };
    !link_local && (allow_private || is_public_address(ip))
}

/// Marker error returned by the resolver, found again in reqwest's error
/// chain to tell "refused" from "unreachable".
#[derive(Debug)]
struct TargetRefused;

impl std::fmt::Display for TargetRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("target address not allowed")
    }
}

impl std::error::Error for TargetRefused {}

/// Resolves names and keeps only the addresses the connector may reach.
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| may_connect(a.ip(), allow_private))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(TargetRefused) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// One connector's view of its upstream.
#[derive(Clone)]
pub struct Upstream {
    /// Connector name (metrics, cache keys).
    pub name: String,
    base: Url,
    credential: Option<String>,
    allow_private: bool,
    timeout: Duration,
    client: reqwest::Client,
}

/// Why a connector could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("connector {name:?}: {message}")]
pub struct UpstreamSetupError {
    name: String,
    message: String,
}

impl Upstream {
    /// The client for `config`, with `timeout` per upstream call.
    pub fn new(config: &ConnectorConfig, timeout: Duration) -> Result<Self, UpstreamSetupError> {
        let setup_error = |message: String| UpstreamSetupError {
            name: config.name.clone(),
            message,
        };
        let base = Url::parse(&config.base_url)
            .map_err(|e| setup_error(format!("baseUrl is not a URL: {e}")))?;
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("bulkhead-server/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver {
                allow_private: config.allow_private_targets,
            }))
            .build()
            .map_err(|e| setup_error(format!("cannot build HTTP client: {e}")))?;
        Ok(Self {
            name: config.name.clone(),
            base,
            credential: config.credential.clone(),
            allow_private: config.allow_private_targets,
            timeout,
            client,
        })
    }

    /// The configured base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// Whether `url` is on the connector's origin and under its base path.
    pub fn is_own_target(&self, url: &Url) -> bool {
        let base_path = self.base.path().trim_end_matches('/');
        url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default()
            && url.username().is_empty()
            && url.password().is_none()
            && (url.path() == base_path || url.path().starts_with(&format!("{base_path}/")))
    }

    /// Sends one request. The credential (if any) is added here and only
    /// here; nothing of the caller's own request headers is forwarded.
    pub async fn send(
        &self,
        method: reqwest::Method,
        url: Url,
        extra_headers: &[(&'static str, &'static str)],
        body: Option<Vec<u8>>,
        credentials: &CredentialStore,
    ) -> Result<UpstreamResponse, UpstreamError> {
        if !self.is_own_target(&url) {
            return Err(UpstreamError::RefusedTarget);
        }
        if let Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) = url.host()
            && let Some(ip) = url
                .host_str()
                .and_then(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().ok())
            && !may_connect(ip, self.allow_private)
        {
            return Err(UpstreamError::RefusedTarget);
        }
        let mut request = self.client.request(method, url);
        for (name, value) in extra_headers {
            request = request.header(*name, *value);
        }
        if let Some(name) = &self.credential {
            let token = credentials.get(name).await.map_err(|error| {
                tracing::error!(connector = %self.name, %error, "credential unavailable");
                UpstreamError::Credential
            })?;
            request = request.bearer_auth(token.expose_secret());
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let mut response = request.send().await.map_err(|e| self.classify(&e))?;
        let status = response.status().as_u16();
        if response.status().is_redirection() {
            return Err(UpstreamError::Redirect(status));
        }
        if !response.status().is_success() {
            return Err(UpstreamError::Status(status));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.classify(&e))? {
            if body.len() + chunk.len() > MAX_UPSTREAM_BODY_BYTES {
                return Err(UpstreamError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(UpstreamResponse {
            status,
            content_type,
            body,
        })
    }

    fn classify(&self, error: &reqwest::Error) -> UpstreamError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = source {
            if e.is::<TargetRefused>() {
                return UpstreamError::RefusedTarget;
            }
            source = e.source();
        }
        // Logged without the URL: it may carry caller-chosen paths, and the
        // address is internal information.
        tracing::warn!(connector = %self.name, timeout = error.is_timeout(), "upstream call failed");
        if error.is_timeout() {
            UpstreamError::Timeout(self.timeout.as_secs())
        } else {
            UpstreamError::Unreachable
        }
    }
}

/// reqwest is built without a default TLS crypto provider; use ring, as the
/// Kubernetes client does. Installing twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_metadata_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::a9fe:a9fe",
            "::10.0.0.1",
            "2002:a9fe:a9fe::1",
            "2002:7f00:1::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fec0::1",
            "198.18.0.1",
        ] {
            assert!(!is_public_address(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["140.82.112.6", "2606:4700::1111", "2002:8c52:7006::1"] {
            assert!(is_public_address(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn link_local_stays_closed_when_private_targets_are_allowed() {
        for ip in [
            "169.254.169.254",
            "fe80::1",
            "::ffff:169.254.169.254",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(!may_connect(ip.parse().unwrap(), true), "{ip}");
        }
        for ip in ["127.0.0.1", "10.0.0.1", "::1"] {
            assert!(may_connect(ip.parse().unwrap(), true), "{ip}");
            assert!(!may_connect(ip.parse().unwrap(), false), "{ip}");
        }
    }

    fn upstream(base: &str, allow_private: bool) -> Upstream {
        Upstream::new(
            &ConnectorConfig {
                name: "billing".into(),
                connector_type: bulkhead_crds::tenant::ConnectorType::Http,
                base_url: base.into(),
                credential: None,
                allow: vec![],
                allow_private_targets: allow_private,
            },
            Duration::from_secs(1),
        )
        .unwrap()
    }

    #[test]
    fn only_the_base_origin_and_path_are_own_targets() {
        let up = upstream("https://api.example.com/v1", false);
        let own = |u: &str| up.is_own_target(&Url::parse(u).unwrap());
        assert!(own("https://api.example.com/v1/invoices"));
        assert!(own("https://api.example.com:443/v1"));
        assert!(!own("https://api.example.com/v10/x"));
        assert!(!own("https://evil.example.com/v1/x"));
        assert!(!own("http://api.example.com/v1/x"));
        assert!(!own("https://api.example.com:8443/v1/x"));
        assert!(!own("https://user@api.example.com/v1/x"));
    }

    #[tokio::test]
    async fn loopback_targets_are_refused_unless_allowed() {
        let credentials = CredentialStore::new(
            crate::identity::TenantId::new("t"),
            &[],
            Arc::new(crate::credentials::SourceCredentialProvider::new(
                crate::secret_source::SecretLocation::new(
                    bulkhead_crds::server_config::SecretSource::File {
                        path: "/nonexistent".into(),
                    },
                    None,
                ),
            )),
            Duration::from_secs(1),
        );
        let up = upstream("http://127.0.0.1:9/", false);
        let result = up
            .send(
                reqwest::Method::GET,
                Url::parse("http://127.0.0.1:9/x").unwrap(),
                &[],
                None,
                &credentials,
            )
            .await;
        assert!(
            matches!(result, Err(UpstreamError::RefusedTarget)),
            "{result:?}"
        );
        let up = upstream("http://localhost:9/", false);
        let result = up
            .send(
                reqwest::Method::GET,
                Url::parse("http://localhost:9/x").unwrap(),
                &[],
                None,
                &credentials,
            )
            .await;
        assert!(
            matches!(result, Err(UpstreamError::RefusedTarget)),
            "{result:?}"
        );
    }
}
