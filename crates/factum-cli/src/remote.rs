//! `--server URL`: the commands that have an HTTP counterpart, sent to a running `factum serve`
//! instead of opening the store. The server holds the embedded store's directory, so this is
//! how a second terminal, a script or another machine reads and writes while it runs. Output
//! and exit codes are those of the same command on the store itself.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::Deserialize;
use serde_json::value::RawValue;

use factum::StreamName;

use crate::args::{Command, expected_arg, metadata_arg, stdin_events, stream_arg};
use crate::progress::count_bar;
use crate::{bad, stdout};

/// Events or streams asked for in one request: the server's default largest page.
const PAGE_EVENTS: u64 = 1000;

/// An error answer of the server: its status and the message it gave.
#[derive(Debug, thiserror::Error)]
#[error("{message} (HTTP {status})")]
pub struct ServerError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The server's `error` message.
    pub message: String,
}

impl ServerError {
    /// The command line's exit code for this answer (as for the same error on the store).
    pub fn exit_code(&self) -> u8 {
        match self.status {
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => crate::exit::INVALID_INPUT,
            StatusCode::CONFLICT => crate::exit::WRONG_EXPECTED_REVISION,
            StatusCode::NOT_FOUND => crate::exit::NOT_FOUND,
            StatusCode::GONE => crate::exit::DELETED,
            _ => crate::exit::FAILURE,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// A page of events; each kept as the server wrote it.
#[derive(Deserialize)]
struct Page {
    events: Vec<Box<RawValue>>,
    next: Option<u64>,
    head: Option<u64>,
}

/// A page of streams.
#[derive(Deserialize)]
struct StreamList {
    streams: Vec<Box<RawValue>>,
    next: Option<String>,
}

/// The position of an event.
#[derive(Deserialize)]
struct Positioned {
    position: u64,
}

/// A running `factum serve`.
pub struct Remote {
    base: Url,
    token: Option<HeaderValue>,
    client: reqwest::Client,
}

impl Remote {
    /// The server at `url` (`http://…` or `https://…`); `token` a bearer token of its auth
    /// configuration; `ca` a PEM certificate to trust besides the system's (a server with a
    /// certificate of its own).
    pub fn new(url: &str, token: Option<&str>, ca: Option<&Path>) -> Result<Self> {
        let base = Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| {
                crate::bad(format!(
                    "--server '{url}': give the server's URL, e.g. http://127.0.0.1:2113"
                ))
            })?;
        let token = token
            .map(|t| {
                HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| crate::bad("--token: not a valid header value"))
            })
            .transpose()?;
        let mut builder = reqwest::Client::builder();
        if base.scheme() == "https" {
            for cert in rustls_native_certs::load_native_certs().certs {
                if let Ok(cert) = reqwest::Certificate::from_der(&cert) {
                    builder = builder.add_root_certificate(cert);
                }
            }
        }
        if let Some(path) = ca {
            let bad_ca = |e: &dyn std::fmt::Display| {
                crate::bad(format!("--server-ca {}: {e}", path.display()))
            };
            let pem = std::fs::read(path).map_err(|e| bad_ca(&e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad_ca(&e))?;
            if certs.is_empty() {
                return Err(bad_ca(&"no PEM certificate in it"));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().context("setting up the HTTP client")?;
        Ok(Remote {
            base,
            token,
            client,
        })
    }

    /// A request to the path made of `segments` (each percent-encoded as needed).
    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        let request = self.client.request(method, url);
        match &self.token {
            Some(token) => request.header(AUTHORIZATION, token.clone()),
            None => request,
        }
    }

    /// Sends a request; an error answer becomes a [`ServerError`].
    async fn send(&self, request: RequestBuilder) -> Result<Response> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error)
            .unwrap_or_else(|_| text.trim().to_owned());
        Err(ServerError { status, message }.into())
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, request: RequestBuilder) -> Result<T> {
        let response = self.send(request).await?;
        let text = response
            .text()
            .await
            .context("reading the server's answer")?;
        serde_json::from_str(&text).with_context(|| format!("the server's answer: {text}"))
    }

    /// `factum append`: `events` as read from stdin (already checked).
    pub async fn append(
        &self,
        stream: &str,
        expected: &str,
        events: Vec<Box<RawValue>>,
    ) -> Result<serde_json::Value> {
        let request = self
            .request(Method::POST, &["streams", stream])
            .header("expected-revision", expected)
            .json(&events);
        let mut written: serde_json::Map<String, serde_json::Value> = self.json(request).await?;
        written.insert("stream".into(), stream.into());
        Ok(written.into())
    }

    /// `factum read`: prints up to `limit` events of `stream`.
    pub async fn read(
        &self,
        stream: &str,
        from: Option<u64>,
        backwards: bool,
        limit: u64,
        out: &mut impl Write,
    ) -> Result<()> {
        self.print_pages(&["streams", stream], from, backwards, limit, out)
            .await
    }

    /// `factum read-all`: prints up to `limit` events of `$all` from `from`.
    pub async fn read_all(
        &self,
        from: Option<u64>,
        backwards: bool,
        limit: u64,
        out: &mut impl Write,
    ) -> Result<()> {
        self.print_pages(&["all"], from, backwards, limit, out)
            .await
    }

    /// Prints up to `limit` events of the pages at `segments` (a stream's or `$all`), asking
    /// for each next page until one comes back short.
    async fn print_pages(
        &self,
        segments: &[&str],
        from: Option<u64>,
        backwards: bool,
        limit: u64,
        out: &mut impl Write,
    ) -> Result<()> {
        let mut from = from;
        let mut left = limit;
        while left > 0 {
            let asked = left.min(PAGE_EVENTS);
            let page = self.page(segments, from, backwards, asked).await?;
            left -= print(&page.events, out)?;
            match page.next {
                // A short page ends at the end (or, backwards, at the first event).
                Some(next) if page.events.len() as u64 == asked => from = Some(next),
                _ => break,
            }
        }
        out.flush()?;
        Ok(())
    }

    /// `factum export`: prints every event of `$all` from `from` below the head at the start,
    /// as the server wrote it (the input of `factum import`); `progress` gets (done, total).
    pub async fn export(
        &self,
        from: u64,
        out: &mut impl Write,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<()> {
        let head = self.head().await?;
        let total = head.saturating_sub(from);
        let mut next = from;
        while next < head {
            let page = self.page(&["all"], Some(next), false, PAGE_EVENTS).await?;
            let mut last = None;
            for event in &page.events {
                let position = serde_json::from_str::<Positioned>(event.get())
                    .with_context(|| format!("an event from the server: {}", event.get()))?
                    .position;
                if position >= head {
                    break;
                }
                writeln!(out, "{}", event.get())?;
                last = Some(position);
            }
            let Some(last) = last else { break };
            next = last + 1;
            progress(next - from, total);
        }
        out.flush()?;
        Ok(())
    }

    /// One page of events at `segments` (a stream's or `$all`).
    async fn page(
        &self,
        segments: &[&str],
        from: Option<u64>,
        backwards: bool,
        limit: u64,
    ) -> Result<Page> {
        let direction = if backwards { "backwards" } else { "forwards" };
        let mut query = vec![
            ("direction", direction.to_owned()),
            ("limit", limit.to_string()),
        ];
        if let Some(from) = from {
            query.push(("from", from.to_string()));
        }
        self.json(self.request(Method::GET, segments).query(&query))
            .await
    }

    /// The position after the last event of `$all`.
    pub async fn head(&self) -> Result<u64> {
        let page = self.page(&["all"], Some(u64::MAX >> 1), false, 1).await?;
        page.head
            .context("the server's answer to GET /all has no head")
    }

    /// `factum tail`: prints events of `$all` from `from` as they come, until interrupted;
    /// the server sends only those that pass the filters.
    pub async fn tail(
        &self,
        from: Option<u64>,
        stream_prefixes: &[String],
        event_types: &[String],
    ) -> Result<()> {
        let from = match from {
            Some(from) => from,
            None => self.head().await?,
        };
        let mut query = vec![("from", from.to_string())];
        query.extend(stream_prefixes.iter().map(|p| ("stream_prefix", p.clone())));
        query.extend(event_types.iter().map(|t| ("type", t.clone())));
        let request = self
            .request(Method::GET, &["all", "subscribe"])
            .query(&query);
        let response = self.send(request).await?;
        print_subscription(response, |last| match last {
            Some(last) => format!("--from {}", last + 1),
            None => format!("--from {from}"),
        })
        .await
    }

    /// `factum dcb … --server`.
    pub async fn dcb(&self, action: crate::args::Dcb) -> Result<()> {
        use crate::args::{Dcb, dcb_request};
        match action {
            Dcb::Read { request } => {
                let body = dcb_request(request)?;
                let request = self
                    .request(Method::POST, &["dcb", "read"])
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body);
                let answer: Box<RawValue> = self.json(request).await?;
                println!("{}", answer.get());
            }
            Dcb::Append { request } => {
                let body = dcb_request(request)?;
                let request = self
                    .request(Method::POST, &["dcb", "append"])
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body);
                let answer: Box<RawValue> = self.json(request).await?;
                println!("{}", answer.get());
            }
            Dcb::Tail {
                query,
                after,
                from_start,
            } => {
                let after = match (after, from_start) {
                    (Some(after), _) => Some(after),
                    (None, true) => None,
                    (None, false) => self.head().await?.checked_sub(1),
                };
                let mut params = Vec::new();
                if let Some(query) = &query {
                    params.push(("query", query.clone()));
                }
                if let Some(after) = after {
                    params.push(("after", after.to_string()));
                }
                let request = self
                    .request(Method::GET, &["dcb", "subscribe"])
                    .query(&params);
                let response = self.send(request).await?;
                print_subscription(response, |last| match last.or(after) {
                    Some(last) => format!("--after {last}"),
                    None => "--from-start".to_owned(),
                })
                .await?;
            }
        }
        Ok(())
    }
}

