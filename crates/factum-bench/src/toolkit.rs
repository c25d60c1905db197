//! Toolkit scenarios of `factum bench`: executing a command on a long aggregate (`load`, and
//! `load-snapshot` on a far longer one with snapshots), the command bus's own cost with four
//! layers (`bus`), and an event processor's throughput with one trivial handler (`processor`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use factum::{
    AuditEntry, AuditSink, Command, CommandBus, CommandContext, Decider, Engine, Envelope,
    EventStore, ExpectedState, NewEvent, Repository, StreamName,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::kit::{Payloads, Row, bar, row, timed};

/// The order line every bench payload describes, as an application would type it.
#[derive(Serialize, Deserialize)]
struct OrderLine {
    order_id: String,
    customer_id: String,
    sku: String,
    quantity: u32,
    unit_price_cents: u64,
    currency: String,
    warehouse: String,
    note: String,
}

#[derive(Serialize, Deserialize)]
enum OrderEvent {
    OrderLineAdded(OrderLine),
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

/// An order that counts its lines.
struct Orders;

impl Decider for Orders {
    type State = u64;
    type Command = ();
    type Event = OrderEvent;
    type Error = Never;
    const CATEGORY: &'static str = "bench-order";
    fn initial_state(&self) -> u64 {
        0
    }
    fn decide(&self, _: &u64, _: &()) -> Result<Vec<OrderEvent>, Never> {
        Ok(vec![OrderEvent::OrderLineAdded(OrderLine {
            order_id: "ord-1".into(),
            customer_id: "cus-1".into(),
            sku: "SKU-1".into(),
            quantity: 1,
            unit_price_cents: 100,
            currency: "EUR".into(),
            warehouse: "eu-west-1".into(),
            note: String::new(),
        })])
    }
    fn evolve(&self, lines: u64, _: &OrderEvent) -> u64 {
        lines + 1
    }
}

/// Appends `events` order lines, 1000 per append, append `n` to stream `stream_of(n)`, with a
/// progress bar.
pub(crate) async fn fill(
    engine: &Engine,
    stream_of: impl Fn(u64) -> Result<StreamName>,
    events: u64,
    payloads: &Payloads,
) -> Result<()> {
    let progress = bar(events, format!("writing {events} events"));
    for chunk in 0..events.div_ceil(1000) {
        let events = (0..1000.min(events - chunk * 1000))
            .map(|i| {
                Ok(NewEvent::json(
                    "OrderLineAdded",
                    &serde_json::value::RawValue::from_string(payloads.get(chunk * 1000 + i))?,
                )?)
            })
            .collect::<Result<Vec<_>>>()?;
        let n = events.len() as u64;
        engine
            .append(&stream_of(chunk)?, ExpectedState::Any, events)
            .await?;
        progress.inc(n);
    }
    progress.finish_and_clear();
    Ok(())
}

/// Load and execute a command on an aggregate of 10,000 events (no snapshot).
pub async fn load(engine: Engine, payloads: &Payloads) -> Result<Row> {
    const EVENTS: u64 = 10_000;
    const RUNS: usize = 50;
    let stream = StreamName::user("bench-order-long")?;
    fill(&engine, |_| Ok(stream.clone()), EVENTS, payloads).await?;
    let orders = Repository::new(engine, Orders);
    let progress = bar(RUNS as u64, "load 10k factum".into());
    let mut latencies = Vec::with_capacity(RUNS);
    let started = Instant::now();
    let mut loaded_events = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        let done = orders.execute("long", (), &CommandContext::new()).await?;
        latencies.push(t.elapsed().as_micros() as u64);
        loaded_events += done.revision.unwrap_or(0);
        progress.inc(1);
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    Ok(row("load-10k", "factum", loaded_events, elapsed, latencies))
}

/// Load and execute a command on an aggregate of 1,000,000 events with a snapshot every 100
/// events: the first command replays the whole stream and saves the first snapshot; the
/// measured ones load the newest snapshot and at most 99 events after it.
pub async fn load_snapshot(engine: Engine, payloads: &Payloads) -> Result<Row> {
    const EVENTS: u64 = 1_000_000;
    const RUNS: usize = 2_000;
    let stream = StreamName::user("bench-order-huge")?;
    fill(&engine, |_| Ok(stream.clone()), EVENTS, payloads).await?;
    let orders = Repository::new(engine, Orders).with_snapshots(100);
    let t = Instant::now();
    orders.execute("huge", (), &CommandContext::new()).await?;
    eprintln!(
        "first command on 1M events, replaying all of them and saving a snapshot: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let progress = bar(RUNS as u64, "load 1M+snapshot factum".into());
    let mut latencies = Vec::with_capacity(RUNS);
    let started = Instant::now();
    for _ in 0..RUNS {
        let t = Instant::now();
        orders.execute("huge", (), &CommandContext::new()).await?;
        latencies.push(t.elapsed().as_micros() as u64);
        progress.inc(1);
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    // The rate is of commands here: each one stands for the whole aggregate.
    Ok(row(
        "load-1m-snap",
        "factum",
        RUNS as u64,
        elapsed,
        latencies,
    ))
}

/// An event processor with one trivial handler (it counts) over 1,000,000 events in 1,000
/// streams, from an empty checkpoint to the head. Latency is the time to process each batch
/// of 10,000 events.
pub async fn processor(engine: Engine, payloads: &Payloads) -> Result<Row> {
    const EVENTS: u64 = 1_000_000;
    let first = engine.head();
    let stream_of = |chunk| Ok(StreamName::user(format!("bench-proc-{chunk}"))?);
    fill(&engine, stream_of, EVENTS, payloads).await?;
    let end = engine.head();
    let store: Arc<dyn EventStore> = Arc::new(engine);
    // The processor starts where this scenario's events start.
    let name = format!("bench-processor-{}", uuid::Uuid::now_v7().simple());
    if let Some(before) = first.checked_sub(1) {
        store.save_checkpoint(&name, before).await?;
    }
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = seen.clone();
    let processor = factum::EventProcessor::builder(name, store)
        .on_any(factum::handler_fn("count", move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::future::ready(Ok(()))
        }))
        .checkpoint_every(100_000, Duration::from_secs(1))
        .build()?;
    let count = || seen.load(std::sync::atomic::Ordering::Relaxed);
    let (elapsed, latencies) = timed(
        "processor factum",
        EVENTS,
        async {
            let stats = processor.run_until(end).await?;
            anyhow::ensure!(
                stats.events == EVENTS && count() == EVENTS,
                "the processor handled {} events, expected {EVENTS}",
                stats.events
            );
            Ok(())
        },
        count,
    )
    .await?;
    Ok(row("processor", "factum", EVENTS, elapsed, latencies))
}

struct Ping;

impl Command for Ping {
    type Output = u64;
    fn name() -> &'static str {
        "Ping"
    }
}

/// An audit sink that only counts, so the layer's own cost is what is measured.
#[derive(Default)]
struct Counting(std::sync::atomic::AtomicU64);

#[async_trait::async_trait]
impl AuditSink for Counting {
    async fn record(&self, _: AuditEntry) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The cost of sending a trivial command through the bus with four layers, per command, with
/// the trivial handler's own cost taken out.
pub async fn bus() -> Result<Row> {
    const COMMANDS: u64 = 200_000;
    let handler = tower::service_fn(|_: Envelope<Ping>| async { Ok::<u64, factum::BusError>(1) });
    let bus = CommandBus::builder()
        .with_tracing()
        .with_validation()
        .with_authorization(|context, _| context.user.is_some())
        .with_audit(Arc::new(Counting::default()))
        .handle::<Ping, _>(handler)
        .build()?;
    let context = CommandContext::new().by("bench");
    let progress = bar(COMMANDS, "bus 4 layers".into());
    // The handler alone, as the baseline.
    let mut direct = Duration::ZERO;
    for _ in 0..COMMANDS {
        let t = Instant::now();
        let mut service = handler;
        tower::ServiceExt::oneshot(
            &mut service,
            Envelope {
                command: Ping,
                context: context.clone(),
            },
        )
        .await?;
        direct += t.elapsed();
    }
    let mut latencies = Vec::with_capacity(COMMANDS as usize);
    let started = Instant::now();
    for _ in 0..COMMANDS {
        let t = Instant::now();
        bus.send(Ping, context.clone()).await?;
        latencies.push(t.elapsed().as_nanos() as u64);
        progress.inc(1);
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    let overhead_ns = elapsed.saturating_sub(direct).as_nanos() as u64 / COMMANDS;
    let mut r = row("bus-4-layers", "factum", COMMANDS, elapsed, latencies);
    // Latencies were taken in nanoseconds: report them in µs with the overhead as p50 reference.
    r.p50_us = r.p50_us.div_ceil(1000);
    r.p99_us = r.p99_us.div_ceil(1000);
    r.p999_us = r.p999_us.div_ceil(1000);
    eprintln!(
        "bus overhead per command with 4 layers: {:.2} µs",
        overhead_ns as f64 / 1000.0
    );
    Ok(r)
}

/// A saga of one step: each `AccountOpened` starts an instance that sends one command and
/// finishes.
struct Welcome;

impl factum::Saga for Welcome {
    const NAME: &'static str = "bench-welcome";
    type State = u8;
    type Command = String;

    fn correlate(&self, event: &factum::RecordedEvent) -> Option<String> {
        (event.event_type == "AccountOpened").then(|| event.stream.as_str().to_owned())
    }

    fn on_event(&self, _: &u8, _: &factum::RecordedEvent) -> Option<factum::SagaStep<u8, String>> {
        Some(
            factum::SagaStep::to(1)
                .send("SendWelcome".to_owned())
                .done(),
        )
    }
}

/// A saga manager on the store (embedded or PostgreSQL): `INSTANCES` events each start an
/// instance that stores one step, sends one command and records it sent.
/// The first row is instances per second (latency: the time per 1,000 instances); the second
/// three starts of a new manager over those finished instances (instances covered per second;
/// latency: each start). The first manager's stop writes the saga's index, so those starts
/// read none of the finished instances.
pub async fn saga(store: Arc<dyn EventStore>, label: &str) -> Result<Vec<Row>> {
    use factum::SagaManager;
    const INSTANCES: u64 = 20_000;
    // A fresh saga name per run: its instances are only this run's.
    let run = uuid::Uuid::now_v7().simple().to_string();
    let first = store.head();
    let progress = bar(INSTANCES, format!("saga {label}: opening accounts"));
    let opened = futures::stream::iter(0..INSTANCES)
        .map(|n| {
            let (store, run) = (store.clone(), run.clone());
            async move {
                let stream = StreamName::user(format!("bench-account-{run}-{n}"))?;
                let event = NewEvent::json("AccountOpened", &serde_json::json!({ "n": n }))?;
                store
                    .append(&stream, ExpectedState::NoStream, vec![event])
                    .await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(64);
    futures::pin_mut!(opened);
    while let Some(result) = opened.next().await {
        result?;
        progress.inc(1);
    }
    progress.finish_and_clear();
    let last = store.head() - 1;

    // The manager starts where this run's events start (the checkpoint is per saga, and the
    // saga's name is the same in every run, so it is moved to just before them).
    let checkpoint = SagaManager::<Welcome>::checkpoint_name();
    if let Some(before) = first.checked_sub(1) {
        match store.save_checkpoint(&checkpoint, before).await {
            Ok(_) | Err(factum::StoreError::CheckpointBehind { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let manager = Arc::new(SagaManager::new(Welcome, store.clone(), |_, _| async {
        Ok(())
    }));
    let mut status = manager.status();
    let sent_before = status.borrow().commands_sent;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .run(async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    let sent = {
        let status = status.clone();
        move || status.borrow().commands_sent - sent_before
    };
    let (elapsed, latencies) = crate::kit::timed_every(
        &format!("saga {label}"),
        INSTANCES,
        1_000,
        async {
            status
                .wait_for(|s| {
                    s.checkpoint.is_some_and(|c| c >= last)
                        && s.commands_sent - sent_before >= INSTANCES
                })
                .await?;
            Ok(())
        },
        sent,
    )
    .await?;
    let _ = stop.send(());
    running.await??;
    let mut rows = vec![row("saga", label, INSTANCES, elapsed, latencies)];

    // Events: the instances the three starts cover together.
    let mut starts = Vec::new();
    let started = Instant::now();
    for _ in 0..3 {
        let manager = SagaManager::new(Welcome, store.clone(), |_, _| async { Ok(()) });
        let start = Instant::now();
        manager.run(async {}).await?;
        starts.push(start.elapsed().as_micros() as u64);
    }
    rows.push(row(
        "saga-start",
        label,
        3 * INSTANCES,
        started.elapsed(),
        starts,
    ));
    Ok(rows)
}

/// An order line with the customer's contact details, personal data in `personal`.
#[derive(Serialize, Deserialize)]
struct ContactLine<P> {
    order_id: String,
    customer_id: String,
    email: P,
    name: P,
    sku: String,
    quantity: u32,
    unit_price_cents: u64,
    note: String,
}

#[derive(Serialize, Deserialize)]
enum ContactEvent<P> {
    ContactLineAdded(ContactLine<P>),
}

/// Customers whose order lines carry their email and name: as plain strings, or as
/// [`Personal`](factum::Personal) fields sealed with the customer's key.
struct Contacts<P>(std::marker::PhantomData<fn() -> P>);

trait Contact: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static {
    const CATEGORY: &'static str;
    fn of(customer: &str, value: String) -> Self;
}

impl Contact for String {
    const CATEGORY: &'static str = "bench-plain";
    fn of(_: &str, value: String) -> Self {
        value
    }
}

impl Contact for factum::Personal<String> {
    const CATEGORY: &'static str = "bench-personal";
    fn of(customer: &str, value: String) -> Self {
        factum::Personal::new(customer, value)
    }
}

impl<P: Contact> Decider for Contacts<P> {
    type State = u64;
    type Command = u64;
    type Event = ContactEvent<P>;
    type Error = Never;
    const CATEGORY: &'static str = P::CATEGORY;
    fn initial_state(&self) -> u64 {
        0
    }
    fn decide(&self, lines: &u64, count: &u64) -> Result<Vec<ContactEvent<P>>, Never> {
        Ok((0..*count)
            .map(|i| {
                let n = lines + i;
                ContactEvent::ContactLineAdded(ContactLine {
                    order_id: format!("ord-{n:012}"),
                    customer_id: "cus-00000042".into(),
                    email: P::of("cus-00000042", format!("customer-{n}@example.com")),
                    name: P::of("cus-00000042", "Ann Andersen".into()),
                    sku: format!("SKU-{:06}", n % 9_973),
                    quantity: 1 + (n % 7) as u32,
                    unit_price_cents: 100 + n % 9_000,
                    note: "x".repeat(64),
                })
            })
            .collect())
    }
    fn evolve(&self, lines: u64, _: &ContactEvent<P>) -> u64 {
        lines + 1
    }
}

/// Load and execute a command on an aggregate of 10,000 events whose every event carries two
/// personal fields, sealed (`load-personal`), and the same aggregate with them in the clear
/// (`load-plain`): what encrypting personal data costs a command.
pub async fn load_personal(engine: Engine) -> Result<Vec<Row>> {
    Ok(vec![
        load_contacts::<String>(engine.clone(), "load-plain").await?,
        load_contacts::<factum::Personal<String>>(engine, "load-personal").await?,
    ])
}

async fn load_contacts<P: Contact>(engine: Engine, scenario: &str) -> Result<Row> {
    const EVENTS: u64 = 10_000;
    const RUNS: usize = 50;
    let contacts = Repository::new(engine, Contacts::<P>(std::marker::PhantomData));
    let progress = bar(EVENTS, format!("writing {scenario}"));
    for _ in 0..EVENTS / 1000 {
        contacts
            .execute("long", 1000, &CommandContext::new())
            .await?;
        progress.inc(1000);
    }
    progress.finish_and_clear();
    let progress = bar(RUNS as u64, format!("{scenario} factum"));
    let mut latencies = Vec::with_capacity(RUNS);
    let started = Instant::now();
    let mut loaded_events = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        let done = contacts.execute("long", 1, &CommandContext::new()).await?;
        latencies.push(t.elapsed().as_micros() as u64);
        loaded_events += done.revision.unwrap_or(0);
        progress.inc(1);
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    Ok(row(scenario, "factum", loaded_events, elapsed, latencies))
}
