//! KurrentDB's `PersistentSubscriptions` service over the server's groups
//! ([`factum_toolkit::Groups`]): create, update, delete, read with acks and nacks, get info,
//! list, replay parked, restart the subsystem. Rights as over HTTP: reading a group takes read
//! on its source, managing it admin.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use factum_toolkit::{
    ConsumerStrategy, FilterSpec, GroupError, GroupInfo, GroupKey, GroupMessage, GroupSettings,
    GroupSource, NackAction, StartFrom,
};
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Code, Request, Response, Status, Streaming};

use super::auth;
use super::convert::{self, UuidForm, commit_of, invalid, with_exception};
use super::proto::event_store::client::persistent_subscriptions::{
    self as ps, CreateReq, CreateResp, DeleteReq, DeleteResp, GetInfoReq, GetInfoResp, ListReq,
    ListResp, ReadReq, ReadResp, ReplayParkedReq, ReplayParkedResp, SubscriptionInfo, UpdateReq,
    UpdateResp, persistent_subscriptions_server,
};
use super::proto::event_store::client::{StreamIdentifier, Uuid as ProtoUuid};
use crate::AppState;
use crate::auth::{Caller, Right};

pub(crate) struct Persistent {
    pub(crate) state: AppState,
}

/// A group error as a KurrentDB node answers it.
fn status(error: GroupError) -> Status {
    match error {
        GroupError::NotFound(key) => Status::not_found(format!(
            "Subscription group '{}' on stream '{}' does not exist.",
            key.group, key.source
        )),
        GroupError::Exists(key) => Status::already_exists(format!(
            "Subscription group '{}' on stream '{}' exists.",
            key.group, key.source
        )),
        GroupError::Invalid(why) => invalid(why),
        GroupError::Full(key) => with_exception(
            Code::FailedPrecondition,
            format!("Maximum subscriptions reached for group '{}'.", key.group),
            &[("exception", "maximum-subscribers-reached".to_owned())],
        ),
        GroupError::Replaying(key) => Status::failed_precondition(format!(
            "group '{key}' is replaying its parked messages already"
        )),
        GroupError::UnknownMessage { .. } => invalid(error.to_string()),
        GroupError::ServedElsewhere(_) | GroupError::Stopped(_) => {
            Status::unavailable(error.to_string())
        }
        GroupError::Store(e) => convert::status_of(&e),
    }
}

/// The source a request names: a stream (by name) or `$all`.
fn source_name(stream: Option<&StreamIdentifier>, all: bool) -> Result<String, Status> {
    if all {
        return Ok("$all".to_owned());
    }
    let name = convert::stream_name(stream)?;
    convert::parse_stream(&name)?;
    Ok(name)
}

/// The HTTP API's check of a group's rights ([`crate::groups::require`]), as a status.
fn require(
    caller: &Caller,
    right: Right,
    source: &str,
    filter: Option<&FilterSpec>,
) -> Result<(), Status> {
    crate::groups::require(caller, right, source, filter)
        .map_err(|e| convert::access_denied(e.body().error.clone()))
}

/// Milliseconds from the protocol's ticks (100 ns) or milliseconds.
fn millis(ticks: Option<i64>, ms: Option<i32>, what: &str) -> Result<Option<Duration>, Status> {
    let ms = match (ticks, ms) {
        (_, Some(ms)) => i64::from(ms),
        (Some(ticks), None) => ticks / 10_000,
        (None, None) => return Ok(None),
    };
    u64::try_from(ms)
        .map(|ms| Some(Duration::from_millis(ms)))
        .map_err(|_| invalid(format!("{what} is negative: {ms} ms")))
}

fn count(value: i32, what: &str) -> Result<usize, Status> {
    usize::try_from(value).map_err(|_| invalid(format!("{what} is negative: {value}")))
}

