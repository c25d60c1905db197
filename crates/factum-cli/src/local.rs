//! The commands run where the store is: the embedded store in `--data-dir`, or PostgreSQL
//! with `--store`.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use factum::{Direction, EventStore, StoreError, StreamName, SubscriptionFilter, server::json};

use crate::args::{
    Command, DeadLetters, ServeSecurity, expected_arg, metadata_arg, stdin_events, stream_arg,
};
use crate::args::{Dcb, Subscriptions, dcb_request};
use crate::progress::{bytes_bar, count_bar};
use crate::{bad, demo, projections, relays, stdout, store};

/// Runs `command` on the store at `location`.
pub async fn run(location: &store::Location, command: Command) -> Result<()> {
    let dir = location;
    match command {
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
            close_after_write(&store);
        }
        Command::Read {
            stream,
            from,
            backwards,
            limit,
        } => {
            let stream = StreamName::new(stream).map_err(|e| bad(e.to_string()))?;
            let store = open_read_only(dir).await?;
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
            let store = open_read_only(dir).await?;
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
            let store = open_read_only(dir).await?;
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
            let store = open_read_only(dir).await?;
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
            close_after_write(&store);
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
            close_after_write(&store);
        }
        Command::Deadletters { action } => dead_letters(dir, action).await?,
        Command::Subscriptions { action } => subscriptions(dir, action).await?,
        Command::Dcb { action } => dcb(dir, action).await?,
        Command::Projections { action } => projections::run(dir, action).await?,
        Command::Verify => {
            let store = open_read_only(dir).await?;
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
        Command::Scavenge { past_checkpoints } => {
            let store = open(dir).await?;
            let bar = bytes_bar(0, "scavenging");
            let progress = {
                let bar = bar.clone();
                move |done: u64, total: u64| {
                    bar.set_length(total);
                    bar.set_position(done);
                }
            };
            let report = factum::scavenge(&*store, past_checkpoints, &progress).await;
            bar.finish_and_clear();
            println!("{}", scavenge_report(&report?));
        }
        Command::Forget { subject } => {
            let store = open(dir).await?;
            factum::forget_subject(&*store, &subject).await?;
            println!("{}", serde_json::json!({"forgotten": subject}));
        }
        Command::Export { from } => {
            let store = open_read_only(dir).await?;
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
        Command::Bench(args) => {
            factum_bench::run(&dir.data_dir, dir.postgres.as_deref(), args).await?
        }
        Command::Serve {
            listen,
            security,
            limits,
            read_model,
            read_model_schema,
            relays,
        } => {
            let read_model = match read_model {
                Some(url) => Some(projections::open_url(&url, &read_model_schema).await?),
                None => None,
            };
            serve(dir, listen, security, limits, read_model, relays.as_deref()).await?
        }
        Command::Relay { config } => relay(dir, &config).await?,
        Command::Demo => demo::run(&dir.data_dir).await?,
        Command::BenchOpen => factum_bench::open_child(&dir.data_dir).await?,
    }
    Ok(())
}

/// `factum serve`: the embedded store over HTTP until SIGTERM or Ctrl-C.
async fn serve(
    dir: &store::Location,
    listen: std::net::SocketAddr,
    security: ServeSecurity,
    limits: crate::args::ServeLimits,
    read_model: Option<std::sync::Arc<dyn factum::ReadModel>>,
    relays: Option<&std::path::Path>,
) -> Result<()> {
    if limits.max_subscriptions == 0 || limits.max_connections == 0 {
        anyhow::bail!(bad(
            "--max-subscriptions and --max-connections must be at least 1"
        ));
    }
    let mut config = factum::server::Config {
        read_model,
        max_subscriptions: limits.max_subscriptions,
        max_subscriptions_per_token: limits.max_subscriptions_per_token,
        max_connections: limits.max_connections,
        stall_timeout: std::time::Duration::from_secs(limits.stall_timeout.max(1)),
        idle_timeout: std::time::Duration::from_secs(limits.idle_timeout.max(1)),
        send_buffer: (limits.send_buffer > 0).then_some(limits.send_buffer),
        ..factum::server::Config::default()
    };
    if let Some(path) = &security.auth {
        config.auth = Some(std::sync::Arc::new(
            factum::server::auth::Auth::load(path).map_err(|e| bad(e.to_string()))?,
        ));
    }
    if let (Some(cert), Some(key)) = (&security.tls_cert, &security.tls_key) {
        config.tls = Some(factum::server::tls::load(cert, key).map_err(|e| bad(e.to_string()))?);
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
    factum::server::serve(listener, store.shared(), config, terminated()).await?;
    if let Some(relays) = relays {
        relays.stop().await?;
    }
    close_after_write(&store);
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
    close_after_write(&store);
    eprintln!("factum relay: stopped");
    Ok(())
}

async fn open(location: &store::Location) -> Result<store::Store> {
    store::Store::open(location).await
}

/// Opens the store for a command that only reads: nothing in the data directory is written.
async fn open_read_only(location: &store::Location) -> Result<store::Store> {
    store::Store::open_read_only(location).await
}

/// Closes the store after a write whose result is durable (and printed): a failure to save the
/// index then is a warning, not a failed command — the index is rebuilt from the log on the
/// next open.
fn close_after_write(store: &store::Store) {
    if let Err(e) = store.close() {
        eprintln!(
            "warning: closing the store: {e} (what was written is durable; the index is rebuilt \
             from the log on the next open)"
        );
    }
}

/// A request the server's API would refuse, refused the same way (bad input).
fn refused(error: factum::server::ApiError) -> anyhow::Error {
    bad(error.body().error.clone())
}

/// `factum dcb` where the store is: the requests and answers of the HTTP API's `/dcb/…`.
async fn dcb(dir: &store::Location, action: Dcb) -> Result<()> {
    use factum::server::dcb::{parse_append, parse_query, parse_read, read_answer};
    match action {
        Dcb::Read { request } => {
            let read = parse_read(&dcb_request(request)?).map_err(refused)?;
            let store = open_read_only(dir).await?;
            // The server's default page, so that the command answers as the server does.
            let limit = read.limit.unwrap_or(100);
            let found = store
                .read_query(&read.query, read.after, read.direction, limit)
                .await?;
            println!("{}", read_answer(&found).map_err(refused)?);
            store.close()?;
        }
        Dcb::Append { request } => {
            let append = parse_append(&dcb_request(request)?).map_err(refused)?;
            let store = open(dir).await?;
            let position = store.append_conditional(append).await;
            match position {
                Ok(position) => {
                    println!("{}", serde_json::json!({ "position": position }));
                    close_after_write(&store);
                }
                Err(e) => {
                    store.close()?;
                    return Err(e.into());
                }
            }
        }
        Dcb::Tail {
            query,
            after,
            from_start,
        } => {
            let query = match &query {
                Some(text) => parse_query(text).map_err(refused)?,
                None => factum::Query::all(),
            };
            let store = open(dir).await?;
            let after = match (after, from_start) {
                (Some(after), _) => Some(after),
                (None, true) => None,
                (None, false) => store.head().checked_sub(1),
            };
            let mut subscription = store.subscribe_query(query, after);
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
    }
    Ok(())
}

/// `factum subscriptions` where the store is. The groups run here for as long as the command
/// does: a group that a server sharing the store runs answers that it is served elsewhere.
async fn subscriptions(dir: &store::Location, action: Subscriptions) -> Result<()> {
    let store = open(dir).await?;
    let groups = factum::Groups::open(store.shared()).await?;
    let result = async {
        let mut out = stdout();
        match action {
            Subscriptions::List { source } => {
                let listed = groups.list(source.as_deref()).await?;
                for info in &listed {
                    writeln!(out, "{}", serde_json::to_string(info)?)?;
                }
                if listed.is_empty() {
                    eprintln!("no persistent subscription groups");
                }
            }
            Subscriptions::Describe { source, group } => {
                let info = groups.info(&factum::GroupKey::new(source, group)).await?;
                writeln!(out, "{}", serde_json::to_string_pretty(&info)?)?;
            }
            Subscriptions::ReplayParked {
                source,
                group,
                stop_at,
            } => {
                let key = factum::GroupKey::new(source, group);
                let replayed = groups.replay_parked(&key, stop_at).await?;
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"source": key.source, "group": key.group, "replayed": replayed})
                )?;
                eprintln!("{replayed} parked message(s) of '{key}' are delivered again when the group next runs");
            }
        }
        out.flush()?;
        anyhow::Ok(())
    }
    .await;
    groups.close().await;
    store.close()?;
    result
}

