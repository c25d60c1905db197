//! What the command line takes in: the arguments of every subcommand, and the events of
//! `factum append` on stdin.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use factum::{ExpectedState, NewEvent, StoreError, StreamMetadata, StreamName, server::json};

use crate::bad;

/// Factum: an event store. Events in and out as JSON lines.
#[derive(Parser)]
#[command(name = "factum", version, about)]
pub struct Cli {
    /// The data directory of the embedded store.
    #[arg(
        long,
        global = true,
        env = "FACTUM_DATA_DIR",
        default_value = "./factum-data"
    )]
    pub data_dir: PathBuf,
    /// Use the store in PostgreSQL at this URL (postgres://user@host/db) instead of the
    /// embedded store in --data-dir. TLS as with libpq: ?sslmode=verify-full&sslrootcert=ca.pem
    /// (encrypted whenever the server offers it unless sslmode=disable).
    #[arg(long, global = true, env = "FACTUM_STORE")]
    pub store: Option<String>,
    /// The PostgreSQL schema of the store (with --store).
    #[arg(
        long,
        global = true,
        env = "FACTUM_STORE_SCHEMA",
        default_value = "factum"
    )]
    pub store_schema: String,
    /// Send append, read, read-all, tail, streams, delete, metadata and export to a running
    /// `factum serve` at this URL (http://127.0.0.1:2113) instead of opening the store: the
    /// server holds the embedded store's directory while it runs.
    #[arg(long, global = true, env = "FACTUM_SERVER", conflicts_with = "store")]
    pub server: Option<String>,
    /// A bearer token for --server (a token of the server's auth configuration).
    #[arg(long, global = true, env = "FACTUM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A PEM certificate to trust for an https --server, besides the system's.
    #[arg(long, global = true, env = "FACTUM_SERVER_CA")]
    pub server_ca: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Append events, read from stdin one JSON object a line:
    /// `{"type": "...", "data": ..., "metadata": {...}, "id": "UUID"}`.
    Append {
        /// The stream to append to.
        stream: String,
        /// any, no-stream, exists, or the revision the stream must be at.
        #[arg(long, default_value = "any")]
        expected: String,
    },
    /// Print a stream's events.
    Read {
        /// The stream to read.
        stream: String,
        /// First revision to read (default: the start, or the end with --backwards).
        #[arg(long)]
        from: Option<u64>,
        /// Newest first.
        #[arg(long)]
        backwards: bool,
        /// At most this many events.
        #[arg(long, default_value_t = u64::MAX)]
        limit: u64,
    },
    /// Print events of the whole log ($all).
    ReadAll {
        /// First position to read (default: the start, or the end with --backwards).
        #[arg(long)]
        from: Option<u64>,
        /// Newest first.
        #[arg(long)]
        backwards: bool,
        /// At most this many events.
        #[arg(long, default_value_t = u64::MAX)]
        limit: u64,
    },
    /// Print the log from a position, then new events as they are appended, until interrupted.
    Tail {
        /// First position (default: the current end, showing only new events).
        #[arg(long)]
        from: Option<u64>,
        /// Only streams starting with this (repeatable).
        #[arg(long = "stream-prefix")]
        stream_prefixes: Vec<String>,
        /// Only events of this type (repeatable).
        #[arg(long = "type")]
        event_types: Vec<String>,
    },
    /// List streams, one JSON object a line.
    Streams {
        /// Only names starting with this; a prefix starting with '$' lists system streams.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many.
        #[arg(long, default_value_t = u64::MAX)]
        limit: u64,
    },
    /// Delete a stream (soft: it can be written again), or tombstone it for good.
    Delete {
        /// The stream.
        stream: String,
        /// Never allow the stream to be written again.
        #[arg(long)]
        tombstone: bool,
        /// any, no-stream, exists, or the revision the stream must be at.
        #[arg(long, default_value = "any")]
        expected: String,
    },
    /// Show a stream's metadata, or set it with --set '{"max_count": 100}'.
    Metadata {
        /// The stream.
        stream: String,
        /// New metadata: max_count, max_age_secs, truncate_before, custom.
        #[arg(long)]
        set: Option<String>,
    },
    /// Read every record and check every checksum; exits non-zero naming the first corruption.
    Verify,
    /// Reclaim the space of events their streams' metadata hides for good (max count, max age,
    /// truncate before, soft delete, tombstone). Positions and revisions stay; by default
    /// nothing a stored checkpoint has not passed goes. Offline on a data directory, or with
    /// --server on a running `factum serve`.
    Scavenge {
        /// Also remove hidden events that a relay, processor, saga or consumer group has not
        /// read yet.
        #[arg(long)]
        past_checkpoints: bool,
    },
    /// Forget a subject (a customer, a person): delete its key, so that the personal data of
    /// it in every event reads as forgotten from now on, everywhere. It cannot be undone.
    Forget {
        /// The subject's id, as the events' personal fields name it.
        subject: String,
    },
    /// Print every recorded event as a JSON line (the input of `import`).
    Export {
        /// First position.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Store exported events as they were: ids, order, revisions and times.
    Import {
        /// The file to read (default: stdin).
        file: Option<PathBuf>,
    },
    /// Events that an event processor's handlers gave up on: list them, or have them replayed.
    Deadletters {
        #[command(subcommand)]
        action: DeadLetters,
    },
    /// Persistent subscription groups: list them, describe one, replay its parked messages.
    Subscriptions {
        #[command(subcommand)]
        action: Subscriptions,
    },
    /// Dynamic consistency boundaries: read by a query of types and tags, append conditional
    /// on a query, follow a query. The JSON is that of the HTTP API's `/dcb/…`.
    Dcb {
        #[command(subcommand)]
        action: Dcb,
    },
    /// Projections' read models: their lag, and rebuilds.
    Projections {
        #[command(subcommand)]
        action: crate::projections::Projections,
    },
    /// Measure appends and reads against PostgreSQL and SQLite on the same machine.
    Bench(factum_bench::BenchArgs),
    /// Serve the event store over HTTP: the JSON API, server-sent events, health and metrics.
    /// Stops on SIGTERM or Ctrl-C after finishing the requests in flight.
    Serve {
        /// The address to listen on. Without an auth configuration only loopback addresses
        /// are allowed.
        #[arg(long, env = "FACTUM_LISTEN", default_value = "127.0.0.1:2113")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        security: ServeSecurity,
        #[command(flatten)]
        limits: ServeLimits,
        /// A read model (a SQLite file or a PostgreSQL URL) whose projections' lag the server
        /// reports at `/projections` and in `/metrics`.
        #[arg(long)]
        read_model: Option<String>,
        /// The PostgreSQL schema of --read-model.
        #[arg(long, default_value = "public")]
        read_model_schema: String,
        /// A relays file (TOML): relays that publish from the log to NATS JetStream or
        /// RabbitMQ while the server runs.
        #[arg(long, env = "FACTUM_RELAYS")]
        relays: Option<PathBuf>,
    },
    /// Run the relays of a relays file (TOML) without the HTTP server: each follows the log
    /// from its checkpoint and publishes to NATS JetStream or RabbitMQ until SIGTERM or Ctrl-C.
    Relay {
        /// The relays file.
        config: PathBuf,
    },
    /// A walk through the event store on the embedded engine: a shopping cart.
    Demo,
    /// (Used by `bench --scenarios open`.) Open the store, serve reads, report time and memory.
    #[command(hide = true)]
    BenchOpen,
}

