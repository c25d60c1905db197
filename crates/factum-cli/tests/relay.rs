//! `factum relay`: killed with SIGKILL while publishing to NATS JetStream, it resumes from its
//! checkpoint, and JetStream ends with each event exactly once, in stream order. Two of them on
//! one PostgreSQL store take turns.
#![allow(clippy::unwrap_used, missing_docs)]
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use factum::{Engine, EngineOptions, EventStore, ExpectedState, NewEvent, StreamName};

const STREAMS: usize = 100;
const PER_STREAM: usize = 100;

fn nats_url() -> String {
    std::env::var("FACTUM_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn relay(dir: &Path, config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_factum"))
        .arg("--data-dir")
        .arg(dir)
        .arg("relay")
        .arg(config)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// A client of NATS at `url`, or `None` (with the reason printed) where it is not reachable
/// outside CI; under `CI=true` it must be.
async fn nats(url: &str) -> Option<async_nats::Client> {
    match async_nats::connect(url).await {
        Ok(client) => Some(client),
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipping: NATS at {url} is not reachable ({e})");
            None
        }
        Err(e) => panic!("NATS at {url} is needed under CI=true: {e}"),
    }
}

async fn stored(context: &jetstream::Context, name: &str) -> u64 {
    match context.get_stream(name).await {
        Ok(mut stream) => stream.info().await.unwrap().state.messages,
        Err(_) => 0,
    }
}

async fn wait_for(context: &jetstream::Context, name: &str, at_least: u64) -> u64 {
    let started = Instant::now();
    loop {
        let n = stored(context, name).await;
        if n >= at_least {
            return n;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "only {n} of {at_least} published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `STREAMS` order streams of `PER_STREAM` events each in an embedded store in `dir`.
async fn seed_orders(dir: &Path) {
    let store = Engine::open(dir, EngineOptions::default()).unwrap();
    for s in 0..STREAMS {
        let events = (0..PER_STREAM)
            .map(|n| NewEvent::json("OrderPlaced", &serde_json::json!({ "n": n })).unwrap())
            .collect();
        let stream = StreamName::user(format!("order-{s}")).unwrap();
        store
            .append(&stream, ExpectedState::NoStream, events)
            .await
            .unwrap();
    }
    store.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_with_sigkill_resumes_from_its_checkpoint() {
    let url = nats_url();
    let Some(client) = nats(&url).await else {
        return;
    };
    let context = jetstream::new(client);
    let js_stream = format!("KILL{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    seed_orders(dir.path()).await;
    let config = dir.path().join("relays.toml");
    std::fs::write(
        &config,
        format!(
            "[[relay]]\nname = \"kill-out\"\nbatch = 100\npayload = \"data\"\n\
             types = {{ OrderPlaced = \"order.placed\" }}\n\
             nats = {{ url = \"{url}\", subject_prefix = \"k{pid}\", jetstream_stream = \"{js_stream}\" }}\n",
            pid = std::process::id()
        ),
    )
    .unwrap();
    let total = (STREAMS * PER_STREAM) as u64;

    let mut first = relay(dir.path(), &config);
    let at_kill = wait_for(&context, &js_stream, total / 5).await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    assert!(
        at_kill < total,
        "the relay finished before it could be killed"
    );

    let checkpoint = {
        let store = Engine::open(dir.path(), EngineOptions::default()).unwrap();
        let checkpoint = store.read_checkpoint("kill-out").await.unwrap();
        store.close().unwrap();
        checkpoint
    };
    let checkpoint = checkpoint.expect("a checkpoint was stored before the kill");
    assert!(
        checkpoint > 0 && checkpoint < total,
        "checkpoint {checkpoint}"
    );

    let mut second = relay(dir.path(), &config);
    wait_for(&context, &js_stream, total).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stored(&context, &js_stream).await,
        total,
        "JetStream kept no duplicate"
    );
    Command::new("kill")
        .arg(second.id().to_string())
        .status()
        .unwrap();
    let status = second.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM stops the relay cleanly: {status}"
    );

    // Every event, once, and each stream in order.
    let stream = context.get_stream(&js_stream).await.unwrap();
    let mut next = vec![0u64; STREAMS];
    for sequence in 1..=total {
        let message = stream.get_raw_message(sequence).await.unwrap();
        let header = |name: &str| message.headers.get(name).unwrap().as_str().to_owned();
        let s: usize = header("Factum-Stream")
            .trim_start_matches("order-")
            .parse()
            .unwrap();
        let revision: u64 = header("Factum-Revision").parse().unwrap();
        assert_eq!(
            revision, next[s],
            "order-{s} out of order at sequence {sequence}"
        );
        next[s] += 1;
    }
    context.delete_stream(&js_stream).await.unwrap();
}

#[test]
fn a_bad_relays_file_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relays.toml");
    // Event data may leave only for types named in [relay.types].
    std::fs::write(
        &config,
        "[[relay]]\nname = \"out\"\npayload = \"data\"\nnats = { url = \"nats://127.0.0.1:4222\" }\n",
    )
    .unwrap();
    for args in [
        vec!["relay"],
        vec!["serve", "--listen", "127.0.0.1:0", "--relays"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_factum"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(&args)
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("must name the types that leave"),
            "{stderr}"
        );
    }
}

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Appends `count` events over 20 streams of the store in `schema`.
async fn append_to_postgres(schema: &str, count: usize) {
    let options = factum::PgOptions {
        schema: schema.to_owned(),
        readers: 1,
        ..Default::default()
    };
    let store = factum::PgStore::connect(POSTGRES, options).await.unwrap();
    for n in 0..count {
        let stream = StreamName::user(format!("order-{}", n % 20)).unwrap();
        let event = NewEvent::json("OrderPlaced", &serde_json::json!({ "n": n })).unwrap();
        store
            .append(&stream, ExpectedState::Any, vec![event])
            .await
            .unwrap();
    }
}

/// Waits for a line of a child's stderr that contains `needle`.
fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return,
            Ok(_) => {}
            Err(e) => panic!("no line with {needle:?}: {e}"),
        }
    }
}

