//! Reads and subscriptions (`Streams.Read`): one stream or `$all`, either way, with a limit or
//! live. Answers are made as the client takes them (a page of the store at a time), so a slow
//! client holds nothing but its own page and a client that goes away ends its read.
//!
//! Subscriptions count against the same caps as the HTTP API's (`UNAVAILABLE` when the server
//! holds its most, `RESOURCE_EXHAUSTED` when the caller's token does; either with
//! `grpc-retry-pushback-ms`), and run on a task of their own that hands the call one page of
//! answers at a time: one whose client takes nothing for
//! [`Config::stall_timeout`](crate::Config::stall_timeout) is dropped with `UNAVAILABLE`.
//!
//! Positions on the wire are Factum's plus one (`convert::commit_of`): reading `$all`
//! forwards from commit `c` starts at Factum's `c - 1`; backwards from `c` starts below it; a
//! subscription from `c` starts at Factum's `c` (after the event the client last saw). A
//! stream subscription from revision `r` starts at `r + 1`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use factum_core::{Direction, EventStore, RecordedEvent, StoreError, StreamName};
use fancy_regex::Regex;
use tokio::sync::{mpsc, watch};
use tonic::{Response, Status};

use super::auth;
use super::convert::{
    UuidForm, commit_of, invalid, recorded_event, status_of, stream_identifier, stream_name,
};
use super::metadata::MetadataRenderer;
use super::proto::event_store::client::streams::read_req::options::{
    self as opts, AllOptions, FilterOptions, StreamOptions, all_options, filter_options,
    stream_options,
};
use super::proto::event_store::client::streams::{ReadReq, ReadResp, read_resp};
use super::streams::Answers;
use crate::AppState;
use crate::auth::{Caller, Right};
use crate::metrics::Subscribed;

/// How many events one read of the store takes: few enough that the embedded store reads
/// them on the task's own thread (a larger read hands the thread's other tasks to another
/// thread first, which costs more than the read), enough that a page costs little per event.
const PAGE_EVENTS: usize = 256;
/// The search window a filter without `max` gets (KurrentDB's default).
const WINDOW_EVENTS_DEFAULT: u32 = 32;

/// What a filter looks at.
#[derive(Clone, Copy, Debug)]
enum FilterOn {
    Stream,
    EventType,
}

/// A filter on `$all`: by prefixes or by a regular expression (look-around allowed), on the
/// stream name or the event type.
#[derive(Debug)]
struct Filter {
    on: FilterOn,
    prefixes: Vec<String>,
    regex: Option<Regex>,
    /// A checkpoint after this many events scanned (window × multiplier).
    checkpoint_every: u64,
}

impl Filter {
    fn parse(options: FilterOptions) -> Result<Self, Status> {
        let (on, expression) = match options.filter {
            Some(filter_options::Filter::StreamIdentifier(e)) => (FilterOn::Stream, e),
            Some(filter_options::Filter::EventType(e)) => (FilterOn::EventType, e),
            None => return Err(invalid("the filter names neither stream nor event type")),
        };
        let regex = if expression.prefix.is_empty() && !expression.regex.is_empty() {
            Some(Regex::new(&expression.regex).map_err(|e| {
                invalid(format!(
                    "the filter's regular expression '{}' does not parse: {e}",
                    expression.regex
                ))
            })?)
        } else {
            None
        };
        let window = match options.window {
            Some(filter_options::Window::Max(max)) if max > 0 => max,
            _ => WINDOW_EVENTS_DEFAULT,
        };
        let multiplier = options.checkpoint_interval_multiplier.max(1);
        Ok(Filter {
            on,
            prefixes: expression.prefix,
            regex,
            checkpoint_every: u64::from(window) * u64::from(multiplier),
        })
    }

    fn matches(&self, event: &RecordedEvent) -> bool {
        let subject = match self.on {
            FilterOn::Stream => event.stream.as_str(),
            FilterOn::EventType => event.event_type.as_str(),
        };
        match &self.regex {
            // A regex that fails at run time (backtracking limit) lets nothing through.
            Some(regex) => regex.is_match(subject).unwrap_or(false),
            None => {
                self.prefixes.is_empty() || self.prefixes.iter().any(|p| subject.starts_with(p))
            }
        }
    }

    /// The stream prefixes a caller needs read on, when the filter keeps to some.
    fn stream_prefixes(&self) -> Option<&[String]> {
        match (self.on, &self.regex) {
            (FilterOn::Stream, None) if !self.prefixes.is_empty() => Some(&self.prefixes),
            _ => None,
        }
    }
}

