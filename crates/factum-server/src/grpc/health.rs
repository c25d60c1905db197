//! gRPC's standard health checking protocol (`grpc.health.v1.Health`), as Kubernetes gRPC
//! probes, load balancers and `grpc_health_probe` call it. It tells what `GET /health` tells:
//! `SERVING` while the store takes writes, `NOT_SERVING` while it refuses them (a full or
//! failing disk, a database it cannot reach; reads are still served, and it recovers by
//! itself). Like `GET /health` it needs no credentials.

use std::time::Duration;

use tonic::{Request, Response, Status};

use super::proto::grpc::health::v1::health_check_response::ServingStatus;
use super::proto::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse, health_server};
use super::streams::Answers;
use crate::AppState;

/// The services whose health a client may ask for by name ("" is the server as a whole).
pub(crate) const SERVICES: &[&str] = &[
    "",
    "event_store.client.streams.Streams",
    "event_store.client.persistent_subscriptions.PersistentSubscriptions",
    "event_store.client.server_features.ServerFeatures",
    "event_store.client.gossip.Gossip",
    "grpc.health.v1.Health",
];

/// How often a `Watch` looks at the store again.
const WATCH_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct Health {
    pub(crate) state: AppState,
}

/// The status of `service` now, `None` for a service the server does not have.
fn status_of(state: &AppState, service: &str) -> Option<ServingStatus> {
    if !SERVICES.contains(&service) {
        return None;
    }
    Some(match state.store.write_refusal() {
        None => ServingStatus::Serving,
        Some(_) => ServingStatus::NotServing,
    })
}

fn answer(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status.into(),
    }
}

#[tonic::async_trait]
impl health_server::Health for Health {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        match status_of(&self.state, &service) {
            Some(status) => Ok(Response::new(answer(status))),
            None => Err(Status::not_found(format!(
                "the server has no service '{service}'"
            ))),
        }
    }

    type WatchStream = Answers<HealthCheckResponse>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        // A watch is held open: it counts against the server's cap of subscriptions.
        let caller = crate::auth::Caller(None);
        let admitted = super::read::admit(&self.state, &caller)?;
        let state = self.state.clone();
        let (out, answers) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let _admitted = admitted;
            let mut closing = state.closing.clone();
            let mut told = None;
            let mut every = tokio::time::interval(WATCH_EVERY);
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    () = out.closed() => break,
                    _ = closing.wait_for(|on| *on) => break,
                }
                let now = status_of(&state, &service).unwrap_or(ServingStatus::ServiceUnknown);
                if told != Some(now) {
                    told = Some(now);
                    if out.send(Ok(answer(now))).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(super::stream_of(answers)))
    }
}