/// Two `factum relay` processes with one relays file on one PostgreSQL store, as two replicas
/// of a service would run them: the second waits while the first publishes, and takes over
/// when the first is killed with SIGKILL; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_relay_process_on_postgres_waits_and_takes_over_after_a_sigkill() {
    let url = nats_url();
    let Some(client) = nats(&url).await else {
        return;
    };
    let pid = std::process::id();
    let schema = format!("fcli_relays_{pid}");
    let admin = match tokio_postgres::connect(POSTGRES, tokio_postgres::NoTls).await {
        Ok((admin, connection)) => {
            tokio::spawn(connection);
            admin
        }
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipping: PostgreSQL at {POSTGRES} is not reachable ({e})");
            return;
        }
        Err(e) => panic!("PostgreSQL at {POSTGRES} is needed under CI=true: {e}"),
    };
    let drop_schema = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
    admin.batch_execute(&drop_schema).await.unwrap();
    let context = jetstream::new(client);
    let js_stream = format!("TURNS{pid}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relays.toml");
    std::fs::write(
        &config,
        format!(
            "[[relay]]\nname = \"orders-out\"\npayload = \"data\"\n\
             types = {{ OrderPlaced = \"order.placed\" }}\n\
             nats = {{ url = \"{url}\", subject_prefix = \"t{pid}\", jetstream_stream = \"{js_stream}\" }}\n"
        ),
    )
    .unwrap();
    let start = |stderr: Stdio| {
        Command::new(env!("CARGO_BIN_EXE_factum"))
            .args(["--store", POSTGRES, "--store-schema", &schema, "relay"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap()
    };

    append_to_postgres(&schema, 400).await;
    let mut first = start(Stdio::null());
    wait_for(&context, &js_stream, 400).await;

    let mut second = start(Stdio::piped());
    let lines = common::lines_of(second.stderr.take().unwrap());
    wait_for_line(&lines, "relay orders-out waits");
    // The first still publishes; the second waits.
    append_to_postgres(&schema, 100).await;
    wait_for(&context, &js_stream, 500).await;

    first.kill().unwrap(); // SIGKILL: its connections close, and with them its claim.
    first.wait().unwrap();
    wait_for_line(&lines, "relay orders-out took over");
    append_to_postgres(&schema, 100).await;
    wait_for(&context, &js_stream, 600).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stored(&context, &js_stream).await, 600, "each event once");

    Command::new("kill")
        .arg(second.id().to_string())
        .status()
        .unwrap();
    assert!(second.wait().unwrap().success(), "SIGTERM stops it cleanly");
    context.delete_stream(&js_stream).await.unwrap();
    admin.batch_execute(&drop_schema).await.unwrap();
}

