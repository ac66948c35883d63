//! Resource type URLs and the order responses go out in (make before break).

pub const RUNTIME: &str = "type.googleapis.com/envoy.service.runtime.v3.Runtime";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const EXTENSION: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// Push order that never references a resource Envoy does not have yet.
pub const ORDER: [&str; 7] = [
    RUNTIME, CLUSTER, ENDPOINT, SECRET, LISTENER, EXTENSION, ROUTE,
];

/// Types whose first request without names is a (legacy) wildcard subscription.
pub fn wildcard_type(type_url: &str) -> bool {
    type_url == CLUSTER || type_url == LISTENER
}

/// Where a type sits in `ORDER` (unknown types after every known one, by name).
pub fn rank(type_url: &str) -> usize {
    ORDER
        .iter()
        .position(|t| *t == type_url)
        .unwrap_or(ORDER.len())
}
