//! The `Host` and `Origin` policy of the MCP endpoint.
//!
//! The MCP specification (Streamable HTTP transport, "Security Warning")
//! requires servers to validate `Origin` to prevent DNS rebinding; checking
//! `Host` against the names the Service answers to closes the same hole for
//! clients that send no `Origin`. Both lists come from the configuration.

use axum::http::{HeaderMap, header};
use url::Url;

/// Host and Origin allow-lists (from the configuration).
#[derive(Clone, Debug)]
pub struct OriginPolicy {
    hosts: Vec<(String, Option<u16>)>,
    origins: Vec<AllowedOrigin>,
}

#[derive(Clone, Debug)]
enum AllowedOrigin {
    Null,
    Tuple {
        scheme: String,
        host: String,
        port: Option<u16>,
    },
}

fn split_authority(value: &str) -> Option<(String, Option<u16>)> {
    let authority: axum::http::uri::Authority = value.trim().parse().ok()?;
    Some((
        authority
            .host()
            .trim_matches(['[', ']'])
            .to_ascii_lowercase(),
        authority.port_u16(),
    ))
}

impl OriginPolicy {
    /// Policy from `allowedHosts` and `allowedOrigins`. Entries that do not
    /// parse match nothing.
    pub fn new(hosts: &[String], origins: &[String]) -> Self {
        Self {
            hosts: hosts
                .iter()
                .filter(|h| !h.trim().is_empty())
                .map(|h| {
                    // A bare IPv6 address ("::1") is not an authority; take
                    // it as a host that matches any port.
                    split_authority(h).unwrap_or_else(|| {
                        (h.trim().trim_matches(['[', ']']).to_ascii_lowercase(), None)
                    })
                })
                .collect(),
            origins: origins
                .iter()
                .filter_map(|o| {
                    let o = o.trim();
                    if o == "null" {
                        return Some(AllowedOrigin::Null);
                    }
                    let (base, any_port) = match o.strip_suffix(":*") {
                        Some(base) => (base, true),
                        None => (o, false),
                    };
                    let url = Url::parse(base).ok()?;
                    Some(AllowedOrigin::Tuple {
                        scheme: url.scheme().to_owned(),
                        host: url
                            .host_str()?
                            .trim_matches(['[', ']'])
                            .to_ascii_lowercase(),
                        port: if any_port {
                            None
                        } else {
                            url.port_or_known_default()
                        },
                    })
                })
                .collect(),
        }
    }

    /// `Err` with the reason when `Host` or `Origin` is not allowed. A
    /// request without `Origin` (not from a browser) passes the origin check.
    pub fn check(&self, headers: &HeaderMap, uri: &axum::http::Uri) -> Result<(), &'static str> {
        let host = match headers.get(header::HOST) {
            Some(value) => value.to_str().ok().and_then(split_authority),
            None => uri.authority().and_then(|a| split_authority(a.as_str())),
        }
        .ok_or("Forbidden: Host header is missing or malformed")?;
        let host_ok = self
            .hosts
            .iter()
            .any(|(allowed, port)| *allowed == host.0 && port.is_none_or(|p| host.1 == Some(p)));
        if !host_ok {
            return Err("Forbidden: Host header is not allowed");
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin
            .to_str()
            .map_err(|_| "Forbidden: Origin header is not allowed")?;
        let allowed = if origin.trim() == "null" {
            self.origins
                .iter()
                .any(|o| matches!(o, AllowedOrigin::Null))
        } else {
            let url = Url::parse(origin).map_err(|_| "Forbidden: Origin header is not allowed")?;
            let host = url
                .host_str()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_ascii_lowercase();
            let port = url.port_or_known_default();
            self.origins.iter().any(|o| match o {
                AllowedOrigin::Null => false,
                AllowedOrigin::Tuple {
                    scheme,
                    host: h,
                    port: p,
                } => scheme == url.scheme() && *h == host && p.is_none_or(|p| Some(p) == port),
            })
        };
        if allowed {
            Ok(())
        } else {
            Err("Forbidden: Origin header is not allowed")
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(host: &str, origin: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    #[test]
    fn host_and_origin_must_be_listed() {
        let policy = OriginPolicy::new(
            &[
                "mcp.bulkhead-acme.svc".into(),
                "localhost:8080".into(),
                "::1".into(),
            ],
            &[
                "https://app.example.com".into(),
                "http://localhost:*".into(),
            ],
        );
        let uri = axum::http::Uri::from_static("/mcp");
        assert!(
            policy
                .check(&headers("mcp.bulkhead-acme.svc:8080", None), &uri)
                .is_ok()
        );
        assert!(policy.check(&headers("localhost:8080", None), &uri).is_ok());
        assert!(
            policy
                .check(&headers("localhost:9999", None), &uri)
                .is_err()
        );
        assert!(
            policy
                .check(&headers("evil.example.com", None), &uri)
                .is_err()
        );
        assert!(
            policy
                .check(
                    &headers("localhost:8080", Some("https://app.example.com")),
                    &uri
                )
                .is_ok()
        );
        assert!(
            policy
                .check(
                    &headers("localhost:8080", Some("https://app.example.com:8443")),
                    &uri
                )
                .is_err()
        );
        assert!(
            policy
                .check(
                    &headers("localhost:8080", Some("http://localhost:3000")),
                    &uri
                )
                .is_ok()
        );
        assert!(
            policy
                .check(
                    &headers("localhost:8080", Some("https://evil.example.com")),
                    &uri
                )
                .is_err()
        );
        assert!(
            policy
                .check(&headers("localhost:8080", Some("null")), &uri)
                .is_err()
        );
    }
}
