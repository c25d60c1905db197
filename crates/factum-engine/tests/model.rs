//! Property test: any sequence of operations, with reopens in between, gives the engine the same
//! results as the in-memory model (`MemoryStore`), and the same reads.
#![allow(clippy::unwrap_used)]

use factum_core::{
    Direction, EventStore, ExpectedState, MemoryStore, NewEvent, RecordedEvent, StoreError,
    StreamMetadata, StreamName,
};
use factum_engine::{Engine, EngineOptions};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Append {
        stream: u8,
        expected: ExpectedState,
        count: u8,
    },
    Reappend {
        expected: ExpectedState,
    },
    Delete {
        stream: u8,
        expected: ExpectedState,
    },
    Tombstone {
        stream: u8,
    },
    Metadata {
        stream: u8,
        max_count: Option<u64>,
        truncate_before: Option<u64>,
    },
    ReadStream {
        stream: u8,
        from: u64,
        backwards: bool,
        limit: usize,
    },
    ReadAll {
        from: u64,
        backwards: bool,
        limit: usize,
    },
    Reopen,
}

fn expected() -> impl Strategy<Value = ExpectedState> {
    prop_oneof![
        Just(ExpectedState::Any),
        Just(ExpectedState::NoStream),
        Just(ExpectedState::StreamExists),
        (0u64..8).prop_map(ExpectedState::Exact),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, expected(), 1u8..5).prop_map(|(stream, expected, count)| Op::Append { stream, expected, count }),
        1 => expected().prop_map(|expected| Op::Reappend { expected }),
        1 => (0u8..4, expected()).prop_map(|(stream, expected)| Op::Delete { stream, expected }),
        1 => (0u8..6).prop_map(|stream| Op::Tombstone { stream: stream + 2 }),
        1 => (0u8..4, proptest::option::of(0u64..5), proptest::option::of(0u64..6)).prop_map(
            |(stream, max_count, truncate_before)| Op::Metadata { stream, max_count, truncate_before }
        ),
        3 => (0u8..4, 0u64..10, any::<bool>(), 0usize..6).prop_map(|(stream, from, backwards, limit)| Op::ReadStream { stream, from, backwards, limit }),
        2 => (0u64..40, any::<bool>(), 0usize..8).prop_map(|(from, backwards, limit)| Op::ReadAll { from, backwards, limit }),
        1 => Just(Op::Reopen),
    ]
}

fn name(stream: u8) -> StreamName {
    StreamName::user(format!("m-{stream}")).unwrap()
}

fn direction(backwards: bool) -> Direction {
    if backwards {
        Direction::Backwards
    } else {
        Direction::Forwards
    }
}

/// What can be compared: everything but the recorded time, which differs between stores.
#[allow(clippy::type_complexity)]
fn comparable(
    events: Vec<RecordedEvent>,
) -> Vec<(String, u64, u64, uuid::Uuid, String, bytes::Bytes)> {
    events
        .into_iter()
        .map(|e| {
            // System records get fresh ids in each store.
            let id = if e.stream.is_system() {
                uuid::Uuid::nil()
            } else {
                e.id
            };
            (
                e.stream.to_string(),
                e.revision,
                e.position,
                id,
                e.event_type,
                e.data,
            )
        })
        .collect()
}

fn kind<T: std::fmt::Debug + PartialEq>(r: Result<T, StoreError>) -> Result<T, String> {
    r.map_err(|e| match e {
        StoreError::WrongExpectedRevision { actual, .. } => {
            format!("wrong expected, actual {actual}")
        }
        StoreError::StreamDeleted(s) => format!("deleted {s}"),
        StoreError::NotFound(s) => format!("not found {s}"),
        StoreError::InvalidInput(_) => "invalid".into(),
        other => panic!("unexpected error {other}"),
    })
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let options = EngineOptions {
        segment_bytes_limit: 2048,
        index_save_interval_events: 7,
    };
    let mut engine = Engine::open(dir.path(), options.clone()).unwrap();
    let model = MemoryStore::new();
    let mut last_append: Option<(StreamName, Vec<NewEvent>)> = None;
    for (step, op) in ops.into_iter().enumerate() {
        let context = format!("step {step}: {op:?}");
        match op {
            Op::Append {
                stream,
                expected,
                count,
            } => {
                let events: Vec<NewEvent> = (0..count)
                    .map(|i| {
                        NewEvent::json("Happened", &serde_json::json!({"step": step, "i": i}))
                            .unwrap()
                    })
                    .collect();
                let a = kind(engine.append(&name(stream), expected, events.clone()).await);
                let b = kind(model.append(&name(stream), expected, events.clone()).await);
                assert_eq!(a, b, "{context}");
                last_append = Some((name(stream), events));
            }
            Op::Reappend { expected } => {
                if let Some((stream, events)) = &last_append {
                    let a = kind(engine.append(stream, expected, events.clone()).await);
                    let b = kind(model.append(stream, expected, events.clone()).await);
                    assert_eq!(a, b, "{context}");
                }
            }
            Op::Delete { stream, expected } => {
                let a = kind(engine.delete_stream(&name(stream), expected).await);
                let b = kind(model.delete_stream(&name(stream), expected).await);
                assert_eq!(a, b, "{context}");
            }
            Op::Tombstone { stream } => {
                let a = kind(
                    engine
                        .tombstone_stream(&name(stream), ExpectedState::Any)
                        .await,
                );
                let b = kind(
                    model
                        .tombstone_stream(&name(stream), ExpectedState::Any)
                        .await,
                );
                assert_eq!(a, b, "{context}");
            }
            Op::Metadata {
                stream,
                max_count,
                truncate_before,
            } => {
                let metadata = StreamMetadata {
                    max_count,
                    truncate_before,
                    ..Default::default()
                };
                let a = kind(engine.set_metadata(&name(stream), metadata.clone()).await);
                let b = kind(model.set_metadata(&name(stream), metadata).await);
                assert_eq!(a, b, "{context}");
            }
            Op::ReadStream {
                stream,
                from,
                backwards,
                limit,
            } => {
                let a = kind(
                    engine
                        .read_stream(&name(stream), from, direction(backwards), limit)
                        .await,
                )
                .map(comparable);
                let b = kind(
                    model
                        .read_stream(&name(stream), from, direction(backwards), limit)
                        .await,
                )
                .map(comparable);
                assert_eq!(a, b, "{context}");
            }
            Op::ReadAll {
                from,
                backwards,
                limit,
            } => {
                let a = comparable(
                    engine
                        .read_all(from, direction(backwards), limit)
                        .await
                        .unwrap(),
                );
                let b = comparable(
                    model
                        .read_all(from, direction(backwards), limit)
                        .await
                        .unwrap(),
                );
                assert_eq!(a, b, "{context}");
            }
            Op::Reopen => {
                engine.close().unwrap();
                drop(engine);
                engine = Engine::open(dir.path(), options.clone()).unwrap();
            }
        }
        assert_eq!(engine.head(), model.head(), "{context}");
    }
    for stream in 0..8 {
        assert_eq!(
            kind(engine.stream_revision(&name(stream)).await),
            kind(model.stream_revision(&name(stream)).await)
        );
        assert_eq!(
            kind(engine.get_metadata(&name(stream)).await),
            kind(model.get_metadata(&name(stream)).await)
        );
    }
    assert_eq!(
        engine.list_streams("", None, 100).await.unwrap(),
        model.list_streams("", None, 100).await.unwrap()
    );
    engine.verify(|_, _| {}).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn engine_behaves_like_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(ops));
    }
}
