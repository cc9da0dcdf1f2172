//! The NetworkPolicy that isolates a tenant's namespace.
//!
//! It selects every pod of the namespace and lists both policy types, so
//! anything not allowed below is denied in both directions:
//!
//! - ingress: only to the MCP port, only from the namespaces the spec selects
//!   (an empty list admits nobody);
//! - egress: DNS to the cluster's kube-dns pods; the Kubernetes API server
//!   (the server reads its own Secrets); the spec's upstream ranges and
//!   ports, minus private, link-local, loopback and cluster ranges unless the
//!   spec names such a range itself; and, with `spec.auth.oauth`, the
//!   issuer (its metadata and JWKS) where `issuerNetwork` says it is: its
//!   ranges under the same rule, or the pods of the namespaces it selects.

use std::collections::BTreeMap;

use bulkhead_crds::cidr::Cidr;
use bulkhead_crds::server_config::MCP_PORT;
use bulkhead_crds::tenant::IssuerNetwork;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::context::BuildContext;

/// Name of the NetworkPolicy in the tenant namespace.
pub const NETWORK_POLICY_NAME: &str = "bulkhead-tenant-isolation";
/// Upstream port when the spec names none.
pub const DEFAULT_EGRESS_PORT: i32 = 443;
/// Ranges closed to upstream traffic unless a Tenant names them exactly;
/// one list with the Tenant validation of issuer ranges.
pub use bulkhead_crds::cidr::CLOSED_RANGES;

/// The tenant's NetworkPolicy.
pub(crate) fn desired_network_policy(ctx: &BuildContext<'_>) -> NetworkPolicy {
    let network = &ctx.tenant.spec.network;
    let ingress = if network.ingress_from.is_empty() {
        Vec::new()
    } else {
        vec![NetworkPolicyIngressRule {
            from: Some(
                network
                    .ingress_from
                    .iter()
                    .map(|selector| NetworkPolicyPeer {
                        namespace_selector: Some(selector.clone()),
                        ..NetworkPolicyPeer::default()
                    })
                    .collect(),
            ),
            ports: Some(vec![tcp_port(i32::from(MCP_PORT))]),
        }]
    };

    let mut egress = vec![dns_egress_rule()];
    // A rule whose `to` is empty admits every destination, so a rule is only
    // added when it names at least one peer.
    let api_server = api_server_peers(ctx);
    if !api_server.is_empty() {
        egress.push(NetworkPolicyEgressRule {
            to: Some(api_server),
            ports: Some(vec![tcp_port(ctx.settings.api_server_port)]),
        });
    }
    let upstreams = upstream_peers(&network.egress.cidrs, &ctx.settings.cluster_cidrs);
    if !upstreams.is_empty() {
        let ports = if network.egress.ports.is_empty() {
            vec![DEFAULT_EGRESS_PORT]
        } else {
            network.egress.ports.clone()
        };
        egress.push(NetworkPolicyEgressRule {
            to: Some(upstreams),
            ports: Some(ports.into_iter().map(tcp_port).collect()),
        });
    }

    if let Some(oauth) = &ctx.tenant.spec.auth.oauth {
        egress.extend(issuer_egress_rule(
            &oauth.issuer_network,
            &ctx.settings.cluster_cidrs,
        ));
    }

    NetworkPolicy {
        metadata: ctx.metadata(NETWORK_POLICY_NAME, true),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            ingress: Some(ingress),
            egress: Some(egress),
        }),
    }
}