/// Prints the events of a subscription's server-sent events, one JSON line each, until
/// interrupted; `resume` says how to go on after the last position received.
async fn print_subscription(
    response: Response,
    resume: impl Fn(Option<u64>) -> String,
) -> Result<()> {
    let mut body = response.bytes_stream();
    let mut buffer = Vec::new();
    // The last event received.
    let mut last: Option<u64> = None;
    loop {
        let chunk = tokio::select! {
            chunk = body.next() => chunk,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(chunk) = chunk else {
            bail!(
                "the server closed the subscription; resume with {}",
                resume(last)
            );
        };
        buffer.extend_from_slice(&chunk.context("reading the subscription")?);
        // Frames end with an empty line.
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = buffer.drain(..end + 2).collect();
            let frame = String::from_utf8_lossy(&frame);
            let mut data = None;
            let mut error = false;
            for line in frame.lines() {
                if let Some(rest) = line.strip_prefix("data: ") {
                    data = Some(rest.to_owned());
                } else if line == "event: error" {
                    error = true;
                } else if let Some(id) = line.strip_prefix("id: ")
                    && let Ok(position) = id.trim().parse::<u64>()
                {
                    last = Some(position);
                }
            }
            let Some(data) = data else { continue };
            if error {
                let message =
                    serde_json::from_str::<ErrorBody>(&data).map_or(data.clone(), |b| b.error);
                bail!("the subscription failed: {message}");
            }
            let mut out = std::io::stdout().lock();
            writeln!(out, "{data}")?;
            out.flush()?;
        }
    }
}