/// Where a read or subscription takes its events from, and where it is.
enum Source {
    /// `$all`: the next Factum position to read (forwards: inclusive; backwards: inclusive,
    /// `None` once position 0 was read).
    All {
        next: Option<u64>,
        filter: Option<Filter>,
        /// Events scanned since the last checkpoint message.
        scanned: u64,
    },
    /// One stream: the next revision to read (`None` once revision 0 was read backwards).
    Stream {
        stream: StreamName,
        next: Option<u64>,
    },
    /// A stream's metadata stream (`$$stream`), rendered as KurrentDB's clients read it; the
    /// records are few, so they are read whole and kept.
    Metadata { records: VecDeque<RecordedEvent> },
}

/// A read (with a limit) or a subscription (live).
struct Reader {
    store: Arc<dyn EventStore>,
    source: Source,
    direction: Direction,
    /// Events still to send (reads).
    left: u64,
    form: UuidForm,
    /// Subscriptions: the store's head and the server's shutdown switch.
    live: Option<Live>,
    /// Answers made and not yet taken.
    buffer: VecDeque<ReadResp>,
    done: bool,
    /// The client reads the messages newer nodes send (the stream's last revision at the
    /// end of a read): `control_option.compatibility` ≥ 1.
    compatible: bool,
}

struct Live {
    head: watch::Receiver<u64>,
    closing: watch::Receiver<bool>,
    caught_up: bool,
}

fn message(content: read_resp::Content) -> ReadResp {
    ReadResp {
        content: Some(content),
    }
}

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

impl Reader {
    fn event(&self, event: RecordedEvent) -> ReadResp {
        let rendered_already = matches!(self.source, Source::Metadata { .. });
        let position = commit_of(event.position);
        let rendered = (!rendered_already && event.stream.described_stream().is_some())
            // A `$$stream` record met in `$all` or followed live: rendered at that point in
            // the stream's history (a soft delete shows the stream deleted).
            .then(|| MetadataRenderer::new(None, 0).render(&event));
        let mut recorded = recorded_event(event, self.form);
        if let Some((event_type, data)) = rendered {
            recorded.event_type = event_type;
            recorded.data = data.into();
        }
        message(read_resp::Content::Event(read_resp::ReadEvent {
            event: Some(recorded),
            link: None,
            position: Some(read_resp::read_event::Position::CommitPosition(position)),
        }))
    }

    /// Reads the next page into the buffer; marks the reader done at the end of a read.
    async fn fill(&mut self) -> Result<(), Status> {
        if self.live.is_some() {
            return self.follow().await;
        }
        let page = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(PAGE_EVENTS);
        if page == 0 {
            self.done = true;
            return Ok(());
        }
        let direction = self.direction;
        let (events, more) = match &mut self.source {
            Source::Metadata { records } => {
                let events: Vec<_> = records.drain(..records.len().min(page)).collect();
                let more = !records.is_empty();
                (events, more)
            }
            Source::All { next, filter, .. } => {
                let Some(from) = *next else {
                    self.done = true;
                    return Ok(());
                };
                let events = self
                    .store
                    .read_all(from, direction, PAGE_EVENTS)
                    .await
                    .map_err(|e| status_of(&e))?;
                let more = events.len() == PAGE_EVENTS;
                *next = events
                    .last()
                    .and_then(|last| after(last.position, direction));
                let events = match filter {
                    Some(filter) => events.into_iter().filter(|e| filter.matches(e)).collect(),
                    None => events,
                };
                (events, more)
            }
            Source::Stream { stream, next } => {
                let Some(from) = *next else {
                    self.done = true;
                    return Ok(());
                };
                let events = match self.store.read_stream(stream, from, direction, page).await {
                    Ok(events) => events,
                    Err(StoreError::NotFound(_)) => {
                        self.done = true;
                        self.buffer
                            .push_back(message(read_resp::Content::StreamNotFound(
                                read_resp::StreamNotFound {
                                    stream_identifier: Some(stream_identifier(stream.as_str())),
                                },
                            )));
                        return Ok(());
                    }
                    Err(e) => return Err(status_of(&e)),
                };
                let more = events.len() == page;
                *next = events
                    .last()
                    .and_then(|last| after(last.revision, direction));
                (events, more)
            }
        };
        for event in events.into_iter().take(page) {
            let answer = self.event(event);
            self.buffer.push_back(answer);
            self.left -= 1;
        }
        if !more || self.left == 0 {
            self.done = true;
            self.last_stream_position().await?;
        }
        Ok(())
    }

