//! The streams service: appends (one stream a call, or batches), deletes, tombstones, and —
//! in `read.rs` — reads and subscriptions.

use std::collections::HashMap;
use std::pin::Pin;

use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use factum_core::backend::catalog::{WriteKind, WriteRequest};
use factum_core::{AppendResult, ExpectedState, NewEvent, StoreError, StreamName};

use super::auth;
use super::convert::{
    commit_of, invalid, new_event, parse_stream, status_of, stream_identifier, stream_name,
};
use super::metadata;
use super::proto::event_store::client as shared;
use super::proto::event_store::client::streams::{
    AppendReq, AppendResp, BatchAppendReq, BatchAppendResp, DeleteReq, DeleteResp, ReadReq,
    ReadResp, TombstoneReq, TombstoneResp, append_req, append_resp, batch_append_req,
    batch_append_resp, delete_req, delete_resp, streams_server, tombstone_req, tombstone_resp,
};
use super::proto::google::rpc;
use crate::AppState;
use crate::auth::{Caller, Right};

pub(crate) struct Streams {
    pub(crate) state: AppState,
}

pub(crate) type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What an append asks for, from either kind of call.
struct Proposed {
    stream: String,
    expected: ExpectedState,
    events: Vec<NewEvent>,
}

/// How an append ended, in the terms both kinds of call answer with.
enum Appended {
    Done {
        revision: Option<u64>,
        position: Option<u64>,
    },
    Wrong {
        expected: ExpectedState,
        actual: factum_core::CurrentRevision,
    },
}

impl Streams {
    /// Appends what a client proposed, after checking its rights: events to a user stream, or
    /// metadata to `$$stream`. An empty append writes nothing and answers the stream's
    /// revision, as KurrentDB does.
    async fn append_proposed(
        &self,
        caller: &Caller,
        proposed: Proposed,
    ) -> Result<Appended, Status> {
        let store = self.state.store.as_ref();
        if let Some(described) = proposed.stream.strip_prefix("$$") {
            let described = described.to_owned();
            auth::require(caller, Right::Admin, &described)?;
            return self.append_metadata(&described, proposed).await;
        }
        let stream = StreamName::user(proposed.stream.as_str()).map_err(|e| status_of(&e))?;
        auth::require(caller, Right::Write, stream.as_str())?;
        if proposed.events.is_empty() {
            let current = store
                .stream_revision(&stream)
                .await
                .map_err(|e| status_of(&e))?;
            return Ok(if proposed.expected.holds(current) {
                Appended::Done {
                    revision: current.0,
                    position: None,
                }
            } else {
                Appended::Wrong {
                    expected: proposed.expected,
                    actual: current,
                }
            });
        }
        let (count, bytes) = (
            proposed.events.len() as u64,
            proposed.events.iter().map(|e| e.size_bytes() as u64).sum(),
        );
        let started = std::time::Instant::now();
        match store
            .append(&stream, proposed.expected, proposed.events)
            .await
        {
            Ok(AppendResult {
                last_revision,
                position,
                ..
            }) => {
                self.state.appended(count, bytes, started.elapsed());
                Ok(Appended::Done {
                    revision: Some(last_revision),
                    position: Some(position),
                })
            }
            Err(StoreError::WrongExpectedRevision {
                expected, actual, ..
            }) => Ok(Appended::Wrong { expected, actual }),
            Err(e) => Err(status_of(&e)),
        }
    }

    /// A client's metadata write: one `$metadata` event to `$$stream`, with the expected
    /// revision of `$$stream` (which holds the stream's metadata and deletes).
    async fn append_metadata(
        &self,
        described: &str,
        proposed: Proposed,
    ) -> Result<Appended, Status> {
        let stream = StreamName::user(described).map_err(|e| status_of(&e))?;
        let [event] = <[NewEvent; 1]>::try_from(proposed.events)
            .map_err(|_| invalid("a write to a metadata stream ($$name) holds one event"))?;
        if event.event_type != metadata::KURRENT_METADATA_TYPE {
            return Err(invalid(format!(
                "a metadata stream ($$name) takes only '$metadata' events, not '{}'",
                event.event_type
            )));
        }
        let metadata = metadata::from_kurrent(&event.data).map_err(invalid)?;
        let request = WriteRequest::admin(
            &stream,
            ExpectedState::Any,
            WriteKind::SetMetadataExpecting {
                metadata,
                metadata_stream: proposed.expected,
            },
        )
        .map_err(|e| status_of(&e))?;
        match self.state.store.write(request).await {
            Ok(result) => Ok(Appended::Done {
                revision: Some(result.last_revision),
                position: Some(result.position),
            }),
            Err(StoreError::WrongExpectedRevision {
                expected, actual, ..
            }) => Ok(Appended::Wrong { expected, actual }),
            Err(e) => Err(status_of(&e)),
        }
    }

