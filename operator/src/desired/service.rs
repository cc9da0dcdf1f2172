//! The Service in front of the tenant's server.

use bulkhead_crds::server_config::MCP_PORT;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::context::BuildContext;
use super::names::{MCP_PORT_NAME, SERVICE_NAME};

/// A ClusterIP Service exposing only the MCP port of the server pods (the
/// admin port stays unpublished).
pub(crate) fn desired_service(ctx: &BuildContext<'_>) -> Service {
    Service {
        metadata: ctx.metadata(SERVICE_NAME, true),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(ctx.server_selector()),
            ports: Some(vec![ServicePort {
                name: Some(MCP_PORT_NAME.to_owned()),
                protocol: Some("TCP".to_owned()),
                port: i32::from(MCP_PORT),
                target_port: Some(IntOrString::String(MCP_PORT_NAME.to_owned())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::desired::fixtures::{MINIMAL, objects};

    #[test]
    fn service_exposes_only_the_mcp_port_of_this_tenants_server() {
        let service = objects(MINIMAL).service;
        assert_eq!(service.metadata.name.as_deref(), Some("mcp"));
        assert_eq!(
            service.spec,
            Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                selector: Some(BTreeMap::from([
                    ("app.kubernetes.io/name".into(), "bulkhead-server".into()),
                    ("bulkhead.dev/tenant".into(), "acme".into()),
                ])),
                ports: Some(vec![ServicePort {
                    name: Some("mcp".into()),
                    protocol: Some("TCP".into()),
                    port: 8080,
                    target_port: Some(IntOrString::String("mcp".into())),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            })
        );
    }
}
