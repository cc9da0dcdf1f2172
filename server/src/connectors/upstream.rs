//! The HTTP client every connector uses, and the rules it enforces: only the
//! connector's own origin, no redirects, no proxies, no private or loopback
//! addresses unless the configuration allows them and no link-local or cloud
//! metadata address ever, in any IPv6 form that carries one (the classifier
//! in [`super::address`], applied to the resolved IPs at connect time, so DNS
//! cannot point a name elsewhere), a bounded response size, and errors that
//! never carry an upstream body, token or address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bulkhead_crds::server_config::ConnectorConfig;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use secrecy::ExposeSecret;
use url::Url;

use super::address::may_connect;
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

/// Where a connector looks names up.
#[derive(Clone, Debug)]
enum Lookup {
    /// The system resolver; an address is dialled as resolved.
    System,
    /// Tests: every name resolves to `answers`, and an address the guard
    /// admits is dialled at the loopback listener `dial`, so a test observes
    /// connecting itself rather than a verdict.
    #[cfg(test)]
    Fixed {
        answers: Vec<IpAddr>,
        dial: SocketAddr,
    },
}

impl Lookup {
    /// Pairs of (address the guard judges, socket address dialled if admitted).
    async fn candidates(&self, host: &str) -> std::io::Result<Vec<(IpAddr, SocketAddr)>> {
        match self {
            Self::System => Ok(tokio::net::lookup_host((host, 0))
                .await?
                .map(|a| (a.ip(), a))
                .collect()),
            #[cfg(test)]
            Self::Fixed { answers, dial } => Ok(answers.iter().map(|ip| (*ip, *dial)).collect()),
        }
    }
}

/// Resolves names and keeps only the addresses the connector may reach.
struct GuardedResolver {
    allow_private: bool,
    lookup: Lookup,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let lookup = self.lookup.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = lookup
                .candidates(&host)
                .await?
                .into_iter()
                .filter(|(ip, _)| may_connect(*ip, allow_private))
                .map(|(_, dial)| dial)
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(TargetRefused) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// A resolver that hands out only the addresses [`may_connect`] admits, for
/// other clients of this server that must not reach what a connector may
/// not (the OAuth issuer's metadata and JWKS).
pub(crate) fn guarded_resolver(allow_private: bool) -> Arc<dyn Resolve> {
    Arc::new(GuardedResolver {
        allow_private,
        lookup: Lookup::System,
    })
}

/// Whether `url`'s host, when it is an address literal (which reqwest dials
/// without asking the resolver), may be connected to. Names pass here and
/// are judged by [`guarded_resolver`].
pub(crate) fn literal_host_allowed(url: &Url, allow_private: bool) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => may_connect(IpAddr::V4(ip), allow_private),
        Some(url::Host::Ipv6(ip)) => may_connect(IpAddr::V6(ip), allow_private),
        Some(url::Host::Domain(_)) => true,
        None => false,
    }
}