/// Egress to the OAuth issuer: its CIDRs (closed ranges inside them
/// excepted, as for upstreams), or the pods its namespace and pod selectors
/// name, on its ports (default 443). `None` when it names no peer, since a
/// rule without peers would admit every destination.
fn issuer_egress_rule(
    network: &IssuerNetwork,
    cluster_cidrs: &[String],
) -> Option<NetworkPolicyEgressRule> {
    let peers = match &network.namespace_selector {
        Some(namespaces) => vec![NetworkPolicyPeer {
            namespace_selector: Some(namespaces.clone()),
            pod_selector: network.pod_selector.clone(),
            ip_block: None,
        }],
        None => upstream_peers(&network.cidrs, cluster_cidrs),
    };
    if peers.is_empty() {
        return None;
    }
    let ports = if network.ports.is_empty() {
        vec![DEFAULT_EGRESS_PORT]
    } else {
        network.ports.clone()
    };
    Some(NetworkPolicyEgressRule {
        to: Some(peers),
        ports: Some(ports.into_iter().map(tcp_port).collect()),
    })
}

fn tcp_port(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some("TCP".to_owned()),
        port: Some(IntOrString::Int(port)),
        end_port: None,
    }
}

/// DNS to the kube-dns pods in kube-system only, never to any resolver.
fn dns_egress_rule() -> NetworkPolicyEgressRule {
    let selector = |key: &str, value: &str| LabelSelector {
        match_labels: Some(BTreeMap::from([(key.to_owned(), value.to_owned())])),
        ..LabelSelector::default()
    };
    NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(selector("kubernetes.io/metadata.name", "kube-system")),
            pod_selector: Some(selector("k8s-app", "kube-dns")),
            ip_block: None,
        }]),
        ports: Some(
            ["UDP", "TCP"]
                .into_iter()
                .map(|protocol| NetworkPolicyPort {
                    protocol: Some(protocol.to_owned()),
                    port: Some(IntOrString::Int(53)),
                    end_port: None,
                })
                .collect(),
        ),
    }
}

/// The API server's endpoints, which NetworkPolicy can only name by address.
fn api_server_peers(ctx: &BuildContext<'_>) -> Vec<NetworkPolicyPeer> {
    ctx.settings
        .api_server_cidrs
        .iter()
        .filter_map(|cidr| cidr.parse::<Cidr>().ok())
        .map(|cidr| ip_block(cidr.to_string(), Vec::new()))
        .collect()
}

fn ip_block(cidr: String, except: Vec<String>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr,
            except: (!except.is_empty()).then_some(except),
        }),
        ..NetworkPolicyPeer::default()
    }
}

