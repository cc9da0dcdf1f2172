//! Names, ports and defaults that more than one builder (or a reader of the
//! built objects) needs, so builders depend on this module and not on each
//! other.

/// Name of the Service; the endpoint is `http://mcp.<namespace>.svc:8080/mcp`.
pub const SERVICE_NAME: &str = "mcp";
/// Name of the MCP port on the Service and the container.
pub const MCP_PORT_NAME: &str = "mcp";
/// Name of the server's ServiceAccount in the tenant namespace.
pub const SERVICE_ACCOUNT_NAME: &str = "mcp-server";
/// `app.kubernetes.io/name` of the server pods (part of their selector).
pub const SERVER_APP_NAME: &str = "bulkhead-server";

/// Container CPU request when the pod states none (LimitRange default and
/// the server container's own request).
pub const DEFAULT_CONTAINER_CPU_REQUEST: &str = "100m";
/// Container memory request when the pod states none.
pub const DEFAULT_CONTAINER_MEMORY_REQUEST: &str = "64Mi";
/// Container CPU limit when the pod states none.
pub const DEFAULT_CONTAINER_CPU_LIMIT: &str = "500m";
/// Container memory limit when the pod states none.
pub const DEFAULT_CONTAINER_MEMORY_LIMIT: &str = "256Mi";