async fn dead_letters(dir: &store::Location, action: DeadLetters) -> Result<()> {
    use factum::{DeadLetters as Letters, dead_letter_stream, processor_statuses};
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
            let store = open_read_only(dir).await?;
            let letters = Letters::of(&*store, &processor)?;
            let mut out = stdout();
            let mut listed = 0;
            for letter in letters.processor_letters().await? {
                writeln!(out, "{}", serde_json::to_string(&letter)?)?;
                listed += 1;
            }
            // A consumer's parked broker messages.
            for letter in factum::unresolved_message_dead_letters(&*store, &processor).await? {
                writeln!(out, "{}", serde_json::to_string(&letter)?)?;
                listed += 1;
            }
            out.flush()?;
            if listed == 0 {
                eprintln!("'{processor}' has no unresolved dead letters");
            }
            store.close()?;
        }
        DeadLetters::List { processor: None } => {
            let store = open_read_only(dir).await?;
            let mut out = stdout();
            let mut listed = 0;
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
                    listed += 1;
                }
            }
            out.flush()?;
            if listed == 0 {
                eprintln!("no processor or consumer has unresolved dead letters");
            }
            store.close()?;
        }
        DeadLetters::Replay { processor } => {
            processor_arg(&processor)?;
            let store = open(dir).await?;
            let letters = Letters::of(&*store, &processor)?;
            let unresolved = letters.unresolved().await?.len();
            if unresolved == 0 {
                println!(
                    "{}",
                    serde_json::json!({"processor": processor, "unresolved": 0, "replay_requested": false})
                );
                eprintln!("'{processor}' has no dead letters to replay");
            } else {
                let position = letters.request_replay().await?;
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
            close_after_write(&store);
        }
    }
    Ok(())
}

/// Hands the streams whose names start with `prefix` to `visit`, a page at a time, up to
/// `limit` streams in name order.
async fn for_each_stream_page(
    store: &dyn EventStore,
    prefix: &str,
    limit: u64,
    mut visit: impl FnMut(Vec<factum::StreamInfo>) -> Result<()>,
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
    key: impl Fn(&factum::RecordedEvent) -> u64,
) -> Result<()>
where
    F: FnMut(u64, Direction, usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<factum::RecordedEvent>, StoreError>>,
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
    close_after_write(&store);
    Ok(())
}

/// A scavenge's report as `factum scavenge` prints it.
pub fn scavenge_report(report: &factum::ScavengeReport) -> serde_json::Value {
    serde_json::json!({
        "ok": true,
        "below": report.below,
        "events_examined": report.events_examined,
        "events_removed": report.events_removed,
        "segments_rewritten": report.segments_rewritten,
        "bytes_before": report.bytes_before,
        "bytes_after": report.bytes_after,
        "bytes_reclaimed": report.bytes_reclaimed(),
    })
}