    /// A delete or tombstone of a user stream, by an admin of it.
    async fn remove(
        &self,
        caller: &Caller,
        name: String,
        expected: ExpectedState,
        tombstone: bool,
    ) -> Result<u64, Status> {
        let stream = StreamName::user(name).map_err(|e| status_of(&e))?;
        auth::require(caller, Right::Admin, stream.as_str())?;
        let store = self.state.store.as_ref();
        let removed = if tombstone {
            store.tombstone_stream(&stream, expected).await
        } else {
            store.delete_stream(&stream, expected).await
        };
        removed.map_err(|e| match e {
            // A stream that is not there has no revision to match (KurrentDB: -1).
            StoreError::NotFound(_) => super::convert::wrong_expected(
                stream.as_str(),
                expected,
                factum_core::CurrentRevision(None),
            ),
            other => status_of(&other),
        })
    }
}

fn append_expected(
    option: Option<append_req::options::ExpectedStreamRevision>,
) -> Result<ExpectedState, Status> {
    use append_req::options::ExpectedStreamRevision as E;
    match option {
        Some(E::Revision(revision)) => Ok(ExpectedState::Exact(revision)),
        Some(E::NoStream(())) => Ok(ExpectedState::NoStream),
        Some(E::Any(())) => Ok(ExpectedState::Any),
        Some(E::StreamExists(())) => Ok(ExpectedState::StreamExists),
        None => Err(invalid("the append names no expected stream revision")),
    }
}

fn remove_expected<E>(
    option: Option<E>,
    of: impl Fn(E) -> ExpectedState,
) -> Result<ExpectedState, Status> {
    option
        .map(of)
        .ok_or_else(|| invalid("the request names no expected stream revision"))
}

#[tonic::async_trait]
impl streams_server::Streams for Streams {
    type ReadStream = Answers<ReadResp>;

    async fn read(&self, request: Request<ReadReq>) -> Result<Response<Self::ReadStream>, Status> {
        let caller = auth::caller(&self.state, request.metadata())?;
        super::read::read(self.state.clone(), caller, request.into_inner()).await
    }

    async fn append(
        &self,
        request: Request<Streaming<AppendReq>>,
    ) -> Result<Response<AppendResp>, Status> {
        let caller = auth::caller(&self.state, request.metadata())?;
        let mut input = request.into_inner();
        let options = match input.message().await? {
            Some(AppendReq {
                content: Some(append_req::Content::Options(options)),
            }) => options,
            _ => return Err(invalid("an append starts with its options")),
        };
        let stream = stream_name(options.stream_identifier.as_ref())?;
        parse_stream(&stream)?;
        let expected = append_expected(options.expected_stream_revision)?;
        let mut events = Vec::new();
        while let Some(message) = input.message().await? {
            match message.content {
                Some(append_req::Content::ProposedMessage(m)) => events.push(new_event(
                    m.id.as_ref(),
                    &m.metadata,
                    m.custom_metadata,
                    m.data,
                )?),
                _ => return Err(invalid("an append sends its options once, first")),
            }
        }
        let proposed = Proposed {
            stream,
            expected,
            events,
        };
        let result = match self.append_proposed(&caller, proposed).await? {
            Appended::Done { revision, position } => {
                append_resp::Result::Success(append_resp::Success {
                    current_revision_option: Some(match revision {
                        Some(r) => append_resp::success::CurrentRevisionOption::CurrentRevision(r),
                        None => append_resp::success::CurrentRevisionOption::NoStream(()),
                    }),
                    position_option: Some(match position {
                        Some(p) => {
                            append_resp::success::PositionOption::Position(append_resp::Position {
                                commit_position: commit_of(p),
                                prepare_position: commit_of(p),
                            })
                        }
                        None => append_resp::success::PositionOption::NoPosition(()),
                    }),
                })
            }
            Appended::Wrong { expected, actual } => {
                append_resp::Result::WrongExpectedVersion(wrong_expected_version(expected, actual))
            }
        };
        Ok(Response::new(AppendResp {
            result: Some(result),
        }))
    }