#[derive(Subcommand)]
pub enum DeadLetters {
    /// Print the unresolved dead letters of an event processor (failed events) or a consumer
    /// (parked broker messages), one JSON object a line; with no name, print each one that has
    /// any, with their number.
    List {
        /// The processor's or consumer's name.
        processor: Option<String>,
    },
    /// Ask an event processor or a consumer to replay its dead letters: it does so the next
    /// time it starts, and those whose handler or command now succeeds are resolved.
    Replay {
        /// The processor's or consumer's name.
        processor: String,
    },
}

#[derive(Subcommand)]
pub enum Dcb {
    /// Print the events matching a query and the head to condition an append on, as one JSON
    /// object `{"events": [...], "head": H}`. The request, as `POST /dcb/read` takes it
    /// (`{"query": {"items": [{"types": [...], "tags": [...]}]}, "after": P, "limit": N,
    /// "backwards": false}`), is the argument or stdin.
    Read {
        /// The request as JSON (default: read from stdin).
        request: Option<String>,
    },
    /// Append events with tags, all or none, if the condition holds; prints
    /// `{"position": P}`. The request, as `POST /dcb/append` takes it (`{"events": [{"type",
    /// "data", "tags", "stream"?, "id"?, "metadata"?}], "condition": {"fail_if_events_match":
    /// {...}, "after": P}, "expected": [{"stream", "state"}]}`), is the argument or stdin. A
    /// failed condition exits 3 and writes nothing.
    Append {
        /// The request as JSON (default: read from stdin).
        request: Option<String>,
    },
    /// Print the events matching a query, one JSON line each, then new ones as they are
    /// appended, until interrupted.
    Tail {
        /// The query as JSON (default: every event of user streams).
        #[arg(long)]
        query: Option<String>,
        /// Only events after this position (default: the current end, showing only new ones).
        #[arg(long)]
        after: Option<u64>,
        /// From the first event (instead of the current end).
        #[arg(long, conflicts_with = "after")]
        from_start: bool,
    },
}

/// The request of `factum dcb read|append`: the argument, or stdin.
pub fn dcb_request(argument: Option<String>) -> Result<Vec<u8>> {
    match argument {
        Some(text) => Ok(text.into_bytes()),
        None => {
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut body)
                .context("reading the request from stdin")?;
            Ok(body)
        }
    }
}