/// Whether a request failed because the guarded resolver refused every
/// address of the host.
pub(crate) fn refused_by_resolver(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<TargetRefused>() {
            return true;
        }
        source = e.source();
    }
    false
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
        Self::with_lookup(config, timeout, Lookup::System)
    }

    fn with_lookup(
        config: &ConnectorConfig,
        timeout: Duration,
        lookup: Lookup,
    ) -> Result<Self, UpstreamSetupError> {
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
                lookup,
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
        let credentials = no_credentials();
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

    /// A loopback HTTP listener that counts the connections it accepts and
    /// answers each with `200 {}`.
    struct CountingListener {
        addr: SocketAddr,
        accepted: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl CountingListener {
        async fn start() -> Self {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counter = accepted.clone();
            tokio::spawn(async move {
                while let Ok((mut socket, _)) = listener.accept().await {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::spawn(async move {
                        let mut buffer = [0u8; 4096];
                        let _ = socket.read(&mut buffer).await;
                        let _ = socket
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                            .await;
                    });
                }
            });
            Self { addr, accepted }
        }

        fn accepted(&self) -> usize {
            self.accepted.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    fn no_credentials() -> CredentialStore {
        CredentialStore::new(
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
        )
    }

    /// Every form an IPv6 address can carry an IPv4 address in, and the
    /// cloud metadata addresses, resolved for the connector's host name: the
    /// guard must refuse each before any connection is made, whatever
    /// `allowPrivateTargets` says. The rows that must connect show the
    /// listener does see a connection the guard admits.
    #[tokio::test]
    async fn forbidden_addresses_are_never_connected_to_in_any_form() {
        // (address the name resolves to, allowPrivateTargets, connects)
        const TABLE: &[(&str, bool, bool)] = &[
            // Controls: admitted addresses are dialled.
            ("140.82.112.6", false, true),
            ("127.0.0.1", true, true),
            ("64:ff9b::8c52:7006", false, true),
            ("2002:8c52:7006::1", false, true),
            // Private targets need allowPrivateTargets, in every form.
            ("127.0.0.1", false, false),
            ("::ffff:127.0.0.1", false, false),
            ("::ffff:0:7f00:1", false, false),
            ("64:ff9b::a00:1", false, false),
            ("64:ff9b::a00:1", true, true),
            ("2002:a00:1::1", false, false),
            // Cloud metadata, never: IPv4, and IPv4 inside IPv6.
            ("169.254.169.254", true, false),
            ("169.254.170.2", true, false),
            ("169.254.170.23", true, false),
            ("100.100.100.200", true, false),
            ("168.63.129.16", true, false),
            ("168.63.129.16", false, false),
            ("::ffff:169.254.169.254", true, false),
            ("::a9fe:a9fe", true, false),
            ("::ffff:0:a9fe:a9fe", false, false),
            ("::ffff:0:a9fe:a9fe", true, false),
            ("64:ff9b::a9fe:a9fe", true, false),
            ("64:ff9b::a9fe:a9fe", false, false),
            ("64:ff9b::6464:64c8", true, false),
            ("::ffff:a83f:8110", false, false),
            ("64:ff9b:1::a9fe:a9fe", true, false),
            ("64:ff9b:1:a9fe:a9:fe00::", true, false),
            ("64:ff9b:1:a9:fe:a9fe::", true, false),
            ("64:ff9b:1:0:a9:fea9:fe00:0", true, false),
            ("2002:a9fe:a9fe::1", true, false),
            ("2001:0:a9fe:a9fe::1", true, false),
            ("2001:0:4136:e378:8000:63bf:5601:5601", true, false),
            ("fe80::a9fe:a9fe", true, false),
            // Cloud metadata over IPv6 (AWS IMDS and EKS Pod Identity).
            ("fd00:ec2::254", true, false),
            ("fd00:ec2::254", false, false),
            ("fd00:ec2::23", true, false),
        ];
        let listener = CountingListener::start().await;
        let credentials = no_credentials();
        let mut wrong = Vec::new();
        for (address, allow_private, connects) in TABLE {
            let ip: IpAddr = address.parse().unwrap();
            let up = Upstream::with_lookup(
                &ConnectorConfig {
                    name: "billing".into(),
                    connector_type: bulkhead_crds::tenant::ConnectorType::Http,
                    base_url: format!("http://upstream.test:{}/", listener.addr.port()),
                    credential: None,
                    allow: vec![],
                    allow_private_targets: *allow_private,
                },
                Duration::from_secs(2),
                Lookup::Fixed {
                    answers: vec![ip],
                    dial: listener.addr,
                },
            )
            .unwrap();
            let before = listener.accepted();
            let result = up
                .send(
                    reqwest::Method::GET,
                    Url::parse(&format!("http://upstream.test:{}/x", listener.addr.port()))
                        .unwrap(),
                    &[],
                    None,
                    &credentials,
                )
                .await;
            let connections = listener.accepted() - before;
            let as_expected = if *connects {
                connections == 1 && result.is_ok()
            } else {
                connections == 0 && matches!(result, Err(UpstreamError::RefusedTarget))
            };
            if !as_expected {
                wrong.push(format!(
                    "{address} (allowPrivateTargets: {allow_private}): {connections} connection(s), {result:?}"
                ));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    /// A base URL with an address literal is not resolved, so the guard
    /// judges the literal before the request is built.
    #[tokio::test]
    async fn forbidden_address_literals_are_refused_before_any_request() {
        let credentials = no_credentials();
        for (base, allow_private) in [
            ("http://[64:ff9b::a9fe:a9fe]/", true),
            ("http://[fd00:ec2::254]/", true),
            ("http://[::ffff:0:a9fe:a9fe]/", false),
            ("http://[::ffff:169.254.169.254]/", true),
            ("http://168.63.129.16/", true),
        ] {
            let up = upstream(base, allow_private);
            let result = up
                .send(
                    reqwest::Method::GET,
                    Url::parse(base).unwrap().join("x").unwrap(),
                    &[],
                    None,
                    &credentials,
                )
                .await;
            assert!(
                matches!(result, Err(UpstreamError::RefusedTarget)),
                "{base}: {result:?}"
            );
        }
    }
}