    async fn delete(&self, request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        use delete_req::options::ExpectedStreamRevision as E;
        let caller = auth::caller(&self.state, request.metadata())?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| invalid("the request has no options"))?;
        let stream = stream_name(options.stream_identifier.as_ref())?;
        let expected = remove_expected(options.expected_stream_revision, |e| match e {
            E::Revision(r) => ExpectedState::Exact(r),
            E::NoStream(()) => ExpectedState::NoStream,
            E::Any(()) => ExpectedState::Any,
            E::StreamExists(()) => ExpectedState::StreamExists,
        })?;
        let position = self.remove(&caller, stream, expected, false).await?;
        Ok(Response::new(DeleteResp {
            position_option: Some(delete_resp::PositionOption::Position(
                delete_resp::Position {
                    commit_position: commit_of(position),
                    prepare_position: commit_of(position),
                },
            )),
        }))
    }

    async fn tombstone(
        &self,
        request: Request<TombstoneReq>,
    ) -> Result<Response<TombstoneResp>, Status> {
        use tombstone_req::options::ExpectedStreamRevision as E;
        let caller = auth::caller(&self.state, request.metadata())?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| invalid("the request has no options"))?;
        let stream = stream_name(options.stream_identifier.as_ref())?;
        let expected = remove_expected(options.expected_stream_revision, |e| match e {
            E::Revision(r) => ExpectedState::Exact(r),
            E::NoStream(()) => ExpectedState::NoStream,
            E::Any(()) => ExpectedState::Any,
            E::StreamExists(()) => ExpectedState::StreamExists,
        })?;
        let position = self.remove(&caller, stream, expected, true).await?;
        Ok(Response::new(TombstoneResp {
            position_option: Some(tombstone_resp::PositionOption::Position(
                tombstone_resp::Position {
                    commit_position: commit_of(position),
                    prepare_position: commit_of(position),
                },
            )),
        }))
    }

    type BatchAppendStream = Answers<BatchAppendResp>;

    async fn batch_append(
        &self,
        request: Request<Streaming<BatchAppendReq>>,
    ) -> Result<Response<Self::BatchAppendStream>, Status> {
        let caller = auth::caller(&self.state, request.metadata())?;
        let mut input = request.into_inner();
        let (answers, receiver) = mpsc::channel(64);
        let service = Streams {
            state: self.state.clone(),
        };
        tokio::spawn(async move {
            // Batches under way, by correlation id: their options and the events so far.
            let mut pending: HashMap<String, Batch> = HashMap::new();
            loop {
                let request = match input.message().await {
                    Ok(Some(request)) => request,
                    Ok(None) => return,
                    Err(status) => {
                        let _ = answers.send(Err(status)).await;
                        return;
                    }
                };
                let answer = service
                    .take_batch_request(&caller, &mut pending, request)
                    .await;
                if let Some(answer) = answer
                    && answers.send(answer).await.is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(super::stream_of(receiver)))
    }
}

/// A batch under way: its options, the events so far, and when its first request came.
struct Batch {
    options: batch_append_req::Options,
    events: Vec<NewEvent>,
    since: std::time::Instant,
}

impl Streams {
    /// Takes one request of a batch append; answers once its batch is final (or wrong).
    async fn take_batch_request(
        &self,
        caller: &Caller,
        pending: &mut HashMap<String, Batch>,
        request: BatchAppendReq,
    ) -> Option<Result<BatchAppendResp, Status>> {
        let Some(correlation) = request.correlation_id.clone() else {
            return Some(Err(invalid("a batch append request has no correlation id")));
        };
        let key = format!("{correlation:?}");
        let entry = match (pending.remove(&key), request.options) {
            (Some(entry), _) => entry,
            (None, Some(options)) => Batch {
                options,
                events: Vec::new(),
                since: std::time::Instant::now(),
            },
            (None, None) => {
                return Some(Err(invalid(
                    "the first request of a batch carries its options",
                )));
            }
        };
        let Batch {
            options,
            mut events,
            since,
        } = entry;
        for m in request.proposed_messages {
            match new_event(m.id.as_ref(), &m.metadata, m.custom_metadata, m.data) {
                Ok(event) => events.push(event),
                Err(status) => {
                    return Some(Ok(batch_error(
                        &correlation,
                        &options,
                        status_detail(&status),
                    )));
                }
            }
        }
        if !request.is_final {
            pending.insert(
                key,
                Batch {
                    options,
                    events,
                    since,
                },
            );
            return None;
        }
        Some(Ok(self
            .finish_batch(caller, correlation, options, events, since)
            .await))
    }

    async fn finish_batch(
        &self,
        caller: &Caller,
        correlation: shared::Uuid,
        options: batch_append_req::Options,
        events: Vec<NewEvent>,
        since: std::time::Instant,
    ) -> BatchAppendResp {
        use batch_append_req::options::{DeadlineOption, ExpectedStreamPosition as E};
        let expected = match options.expected_stream_position {
            Some(E::StreamPosition(r)) => ExpectedState::Exact(r),
            Some(E::NoStream(_)) => ExpectedState::NoStream,
            Some(E::Any(_)) | None => ExpectedState::Any,
            Some(E::StreamExists(_)) => ExpectedState::StreamExists,
        };
        // A deadline that has passed before the write starts: nothing is written. (Once a
        // write has started it is finished and answered: a durable write is never reported
        // as timed out.)
        let passed = match &options.deadline_option {
            Some(DeadlineOption::Deadline21100(at)) => std::time::SystemTime::try_from(*at)
                .is_ok_and(|at| at < std::time::SystemTime::now()),
            Some(DeadlineOption::Deadline(within)) => std::time::Duration::try_from(*within)
                .map_or(true, |within| since.elapsed() > within),
            None => false,
        };
        if passed {
            return batch_error(&correlation, &options, timeout_detail());
        }
        let stream = match stream_name(options.stream_identifier.as_ref()) {
            Ok(stream) => stream,
            Err(status) => return batch_error(&correlation, &options, status_detail(&status)),
        };
        let proposed = Proposed {
            stream,
            expected,
            events,
        };
        match self.append_proposed(caller, proposed).await {
            Ok(Appended::Done { revision, position }) => {
                use batch_append_resp::success::{CurrentRevisionOption, PositionOption};
                BatchAppendResp {
                    correlation_id: Some(correlation),
                    result: Some(batch_append_resp::Result::Success(
                        batch_append_resp::Success {
                            current_revision_option: Some(match revision {
                                Some(r) => CurrentRevisionOption::CurrentRevision(r),
                                None => CurrentRevisionOption::NoStream(()),
                            }),
                            position_option: Some(match position {
                                Some(p) => PositionOption::Position(shared::AllStreamPosition {
                                    commit_position: commit_of(p),
                                    prepare_position: commit_of(p),
                                }),
                                None => PositionOption::NoPosition(()),
                            }),
                        },
                    )),
                    stream_identifier: options.stream_identifier.clone(),
                    expected_stream_position: response_expected(&options),
                }
            }
            Ok(Appended::Wrong { expected, actual }) => {
                let detail = wrong_expected_detail(expected, actual);
                batch_error(&correlation, &options, detail)
            }
            Err(status) => batch_error(&correlation, &options, status_detail(&status)),
        }
    }
}

/// The error of a batch: a status with a detail, as the clients unpack it.
fn batch_error(
    correlation: &shared::Uuid,
    options: &batch_append_req::Options,
    (code, message, details): (i32, String, prost_types::Any),
) -> BatchAppendResp {
    BatchAppendResp {
        correlation_id: Some(correlation.clone()),
        result: Some(batch_append_resp::Result::Error(rpc::Status {
            code,
            message,
            details: Some(details),
        })),
        stream_identifier: options.stream_identifier.clone(),
        expected_stream_position: response_expected(options),
    }
}

fn response_expected(
    options: &batch_append_req::Options,
) -> Option<batch_append_resp::ExpectedStreamPosition> {
    use batch_append_req::options::ExpectedStreamPosition as In;
    use batch_append_resp::ExpectedStreamPosition as Out;
    options.expected_stream_position.as_ref().map(|e| match e {
        In::StreamPosition(r) => Out::StreamPosition(*r),
        In::NoStream(_) => Out::NoStream(()),
        In::Any(_) => Out::Any(()),
        In::StreamExists(_) => Out::StreamExists(()),
    })
}

/// A message packed as KurrentDB packs error details.
fn pack<M: prost::Message>(name: &str, message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/{name}"),
        value: message.encode_to_vec(),
    }
}