impl Remote {
    /// `factum streams`: prints up to `limit` streams whose names start with `prefix`.
    pub async fn streams(&self, prefix: &str, limit: u64, out: &mut impl Write) -> Result<()> {
        let mut after: Option<String> = None;
        let mut left = limit;
        while left > 0 {
            let mut query = vec![
                ("prefix", prefix.to_owned()),
                ("limit", left.min(PAGE_EVENTS).to_string()),
            ];
            if let Some(after) = &after {
                query.push(("after", after.clone()));
            }
            let request = self.request(Method::GET, &["streams"]).query(&query);
            let list: StreamList = self.json(request).await?;
            left = left.saturating_sub(print(&list.streams, out)?);
            match list.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        out.flush()?;
        Ok(())
    }

    /// `factum delete`: the position of the delete (or tombstone).
    pub async fn delete(&self, stream: &str, tombstone: bool, expected: &str) -> Result<u64> {
        let request = self
            .request(Method::DELETE, &["streams", stream])
            .query(&[("tombstone", tombstone)])
            .header("expected-revision", expected);
        let written: Written = self.json(request).await?;
        Ok(written.position)
    }

    /// `factum metadata`: sets `new` when given, then returns the stream's metadata.
    pub async fn metadata(
        &self,
        stream: &str,
        new: Option<&factum::StreamMetadata>,
    ) -> Result<factum::StreamMetadata> {
        if let Some(metadata) = new {
            let request = self
                .request(Method::PUT, &["streams", stream, "metadata"])
                .json(metadata);
            let _: Written = self.json(request).await?;
        }
        self.json(self.request(Method::GET, &["streams", stream, "metadata"]))
            .await
    }
}

impl Remote {
    /// `factum subscriptions … --server`.
    pub async fn subscriptions(&self, action: crate::args::Subscriptions) -> Result<()> {
        use crate::args::Subscriptions;
        let mut out = stdout();
        match action {
            Subscriptions::List { source } => {
                let groups: Vec<serde_json::Value> = self
                    .json(self.request(Method::GET, &["subscriptions"]))
                    .await?;
                let mut listed = 0;
                for group in groups
                    .iter()
                    .filter(|g| source.as_deref().is_none_or(|s| g["source"] == s))
                {
                    writeln!(out, "{group}")?;
                    listed += 1;
                }
                if listed == 0 {
                    eprintln!("no persistent subscription groups");
                }
            }
            Subscriptions::Describe { source, group } => {
                let info: serde_json::Value = self
                    .json(self.request(Method::GET, &["subscriptions", &source, &group]))
                    .await?;
                writeln!(out, "{}", serde_json::to_string_pretty(&info)?)?;
            }
            Subscriptions::ReplayParked {
                source,
                group,
                stop_at,
            } => {
                let mut request = self.request(
                    Method::POST,
                    &["subscriptions", &source, &group, "replay-parked"],
                );
                if let Some(n) = stop_at {
                    request = request.query(&[("stop_at", n)]);
                }
                let answer: serde_json::Value = self.json(request).await?;
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"source": source, "group": group, "replayed": answer["replayed"]})
                )?;
            }
        }
        out.flush()?;
        Ok(())
    }
}

