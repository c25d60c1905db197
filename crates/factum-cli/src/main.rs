//! `factum`: the command line over the embedded store. JSON lines in and out.

mod bench;
mod bench_http;
mod bench_projections;
mod bench_relay;
mod bench_toolkit;
mod demo;

mod projections;
mod relays;
mod remote;
mod store;

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::{Parser, Subcommand};
use factum_core::{
    Direction, EventStore, ExpectedState, StoreError, StreamMetadata, StreamName,
    SubscriptionFilter,
};
use factum_server::json;
use indicatif::{ProgressBar, ProgressStyle};

// Reads and appends allocate many small objects; mimalloc keeps that fast and keeps freed
// memory for reuse instead of returning it to the system between pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Factum: an event store. Events in and out as JSON lines.
#[derive(Parser)]
#[command(name = "factum", version, about)]
struct Cli {
    /// The data directory of the embedded store.
    #[arg(
        long,
        global = true,
        env = "FACTUM_DATA_DIR",
        default_value = "./factum-data"
    )]
    data_dir: PathBuf,
    /// Use the store in PostgreSQL at this URL (postgres://user@host/db) instead of the
    /// embedded store in --data-dir. TLS as with libpq: ?sslmode=verify-full&sslrootcert=ca.pem
    /// (encrypted whenever the server offers it unless sslmode=disable).
    #[arg(long, global = true, env = "FACTUM_STORE")]
    store: Option<String>,
    /// The PostgreSQL schema of the store (with --store).
    #[arg(
        long,
        global = true,
        env = "FACTUM_STORE_SCHEMA",
        default_value = "factum"
    )]
    store_schema: String,
    /// Send append, read, read-all, tail, streams, delete, metadata and export to a running
    /// `factum serve` at this URL (http://127.0.0.1:2113) instead of opening the store: the
    /// server holds the embedded store's directory while it runs.
    #[arg(long, global = true, env = "FACTUM_SERVER", conflicts_with = "store")]
    server: Option<String>,
    /// A bearer token for --server (a token of the server's auth configuration).
    #[arg(long, global = true, env = "FACTUM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A PEM certificate to trust for an https --server, besides the system's.
    #[arg(long, global = true, env = "FACTUM_SERVER_CA")]
    server_ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    /// Projections' read models: their lag, and rebuilds.
    Projections {
        #[command(subcommand)]
        action: projections::Projections,
    },
    /// Measure appends and reads against PostgreSQL and SQLite on the same machine.
    Bench(bench::BenchArgs),
    /// Serve the event store over HTTP: the JSON API, server-sent events, health and metrics.
    /// Stops on SIGTERM or Ctrl-C after finishing the requests in flight.
    Serve {
        /// The address to listen on. Without an auth configuration only loopback addresses
        /// are allowed.
        #[arg(long, env = "FACTUM_LISTEN", default_value = "127.0.0.1:2113")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        security: ServeSecurity,
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

/// Exit codes a script can act on.
mod exit {
    pub const FAILURE: u8 = 1;
    pub const INVALID_INPUT: u8 = 2;
    pub const WRONG_EXPECTED_REVISION: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
    pub const DELETED: u8 = 5;
    pub const CORRUPTED: u8 = 6;
    pub const LOCKED: u8 = 7;
}

/// Bad input found by the command line itself (before the store saw it).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadInput(String);

fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<BadInput>().is_some() {
        return exit::INVALID_INPUT;
    }
    if let Some(answer) = error.downcast_ref::<remote::ServerError>() {
        return answer.exit_code();
    }
    match error.downcast_ref::<factum_projections::ProjectionError>() {
        Some(factum_projections::ProjectionError::Invalid(_)) => return exit::INVALID_INPUT,
        Some(factum_projections::ProjectionError::UnknownProjection(_)) => return exit::NOT_FOUND,
        Some(factum_projections::ProjectionError::Store(e)) => return store_exit_code(e),
        _ => {}
    }
    error
        .downcast_ref::<StoreError>()
        .map_or(exit::FAILURE, store_exit_code)
}