fn wrong_expected_detail(
    expected: ExpectedState,
    actual: factum_core::CurrentRevision,
) -> (i32, String, prost_types::Any) {
    use shared::wrong_expected_version::{
        CurrentStreamRevisionOption as Current, ExpectedStreamPositionOption as Expected,
    };
    let detail = shared::WrongExpectedVersion {
        current_stream_revision_option: Some(match actual.0 {
            Some(r) => Current::CurrentStreamRevision(r),
            None => Current::CurrentNoStream(()),
        }),
        expected_stream_position_option: Some(match expected {
            ExpectedState::Exact(r) => Expected::ExpectedStreamPosition(r),
            ExpectedState::Any => Expected::ExpectedAny(()),
            ExpectedState::StreamExists => Expected::ExpectedStreamExists(()),
            ExpectedState::NoStream => Expected::ExpectedNoStream(()),
        }),
    };
    (
        rpc::Code::FailedPrecondition as i32,
        format!("wrong expected version: expected {expected}, actual {actual}"),
        pack("event_store.client.WrongExpectedVersion", &detail),
    )
}

fn timeout_detail() -> (i32, String, prost_types::Any) {
    (
        rpc::Code::DeadlineExceeded as i32,
        "the batch's deadline passed before it was appended; nothing was written".into(),
        pack("event_store.client.Timeout", &shared::Timeout {}),
    )
}

