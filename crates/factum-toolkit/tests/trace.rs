//! Commands as OpenTelemetry spans: a command sent in a trace is a span whose parent is that
//! trace's, and its events record the command span's own context.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use factum_core::{Direction, EventStore, MemoryStore, StreamName};
use factum_toolkit::{
    CommandBus, CommandContext, Decider, Repository, TRACEPARENT_KEY, ToAggregate,
};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt as _;

struct Counter;

#[derive(Serialize, Deserialize)]
enum Counted {
    Counted,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Decider for Counter {
    type State = u64;
    type Command = ();
    type Event = Counted;
    type Error = Never;
    const CATEGORY: &'static str = "counter";
    fn initial_state(&self) -> u64 {
        0
    }
    fn decide(&self, _: &u64, _: &()) -> Result<Vec<Counted>, Never> {
        Ok(vec![Counted::Counted])
    }
    fn evolve(&self, n: u64, _: &Counted) -> u64 {
        n + 1
    }
}

/// A bus `.with_tracing()` sending counter commands to a repository over `store`.
fn traced_bus(store: &Arc<dyn EventStore>) -> CommandBus {
    let counters = Arc::new(Repository::new(store.clone(), Counter));
    CommandBus::builder()
        .with_tracing()
        .handle::<ToAggregate<Counter>, _>(counters.handler())
        .build()
        .unwrap()
}

/// The tests take turns: tracing caches per call site whether anyone listens, and a test
/// without a subscriber that reaches the command span's call site while the other test sets
/// its subscriber can leave that cache saying "no one" (seen once on a loaded CI run: no
/// command span recorded).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

async fn recorded_traceparent(store: &Arc<dyn EventStore>, stream: &str) -> Option<String> {
    let event = store
        .read_stream(
            &StreamName::user(stream).unwrap(),
            0,
            Direction::Forwards,
            1,
        )
        .await
        .unwrap()
        .remove(0);
    event
        .metadata_json()
        .get(TRACEPARENT_KEY)
        .and_then(|v| v.as_str())
        .map(str::to_owned)
}

#[tokio::test]
async fn a_command_is_a_span_in_the_trace_it_was_sent_in_and_its_events_carry_that_span() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();

    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let bus = traced_bus(&store);
    bus.send(
        ToAggregate::<Counter>::new("c-1", ()),
        CommandContext::new().in_trace(TRACE),
    )
    .await
    .unwrap();
    // A command sent from inside a span (a request handler's) joins that span's trace.
    let request = tracing::info_span!("request");
    let context = request.in_scope(CommandContext::in_current_trace);
    bus.send(ToAggregate::<Counter>::new("c-2", ()), context)
        .await
        .unwrap();
    drop(request);
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let commands: Vec<_> = spans.iter().filter(|s| s.name == "command").collect();
    assert_eq!(commands.len(), 2, "{spans:?}");
    let first = commands[0];
    assert_eq!(
        first.span_context.trace_id().to_string(),
        "0af7651916cd43dd8448eb211c80319c",
        "the trace it was sent in"
    );
    assert_eq!(first.parent_span_id.to_string(), "b7ad6b7169203331");
    assert_eq!(
        recorded_traceparent(&store, "counter-c-1").await.unwrap(),
        format!(
            "00-0af7651916cd43dd8448eb211c80319c-{}-01",
            first.span_context.span_id()
        ),
        "the event carries the command's span"
    );
    // A processor handles the first event in a span of the command's trace, under it.
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let processor = factum_toolkit::EventProcessor::builder("tracer", store.clone())
        .on(
            "Counted",
            factum_toolkit::handler_fn("trace", {
                let seen = seen.clone();
                move |_event| {
                    let seen = seen.clone();
                    async move {
                        seen.lock().push(factum_toolkit::trace::traceparent_of(
                            &tracing::Span::current(),
                        ));
                        Ok(())
                    }
                }
            }),
        )
        .build()
        .unwrap();
    processor.run_until(store.head()).await.unwrap();
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let handled: Vec<_> = spans.iter().filter(|s| s.name == "event").collect();
    assert_eq!(handled.len(), 2, "one span an event");
    assert_eq!(
        handled[0].span_context.trace_id(),
        first.span_context.trace_id()
    );
    assert_eq!(handled[0].parent_span_id, first.span_context.span_id());
    assert_eq!(seen.lock().len(), 2);
    assert!(
        seen.lock()[0]
            .as_ref()
            .unwrap()
            .contains("0af7651916cd43dd8448eb211c80319c")
    );
    let request = spans.iter().find(|s| s.name == "request").unwrap();
    let second = commands[1];
    assert_eq!(
        second.span_context.trace_id(),
        request.span_context.trace_id()
    );
    assert_eq!(second.parent_span_id, request.span_context.span_id());
    assert!(
        recorded_traceparent(&store, "counter-c-2")
            .await
            .unwrap()
            .contains(&second.span_context.span_id().to_string())
    );
}

#[tokio::test]
async fn without_an_opentelemetry_layer_the_trace_context_given_is_carried_as_it_is() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let bus = traced_bus(&store);
    bus.send(
        ToAggregate::<Counter>::new("c-1", ()),
        CommandContext::new().in_trace(TRACE),
    )
    .await
    .unwrap();
    assert_eq!(
        recorded_traceparent(&store, "counter-c-1").await.as_deref(),
        Some(TRACE)
    );
    bus.send(
        ToAggregate::<Counter>::new("c-2", ()),
        CommandContext::new(),
    )
    .await
    .unwrap();
    assert_eq!(recorded_traceparent(&store, "counter-c-2").await, None);
}