fn store_exit_code(error: &StoreError) -> u8 {
    match error {
        StoreError::InvalidInput(_) => exit::INVALID_INPUT,
        StoreError::WrongExpectedRevision { .. } | StoreError::CheckpointBehind { .. } => {
            exit::WRONG_EXPECTED_REVISION
        }
        StoreError::NotFound(_) => exit::NOT_FOUND,
        StoreError::StreamDeleted(_) => exit::DELETED,
        StoreError::Corrupted { .. } => exit::CORRUPTED,
        StoreError::Locked(_) | StoreError::Claimed(_) => exit::LOCKED,
        _ => exit::FAILURE,
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            if let Some(StoreError::Locked(_)) = error.downcast_ref::<StoreError>() {
                eprintln!(
                    "hint: while `factum serve` runs on this directory, send the command to it: \
                     factum --server http://127.0.0.1:2113 …"
                );
            }
            ExitCode::from(exit_code(&error))
        }
    }
}

fn bad(message: impl Into<String>) -> anyhow::Error {
    anyhow!(BadInput(message.into()))
}

fn stream_arg(name: &str) -> Result<StreamName> {
    StreamName::user(name).map_err(|e| bad(e.to_string()))
}

fn expected_arg(text: &str) -> Result<ExpectedState> {
    text.parse().map_err(|e: StoreError| bad(e.to_string()))
}