/// A group's settings from the protocol's, defaults for what is left at zero where zero is
/// not a setting.
fn settings(given: Option<&ps::Settings>, start_from: StartFrom) -> Result<GroupSettings, Status> {
    use ps::settings::{CheckpointAfter, MessageTimeout, NamedStrategy};
    let defaults = GroupSettings::default();
    let Some(s) = given else {
        return Ok(GroupSettings {
            start_from,
            ..defaults
        });
    };
    let timeout = match s.message_timeout {
        Some(MessageTimeout::MessageTimeoutTicks(t)) => millis(Some(t), None, "message timeout")?,
        Some(MessageTimeout::MessageTimeoutMs(ms)) => millis(None, Some(ms), "message timeout")?,
        None => None,
    };
    let checkpoint_after = match s.checkpoint_after {
        Some(CheckpointAfter::CheckpointAfterTicks(t)) => {
            millis(Some(t), None, "checkpoint after")?
        }
        Some(CheckpointAfter::CheckpointAfterMs(ms)) => millis(None, Some(ms), "checkpoint after")?,
        None => None,
    };
    let strategy = if s.consumer_strategy.is_empty() {
        match NamedStrategy::try_from(s.named_consumer_strategy) {
            Ok(NamedStrategy::DispatchToSingle) => ConsumerStrategy::DispatchToSingle,
            Ok(NamedStrategy::RoundRobin) => ConsumerStrategy::RoundRobin,
            Ok(NamedStrategy::Pinned) => ConsumerStrategy::Pinned,
            Err(_) => {
                return Err(invalid(format!(
                    "consumer strategy {} is not one KurrentDB names",
                    s.named_consumer_strategy
                )));
            }
        }
    } else {
        ConsumerStrategy::from_name(&s.consumer_strategy).ok_or_else(|| {
            invalid(format!(
                "consumer strategy '{}' is not RoundRobin, DispatchToSingle, Pinned or PinnedByCorrelation",
                s.consumer_strategy
            ))
        })?
    };
    let nonzero = |n: usize, default: usize| if n == 0 { default } else { n };
    Ok(GroupSettings {
        start_from,
        message_timeout: timeout.unwrap_or(defaults.message_timeout),
        max_retry_count: u32::try_from(s.max_retry_count).map_err(|_| {
            invalid(format!(
                "max retry count is negative: {}",
                s.max_retry_count
            ))
        })?,
        live_buffer_size: nonzero(
            count(s.live_buffer_size, "live buffer size")?,
            defaults.live_buffer_size,
        ),
        read_batch_size: nonzero(
            count(s.read_batch_size, "read batch size")?,
            defaults.read_batch_size,
        ),
        checkpoint_after: checkpoint_after.unwrap_or(defaults.checkpoint_after),
        checkpoint_min_count: count(s.min_checkpoint_count, "min checkpoint count")?,
        checkpoint_max_count: nonzero(
            count(s.max_checkpoint_count, "max checkpoint count")?,
            defaults.checkpoint_max_count,
        ),
        max_subscriber_count: count(s.max_subscriber_count, "max subscriber count")?,
        strategy,
    })
}

/// A filter of `$all` from the protocol's: prefixes or a regular expression, on streams or on
/// event types.
fn filter(given: Option<&ps::Filter>) -> FilterSpec {
    use ps::filter::Filter as On;
    let mut spec = FilterSpec::default();
    match given.and_then(|f| f.filter.as_ref()) {
        Some(On::StreamIdentifier(e)) => {
            if e.prefix.is_empty() && !e.regex.is_empty() {
                spec.stream_regex = Some(e.regex.clone());
            } else {
                spec.stream_prefixes = e.prefix.clone();
            }
        }
        Some(On::EventType(e)) => {
            if e.prefix.is_empty() && !e.regex.is_empty() {
                spec.event_type_regex = Some(e.regex.clone());
            } else {
                spec.event_type_prefixes = e.prefix.clone();
            }
        }
        None => {}
    }
    spec
}