/// One peer per spec range, each excepting the closed and cluster ranges it
/// strictly contains, unless the spec names that range itself.
///
/// An `except` must lie inside its `cidr` (the API server refuses anything
/// else), so only strictly contained ranges are listed; a spec range inside a
/// closed range names (part of) it on purpose. Ranges already covered by a
/// larger except are left out.
fn upstream_peers(spec_cidrs: &[String], cluster_cidrs: &[String]) -> Vec<NetworkPolicyPeer> {
    let named: Vec<Cidr> = spec_cidrs.iter().filter_map(|c| c.parse().ok()).collect();
    let closed: Vec<Cidr> = CLOSED_RANGES
        .iter()
        .copied()
        .chain(cluster_cidrs.iter().map(String::as_str))
        .filter_map(|c| c.parse().ok())
        .filter(|c| !named.contains(c))
        .collect();
    named
        .iter()
        .map(|cidr| {
            let inside: Vec<&Cidr> = closed
                .iter()
                .filter(|c| cidr.strictly_contains(c))
                .collect();
            let mut except: Vec<Cidr> = inside
                .iter()
                .filter(|c| {
                    !inside
                        .iter()
                        .any(|other| other != *c && other.strictly_contains(c))
                })
                .map(|c| **c)
                .collect();
            except.sort();
            except.dedup();
            ip_block(
                cidr.to_string(),
                except.iter().map(ToString::to_string).collect(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::fixtures::{FULL, MINIMAL, OAUTH, objects};

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    fn cluster() -> Vec<String> {
        strings(&["10.244.0.0/16", "10.96.0.0/12"])
    }

    fn blocks(peers: &[NetworkPolicyPeer]) -> Vec<(String, Vec<String>)> {
        peers
            .iter()
            .map(|p| {
                assert!(p.namespace_selector.is_none() && p.pod_selector.is_none());
                let block = p.ip_block.clone().unwrap();
                (block.cidr, block.except.unwrap_or_default())
            })
            .collect()
    }

    fn selector(key: &str, value: &str) -> LabelSelector {
        LabelSelector {
            match_labels: Some(BTreeMap::from([(key.to_owned(), value.to_owned())])),
            match_expressions: None,
        }
    }

    #[test]
    fn policy_denies_everything_it_does_not_allow_for_every_pod() {
        let spec = objects(MINIMAL).network_policy.spec.unwrap();
        assert_eq!(spec.pod_selector, Some(LabelSelector::default()));
        assert_eq!(spec.policy_types, Some(strings(&["Ingress", "Egress"])));
        assert_eq!(
            objects(MINIMAL).network_policy.metadata.name.as_deref(),
            Some(NETWORK_POLICY_NAME)
        );
    }

    #[test]
    fn every_rule_of_the_full_example() {
        let spec = objects(FULL).network_policy.spec.unwrap();
        let ingress = spec.ingress.unwrap();
        assert_eq!(ingress.len(), 1);
        assert_eq!(ingress[0].ports, Some(vec![tcp_port(8080)]));
        let sources: Vec<NetworkPolicyPeer> = ingress[0].from.clone().unwrap();
        assert_eq!(sources.len(), 2);
        assert_eq!(
            sources[0].namespace_selector,
            Some(selector("kubernetes.io/metadata.name", "mcp-gateway"))
        );
        assert!(
            sources[1]
                .namespace_selector
                .as_ref()
                .unwrap()
                .match_expressions
                .is_some()
        );
        for source in &sources {
            assert!(source.pod_selector.is_none() && source.ip_block.is_none());
            assert_ne!(
                source.namespace_selector,
                Some(LabelSelector::default()),
                "empty selector"
            );
        }

        let egress = spec.egress.unwrap();
        assert_eq!(egress.len(), 3);
        // DNS: kube-dns pods in kube-system, port 53 over UDP and TCP, nothing else.
        assert_eq!(
            egress[0],
            NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(selector(
                        "kubernetes.io/metadata.name",
                        "kube-system"
                    )),
                    pod_selector: Some(selector("k8s-app", "kube-dns")),
                    ip_block: None,
                }]),
                ports: Some(vec![
                    NetworkPolicyPort {
                        protocol: Some("UDP".into()),
                        port: Some(IntOrString::Int(53)),
                        end_port: None
                    },
                    NetworkPolicyPort {
                        protocol: Some("TCP".into()),
                        port: Some(IntOrString::Int(53)),
                        end_port: None
                    },
                ]),
            }
        );
        // The API server, by address and port.
        assert_eq!(egress[1].ports, Some(vec![tcp_port(6443)]));
        assert_eq!(
            blocks(egress[1].to.as_ref().unwrap()),
            [("172.18.0.0/16".to_owned(), vec![])]
        );
        // Upstreams: everything public on 443.
        assert_eq!(egress[2].ports, Some(vec![tcp_port(443)]));
        assert_eq!(
            blocks(egress[2].to.as_ref().unwrap()),
            [(
                "0.0.0.0/0".to_owned(),
                strings(&[
                    "0.0.0.0/8",
                    "10.0.0.0/8",
                    "100.64.0.0/10",
                    "127.0.0.0/8",
                    "169.254.0.0/16",
                    "172.16.0.0/12",
                    "192.168.0.0/16"
                ])
            )]
        );
    }

    #[test]
    fn no_ingress_sources_means_no_ingress_at_all() {
        let mut tenant = crate::desired::fixtures::live_tenant(MINIMAL);
        tenant.spec.network.ingress_from.clear();
        let policy = crate::desired::desired_objects(&tenant, &Default::default())
            .unwrap()
            .network_policy;
        let spec = policy.spec.unwrap();
        assert_eq!(spec.ingress, Some(vec![]));
        assert!(spec.policy_types.unwrap().contains(&"Ingress".to_owned()));
        // Without upstream ranges, only DNS and the API server are reachable.
        assert_eq!(spec.egress.unwrap().len(), 2);
    }

    #[test]
    fn closed_ranges_are_excepted_unless_named() {
        // Naming 10.0.0.0/8 opens it, but the cluster ranges inside it stay closed.
        let peers = upstream_peers(&strings(&["0.0.0.0/0", "10.0.0.0/8"]), &cluster());
        assert_eq!(
            blocks(&peers),
            [
                (
                    "0.0.0.0/0".to_owned(),
                    strings(&[
                        "0.0.0.0/8",
                        "10.96.0.0/12",
                        "10.244.0.0/16",
                        "100.64.0.0/10",
                        "127.0.0.0/8",
                        "169.254.0.0/16",
                        "172.16.0.0/12",
                        "192.168.0.0/16"
                    ])
                ),
                (
                    "10.0.0.0/8".to_owned(),
                    strings(&["10.96.0.0/12", "10.244.0.0/16"])
                ),
            ]
        );
        // Naming a cluster range exactly opens it.
        let peers = upstream_peers(&strings(&["10.0.0.0/8", "10.244.0.0/16"]), &cluster());
        assert_eq!(
            blocks(&peers),
            [
                ("10.0.0.0/8".to_owned(), strings(&["10.96.0.0/12"])),
                ("10.244.0.0/16".to_owned(), vec![]),
            ]
        );
        // A public range contains no closed range.
        assert_eq!(
            blocks(&upstream_peers(&strings(&["203.0.113.0/24"]), &cluster())),
            [("203.0.113.0/24".to_owned(), vec![])]
        );
        // A range inside a private range is named on purpose and has nothing to except.
        assert_eq!(
            blocks(&upstream_peers(&strings(&["192.168.10.0/24"]), &cluster())),
            [("192.168.10.0/24".to_owned(), vec![])]
        );
        // The metadata address named exactly is reachable.
        assert_eq!(
            blocks(&upstream_peers(
                &strings(&["169.254.169.254/32"]),
                &cluster()
            )),
            [("169.254.169.254/32".to_owned(), vec![])]
        );
        // IPv6 gets the IPv6 closed ranges.
        assert_eq!(
            blocks(&upstream_peers(&strings(&["::/0"]), &cluster())),
            [(
                "::/0".to_owned(),
                strings(&[
                    "::1/128",
                    "64:ff9b::/96",
                    "64:ff9b:1::/48",
                    "fc00::/7",
                    "fe80::/10"
                ])
            )]
        );
    }

    #[test]
    fn every_except_lies_strictly_inside_its_cidr() {
        let inputs = [
            vec!["0.0.0.0/0"],
            vec!["0.0.0.0/1", "128.0.0.0/1"],
            vec!["8.0.0.0/5"],
            vec!["172.0.0.0/8", "::/0"],
            vec!["10.0.0.0/8", "0.0.0.0/0", "172.16.0.0/12"],
        ];
        for input in inputs {
            for (cidr, except) in blocks(&upstream_peers(&strings(&input), &cluster())) {
                let cidr: Cidr = cidr.parse().unwrap();
                for e in except {
                    let e: Cidr = e.parse().unwrap();
                    assert!(
                        cidr.strictly_contains(&e),
                        "{e} is not inside {cidr} ({input:?})"
                    );
                }
            }
        }
    }

    #[test]
    fn no_rule_ever_has_an_empty_peer_list() {
        // An empty `to`/`from` would admit every address.
        let mut tenant = crate::desired::fixtures::live_tenant(MINIMAL);
        tenant.spec.network.egress.cidrs.clear();
        let settings = crate::settings::OperatorSettings {
            api_server_cidrs: vec![],
            ..Default::default()
        };
        let ctx = crate::desired::BuildContext {
            tenant: &tenant,
            tenant_id: "acme",
            namespace: "bulkhead-acme".into(),
            settings: &settings,
        };
        let spec = desired_network_policy(&ctx).spec.unwrap();
        assert_eq!(spec.egress.unwrap(), vec![dns_egress_rule()]);
        for rule in spec.ingress.unwrap() {
            assert!(!rule.from.unwrap_or_default().is_empty());
        }
    }

    #[test]
    fn the_issuer_is_reached_at_its_ranges_and_ports_only() {
        let egress = objects(OAUTH).network_policy.spec.unwrap().egress.unwrap();
        // DNS, the API server, upstreams and the issuer.
        assert_eq!(egress.len(), 4);
        assert_eq!(
            egress[3],
            NetworkPolicyEgressRule {
                to: Some(vec![ip_block("203.0.113.10/32".into(), vec![])]),
                ports: Some(vec![tcp_port(443)]),
            }
        );
        // Without oauth there is no rule for an issuer.
        assert_eq!(
            objects(FULL)
                .network_policy
                .spec
                .unwrap()
                .egress
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn an_issuer_range_keeps_closed_ranges_closed_unless_named() {
        let mut tenant = crate::desired::fixtures::live_tenant(OAUTH);
        let network = &mut tenant.spec.auth.oauth.as_mut().unwrap().issuer_network;
        network.cidrs = strings(&["0.0.0.0/0", "10.20.0.0/16"]);
        network.ports = vec![8443];
        let objects = crate::desired::desired_objects(&tenant, &Default::default()).unwrap();
        let issuer = objects.network_policy.spec.unwrap().egress.unwrap()[3].clone();
        assert_eq!(issuer.ports, Some(vec![tcp_port(8443)]));
        let blocks = blocks(issuer.to.as_ref().unwrap());
        // The named private range is open; the rest of 10.0.0.0/8 and the
        // cloud metadata range stay closed under 0.0.0.0/0.
        assert_eq!(blocks[1], ("10.20.0.0/16".to_owned(), vec![]));
        assert_eq!(blocks[0].0, "0.0.0.0/0");
        for closed in ["10.0.0.0/8", "169.254.0.0/16"] {
            assert!(blocks[0].1.contains(&closed.to_owned()), "{blocks:?}");
        }
    }

    #[test]
    fn an_in_cluster_issuer_is_reached_by_namespace_and_pod_selector() {
        let mut tenant = crate::desired::fixtures::live_tenant(OAUTH);
        let network = &mut tenant.spec.auth.oauth.as_mut().unwrap().issuer_network;
        network.cidrs.clear();
        network.namespace_selector = Some(selector("kubernetes.io/metadata.name", "keycloak"));
        network.pod_selector = Some(selector("app.kubernetes.io/name", "keycloak"));
        network.ports = vec![8080];
        let objects = crate::desired::desired_objects(&tenant, &Default::default()).unwrap();
        let issuer = objects.network_policy.spec.unwrap().egress.unwrap()[3].clone();
        assert_eq!(
            issuer,
            NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(selector("kubernetes.io/metadata.name", "keycloak")),
                    pod_selector: Some(selector("app.kubernetes.io/name", "keycloak")),
                    ip_block: None,
                }]),
                ports: Some(vec![tcp_port(8080)]),
            }
        );
    }

    #[test]
    fn egress_ports_come_from_the_spec() {
        let mut tenant = crate::desired::fixtures::live_tenant(FULL);
        tenant.spec.network.egress.ports = vec![443, 8443];
        let spec = crate::desired::desired_objects(&tenant, &Default::default())
            .unwrap()
            .network_policy
            .spec
            .unwrap();
        assert_eq!(
            spec.egress.unwrap()[2].ports,
            Some(vec![tcp_port(443), tcp_port(8443)])
        );
    }
}