#[derive(Subcommand)]
enum DeadLetters {
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

/// Who may use the server, and over what.
#[derive(clap::Args)]
struct ServeSecurity {
    /// A TOML file of bearer tokens with read, write and admin rights on stream prefixes.
    /// Without one, every request is allowed and the server listens on loopback only.
    #[arg(long, env = "FACTUM_AUTH")]
    auth: Option<PathBuf>,
    /// A PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, env = "FACTUM_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "FACTUM_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// `factum serve`: the embedded store over HTTP until SIGTERM or Ctrl-C.
async fn serve(
    dir: &store::Location,
    listen: std::net::SocketAddr,
    security: ServeSecurity,
    read_model: Option<std::sync::Arc<dyn factum_projections::ReadModel>>,
    relays: Option<&std::path::Path>,
) -> Result<()> {
    let mut config = factum_server::Config {
        read_model,
        ..factum_server::Config::default()
    };
    if let Some(path) = &security.auth {
        config.auth = Some(std::sync::Arc::new(
            factum_server::auth::Auth::load(path).map_err(|e| bad(e.to_string()))?,
        ));
    }
    if let (Some(cert), Some(key)) = (&security.tls_cert, &security.tls_key) {
        config.tls = Some(factum_server::tls::load(cert, key).map_err(|e| bad(e.to_string()))?);
    }
    if config.auth.is_none() && !listen.ip().is_loopback() {
        return Err(bad(format!(
            "{listen} is not a loopback address: without an auth configuration (--auth) the \
             server listens on loopback only"
        )));
    }
    let store = open(dir).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let access = match (&config.auth, &security.auth) {
        (Some(auth), Some(path)) => format!("{} tokens from {}", auth.len(), path.display()),
        _ => "no auth configured, so loopback only".to_owned(),
    };
    eprintln!(
        "factum serve: {scheme}://{address} ({}); {access}. Stop with Ctrl-C or SIGTERM.",
        dir.describe()
    );
    if dir.postgres.is_none() {
        eprintln!(
            "factum serve: the server holds {} while it runs; from another terminal: \
             factum --server {scheme}://{address} read|append|tail|export …",
            dir.data_dir.display()
        );
    }
    if config.auth.is_some() && config.tls.is_none() && !listen.ip().is_loopback() {
        eprintln!(
            "factum serve: warning: tokens travel in clear text without TLS (--tls-cert, --tls-key)"
        );
    }
    let relays = match relays {
        Some(path) => Some(relays::start(path, store.shared(), "factum serve").await?),
        None => None,
    };
    factum_server::serve(listener, store.shared(), config, terminated()).await?;
    if let Some(relays) = relays {
        relays.stop().await?;
    }
    store.close()?;
    eprintln!("factum serve: stopped");
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C.
async fn terminated() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match terminate.as_mut() {
                Some(signal) => { signal.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// `factum relay FILE`: the relays alone, until SIGTERM or Ctrl-C.
async fn relay(dir: &store::Location, config: &std::path::Path) -> Result<()> {
    let store = open(dir).await?;
    let mut running = relays::start(config, store.shared(), "factum relay").await?;
    if running.len() == 0 {
        return Err(bad(format!("{} names no relay", config.display())));
    }
    eprintln!(
        "factum relay: {} relays on {}. Stop with Ctrl-C or SIGTERM.",
        running.len(),
        dir.describe()
    );
    tokio::select! {
        () = terminated() => running.stop().await?,
        failed = running.until_failed() => failed?,
    }
    store.close()?;
    eprintln!("factum relay: stopped");
    Ok(())
}

async fn open(location: &store::Location) -> Result<store::Store> {
    store::Store::open(location).await
}

fn stdout() -> BufWriter<std::io::StdoutLock<'static>> {
    BufWriter::with_capacity(1 << 16, std::io::stdout().lock())
}

async fn dead_letters(dir: &store::Location, action: DeadLetters) -> Result<()> {
    use factum::processor::{
        dead_letter_stream, processor_statuses, request_replay, unresolved_dead_letters,
        unresolved_records,
    };
    let processor_arg = |name: &str| -> Result<()> {
        dead_letter_stream(name)
            .map(drop)
            .map_err(|e| bad(format!("processor name: {e}")))
    };
    match action {
        DeadLetters::List {
            processor: Some(processor),
        } => {
            processor_arg(&processor)?;
            let store = open(dir).await?;
            let mut out = stdout();
            for letter in unresolved_dead_letters(&*store, &processor).await? {
                writeln!(out, "{}", serde_json::to_string(&letter)?)?;
            }
            // A consumer's parked broker messages.
            for letter in factum_relay::unresolved_message_dead_letters(&*store, &processor).await?
            {
                writeln!(out, "{}", serde_json::to_string(&letter)?)?;
            }
            out.flush()?;
            store.close()?;
        }
        DeadLetters::List { processor: None } => {
            let store = open(dir).await?;
            let mut out = stdout();
            for processor in processor_statuses(&*store).await? {
                if processor.dead_letters > 0 {
                    writeln!(
                        out,
                        "{}",
                        serde_json::json!({
                            "processor": processor.name,
                            "unresolved": processor.dead_letters,
                        })
                    )?;
                }
            }
            out.flush()?;
            store.close()?;
        }
        DeadLetters::Replay { processor } => {
            processor_arg(&processor)?;
            let store = open(dir).await?;
            let unresolved = unresolved_records(&*store, &processor).await?.len();
            if unresolved == 0 {
                println!(
                    "{}",
                    serde_json::json!({"processor": processor, "unresolved": 0, "replay_requested": false})
                );
                eprintln!("'{processor}' has no dead letters to replay");
            } else {
                let position = request_replay(&*store, &processor).await?;
                println!(
                    "{}",
                    serde_json::json!({
                        "processor": processor,
                        "unresolved": unresolved,
                        "replay_requested": true,
                        "position": position,
                    })
                );
                eprintln!(
                    "'{processor}' replays its {unresolved} dead letter(s) when it next starts"
                );
            }
            store.close()?;
        }
    }
    Ok(())
}

/// Reads the events of `factum append` from stdin, checking every line before anything is
/// sent: each as parsed, and as given (what goes to a server).
fn stdin_events() -> Result<Vec<(factum_core::NewEvent, String)>> {
    let mut events = Vec::new();
    for (number, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let event = json::parse_event_line(&line)
            .map_err(|e| bad(format!("line {}: {e:#}", number + 1)))?;
        events.push((event, line));
    }
    if events.is_empty() {
        return Err(bad("no events on stdin (one JSON object a line)"));
    }
    Ok(events)
}

/// The new metadata of `factum metadata --set`.
fn metadata_arg(set: Option<String>) -> Result<Option<StreamMetadata>> {
    set.map(|text| {
        serde_json::from_str(&text).map_err(|e| {
            bad(format!(
                "--set: {e} (keys: max_count, max_age_secs, truncate_before, custom)"
            ))
        })
    })
    .transpose()
}

/// A command sent to a running `factum serve` (`--server`).
async fn run_remote(remote: &remote::Remote, command: Command) -> Result<()> {
    match command {
        Command::Append { stream, expected } => {
            let stream = stream_arg(&stream)?;
            expected_arg(&expected)?;
            let mut lines = Vec::new();
            for (_, line) in stdin_events()? {
                lines.push(
                    serde_json::value::RawValue::from_string(line)
                        .map_err(|e| bad(e.to_string()))?,
                );
            }
            let written = remote.append(stream.as_str(), &expected, lines).await?;
            println!("{written}");
        }
        Command::Read {
            stream,
            from,
            backwards,
            limit,
        } => {
            let stream = StreamName::new(stream).map_err(|e| bad(e.to_string()))?;
            let mut out = stdout();
            remote
                .read(stream.as_str(), from, backwards, limit, &mut out)
                .await?;
        }
        Command::ReadAll {
            from,
            backwards,
            limit,
        } => {
            let mut out = stdout();
            remote.read_all(from, backwards, limit, &mut out).await?;
        }
        Command::Tail {
            from,
            stream_prefixes,
            event_types,
        } => remote.tail(from, &stream_prefixes, &event_types).await?,
        Command::Streams { prefix, limit } => {
            let mut out = stdout();
            remote.streams(&prefix, limit, &mut out).await?;
        }
        Command::Delete {
            stream,
            tombstone,
            expected,
        } => {
            let stream = stream_arg(&stream)?;
            expected_arg(&expected)?;
            let position = remote.delete(stream.as_str(), tombstone, &expected).await?;
            println!(
                "{}",
                serde_json::json!({"stream": stream.as_str(), "tombstoned": tombstone, "position": position})
            );
        }
        Command::Metadata { stream, set } => {
            let stream = stream_arg(&stream)?;
            let new = metadata_arg(set)?;
            let metadata = remote.metadata(stream.as_str(), new.as_ref()).await?;
            println!("{}", serde_json::to_string(&metadata)?);
        }
        Command::Export { from } => {
            let bar = count_bar(0, "exporting");
            let mut out = stdout();
            remote
                .export(from, &mut out, |done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                })
                .await?;
            bar.finish_and_clear();
        }
        _ => {
            return Err(bad(
                "--server: only append, read, read-all, tail, streams, delete, metadata and \
                 export go to a server; run this command where the store is (with --data-dir or --store)",
            ));
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    if let Some(server) = &cli.server {
        let remote = remote::Remote::new(server, cli.token.as_deref(), cli.server_ca.as_deref())?;
        return run_remote(&remote, cli.command).await;
    }
    let location = store::Location::new(cli.data_dir.clone(), cli.store, cli.store_schema)?;
    let dir = &location;
    match cli.command {
        Command::Append { stream, expected } => {
            let stream = stream_arg(&stream)?;
            let expected = expected_arg(&expected)?;
            // Parse and check every line before anything is written.
            let events = stdin_events()?
                .into_iter()
                .map(|(event, _)| event)
                .collect();
            let store = open(dir).await?;
            let result = store.append(&stream, expected, events).await?;
            println!(
                "{}",
                serde_json::json!({
                    "stream": stream.as_str(),
                    "first_revision": result.first_revision,
                    "last_revision": result.last_revision,
                    "position": result.position,
                })
            );
            store.close()?;
        }
        Command::Read {
            stream,
            from,
            backwards,
            limit,
        } => {
            let stream = StreamName::new(stream).map_err(|e| bad(e.to_string()))?;
            let store = open(dir).await?;
            print_pages(
                limit,
                from,
                backwards,
                |from, direction, page| {
                    let store = store.clone();
                    let stream = stream.clone();
                    async move { store.read_stream(&stream, from, direction, page).await }
                },
                |e| e.revision,
            )
            .await?;
        }
        Command::ReadAll {
            from,
            backwards,
            limit,
        } => {
            let store = open(dir).await?;
            print_pages(
                limit,
                from,
                backwards,
                |from, direction, page| {
                    let store = store.clone();
                    async move { store.read_all(from, direction, page).await }
                },
                |e| e.position,
            )
            .await?;
        }
        Command::Tail {
            from,
            stream_prefixes,
            event_types,
        } => {
            let store = open(dir).await?;
            let from = from.unwrap_or_else(|| store.head());
            let filter = SubscriptionFilter {
                stream_prefixes,
                event_types,
                exclude_system: false,
            };
            let mut subscription = store.subscribe_all(from, filter);
            loop {
                tokio::select! {
                    event = subscription.next() => {
                        let event = event?;
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "{}", json::to_line(&event)?)?;
                        out.flush()?;
                    }
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
        }
        Command::Streams { prefix, limit } => {
            let store = open(dir).await?;
            let mut out = stdout();
            for_each_stream_page(&*store, &prefix, limit, |page| {
                for info in page {
                    writeln!(out, "{}", serde_json::to_string(&info)?)?;
                }
                Ok(())
            })
            .await?;
            out.flush()?;
        }
        Command::Delete {
            stream,
            tombstone,
            expected,
        } => {
            let stream = stream_arg(&stream)?;
            let expected = expected_arg(&expected)?;
            let store = open(dir).await?;
            let position = if tombstone {
                store.tombstone_stream(&stream, expected).await?
            } else {
                store.delete_stream(&stream, expected).await?
            };
            println!(
                "{}",
                serde_json::json!({"stream": stream.as_str(), "tombstoned": tombstone, "position": position})
            );
            store.close()?;
        }
        Command::Metadata { stream, set } => {
            let stream = stream_arg(&stream)?;
            let new = metadata_arg(set)?;
            let store = open(dir).await?;
            if let Some(metadata) = new {
                store.set_metadata(&stream, metadata).await?;
            }
            let metadata = store.get_metadata(&stream).await?;
            println!("{}", serde_json::to_string(&metadata.unwrap_or_default())?);
            store.close()?;
        }
        Command::Deadletters { action } => dead_letters(dir, action).await?,
        Command::Projections { action } => projections::run(dir, action).await?,
        Command::Verify => {
            let store = open(dir).await?;
            let bar = bytes_bar(0, "verifying");
            let report = store
                .verify(|done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                })
                .await;
            bar.finish_and_clear();
            println!("{}", report?);
        }
        Command::Export { from } => {
            let store = open(dir).await?;
            let head = store.head();
            let bar = count_bar(head.saturating_sub(from), "exporting");
            let mut out = stdout();
            let mut next = from;
            while next < head {
                let events = store.read_all(next, Direction::Forwards, 4096).await?;
                let Some(last) = events.last() else { break };
                next = last.position + 1;
                for event in &events {
                    writeln!(out, "{}", json::to_line(event)?)?;
                }
                bar.inc(events.len() as u64);
            }
            out.flush()?;
            bar.finish_and_clear();
        }
        Command::Import { file } => import(dir, file).await?,
        Command::Bench(args) => bench::run(dir, args).await?,
        Command::Serve {
            listen,
            security,
            read_model,
            read_model_schema,
            relays,
        } => {
            let read_model = match read_model {
                Some(url) => Some(projections::open_url(&url, &read_model_schema).await?),
                None => None,
            };
            serve(dir, listen, security, read_model, relays.as_deref()).await?
        }
        Command::Relay { config } => relay(dir, &config).await?,
        Command::Demo => demo::run(&dir.data_dir).await?,
        Command::BenchOpen => bench::open_child(&dir.data_dir).await?,
    }
    Ok(())
}

/// Hands the streams whose names start with `prefix` to `visit`, a page at a time, up to
/// `limit` streams in name order.
async fn for_each_stream_page(
    store: &dyn EventStore,
    prefix: &str,
    limit: u64,
    mut visit: impl FnMut(Vec<factum_core::StreamInfo>) -> Result<()>,
) -> Result<()> {
    let mut after: Option<StreamName> = None;
    let mut left = limit;
    while left > 0 {
        let page = store
            .list_streams(prefix, after.as_ref(), left.min(10_000) as usize)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.name.clone());
        left -= page.len() as u64;
        visit(page)?;
    }
    Ok(())
}

/// Prints pages of events until `limit` events or the end, from `from` (default: the start, or
/// the end when reading backwards); `key` is what the next page starts after.
async fn print_pages<F, Fut>(
    limit: u64,
    from: Option<u64>,
    backwards: bool,
    mut read: F,
    key: impl Fn(&factum_core::RecordedEvent) -> u64,
) -> Result<()>
where
    F: FnMut(u64, Direction, usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<factum_core::RecordedEvent>, StoreError>>,
{
    let (direction, mut from) = if backwards {
        (Direction::Backwards, from.unwrap_or(u64::MAX))
    } else {
        (Direction::Forwards, from.unwrap_or(0))
    };
    let mut out = stdout();
    let mut left = limit;
    while left > 0 {
        let events = read(from, direction, left.min(4096) as usize).await?;
        let Some(last) = events.last() else { break };
        let last_key = key(last);
        left -= events.len() as u64;
        for event in &events {
            writeln!(out, "{}", json::to_line(event)?)?;
        }
        if backwards {
            let Some(next) = last_key.checked_sub(1) else {
                break;
            };
            from = next;
        } else {
            from = last_key + 1;
        }
    }
    out.flush()?;
    Ok(())
}

fn bytes_bar(total: u64, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

fn count_bar(total: u64, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {human_pos}/{human_len} events {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

/// Imports exported events. Every line is parsed and checked before anything is written.
async fn import(dir: &store::Location, file: Option<PathBuf>) -> Result<()> {
    let reader: Box<dyn BufRead> = match &file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut events = Vec::new();
    let mut next_revision: std::collections::HashMap<StreamName, u64> = Default::default();
    for (number, line) in reader.lines().enumerate() {
        let line = line.context("reading the input")?;
        if line.trim().is_empty() {
            continue;
        }
        let event =
            json::from_line(&line).map_err(|e| bad(format!("line {}: {e:#}", number + 1)))?;
        event
            .to_new_event()
            .validate(true)
            .map_err(|e| bad(format!("line {}: {e}", number + 1)))?;
        if let Some(expected) = next_revision.get(&event.stream)
            && *expected != event.revision
        {
            return Err(bad(format!(
                "line {}: stream '{}' jumps from revision {} to {}",
                number + 1,
                event.stream,
                expected - 1,
                event.revision
            )));
        }
        next_revision.insert(event.stream.clone(), event.revision + 1);
        events.push(event);
    }
    let store = open(dir).await?;
    let bar = count_bar(events.len() as u64, "importing");
    let total = events.len();
    let mut rest = events.into_iter().peekable();
    while rest.peek().is_some() {
        let batch: Vec<_> = rest.by_ref().take(4096).collect();
        let count = batch.len() as u64;
        store.import(batch).await?;
        bar.inc(count);
    }
    bar.finish_and_clear();
    println!(
        "{}",
        serde_json::json!({"imported": total, "head": store.head()})
    );
    store.close()?;
    Ok(())
}