/// A refusal of a batch as its status and the detail the clients look for.
fn status_detail(status: &Status) -> (i32, String, prost_types::Any) {
    let exception = status
        .metadata()
        .get("exception")
        .and_then(|v| v.to_str().ok());
    let detail = match (status.code(), exception) {
        (_, Some("stream-deleted")) => {
            let stream = status
                .metadata()
                .get("stream-name")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            pack(
                "event_store.client.StreamDeleted",
                &shared::StreamDeleted {
                    stream_identifier: Some(stream_identifier(stream)),
                },
            )
        }
        (tonic::Code::PermissionDenied | tonic::Code::Unauthenticated, _) => {
            pack("event_store.client.AccessDenied", &shared::AccessDenied {})
        }
        (tonic::Code::InvalidArgument, _) => pack(
            "event_store.client.BadRequest",
            &shared::BadRequest {
                message: status.message().to_owned(),
            },
        ),
        _ => pack("event_store.client.Unknown", &shared::Unknown {}),
    };
    (status.code() as i32, status.message().to_owned(), detail)
}

/// A wrong expected revision in an append's answer, in the old form and the new.
fn wrong_expected_version(
    expected: ExpectedState,
    actual: factum_core::CurrentRevision,
) -> append_resp::WrongExpectedVersion {
    use append_resp::wrong_expected_version::{
        CurrentRevisionOption as Current, CurrentRevisionOption2060 as Current2060,
        ExpectedRevisionOption as Expected, ExpectedRevisionOption2060 as Expected2060,
    };
    append_resp::WrongExpectedVersion {
        current_revision_option_20_6_0: Some(match actual.0 {
            Some(r) => Current2060::CurrentRevision2060(r),
            None => Current2060::NoStream2060(()),
        }),
        expected_revision_option_20_6_0: match expected {
            ExpectedState::Exact(r) => Some(Expected2060::ExpectedRevision2060(r)),
            ExpectedState::Any => Some(Expected2060::Any2060(())),
            ExpectedState::StreamExists => Some(Expected2060::StreamExists2060(())),
            ExpectedState::NoStream => None,
        },
        current_revision_option: Some(match actual.0 {
            Some(r) => Current::CurrentRevision(r),
            None => Current::CurrentNoStream(()),
        }),
        expected_revision_option: Some(match expected {
            ExpectedState::Exact(r) => Expected::ExpectedRevision(r),
            ExpectedState::Any => Expected::ExpectedAny(()),
            ExpectedState::StreamExists => Expected::ExpectedStreamExists(()),
            ExpectedState::NoStream => Expected::ExpectedNoStream(()),
        }),
    }
}
