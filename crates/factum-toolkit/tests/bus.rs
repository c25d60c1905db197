//! The command bus: one handler per type, typed rejections, and the middleware.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use factum_core::MemoryStore;
use factum_toolkit::{
    BusError, Command, CommandContext, Decider, Envelope, Repository, ToAggregate,
};
use factum_toolkit::{CommandBus, MemoryAuditLog};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum TicketEvent {
    Opened { title: String },
    Closed,
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum TicketError {
    #[error("the ticket is closed")]
    Closed,
}

enum TicketCommand {
    Open(String),
    Close,
}

struct Tickets;

impl Decider for Tickets {
    type State = Option<bool>;
    type Command = TicketCommand;
    type Event = TicketEvent;
    type Error = TicketError;
    const CATEGORY: &'static str = "ticket";
    fn initial_state(&self) -> Option<bool> {
        None
    }
    fn decide(
        &self,
        open: &Option<bool>,
        command: &TicketCommand,
    ) -> Result<Vec<TicketEvent>, TicketError> {
        match (open, command) {
            (Some(false), _) => Err(TicketError::Closed),
            (_, TicketCommand::Open(title)) => Ok(vec![TicketEvent::Opened {
                title: title.clone(),
            }]),
            (_, TicketCommand::Close) => Ok(vec![TicketEvent::Closed]),
        }
    }
    fn evolve(&self, _: Option<bool>, event: &TicketEvent) -> Option<bool> {
        Some(matches!(event, TicketEvent::Opened { .. }))
    }
}

/// A command with its own validation rule.
struct Rename {
    name: String,
}

impl Command for Rename {
    type Output = String;
    fn name() -> &'static str {
        "Rename"
    }
    fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            Err("the name is empty".into())
        } else {
            Ok(())
        }
    }
}

fn counting_handler(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    Envelope<Rename>,
    Response = String,
    Error = BusError,
    Future = impl std::future::Future<Output = Result<String, BusError>> + Send,
> + Clone
+ Send
+ Sync
+ 'static {
    tower::service_fn(move |envelope: Envelope<Rename>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { Ok(format!("renamed to {}", envelope.command.name)) }
    })
}

#[test]
fn a_second_handler_for_a_type_is_an_error_when_the_bus_is_built() {
    let calls = Arc::new(AtomicUsize::new(0));
    let built = CommandBus::builder()
        .handle::<Rename, _>(counting_handler(calls.clone()))
        .handle::<Rename, _>(counting_handler(calls))
        .build();
    assert!(matches!(built, Err(BusError::DuplicateHandler("Rename"))));
}

#[tokio::test]
async fn a_command_without_a_handler_is_refused() {
    let bus = CommandBus::builder().build().unwrap();
    let error = bus
        .send(Rename { name: "x".into() }, CommandContext::new())
        .await
        .unwrap_err();
    assert!(matches!(error, BusError::NoHandler("Rename")));
}

#[tokio::test]
async fn the_sender_gets_the_result_or_the_handlers_typed_rejection() {
    let tickets = Arc::new(Repository::new(MemoryStore::new(), Tickets));
    let bus = CommandBus::builder()
        .with_tracing()
        .with_validation()
        .handle::<ToAggregate<Tickets>, _>(tickets.clone().handler())
        .build()
        .unwrap();
    let context = CommandContext::new().by("ann");
    let opened = bus
        .send(
            ToAggregate::<Tickets>::new("t1", TicketCommand::Open("printer".into())),
            context.clone(),
        )
        .await
        .unwrap();
    assert_eq!(
        opened.events,
        vec![TicketEvent::Opened {
            title: "printer".into()
        }]
    );
    bus.send(
        ToAggregate::<Tickets>::new("t1", TicketCommand::Close),
        context.clone(),
    )
    .await
    .unwrap();
    let error = bus
        .send(
            ToAggregate::<Tickets>::new("t1", TicketCommand::Open("again".into())),
            context,
        )
        .await
        .unwrap_err();
    assert_eq!(error.rejection::<TicketError>(), Some(&TicketError::Closed));
    assert_eq!(tickets.load("t1").await.unwrap().revision, Some(1));
}

