//! The command bus and its middleware.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use parking_lot::Mutex;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

use crate::CommandContext;

/// A command: a request with exactly one handler.
pub trait Command: Send + Sync + 'static {
    /// What the handler answers.
    type Output: Send + 'static;

    /// The command's name, for logs, authorisation and the audit trail.
    fn name() -> &'static str {
        std::any::type_name::<Self>()
    }

    /// Checks the command on its own (no state); the validation layer refuses it otherwise.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A command with the context it was sent in.
#[derive(Clone, Debug)]
pub struct Envelope<C> {
    /// The command.
    pub command: C,
    /// Who sent it and why.
    pub context: CommandContext,
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// No handler is registered for the command's type.
    #[error("no handler for {0}")]
    NoHandler(&'static str),
    /// Two handlers were registered for one command type.
    #[error("more than one handler for {0}")]
    DuplicateHandler(&'static str),
    /// The command failed validation; the handler did not see it.
    #[error("invalid {command}: {reason}")]
    Invalid {
        /// The command's name.
        command: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The sender may not send this command; the handler did not see it.
    #[error("{user} may not send {command}")]
    Forbidden {
        /// Who sent it (`anonymous` when unknown).
        user: String,
        /// The command's name.
        command: &'static str,
    },
    /// The handler refused the command; the reason is the handler's own error type, see
    /// [`BusError::rejection`].
    #[error("rejected: {0}")]
    Rejected(Box<dyn std::error::Error + Send + Sync>),
    /// The handler could not run (the store failed, a task panicked).
    #[error("failed: {0}")]
    Failed(String),
}

impl BusError {
    /// The handler's own rejection, if it is of type `E`.
    pub fn rejection<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            BusError::Rejected(error) => error.downcast_ref::<E>(),
            _ => None,
        }
    }

    /// A rejection carrying the handler's typed error.
    pub fn rejected(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        BusError::Rejected(Box::new(error))
    }
}

type Handler<C> = BoxCloneSyncService<Envelope<C>, <C as Command>::Output, BusError>;

/// Builds a [`CommandBus`]: middleware first, then one handler per command type.
#[derive(Default)]
pub struct CommandBusBuilder {
    handlers: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    duplicates: Vec<&'static str>,
    tracing: bool,
    policy: Option<AuthorizationPolicy>,
    audit: Option<Arc<dyn AuditSink>>,
    validation: bool,
}

/// Decides whether a sender may send a command (by its name).
pub type AuthorizationPolicy = Arc<dyn Fn(&CommandContext, &'static str) -> bool + Send + Sync>;

impl CommandBusBuilder {
    /// Every command runs in a `tracing` span with its name, id and correlation id; the
    /// outcome is logged.
    pub fn with_tracing(mut self) -> Self {
        self.tracing = true;
        self
    }

    /// Every command is checked with [`Command::validate`] before its handler sees it.
    pub fn with_validation(mut self) -> Self {
        self.validation = true;
        self
    }

    /// Every command is checked against the policy before its handler sees it.
    pub fn with_authorization(
        mut self,
        policy: impl Fn(&CommandContext, &'static str) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.policy = Some(Arc::new(policy));
        self
    }

    /// Every command, whoever sent it and however it ended, is recorded in the audit sink.
    pub fn with_audit(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }

    /// Registers the handler of command type `C`, wrapped in the middleware configured so far.
    pub fn handle<C, S>(mut self, handler: S) -> Self
    where
        C: Command,
        S: Service<Envelope<C>, Response = C::Output, Error = BusError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        // From the inside out: validation, authorisation, audit, tracing. The audit layer sits
        // outside authorisation and validation so refused commands are on the trail too.
        let service = BoxCloneSyncService::new(handler);
        let service = if self.validation {
            BoxCloneSyncService::new(ValidationLayer.layer(service))
        } else {
            service
        };
        let service = match &self.policy {
            Some(policy) => {
                BoxCloneSyncService::new(AuthorizationLayer::new(policy.clone()).layer(service))
            }
            None => service,
        };
        let service = match &self.audit {
            Some(sink) => BoxCloneSyncService::new(AuditLayer::new(sink.clone()).layer(service)),
            None => service,
        };
        let service = if self.tracing {
            BoxCloneSyncService::new(TracingLayer.layer(service))
        } else {
            service
        };
        let handler: Arc<dyn Any + Send + Sync> = Arc::new(service);
        if self.handlers.insert(TypeId::of::<C>(), handler).is_some() {
            self.duplicates.push(C::name());
        }
        self
    }

    /// The bus; an error names every command type that got more than one handler.
    pub fn build(self) -> Result<CommandBus, BusError> {
        if let Some(first) = self.duplicates.first() {
            return Err(BusError::DuplicateHandler(first));
        }
        Ok(CommandBus {
            handlers: Arc::new(self.handlers),
        })
    }
}

/// Sends commands to their one handler. Cheap to clone.
///
/// The command bus: exactly one handler per command type, each a `tower::Service`, wrapped in
/// the bus's middleware (tracing, validation, authorisation, audit — all `tower::Layer`s).
/// The sender gets the handler's result or a typed rejection; system-generated commands can be
/// dispatched without waiting, through the same handlers and middleware.
///
/// ```
/// # mod factum { pub use factum_core::*; pub use factum_toolkit::*; }
/// use std::sync::Arc;
/// use factum::{BusError, Command, CommandBus, Envelope, MemoryAuditLog};
/// use factum::CommandContext;
///
/// struct Ship { order: String }
///
/// impl Command for Ship {
///     type Output = String; // the tracking number
///     fn name() -> &'static str { "Ship" }
///     fn validate(&self) -> Result<(), String> {
///         if self.order.is_empty() { return Err("no order".into()); }
///         Ok(())
///     }
/// }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("order {0} is on hold")]
/// struct OnHold(String);
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let audit = Arc::new(MemoryAuditLog::default());
/// let bus = CommandBus::builder()
///     .with_tracing()
///     .with_validation()
///     .with_authorization(|context, _name| context.user.is_some())
///     .with_audit(audit.clone())
///     .handle::<Ship, _>(tower::service_fn(|envelope: Envelope<Ship>| async move {
///         if envelope.command.order == "o-13" {
///             return Err(BusError::rejected(OnHold(envelope.command.order)));
///         }
///         Ok(format!("TRACK-{}", envelope.command.order))
///     }))
///     .build()
///     .unwrap();
///
/// let clerk = CommandContext::new().by("clerk");
/// let tracking = bus.send(Ship { order: "o-1".into() }, clerk.clone()).await.unwrap();
/// assert_eq!(tracking, "TRACK-o-1");
///
/// // A rejection comes back typed; validation and authorisation stop a command early.
/// let held = bus.send(Ship { order: "o-13".into() }, clerk.clone()).await.unwrap_err();
/// assert_eq!(held.rejection::<OnHold>().unwrap().0, "o-13");
/// assert!(bus.send(Ship { order: "".into() }, clerk).await.is_err());
/// assert!(bus.send(Ship { order: "o-2".into() }, CommandContext::new()).await.is_err());
///
/// // The audit log has who sent what, and how it ended.
/// let entries = audit.entries();
/// assert_eq!(entries.len(), 4);
/// assert_eq!(entries[0].user.as_deref(), Some("clerk"));
/// assert!(entries[1].error.is_some());
/// # });
/// ```
#[derive(Clone)]
pub struct CommandBus {
    handlers: Arc<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl CommandBus {
    /// A builder.
    pub fn builder() -> CommandBusBuilder {
        CommandBusBuilder::default()
    }

    fn handler<C: Command>(&self) -> Result<Handler<C>, BusError> {
        self.handlers
            .get(&TypeId::of::<C>())
            .and_then(|handler| handler.downcast_ref::<Handler<C>>())
            .cloned()
            .ok_or(BusError::NoHandler(C::name()))
    }

    /// Sends a command and waits for its handler's answer.
    pub async fn send<C: Command>(
        &self,
        command: C,
        context: CommandContext,
    ) -> Result<C::Output, BusError> {
        self.handler::<C>()?
            .oneshot(Envelope { command, context })
            .await
    }

    /// Sends a command without waiting (a system-generated command): it runs through the same
    /// handler and middleware in its own task; the handle gives the answer to whoever wants it.
    pub fn dispatch<C: Command>(
        &self,
        command: C,
        context: CommandContext,
    ) -> tokio::task::JoinHandle<Result<C::Output, BusError>> {
        let bus = self.clone();
        tokio::spawn(async move { bus.send(command, context).await })
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Runs each command in a `tracing` span and logs how it ended.
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingLayer;

impl<S> Layer<S> for TracingLayer {
    type Service = Traced<S>;
    fn layer(&self, inner: S) -> Traced<S> {
        Traced { inner }
    }
}

/// The service of [`TracingLayer`].
#[derive(Clone)]
pub struct Traced<S> {
    inner: S,
}

impl<C, S> Service<Envelope<C>> for Traced<S>
where
    C: Command,
    S: Service<Envelope<C>, Response = C::Output, Error = BusError>,
    S::Future: Send + 'static,
{
    type Response = C::Output;
    type Error = BusError;
    type Future = BoxFuture<Result<C::Output, BusError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BusError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut envelope: Envelope<C>) -> Self::Future {
        use tracing::Instrument;
        let span = tracing::info_span!(
            "command",
            name = C::name(),
            id = %envelope.context.command_id,
            correlation = %envelope.context.correlation_id,
            user = envelope.context.user.as_deref().unwrap_or("anonymous"),
        );
        // The command's span continues the trace it was sent in; its events carry the span.
        envelope.context.traceparent =
            crate::trace::enter_trace(&span, envelope.context.traceparent.as_deref());
        let future = span.in_scope(|| self.inner.call(envelope));
        Box::pin(
            async move {
                let outcome = future.await;
                match &outcome {
                    Ok(_) => tracing::debug!("command succeeded"),
                    Err(error) => tracing::info!(%error, "command did not succeed"),
                }
                outcome
            }
            .instrument(span),
        )
    }
}

/// Refuses commands whose [`Command::validate`] fails, before the handler sees them.
#[derive(Clone, Copy, Debug, Default)]
pub struct ValidationLayer;

impl<S> Layer<S> for ValidationLayer {
    type Service = Validated<S>;
    fn layer(&self, inner: S) -> Validated<S> {
        Validated { inner }
    }
}

/// The service of [`ValidationLayer`].
#[derive(Clone)]
pub struct Validated<S> {
    inner: S,
}

impl<C, S> Service<Envelope<C>> for Validated<S>
where
    C: Command,
    S: Service<Envelope<C>, Response = C::Output, Error = BusError>,
    S::Future: Send + 'static,
{
    type Response = C::Output;
    type Error = BusError;
    type Future = BoxFuture<Result<C::Output, BusError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BusError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, envelope: Envelope<C>) -> Self::Future {
        if let Err(reason) = envelope.command.validate() {
            return Box::pin(std::future::ready(Err(BusError::Invalid {
                command: C::name(),
                reason,
            })));
        }
        Box::pin(self.inner.call(envelope))
    }
}

/// Refuses commands the policy does not allow for the sender, before the handler sees them.
#[derive(Clone)]
pub struct AuthorizationLayer {
    policy: AuthorizationPolicy,
}

impl AuthorizationLayer {
    /// A layer with this policy.
    pub fn new(policy: AuthorizationPolicy) -> Self {
        AuthorizationLayer { policy }
    }
}

impl<S> Layer<S> for AuthorizationLayer {
    type Service = Authorized<S>;
    fn layer(&self, inner: S) -> Authorized<S> {
        Authorized {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The service of [`AuthorizationLayer`].
#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    policy: AuthorizationPolicy,
}

impl<C, S> Service<Envelope<C>> for Authorized<S>
where
    C: Command,
    S: Service<Envelope<C>, Response = C::Output, Error = BusError>,
    S::Future: Send + 'static,
{
    type Response = C::Output;
    type Error = BusError;
    type Future = BoxFuture<Result<C::Output, BusError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BusError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, envelope: Envelope<C>) -> Self::Future {
        if !(self.policy)(&envelope.context, C::name()) {
            let user = envelope
                .context
                .user
                .clone()
                .unwrap_or_else(|| "anonymous".into());
            return Box::pin(std::future::ready(Err(BusError::Forbidden {
                user,
                command: C::name(),
            })));
        }
        Box::pin(self.inner.call(envelope))
    }
}

/// One line of the audit trail: who sent what, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// The command's name.
    pub command: &'static str,
    /// Its id.
    pub command_id: String,
    /// Who sent it.
    pub user: Option<String>,
    /// Its correlation id.
    pub correlation_id: String,
    /// `None` when it succeeded, otherwise why not.
    pub error: Option<String>,
    /// How long it took, in microseconds.
    pub duration_us: u64,
}

/// Where audit entries go.
#[async_trait::async_trait]
pub trait AuditSink: Send + Sync {
    /// Records one entry.
    async fn record(&self, entry: AuditEntry);
}

/// An audit trail kept in memory (tests, small tools).
#[derive(Default)]
pub struct MemoryAuditLog {
    entries: Mutex<Vec<AuditEntry>>,
}

impl MemoryAuditLog {
    /// Everything recorded so far.
    pub fn entries(&self) -> Vec<AuditEntry> {
        self.entries.lock().clone()
    }
}

#[async_trait::async_trait]
impl AuditSink for MemoryAuditLog {
    async fn record(&self, entry: AuditEntry) {
        self.entries.lock().push(entry);
    }
}

/// An audit trail in the event store: each entry is a `CommandAudited` event in one stream.
pub struct StoreAuditLog {
    store: Arc<dyn factum_core::EventStore>,
    stream: factum_core::StreamName,
}

impl StoreAuditLog {
    /// Records into `stream` of `store`.
    pub fn new(store: impl factum_core::IntoStore, stream: factum_core::StreamName) -> Self {
        StoreAuditLog {
            store: store.into_store(),
            stream,
        }
    }
}

#[async_trait::async_trait]
impl AuditSink for StoreAuditLog {
    async fn record(&self, entry: AuditEntry) {
        let event = match factum_core::NewEvent::json("CommandAudited", &entry) {
            Ok(event) => event,
            Err(error) => {
                tracing::error!(%error, "audit entry does not serialise");
                return;
            }
        };
        if let Err(error) = self
            .store
            .append(&self.stream, factum_core::ExpectedState::Any, vec![event])
            .await
        {
            tracing::error!(%error, "recording an audit entry failed");
        }
    }
}

/// Records every command and its outcome in an [`AuditSink`].
#[derive(Clone)]
pub struct AuditLayer {
    sink: Arc<dyn AuditSink>,
}

impl AuditLayer {
    /// A layer recording into `sink`.
    pub fn new(sink: Arc<dyn AuditSink>) -> Self {
        AuditLayer { sink }
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audited<S>;
    fn layer(&self, inner: S) -> Audited<S> {
        Audited {
            inner,
            sink: self.sink.clone(),
        }
    }
}

/// The service of [`AuditLayer`].
#[derive(Clone)]
pub struct Audited<S> {
    inner: S,
    sink: Arc<dyn AuditSink>,
}

impl<C, S> Service<Envelope<C>> for Audited<S>
where
    C: Command,
    S: Service<Envelope<C>, Response = C::Output, Error = BusError>,
    S::Future: Send + 'static,
{
    type Response = C::Output;
    type Error = BusError;
    type Future = BoxFuture<Result<C::Output, BusError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BusError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, envelope: Envelope<C>) -> Self::Future {
        let started = Instant::now();
        let context = envelope.context.clone();
        let sink = self.sink.clone();
        let future = self.inner.call(envelope);
        Box::pin(async move {
            let outcome = future.await;
            sink.record(AuditEntry {
                command: C::name(),
                command_id: context.command_id.to_string(),
                user: context.user,
                correlation_id: context.correlation_id,
                error: outcome.as_ref().err().map(ToString::to_string),
                duration_us: started.elapsed().as_micros() as u64,
            })
            .await;
            outcome
        })
    }
}