/// The group a create or update names, with its source and settings.
fn group_of(
    options: Option<ps::GroupOptions>,
) -> Result<(GroupSource, String, GroupSettings), Status> {
    use ps::all_start::AllOption;
    use ps::group_options::StreamOption;
    use ps::stream_start::RevisionOption;
    let options = options.ok_or_else(|| invalid("the request has no options"))?;
    if options.group_name.is_empty() {
        return Err(invalid("the group name is empty"));
    }
    let (source, start) = match &options.stream_option {
        Some(StreamOption::Stream(s)) => {
            let name = source_name(s.stream_identifier.as_ref(), false)?;
            let start = match s.revision_option {
                Some(RevisionOption::Revision(r)) => StartFrom::At(r),
                Some(RevisionOption::End(())) => StartFrom::End,
                Some(RevisionOption::Start(())) | None => StartFrom::Start,
            };
            (
                GroupSource::stream(&name).map_err(|e| invalid(e.to_string()))?,
                start,
            )
        }
        Some(StreamOption::All(a)) => {
            let start = match &a.all_option {
                Some(AllOption::Position(p)) if p.commit_position > 0 => {
                    StartFrom::At(p.commit_position - 1)
                }
                Some(AllOption::End(())) => StartFrom::End,
                _ => StartFrom::Start,
            };
            let filter = match &a.filter_option {
                Some(ps::all_start::FilterOption::Filter(f)) => filter(Some(f)),
                _ => FilterSpec::default(),
            };
            (GroupSource::All(filter), start)
        }
        // An older client: the stream, and its start in the settings (-1: the end).
        None => {
            let name = source_name(options.stream_identifier.as_ref(), false)?;
            let revision = options.settings.as_ref().map_or(0, |s| s.revision);
            let start = match revision {
                0 => StartFrom::Start,
                u64::MAX => StartFrom::End,
                r => StartFrom::At(r),
            };
            (
                GroupSource::stream(&name).map_err(|e| invalid(e.to_string()))?,
                start,
            )
        }
    };
    let settings = settings(options.settings.as_ref(), start)?;
    Ok((source, options.group_name, settings))
}

/// A revision (a stream's group) or a position (`C:…/P:…`, on `$all`) as the info shows it.
fn point(all: bool, key: u64) -> String {
    if all {
        let commit = commit_of(key);
        format!("C:{commit}/P:{commit}")
    } else {
        key.to_string()
    }
}

fn info_of(info: &GroupInfo) -> SubscriptionInfo {
    let all = info.source == "$all";
    let s = &info.settings;
    let int = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let long = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
    // The last settled and the last read, when there are any.
    let last = |next: Option<u64>| match next {
        Some(n) if n > 0 => point(all, n - 1),
        _ => String::new(),
    };
    let start_from = match s.start_from {
        StartFrom::Start if all => "C:0/P:0".to_owned(),
        StartFrom::Start => "0".to_owned(),
        StartFrom::End if all => "C:-1/P:-1".to_owned(),
        StartFrom::End => "-1".to_owned(),
        StartFrom::At(at) => point(all, at),
    };
    SubscriptionInfo {
        event_source: info.source.clone(),
        group_name: info.group.clone(),
        status: if info.status == "live" {
            "Live".to_owned()
        } else if info.status.starts_with("failed") {
            format!("Faulted ({})", info.status)
        } else {
            "CatchingUp".to_owned()
        },
        connections: info
            .consumers
            .iter()
            .map(|c| ps::subscription_info::ConnectionInfo {
                from: String::new(),
                username: String::new(),
                average_items_per_second: 0,
                total_items: long(c.delivered),
                count_since_last_measurement: 0,
                observed_measurements: Vec::new(),
                available_slots: int(c.capacity.saturating_sub(c.in_flight)),
                in_flight_messages: int(c.in_flight),
                connection_name: c.name.clone(),
            })
            .collect(),
        average_per_second: 0,
        total_items: long(info.delivered),
        count_since_last_measurement: 0,
        last_checkpointed_event_position: last(info.checkpoint),
        last_known_event_position: last(Some(info.read_next)),
        resolve_link_tos: false,
        start_from,
        message_timeout_milliseconds: ms(s.message_timeout),
        extra_statistics: false,
        max_retry_count: i32::try_from(s.max_retry_count).unwrap_or(i32::MAX),
        live_buffer_size: int(s.live_buffer_size),
        buffer_size: int(s.live_buffer_size),
        read_batch_size: int(s.read_batch_size),
        check_point_after_milliseconds: ms(s.checkpoint_after),
        min_check_point_count: int(s.checkpoint_min_count),
        max_check_point_count: int(s.checkpoint_max_count),
        read_buffer_count: 0,
        live_buffer_count: long(info.waiting as u64),
        retry_buffer_count: 0,
        total_in_flight_messages: int(info.in_flight),
        outstanding_messages_count: int(info.in_flight),
        named_consumer_strategy: s.strategy.name().to_owned(),
        max_subscriber_count: int(s.max_subscriber_count),
        parked_message_count: long(info.parked),
    }
}

impl Persistent {
    async fn groups(&self) -> Result<&factum_toolkit::Groups, Status> {
        crate::groups::groups(&self.state)
            .await
            .map_err(|e| Status::unavailable(e.body().error.clone()))
    }