#[derive(Deserialize)]
struct Written {
    position: u64,
}

/// Prints each item on a line as the server wrote it; returns how many.
fn print(items: &[Box<RawValue>], out: &mut impl Write) -> Result<u64> {
    for item in items {
        writeln!(out, "{}", item.get())?;
    }
    Ok(items.len() as u64)
}

/// A command sent to a running `factum serve` (`--server`).
pub async fn run(remote: &Remote, command: Command) -> Result<()> {
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
        Command::Scavenge { past_checkpoints } => {
            let spinner = indicatif::ProgressBar::new_spinner();
            spinner.set_message("scavenging on the server");
            spinner.enable_steady_tick(std::time::Duration::from_millis(200));
            let mut request = remote.request(Method::POST, &["admin", "scavenge"]);
            if past_checkpoints {
                request = request.query(&[("past_checkpoints", "true")]);
            }
            let mut report: serde_json::Value = remote.json(request).await?;
            spinner.finish_and_clear();
            report["ok"] = true.into();
            println!("{report}");
        }
        Command::Forget { subject } => {
            let request = remote.request(Method::DELETE, &["admin", "subjects", &subject]);
            let answer: serde_json::Value = remote.json(request).await?;
            println!("{answer}");
        }
        Command::Subscriptions { action } => remote.subscriptions(action).await?,
        Command::Dcb { action } => remote.dcb(action).await?,
        _ => {
            return Err(bad(
                "--server: only append, read, read-all, tail, streams, delete, metadata, \
                 export, scavenge, forget, subscriptions and dcb go to a server; run this command where the store is \
                 (with --data-dir or --store)",
            ));
        }
    }
    Ok(())
}