fn kafka_brokers() -> String {
    std::env::var("FACTUM_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Messages in `topic` (the sum of its partitions' high watermarks), 0 while it is missing.
fn in_topic(consumer: &rdkafka::consumer::BaseConsumer, topic: &str) -> u64 {
    use rdkafka::consumer::Consumer as _;
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
        return 0;
    };
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    (0..partitions as i32)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .map_or(0, |(_, high)| high.max(0) as u64)
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_relay_killed_with_sigkill_resumes_and_every_event_reaches_the_topic_in_order() {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::message::{Headers as _, Message as _};
    let brokers = kafka_brokers();
    if let Err(e) = std::net::TcpStream::connect(&brokers) {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("Kafka at {brokers} is needed under CI=true: {e}");
        }
        eprintln!("skipping: Kafka at {brokers} is not reachable ({e})");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    seed_orders(dir.path()).await;
    let topic = format!("factum-kill-{}", std::process::id());
    let config = dir.path().join("relays.toml");
    std::fs::write(
        &config,
        format!(
            "[[relay]]\nname = \"kill-out\"\nbatch = 100\npayload = \"data\"\n\
             types = {{ OrderPlaced = \"order.placed\" }}\n\
             kafka = {{ brokers = \"{brokers}\", topic = \"{topic}\" }}\n"
        ),
    )
    .unwrap();
    let total = (STREAMS * PER_STREAM) as u64;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("kill-reader-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let wait_for = |at_least: u64| {
        let started = Instant::now();
        loop {
            let n = in_topic(&consumer, &topic);
            if n >= at_least {
                return n;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "only {n} of {at_least} published"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    let mut first = relay(dir.path(), &config);
    let at_kill = tokio::task::block_in_place(|| wait_for(total / 5));
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    assert!(
        at_kill < total,
        "the relay finished before it could be killed"
    );
    let checkpoint = {
        let store = Engine::open(dir.path(), EngineOptions::default()).unwrap();
        let checkpoint = store.read_checkpoint("kill-out").await.unwrap();
        store.close().unwrap();
        checkpoint
    };
    assert!(
        checkpoint.is_some_and(|c| c > 0 && c < total),
        "a checkpoint inside the log was stored before the kill: {checkpoint:?}"
    );
    let mut second = relay(dir.path(), &config);
    // The topic holds duplicates of what the killed relay sent after its checkpoint, so its
    // size says little about when the second one is through: the read below waits for every
    // stream to be complete while the second relay still runs.
    let stored = tokio::task::block_in_place(|| wait_for(total));

    // Every event; per stream, each first delivery after the one before it. What the killed
    // relay had sent after its checkpoint comes again (at least once).
    let partitions = {
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .unwrap();
        metadata.topics()[0].partitions().len() as i32
    };
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(&topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    let reader: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("kill-reader-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    reader.assign(&assignment).unwrap();
    let mut next = vec![0u64; STREAMS];
    let mut read = 0u64;
    while next.iter().any(|n| *n < PER_STREAM as u64) {
        let Ok(message) = tokio::time::timeout(Duration::from_secs(10), reader.recv()).await else {
            let missing = next.iter().filter(|n| **n < PER_STREAM as u64).count();
            panic!(
                "{missing} streams incomplete after {read} messages ({stored} in the topic at first)"
            );
        };
        let message = message.unwrap();
        read += 1;
        let headers = message.headers().unwrap();
        let header = |name: &str| {
            let header = headers.iter().find(|h| h.key == name).unwrap();
            String::from_utf8(header.value.unwrap().to_vec()).unwrap()
        };
        let s: usize = header("Factum-Stream")
            .trim_start_matches("order-")
            .parse()
            .unwrap();
        assert_eq!(message.key(), Some(format!("order-{s}").as_bytes()));
        let revision: u64 = header("Factum-Revision").parse().unwrap();
        assert!(
            revision <= next[s],
            "order-{s}: revision {revision} before {}",
            next[s]
        );
        if revision == next[s] {
            next[s] += 1;
        }
    }
    Command::new("kill")
        .arg(second.id().to_string())
        .status()
        .unwrap();
    let status = second.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM stops the relay cleanly: {status}"
    );
    eprintln!("{read} messages read for {total} events ({stored} in the topic at first)");
}