    /// Checks the caller's right on a group's source (and filter), as over HTTP.
    async fn checked(&self, caller: &Caller, right: Right, key: &GroupKey) -> Result<(), Status> {
        use crate::groups::RightsError;
        crate::groups::require_on(self.groups().await?, caller, right, key)
            .await
            .map_err(|e| match e {
                RightsError::Denied(e) => convert::access_denied(e.body().error.clone()),
                RightsError::Group(e) => status(e),
            })
    }
}

type Messages = Pin<Box<dyn Stream<Item = Result<ReadResp, Status>> + Send>>;

fn event_of(message: GroupMessage, form: UuidForm) -> ReadResp {
    let position = commit_of(message.event.position);
    ReadResp {
        content: Some(ps::read_resp::Content::Event(ps::read_resp::ReadEvent {
            event: Some(convert::recorded_event(message.event, form)),
            link: None,
            position: Some(ps::read_resp::read_event::Position::CommitPosition(
                position,
            )),
            count: Some(ps::read_resp::read_event::Count::RetryCount(
                i32::try_from(message.retry_count).unwrap_or(i32::MAX),
            )),
        })),
    }
}

fn ids_of(ids: &[ProtoUuid]) -> Result<Vec<uuid::Uuid>, Status> {
    ids.iter()
        .map(|id| convert::uuid_from_proto(Some(id)))
        .collect()
}

#[tonic::async_trait]
impl persistent_subscriptions_server::PersistentSubscriptions for Persistent {
    async fn create(&self, request: Request<CreateReq>) -> Result<Response<CreateResp>, Status> {
        let caller = auth::caller(&self.state, request.metadata())?;
        let (source, group, settings) = group_of(request.into_inner().options)?;
        let filter = match &source {
            GroupSource::All(filter) => Some(filter.clone()),
            GroupSource::Stream(_) => None,
        };
        require(&caller, Right::Admin, source.name(), filter.as_ref())?;
        self.groups()
            .await?
            .create(source, &group, settings)
            .await
            .map_err(status)?;
        Ok(Response::new(CreateResp {}))
    }

    async fn update(&self, request: Request<UpdateReq>) -> Result<Response<UpdateResp>, Status> {
        let caller = auth::caller(&self.state, request.metadata())?;
        let (source, group, settings) = group_of(request.into_inner().options)?;
        let key = GroupKey::new(source.name(), group);
        self.checked(&caller, Right::Admin, &key).await?;
        self.groups()
            .await?
            .update(&key, settings)
            .await
            .map_err(status)?;
        Ok(Response::new(UpdateResp {}))
    }