    /// At the end of a stream read, for a client that reads it: the stream's last revision.
    async fn last_stream_position(&mut self) -> Result<(), Status> {
        let Source::Stream { stream, .. } = &self.source else {
            return Ok(());
        };
        if !self.compatible {
            return Ok(());
        }
        match self.store.stream_revision(stream).await {
            Ok(factum_core::CurrentRevision(Some(last))) => {
                self.buffer
                    .push_back(message(read_resp::Content::LastStreamPosition(last)));
                Ok(())
            }
            Ok(_) | Err(StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(status_of(&e)),
        }
    }

    /// A subscription's next step: read what is there below the head, or say it is caught
    /// up and wait for the head to move.
    async fn follow(&mut self) -> Result<(), Status> {
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        let head = *live.head.borrow_and_update();
        let (events, full) = match &mut self.source {
            Source::All { next, .. } => {
                let from = next.unwrap_or(head);
                if from >= head {
                    (Vec::new(), false)
                } else {
                    let events = self
                        .store
                        .read_all(from, Direction::Forwards, PAGE_EVENTS)
                        .await
                        .map_err(|e| status_of(&e))?;
                    if let Some(last) = events.last() {
                        *next = Some(last.position + 1);
                    }
                    let full = events.len() == PAGE_EVENTS;
                    (events, full)
                }
            }
            Source::Stream { stream, next } => {
                let from = next.unwrap_or(0);
                let events = match self
                    .store
                    .read_stream(stream, from, Direction::Forwards, PAGE_EVENTS)
                    .await
                {
                    Ok(events) => events,
                    Err(StoreError::NotFound(_)) => Vec::new(),
                    Err(e) => return Err(status_of(&e)),
                };
                if let Some(last) = events.last() {
                    *next = Some(last.revision + 1);
                }
                let full = events.len() == PAGE_EVENTS;
                (events, full)
            }
            Source::Metadata { .. } => (Vec::new(), false),
        };
        self.deliver(events);
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        let position = |source: &Source| match source {
            Source::All { next: Some(n), .. } => Some(read_resp::Position {
                commit_position: *n,
                prepare_position: *n,
            }),
            _ => None,
        };
        let revision = |source: &Source| match source {
            Source::Stream { next: Some(n), .. } if *n > 0 => i64::try_from(*n - 1).ok(),
            _ => None,
        };
        if full && live.caught_up {
            live.caught_up = false;
            self.buffer
                .push_back(message(read_resp::Content::FellBehind(
                    read_resp::FellBehind {
                        timestamp: Some(now()),
                        stream_revision: revision(&self.source),
                        position: position(&self.source),
                    },
                )));
        } else if !full && !live.caught_up {
            live.caught_up = true;
            self.buffer
                .push_back(message(read_resp::Content::CaughtUp(read_resp::CaughtUp {
                    timestamp: Some(now()),
                    stream_revision: revision(&self.source),
                    position: position(&self.source),
                })));
        }
        if !self.buffer.is_empty() || full {
            return Ok(());
        }
        // Nothing new: wait for the head to move, or for the server to shut down.
        let Live { head, closing, .. } = live;
        tokio::select! {
            changed = head.changed() => {
                if changed.is_err() {
                    return Err(status_of(&StoreError::Closed));
                }
            }
            _ = closing.wait_for(|on| *on) => {
                return Err(Status::unavailable("the server is shutting down; subscribe again to go on"));
            }
        }
        Ok(())
    }

    /// Puts a subscription's new events, and its filter's checkpoints, in the buffer.
    fn deliver(&mut self, events: Vec<RecordedEvent>) {
        for event in events {
            let keep = match &mut self.source {
                Source::All {
                    filter: Some(filter),
                    scanned,
                    ..
                } => {
                    *scanned += 1;
                    let keep = filter.matches(&event);
                    if *scanned >= filter.checkpoint_every {
                        *scanned = 0;
                        let commit = commit_of(event.position);
                        if keep {
                            let answer = self.event(event);
                            self.buffer.push_back(answer);
                        }
                        self.buffer
                            .push_back(message(read_resp::Content::Checkpoint(
                                read_resp::Checkpoint {
                                    commit_position: commit,
                                    prepare_position: commit,
                                    timestamp: Some(now()),
                                },
                            )));
                        continue;
                    }
                    keep
                }
                _ => true,
            };
            if keep {
                let answer = self.event(event);
                self.buffer.push_back(answer);
            }
        }
    }

    /// A subscription's answers: read on a task of its own, handed over a page at a time
    /// while the client takes them; dropped when it takes nothing for the stall timeout.
    fn into_live_answers(
        mut self,
        counted: impl Send + 'static,
        stall_timeout: std::time::Duration,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Answers<ReadResp> {
        let (pages, mut taken) = mpsc::channel::<Vec<Result<ReadResp, Status>>>(1);
        let stalled = Arc::new(AtomicBool::new(false));
        let stalled_here = stalled.clone();
        tokio::spawn(async move {
            let _counted = counted;
            loop {
                let page: Vec<_> = if !self.buffer.is_empty() {
                    self.buffer.drain(..).map(Ok).collect()
                } else if self.done {
                    break;
                } else {
                    tokio::select! {
                        filled = self.fill() => match filled {
                            Ok(()) => continue,
                            Err(status) => {
                                self.done = true;
                                vec![Err(status)]
                            }
                        },
                        // The client went away while the subscription waited for events.
                        () = pages.closed() => break,
                    }
                };
                match tokio::time::timeout(stall_timeout, pages.send(page)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        stalled_here.store(true, Ordering::Relaxed);
                        metrics.stalled.inc();
                        tracing::info!(
                            seconds = stall_timeout.as_secs(),
                            "a gRPC subscriber took nothing for the stall timeout; it is dropped"
                        );
                        break;
                    }
                }
            }
        });
        let mut page = Vec::new().into_iter();
        let mut ended = false;
        Box::pin(futures::stream::poll_fn(move |cx| {
            loop {
                if let Some(answer) = page.next() {
                    return std::task::Poll::Ready(Some(answer));
                }
                if ended {
                    return std::task::Poll::Ready(None);
                }
                match std::task::ready!(taken.poll_recv(cx)) {
                    Some(next) => page = next.into_iter(),
                    None => {
                        ended = true;
                        if stalled.load(Ordering::Relaxed) {
                            return std::task::Poll::Ready(Some(Err(Status::unavailable(
                                format!(
                                    "the subscriber took nothing for {} s; it was dropped, subscribe again to go on",
                                    stall_timeout.as_secs()
                                ),
                            ))));
                        }
                    }
                }
            }
        }))
    }

    fn into_answers(self) -> Answers<ReadResp> {
        Box::pin(futures::stream::unfold(self, |mut reader| async move {
            loop {
                if let Some(answer) = reader.buffer.pop_front() {
                    return Some((Ok(answer), reader));
                }
                if reader.done {
                    return None;
                }
                if let Err(status) = reader.fill().await {
                    reader.done = true;
                    reader.buffer.clear();
                    return Some((Err(status), reader));
                }
            }
        }))
    }
}

/// The next place to read after `at`, or `None` when a backwards read has reached 0.
fn after(at: u64, direction: Direction) -> Option<u64> {
    match direction {
        Direction::Forwards => at.checked_add(1),
        Direction::Backwards => at.checked_sub(1),
    }
}

/// `Streams.Read`: checks the request and the caller's rights, then answers as the client
/// reads.
pub(crate) async fn read(
    state: AppState,
    caller: Caller,
    request: ReadReq,
) -> Result<Response<Answers<ReadResp>>, Status> {
    let options = request
        .options
        .ok_or_else(|| invalid("the read has no options"))?;
    let control_option = options.control_option;
    let direction = match opts::ReadDirection::try_from(options.read_direction) {
        Ok(opts::ReadDirection::Forwards) => Direction::Forwards,
        Ok(opts::ReadDirection::Backwards) => Direction::Backwards,
        Err(_) => {
            return Err(invalid(format!(
                "read direction {} is neither Forwards (0) nor Backwards (1)",
                options.read_direction
            )));
        }
    };
    let form = match options.uuid_option.and_then(|o| o.content) {
        Some(opts::uuid_option::Content::String(())) => UuidForm::Text,
        _ => UuidForm::Structured,
    };
    let limit = match options.count_option {
        Some(opts::CountOption::Count(count)) => Some(count),
        Some(opts::CountOption::Subscription(_)) => None,
        None => return Err(invalid("the read says neither a count nor a subscription")),
    };
    let filter = match options.filter_option {
        Some(opts::FilterOption::Filter(filter)) => Some(Filter::parse(filter)?),
        Some(opts::FilterOption::NoFilter(())) | None => None,
    };
    if limit.is_some() {
        state.stats.read();
    }
    let store = state.store.clone();
    let source = match options.stream_option {
        Some(opts::StreamOption::Stream(stream)) => {
            if filter.is_some() {
                return Err(invalid("a filter applies to reads of $all only"));
            }
            stream_source(&store, &caller, stream, direction, limit.is_none()).await?
        }
        Some(opts::StreamOption::All(all)) => {
            match filter.as_ref().and_then(Filter::stream_prefixes) {
                Some(prefixes) => {
                    for prefix in prefixes {
                        auth::require(&caller, Right::Read, prefix)?;
                    }
                }
                None => auth::require_all(&caller)?,
            }
            all_source(&store, all, filter, direction, limit.is_none())?
        }
        None => return Err(invalid("the read names neither a stream nor $all")),
    };
    let admitted = match limit {
        Some(_) => None,
        None => Some(admit(&state, &caller)?),
    };
    let live = limit.is_none().then(|| Live {
        head: store.watch_head(),
        closing: state.closing.clone(),
        caught_up: false,
    });
    let mut reader = Reader {
        store,
        source,
        direction: if live.is_some() {
            Direction::Forwards
        } else {
            direction
        },
        left: limit.unwrap_or(u64::MAX),
        form,
        live,
        buffer: VecDeque::new(),
        done: false,
        compatible: control_option.is_some_and(|control| control.compatibility >= 1),
    };
    let Some(admitted) = admitted else {
        // The first page is read before the answer starts, so that a read the store refuses
        // (a tombstoned stream, say) fails as the call itself, as on a KurrentDB node.
        reader.fill().await?;
        return Ok(Response::new(reader.into_answers()));
    };
    reader
        .buffer
        .push_back(message(read_resp::Content::Confirmation(
            read_resp::SubscriptionConfirmation {
                subscription_id: uuid::Uuid::now_v7().to_string(),
            },
        )));
    let counted = (admitted, Subscribed::new(state.metrics.clone()));
    Ok(Response::new(reader.into_live_answers(
        counted,
        state.config.stall_timeout,
        state.metrics.clone(),
    )))
}

/// Counts a new subscription against the server's caps, as the HTTP API does: `UNAVAILABLE`
/// when the server holds its most, `RESOURCE_EXHAUSTED` when the caller's token does; either
/// tells the client when to try again (`grpc-retry-pushback-ms`).
pub(crate) fn admit(state: &AppState, caller: &Caller) -> Result<crate::sse::Admitted, Status> {
    crate::sse::admit(state, caller).map_err(|refused| {
        let code = if refused.status() == axum::http::StatusCode::TOO_MANY_REQUESTS {
            tonic::Code::ResourceExhausted
        } else {
            tonic::Code::Unavailable
        };
        let mut status = Status::new(code, refused.body().error.clone());
        let pushback = crate::sse::RETRY_AFTER_SECONDS * 1000;
        if let Ok(value) = pushback.to_string().parse() {
            status
                .metadata_mut()
                .insert("grpc-retry-pushback-ms", value);
        }
        status
    })
}

/// Where a read of `$all` starts.
fn all_source(
    store: &Arc<dyn EventStore>,
    options: AllOptions,
    filter: Option<Filter>,
    direction: Direction,
    subscribe: bool,
) -> Result<Source, Status> {
    let next = match (options.all_option, subscribe, direction) {
        (None, ..) => return Err(invalid("the read of $all says no start, end or position")),
        // A subscription from commit `c` starts after the event at Factum's `c - 1`.
        (Some(all_options::AllOption::Start(())), true, _) => Some(0),
        (Some(all_options::AllOption::End(())), true, _) => Some(store.head()),
        (Some(all_options::AllOption::Position(p)), true, _) => Some(p.commit_position),
        (Some(all_options::AllOption::Start(())), false, Direction::Forwards) => Some(0),
        (Some(all_options::AllOption::Start(())), false, Direction::Backwards) => None,
        (Some(all_options::AllOption::End(())), false, Direction::Forwards) => None,
        (Some(all_options::AllOption::End(())), false, Direction::Backwards) => Some(u64::MAX),
        // Forwards from commit `c` includes it; backwards from `c` does not.
        (Some(all_options::AllOption::Position(p)), false, Direction::Forwards) => {
            Some(p.commit_position.saturating_sub(1))
        }
        (Some(all_options::AllOption::Position(p)), false, Direction::Backwards) => {
            p.commit_position.checked_sub(2)
        }
    };
    Ok(Source::All {
        next,
        filter,
        scanned: 0,
    })
}

/// Where a read of one stream starts, after checking the caller may read it.
async fn stream_source(
    store: &Arc<dyn EventStore>,
    caller: &Caller,
    options: StreamOptions,
    direction: Direction,
    subscribe: bool,
) -> Result<Source, Status> {
    let name = stream_name(options.stream_identifier.as_ref())?;
    let stream = super::convert::parse_stream(&name)?;
    let revision = options
        .revision_option
        .ok_or_else(|| invalid("the read of a stream says no start, end or revision"))?;
    if let Some(described) = stream.described_stream() {
        auth::require(caller, Right::Read, described.as_str())?;
        if !subscribe {
            return metadata_source(store, &stream, &described, revision, direction).await;
        }
    } else {
        auth::require(caller, Right::Read, stream.as_str())?;
    }
    let next = match (revision, subscribe, direction) {
        // A subscription from revision `r` starts after it; from the end, after the last.
        (stream_options::RevisionOption::Start(()), true, _) => Some(0),
        (stream_options::RevisionOption::Revision(r), true, _) => Some(r.saturating_add(1)),
        (stream_options::RevisionOption::End(()), true, _) => {
            let current = match store.stream_revision(&stream).await {
                Ok(current) => current,
                Err(StoreError::NotFound(_)) => factum_core::CurrentRevision(None),
                Err(e) => return Err(status_of(&e)),
            };
            Some(current.0.map_or(0, |r| r + 1))
        }
        (stream_options::RevisionOption::Start(()), false, _) => Some(0),
        (stream_options::RevisionOption::Revision(r), false, _) => Some(r),
        (stream_options::RevisionOption::End(()), false, Direction::Backwards) => Some(u64::MAX),
        (stream_options::RevisionOption::End(()), false, Direction::Forwards) => None,
    };
    Ok(Source::Stream { stream, next })
}

/// A read of `$$stream`: its records, rendered in order with the metadata each sets; the
/// last of them, if the read asks for its revision.
async fn metadata_source(
    store: &Arc<dyn EventStore>,
    stream: &StreamName,
    described: &StreamName,
    revision: stream_options::RevisionOption,
    direction: Direction,
) -> Result<Source, Status> {
    let mut records = Vec::new();
    let mut from = 0;
    loop {
        let page = match store
            .read_stream(stream, from, Direction::Forwards, PAGE_EVENTS)
            .await
        {
            Ok(page) => page,
            Err(StoreError::NotFound(_)) => break,
            Err(e) => return Err(status_of(&e)),
        };
        let Some(last) = page.last() else { break };
        from = last.revision + 1;
        let full = page.len() == PAGE_EVENTS;
        records.extend(page);
        if !full {
            break;
        }
    }
    let next_revision = match store.stream_revision(described).await {
        Ok(current) => current.0.map_or(0, |r| r + 1),
        Err(StoreError::NotFound(_) | StoreError::StreamDeleted(_)) => 0,
        Err(e) => return Err(status_of(&e)),
    };
    let mut renderer = MetadataRenderer::new(None, next_revision);
    for record in &mut records {
        let (event_type, data) = renderer.render(record);
        record.event_type = event_type;
        record.data = data.into();
        record.content_type = factum_core::ContentType::Json;
    }
    // As on a KurrentDB node, a metadata stream keeps its last record only (`$maxCount` 1):
    // a client reading it from the start reads the metadata in force.
    if records.len() > 1 {
        records.drain(..records.len() - 1);
    }
    let start = match revision {
        stream_options::RevisionOption::Start(()) => Some(0),
        stream_options::RevisionOption::Revision(r) => Some(r),
        stream_options::RevisionOption::End(()) => match direction {
            Direction::Forwards => None,
            Direction::Backwards => Some(u64::MAX),
        },
    };
    let records: VecDeque<_> = match (start, direction) {
        (None, _) => VecDeque::new(),
        (Some(start), Direction::Forwards) => records
            .into_iter()
            .filter(|r| r.revision >= start)
            .collect(),
        (Some(start), Direction::Backwards) => records
            .into_iter()
            .rev()
            .filter(|r| r.revision <= start)
            .collect(),
    };
    if records.is_empty() && start.is_some() {
        // KurrentDB: a metadata stream never written is a stream not found.
        let exists = store
            .stream_revision(stream)
            .await
            .is_ok_and(|current| current.0.is_some());
        if !exists {
            return Ok(Source::Stream {
                stream: stream.clone(),
                next: Some(0),
            });
        }
    }
    Ok(Source::Metadata { records })
}
