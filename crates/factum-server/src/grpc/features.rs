//! What the clients call around the streams: `ServerFeatures.GetSupportedMethods` (on every
//! connect) and `Gossip.Read` (with several hosts or `+discover`). Neither needs credentials,
//! as on a KurrentDB node.

use tonic::{Request, Response, Status};

use super::proto::event_store::client::gossip::{
    ClusterInfo, EndPoint, MemberInfo, gossip_server, member_info,
};
use super::proto::event_store::client::server_features::{
    SupportedMethod, SupportedMethods, server_features_server,
};

/// The KurrentDB release whose client protocol Factum speaks; clients read it to decide which
/// calls they may make.
pub(crate) const PROTOCOL_VERSION: &str = "24.10.0";

/// The methods Factum answers, as `(service, method)` in the lowercase form the clients compare.
pub(crate) const SUPPORTED: &[(&str, &str)] = &[
    ("event_store.client.streams.streams", "read"),
    ("event_store.client.streams.streams", "append"),
    ("event_store.client.streams.streams", "batchappend"),
    ("event_store.client.streams.streams", "delete"),
    ("event_store.client.streams.streams", "tombstone"),
    (
        "event_store.client.server_features.serverfeatures",
        "getsupportedmethods",
    ),
    ("event_store.client.gossip.gossip", "read"),
    (PERSISTENT, "create"),
    (PERSISTENT, "update"),
    (PERSISTENT, "delete"),
    (PERSISTENT, "read"),
    (PERSISTENT, "getinfo"),
    (PERSISTENT, "replayparked"),
    (PERSISTENT, "list"),
    (PERSISTENT, "restartsubsystem"),
];

const PERSISTENT: &str = "event_store.client.persistent_subscriptions.persistentsubscriptions";

pub(crate) struct Features;

#[tonic::async_trait]
impl server_features_server::ServerFeatures for Features {
    async fn get_supported_methods(
        &self,
        _request: Request<()>,
    ) -> Result<Response<SupportedMethods>, Status> {
        let methods = SUPPORTED
            .iter()
            .map(|(service, method)| SupportedMethod {
                method_name: (*method).to_owned(),
                service_name: (*service).to_owned(),
                // Reads take `$all`, positions and filters, as the clients ask of a node.
                features: if *method == "read" && service.ends_with("streams") {
                    vec!["all".to_owned(), "position".to_owned(), "events".to_owned()]
                } else if *service == PERSISTENT {
                    // Groups on a stream and on `$all`.
                    vec!["stream".to_owned(), "all".to_owned()]
                } else {
                    Vec::new()
                },
            })
            .collect();
        Ok(Response::new(SupportedMethods {
            methods,
            event_store_server_version: PROTOCOL_VERSION.to_owned(),
        }))
    }
}

/// Factum is one node: the leader, at the address the client reached it by.
pub(crate) struct Gossip {
    pub(crate) instance: uuid::Uuid,
}

#[tonic::async_trait]
impl gossip_server::Gossip for Gossip {
    async fn read(&self, request: Request<()>) -> Result<Response<ClusterInfo>, Status> {
        let (address, port) = reached_at(&request);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros() * 10).unwrap_or(i64::MAX))
            .unwrap_or_default();
        Ok(Response::new(ClusterInfo {
            members: vec![MemberInfo {
                instance_id: Some(super::convert::uuid_to_proto(
                    self.instance,
                    super::convert::UuidForm::Structured,
                )),
                time_stamp: now,
                state: member_info::VNodeState::Leader as i32,
                is_alive: true,
                http_end_point: Some(EndPoint { address, port }),
            }],
        }))
    }
}

/// The host and port the client connected to: its `:authority` (HTTP/2's Host).
fn reached_at<T>(request: &Request<T>) -> (String, u32) {
    match request
        .extensions()
        .get::<super::Reached>()
        .and_then(|reached| reached.0.as_ref())
    {
        Some(authority) => (
            authority.host().to_owned(),
            u32::from(authority.port_u16().unwrap_or(DEFAULT_PORT)),
        ),
        None => ("127.0.0.1".to_owned(), u32::from(DEFAULT_PORT)),
    }
}

/// The port KurrentDB's clients assume when a connection string names none.
const DEFAULT_PORT: u16 = 2113;

/// Whether a request path (`/package.Service/Method`) is one Factum answers.
pub(crate) fn is_offered(path: &str) -> bool {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return false;
    };
    SUPPORTED
        .iter()
        .any(|(s, m)| s.eq_ignore_ascii_case(service) && m.eq_ignore_ascii_case(method))
        || (service == "grpc.health.v1.Health" && matches!(method, "Check" | "Watch"))
}