#[derive(Subcommand)]
pub enum Subscriptions {
    /// Print every persistent subscription group, one JSON object a line: its source, name,
    /// settings, consumers, messages in flight and parked, checkpoint and lag.
    List {
        /// Only the groups of this source (a stream's name, or `$all`).
        #[arg(long)]
        source: Option<String>,
    },
    /// Print one group as JSON.
    Describe {
        /// A stream's name, or `$all`.
        source: String,
        /// The group's name.
        group: String,
    },
    /// Deliver a group's parked messages again, before new ones: at once on a server
    /// (`--server`), or, where the store is, when the group next runs.
    ReplayParked {
        /// A stream's name, or `$all`.
        source: String,
        /// The group's name.
        group: String,
        /// Replay only the first this many.
        #[arg(long)]
        stop_at: Option<u64>,
    },
}

/// Who may use the server, and over what.
#[derive(clap::Args)]
pub struct ServeSecurity {
    /// A TOML file of bearer tokens with read, write and admin rights on stream prefixes.
    /// Without one, every request is allowed and the server listens on loopback only.
    #[arg(long, env = "FACTUM_AUTH")]
    pub auth: Option<PathBuf>,
    /// A PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, env = "FACTUM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "FACTUM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// What the server takes on at once: load beyond it is refused (or waits), so that clients
/// cannot exhaust its memory.
#[derive(clap::Args)]
pub struct ServeLimits {
    /// The most subscriptions (server-sent events and gRPC) open at once; a new one beyond it
    /// gets 503 with Retry-After (gRPC: UNAVAILABLE).
    #[arg(long, env = "FACTUM_MAX_SUBSCRIPTIONS", default_value_t = 4096)]
    pub max_subscriptions: usize,
    /// The most subscriptions one token holds at once; beyond it 429 with Retry-After (gRPC:
    /// RESOURCE_EXHAUSTED).
    #[arg(
        long,
        env = "FACTUM_MAX_SUBSCRIPTIONS_PER_TOKEN",
        default_value_t = 1024
    )]
    pub max_subscriptions_per_token: usize,
    /// The most client connections open at once; further ones wait to be accepted.
    #[arg(long, env = "FACTUM_MAX_CONNECTIONS", default_value_t = 16384)]
    pub max_connections: usize,
    /// Seconds a subscriber may take nothing while events wait for it before its connection is
    /// closed.
    #[arg(long, env = "FACTUM_STALL_TIMEOUT", default_value_t = 60)]
    pub stall_timeout: u64,
    /// Seconds a connection may send nothing before it is closed: one that sends nothing at
    /// all, an HTTP/1.1 connection between requests, an HTTP/2 connection that does not
    /// answer a ping (a request in flight is never cut).
    #[arg(long, env = "FACTUM_IDLE_TIMEOUT", default_value_t = 60)]
    pub idle_timeout: u64,
    /// Bytes of the kernel's send buffer for each connection (0: the kernel's autotuning). A
    /// client that stops reading holds about twice this in the kernel; a consumer far away
    /// reads at most about this much per round trip: raise it for those.
    #[arg(long, env = "FACTUM_SEND_BUFFER", default_value_t = 65536)]
    pub send_buffer: usize,
}

pub fn stream_arg(name: &str) -> Result<StreamName> {
    StreamName::user(name).map_err(|e| bad(e.to_string()))
}

pub fn expected_arg(text: &str) -> Result<ExpectedState> {
    text.parse().map_err(|e: StoreError| bad(e.to_string()))
}

/// Reads the events of `factum append` from stdin, checking every line before anything is
/// sent: each as parsed, and as given (what goes to a server).
pub fn stdin_events() -> Result<Vec<(NewEvent, String)>> {
    let mut events = Vec::new();
    for (number, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let event = event_line(&line).map_err(|why| {
            bad(format!(
                "line {}: {why}; each line is one event, a JSON object such as \
                 {{\"type\": \"ItemAdded\", \"data\": {{\"sku\": \"pear\"}}}}",
                number + 1
            ))
        })?;
        events.push((event, line));
    }
    if events.is_empty() {
        return Err(bad("no events on stdin (one JSON object a line)"));
    }
    Ok(events)
}

/// One line of `factum append`'s input as an event, or what is wrong with it.
fn event_line(line: &str) -> std::result::Result<NewEvent, String> {
    // serde_json ends its messages with "at line 1 column N": the line is ours to name.
    let without_place = |message: &str| {
        message
            .rsplit_once(" at line ")
            .map_or(message, |(message, _)| message)
            .to_owned()
    };
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(line) {
        let message = without_place(&e.to_string());
        return Err(format!("not JSON ({message} at column {})", e.column()));
    }
    json::parse_event_line(line).map_err(|e| match e {
        StoreError::InvalidInput(why) => without_place(&why),
        other => other.to_string(),
    })
}

/// The new metadata of `factum metadata --set`.
pub fn metadata_arg(set: Option<String>) -> Result<Option<StreamMetadata>> {
    set.map(|text| {
        serde_json::from_str(&text).map_err(|e| {
            bad(format!(
                "--set: {e} (keys: max_count, max_age_secs, truncate_before, custom)"
            ))
        })
    })
    .transpose()
}