#[tokio::test]
async fn middleware_validates_authorises_and_audits_every_command() {
    let calls = Arc::new(AtomicUsize::new(0));
    let audit = Arc::new(MemoryAuditLog::default());
    let tickets = Arc::new(Repository::new(MemoryStore::new(), Tickets));
    let bus = CommandBus::builder()
        .with_tracing()
        .with_validation()
        .with_authorization(|context, command| {
            command != "Rename" || context.user.as_deref() == Some("admin")
        })
        .with_audit(audit.clone())
        .handle::<Rename, _>(counting_handler(calls.clone()))
        .handle::<ToAggregate<Tickets>, _>(tickets.handler())
        .build()
        .unwrap();

    let admin = CommandContext::new().by("admin");
    assert_eq!(
        bus.send(Rename { name: "new".into() }, admin.clone())
            .await
            .unwrap(),
        "renamed to new"
    );
    let invalid = bus
        .send(Rename { name: " ".into() }, admin.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(
            invalid,
            BusError::Invalid {
                command: "Rename",
                ..
            }
        ),
        "{invalid}"
    );
    let forbidden = bus
        .send(
            Rename {
                name: "mine".into(),
            },
            CommandContext::new().by("bob"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(forbidden, BusError::Forbidden { ref user, command: "Rename" } if user == "bob")
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "refused commands never reach the handler"
    );
    bus.send(
        ToAggregate::<Tickets>::new("t9", TicketCommand::Close),
        CommandContext::new().by("bob"),
    )
    .await
    .unwrap();
    let rejected = bus
        .send(
            ToAggregate::<Tickets>::new("t9", TicketCommand::Close),
            CommandContext::new().by("bob"),
        )
        .await
        .unwrap_err();
    assert!(rejected.rejection::<TicketError>().is_some());

    let entries = audit.entries();
    let summary: Vec<(&str, Option<&str>, bool)> = entries
        .iter()
        .map(|e| (e.command, e.user.as_deref(), e.error.is_none()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("Rename", Some("admin"), true),
            ("Rename", Some("admin"), false),
            ("Rename", Some("bob"), false),
            ("ticket", Some("bob"), true),
            ("ticket", Some("bob"), false),
        ]
    );
    assert!(
        entries[2]
            .error
            .as_deref()
            .unwrap()
            .contains("may not send")
    );
    assert!(entries[4].error.as_deref().unwrap().contains("closed"));
    assert_eq!(entries[0].command_id, admin.command_id.to_string());
}

#[tokio::test]
async fn dispatched_commands_go_through_the_same_handler_and_middleware() {
    let calls = Arc::new(AtomicUsize::new(0));
    let audit = Arc::new(MemoryAuditLog::default());
    let bus = CommandBus::builder()
        .with_validation()
        .with_audit(audit.clone())
        .handle::<Rename, _>(counting_handler(calls.clone()))
        .build()
        .unwrap();
    let system = CommandContext::new().by("system:saga");
    let handles: Vec<_> = (0..10)
        .map(|i| {
            bus.dispatch(
                Rename {
                    name: format!("n{i}"),
                },
                system.clone(),
            )
        })
        .collect();
    let invalid = bus.dispatch(
        Rename {
            name: String::new(),
        },
        system.clone(),
    );
    for handle in handles {
        handle.await.unwrap().unwrap();
    }
    assert!(matches!(
        invalid.await.unwrap(),
        Err(BusError::Invalid { .. })
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 10);
    let entries = audit.entries();
    assert_eq!(entries.len(), 11);
    assert!(
        entries
            .iter()
            .all(|e| e.user.as_deref() == Some("system:saga"))
    );
}

#[tokio::test]
async fn the_audit_trail_can_live_in_the_event_store() {
    use factum_core::{Direction, EventStore, StreamName};
    let store = MemoryStore::new();
    let stream = StreamName::user("audit").unwrap();
    let sink = Arc::new(factum_toolkit::StoreAuditLog::new(
        Arc::new(store.clone()),
        stream.clone(),
    ));
    let bus = CommandBus::builder()
        .with_audit(sink)
        .handle::<Rename, _>(counting_handler(Arc::new(AtomicUsize::new(0))))
        .build()
        .unwrap();
    bus.send(Rename { name: "x".into() }, CommandContext::new().by("eve"))
        .await
        .unwrap();
    let recorded = store
        .read_stream(&stream, 0, Direction::Forwards, 10)
        .await
        .unwrap();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].event_type, "CommandAudited");
    let entry: serde_json::Value = serde_json::from_slice(&recorded[0].data).unwrap();
    assert_eq!(
        (entry["command"].as_str(), entry["user"].as_str()),
        (Some("Rename"), Some("eve"))
    );
}