    async fn delete(&self, request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        use ps::delete_req::options::StreamOption;
        let caller = auth::caller(&self.state, request.metadata())?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| invalid("the request has no options"))?;
        let source = match &options.stream_option {
            Some(StreamOption::StreamIdentifier(s)) => source_name(Some(s), false)?,
            Some(StreamOption::All(())) => "$all".to_owned(),
            None => return Err(invalid("the request names no stream")),
        };
        let key = GroupKey::new(source, options.group_name);
        self.checked(&caller, Right::Admin, &key).await?;
        self.groups().await?.delete(&key).await.map_err(status)?;
        Ok(Response::new(DeleteResp {}))
    }

    type ReadStream = Messages;

    async fn read(
        &self,
        request: Request<Streaming<ReadReq>>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        use ps::read_req::Content;
        use ps::read_req::options::StreamOption;
        let caller = auth::caller(&self.state, request.metadata())?;
        let mut incoming = request.into_inner();
        let options = match incoming.message().await? {
            Some(ReadReq {
                content: Some(Content::Options(options)),
            }) => options,
            _ => return Err(invalid("a read of a group starts with its options")),
        };
        let source = match &options.stream_option {
            Some(StreamOption::StreamIdentifier(s)) => source_name(Some(s), false)?,
            Some(StreamOption::All(())) => "$all".to_owned(),
            None => return Err(invalid("the request names no stream")),
        };
        let form = match options.uuid_option.and_then(|u| u.content) {
            Some(ps::read_req::uuid_form::Content::String(())) => UuidForm::Text,
            _ => UuidForm::Structured,
        };
        let key = GroupKey::new(source, options.group_name);
        self.checked(&caller, Right::Read, &key).await?;
        let admitted = super::read::admit(&self.state, &caller)?;
        let capacity = usize::try_from(options.buffer_size.max(1)).unwrap_or(1);
        let mut connection = self
            .groups()
            .await?
            .connect(&key, "grpc", capacity)
            .await
            .map_err(status)?;
        let (out, messages) = mpsc::channel::<Result<ReadResp, Status>>(capacity.clamp(16, 1024));
        let confirmation = ReadResp {
            content: Some(ps::read_resp::Content::SubscriptionConfirmation(
                ps::read_resp::SubscriptionConfirmation {
                    subscription_id: key.to_string(),
                },
            )),
        };
        let _ = out.send(Ok(confirmation)).await;
        let mut closing = self.state.closing.clone();
        let counted = (
            admitted,
            crate::metrics::Subscribed::new(self.state.metrics.clone()),
        );
        let (stall_timeout, metrics) =
            (self.state.config.stall_timeout, self.state.metrics.clone());
        let stalled = Arc::new(AtomicBool::new(false));
        let stalled_here = stalled.clone();
        tokio::spawn(async move {
            let _counted = counted;
            // Once the client stops taking messages, the acks and nacks it sent before are
            // still applied (up to the end of its requests, for at most a second); only
            // then does the connection give back what it holds.
            let mut draining = false;
            let drain = tokio::time::sleep(Duration::from_secs(3600));
            tokio::pin!(drain);
            loop {
                tokio::select! {
                    message = connection.next(), if !draining => {
                        let Some(message) = message else {
                            let _ = out.send(Err(with_exception(
                                Code::Aborted,
                                format!("persistent subscription '{key}' dropped: the group stopped; connect again"),
                                &[("exception", "persistent-subscription-dropped".to_owned())],
                            ))).await;
                            break;
                        };
                        match tokio::time::timeout(stall_timeout, out.send(Ok(event_of(message, form)))).await {
                            Ok(Ok(())) => {}
                            // Not sent: the connection gives it back with the rest.
                            Ok(Err(_)) => {
                                draining = true;
                                drain.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(1));
                            }
                            // The client took nothing for the stall timeout: what it holds
                            // goes back to the group for the other consumers.
                            Err(_) => {
                                stalled_here.store(true, Ordering::Relaxed);
                                metrics.stalled.inc();
                                tracing::info!(
                                    group = %key,
                                    seconds = stall_timeout.as_secs(),
                                    "a gRPC consumer took nothing for the stall timeout; it is dropped"
                                );
                                break;
                            }
                        }
                    }
                    request = incoming.message() => {
                        let content = match request {
                            Ok(Some(ReadReq { content: Some(content) })) => content,
                            Ok(Some(_)) => continue,
                            // The client closed its side or went away.
                            Ok(None) | Err(_) => break,
                        };
                        // Acks and nacks have no answer in the protocol: an id not in flight
                        // (settled already, timed out and sent again) changes nothing.
                        let settled = match content {
                            Content::Ack(ack) => match ids_of(&ack.ids) {
                                Ok(ids) => connection.ack(&ids).await,
                                Err(e) => { tracing::debug!(error = %e, "an ack with a bad id"); Ok(()) }
                            },
                            Content::Nack(nack) => {
                                use ps::read_req::nack::Action;
                                let action = match Action::try_from(nack.action) {
                                    Ok(Action::Park) => NackAction::Park,
                                    Ok(Action::Skip) => NackAction::Skip,
                                    Ok(Action::Stop) => NackAction::Stop,
                                    Ok(Action::Retry | Action::Unknown) | Err(_) => NackAction::Retry,
                                };
                                match ids_of(&nack.ids) {
                                    Ok(ids) => connection.nack(&ids, action, &nack.reason).await,
                                    Err(e) => { tracing::debug!(error = %e, "a nack with a bad id"); Ok(()) }
                                }
                            }
                            Content::Options(_) => Ok(()),
                        };
                        if let Err(e) = settled {
                            tracing::debug!(group = %key, error = %e, "an ack or nack that settled nothing");
                        }
                    }
                    () = out.closed(), if !draining => {
                        draining = true;
                        drain.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(1));
                    }
                    () = &mut drain, if draining => break,
                    () = async { let _ = closing.wait_for(|c| *c).await; } => break,
                }
            }
        });
        let mut messages = messages;
        let mut ended = false;
        let stream = futures::stream::poll_fn(move |cx| {
            if ended {
                return std::task::Poll::Ready(None);
            }
            let next = std::task::ready!(messages.poll_recv(cx));
            if next.is_none() {
                ended = true;
                if stalled.load(Ordering::Relaxed) {
                    return std::task::Poll::Ready(Some(Err(Status::unavailable(format!(
                        "the consumer took nothing for {} s; it was dropped, connect again to go on",
                        stall_timeout.as_secs()
                    )))));
                }
            }
            std::task::Poll::Ready(next)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_info(
        &self,
        request: Request<GetInfoReq>,
    ) -> Result<Response<GetInfoResp>, Status> {
        use ps::get_info_req::options::StreamOption;
        let caller = auth::caller(&self.state, request.metadata())?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| invalid("the request has no options"))?;
        let source = match &options.stream_option {
            Some(StreamOption::StreamIdentifier(s)) => source_name(Some(s), false)?,
            Some(StreamOption::All(())) => "$all".to_owned(),
            None => return Err(invalid("the request names no stream")),
        };
        let key = GroupKey::new(source, options.group_name);
        self.checked(&caller, Right::Read, &key).await?;
        let info = self.groups().await?.info(&key).await.map_err(status)?;
        Ok(Response::new(GetInfoResp {
            subscription_info: Some(info_of(&info)),
        }))
    }

    async fn replay_parked(
        &self,
        request: Request<ReplayParkedReq>,
    ) -> Result<Response<ReplayParkedResp>, Status> {
        use ps::replay_parked_req::options::{StopAtOption, StreamOption};
        let caller = auth::caller(&self.state, request.metadata())?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| invalid("the request has no options"))?;
        let source = match &options.stream_option {
            Some(StreamOption::StreamIdentifier(s)) => source_name(Some(s), false)?,
            Some(StreamOption::All(())) => "$all".to_owned(),
            None => return Err(invalid("the request names no stream")),
        };
        let stop_at = match options.stop_at_option {
            Some(StopAtOption::StopAt(n)) if n >= 0 => Some(n as u64),
            Some(StopAtOption::StopAt(n)) => {
                return Err(invalid(format!("stop at is negative: {n}")));
            }
            Some(StopAtOption::NoLimit(())) | None => None,
        };
        let key = GroupKey::new(source, options.group_name);
        self.checked(&caller, Right::Admin, &key).await?;
        self.groups()
            .await?
            .replay_parked(&key, stop_at)
            .await
            .map_err(status)?;
        Ok(Response::new(ReplayParkedResp {}))
    }

    async fn list(&self, request: Request<ListReq>) -> Result<Response<ListResp>, Status> {
        use ps::list_req::options::ListOption;
        use ps::list_req::source::StreamOption;
        let caller = auth::caller(&self.state, request.metadata())?;
        // No options: every group, as with `list_all_subscriptions`.
        let options = request.into_inner().options.unwrap_or_default();
        let source = match options.list_option {
            Some(ListOption::ListForStream(s)) => Some(match s.stream_option {
                Some(StreamOption::Stream(stream)) => source_name(Some(&stream), false)?,
                Some(StreamOption::All(())) | None => "$all".to_owned(),
            }),
            Some(ListOption::ListAllSubscriptions(())) | None => None,
        };
        let groups = self
            .groups()
            .await?
            .list(source.as_deref())
            .await
            .map_err(status)?;
        let visible: Vec<SubscriptionInfo> = groups
            .iter()
            .filter(|g| require(&caller, Right::Read, &g.source, g.filter.as_ref()).is_ok())
            .map(info_of)
            .collect();
        // As a KurrentDB node: no group there is "not found".
        if visible.is_empty() {
            return Err(Status::not_found(match source {
                Some(source) => format!("Subscription groups for stream '{source}' do not exist."),
                None => "There are no persistent subscriptions.".to_owned(),
            }));
        }
        Ok(Response::new(ListResp {
            subscriptions: visible,
        }))
    }

    async fn restart_subsystem(&self, request: Request<()>) -> Result<Response<()>, Status> {
        let caller = auth::caller(&self.state, request.metadata())?;
        auth::require(&caller, Right::Admin, "")?;
        self.groups().await?.restart().await.map_err(status)?;
        Ok(Response::new(()))
    }
}
