//! Compiles the KurrentDB client protocol's definitions and gRPC's health checking protocol
//! (`proto/`) into Rust with protox, a protobuf compiler written in Rust, so that a build
//! needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/event_store/client/streams.proto",
        "proto/event_store/client/server_features.proto",
        "proto/event_store/client/gossip.proto",
        "proto/event_store/client/persistent.proto",
        "proto/grpc/health/v1/health.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .bytes(".")
        .extern_path(".event_store.client.Empty", "()")
        // Every event a read delivers: encoded by hand, straight from Factum's event.
        .extern_path(
            ".event_store.client.streams.ReadResp.ReadEvent.RecordedEvent",
            "crate::grpc::wire::RecordedEvent",
        )
        .extern_path(
            ".event_store.client.persistent_subscriptions.ReadResp.ReadEvent.RecordedEvent",
            "crate::grpc::wire::RecordedEvent",
        )
        .compile_fds(descriptors)?;
    Ok(())
}
