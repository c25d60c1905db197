//! The `factum` binary as a user runs it: JSON lines in and out, exit codes, nothing written on
//! bad input.
#![allow(clippy::unwrap_used)]
mod common;
use common::factum_in as factum;

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn lines(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const TWO_EVENTS: &str = r#"{"type": "ItemAdded", "data": {"sku": "apple", "qty": 2}}
{"type": "ItemAdded", "data": {"sku": "pear"}, "metadata": {"$correlationId": "c-1"}, "id": "0191e0a4-5b9c-7cc3-9d2e-3c2b8f1e7a10"}
"#;

#[test]
fn append_then_read_prints_recorded_events() {
    let dir = tempfile::tempdir().unwrap();
    let out = factum(
        dir.path(),
        &["append", "cart-1", "--expected", "no-stream"],
        TWO_EVENTS,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        lines(&out),
        vec![
            serde_json::json!({"stream": "cart-1", "first_revision": 0, "last_revision": 1, "position": 1})
        ]
    );
    let out = factum(dir.path(), &["read", "cart-1"], "");
    let events = lines(&out);
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0]["data"],
        serde_json::json!({"sku": "apple", "qty": 2})
    );
    assert_eq!(events[1]["id"], "0191e0a4-5b9c-7cc3-9d2e-3c2b8f1e7a10");
    assert_eq!(events[1]["metadata"]["$correlationId"], "c-1");
    for key in [
        "stream",
        "revision",
        "position",
        "id",
        "type",
        "data",
        "metadata",
        "recorded_at",
    ] {
        assert!(events[0].get(key).is_some(), "missing {key}");
    }
    let out = factum(
        dir.path(),
        &["read", "cart-1", "--backwards", "--limit", "1"],
        "",
    );
    assert_eq!(lines(&out)[0]["revision"], 1);
    let out = factum(dir.path(), &["read-all", "--from", "1"], "");
    assert_eq!(lines(&out)[0]["position"], 1);
    let out = factum(dir.path(), &["streams"], "");
    assert_eq!(lines(&out)[0]["name"], "cart-1");
}

#[test]
fn wrong_expected_revision_exits_3_naming_both_revisions() {
    let dir = tempfile::tempdir().unwrap();
    factum(dir.path(), &["append", "acct-1"], TWO_EVENTS);
    let out = factum(
        dir.path(),
        &["append", "acct-1", "--expected", "0"],
        TWO_EVENTS,
    );
    assert_eq!(out.status.code(), Some(3));
    let message = stderr(&out);
    assert!(
        message.contains("expected revision 0") && message.contains("actual revision 1"),
        "{message}"
    );
    assert_eq!(lines(&factum(dir.path(), &["read", "acct-1"], "")).len(), 2);
}

#[test]
fn bad_input_exits_2_naming_the_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["append", "s"],
            "{\"type\":\"A\",\"data\":1}\n{\"type\":\"A\",\"data\":",
            "line 2",
        ),
        (
            &["append", "s"],
            "{\"type\":\"A\",\"data\":1}\n{\"data\":1}\n",
            "line 2",
        ),
        (
            &["append", "s"],
            "{\"type\":\"A\",\"data\":1,\"metadata\":[]}\n",
            "line 1",
        ),
        (
            &["append", "s"],
            "{\"type\":\"A\",\"data\":1,\"id\":\"x\"}\n",
            "line 1",
        ),
        (
            &["append", "s"],
            "{\"type\":\"A\",\"data\":1}\nnope\n",
            "line 2: not JSON (expected ident at column 2); each line is one event, a JSON object",
        ),
        (
            &["append", "s"],
            "[1, 2]\n",
            "line 1: invalid type: sequence, expected a JSON object; each line is one event",
        ),
        (&["append", "s"], "", "no events"),
        (
            &["append", "$system"],
            "{\"type\":\"A\",\"data\":1}\n",
            "reserved",
        ),
        (&["append", ""], "{\"type\":\"A\",\"data\":1}\n", "empty"),
        (
            &["append", "s", "--expected", "soon"],
            "{\"type\":\"A\",\"data\":1}\n",
            "soon",
        ),
        (
            &["metadata", "s", "--set", "{\"max_count\":\"x\"}"],
            "",
            "--set",
        ),
    ];
    for (args, input, says) in cases {
        let out = factum(dir.path(), args, input);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    let out = factum(dir.path(), &["read-all"], "");
    assert!(out.status.success());
    assert!(out.stdout.is_empty(), "nothing was written");
}

#[test]
fn missing_and_deleted_streams_have_their_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = factum(dir.path(), &["read", "nope"], "");
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("not found"));
    factum(dir.path(), &["append", "gone"], TWO_EVENTS);
    assert!(
        factum(dir.path(), &["delete", "gone", "--tombstone"], "")
            .status
            .success()
    );
    assert_eq!(
        factum(dir.path(), &["read", "gone"], "").status.code(),
        Some(5)
    );
    assert_eq!(
        factum(dir.path(), &["append", "gone"], TWO_EVENTS)
            .status
            .code(),
        Some(5)
    );
}

#[test]
fn metadata_set_and_show() {
    let dir = tempfile::tempdir().unwrap();
    factum(dir.path(), &["append", "m"], TWO_EVENTS);
    let out = factum(
        dir.path(),
        &[
            "metadata",
            "m",
            "--set",
            r#"{"max_count": 1, "custom": {"team": "a"}}"#,
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        lines(&factum(dir.path(), &["metadata", "m"], ""))[0]["custom"]["team"],
        "a"
    );
    assert_eq!(lines(&factum(dir.path(), &["read", "m"], "")).len(), 1);
}

#[test]
fn export_then_import_keeps_everything_byte_for_byte() {
    let source = tempfile::tempdir().unwrap();
    factum(
        source.path(),
        &["append", "a"],
        TWO_EVENTS
            .replace(
                "0191e0a4-5b9c-7cc3-9d2e-3c2b8f1e7a10",
                "0191e0a4-5b9c-7cc3-9d2e-3c2b8f1e7a11",
            )
            .as_str(),
    );
    factum(
        source.path(),
        &["append", "b"],
        "{\"type\": \"Spaced\", \"data\": { \"z\" : 1,   \"a\" : [ 1.50 ] }}\n",
    );
    factum(source.path(), &["append", "a"], TWO_EVENTS);
    factum(source.path(), &["delete", "b"], "");
    let exported = factum(source.path(), &["export"], "");
    assert!(exported.status.success());
    let text = String::from_utf8(exported.stdout.clone()).unwrap();
    assert!(
        text.contains(r#"{ "z" : 1,   "a" : [ 1.50 ] }"#),
        "data kept as written"
    );

    let target = tempfile::tempdir().unwrap();
    let out = factum(target.path(), &["import"], &text);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        factum(target.path(), &["export"], "").stdout,
        exported.stdout
    );
    assert_eq!(
        factum(target.path(), &["read", "b"], "").status.code(),
        Some(4)
    );

    // A bad line anywhere: nothing is imported.
    let empty = tempfile::tempdir().unwrap();
    let broken = format!("{text}{{\"stream\": \"a\"}}\n");
    let out = factum(empty.path(), &["import"], &broken);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains(&format!("line {}", text.lines().count() + 1)));
    assert!(factum(empty.path(), &["export"], "").stdout.is_empty());
}

#[test]
fn verify_reports_health_and_names_corruption() {
    let dir = tempfile::tempdir().unwrap();
    factum(dir.path(), &["append", "v"], TWO_EVENTS);
    let out = factum(dir.path(), &["verify"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lines(&out)[0]["events"], 2);
    let segment = dir.path().join("log/0000000000.seg");
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 0x04;
    std::fs::write(&segment, bytes).unwrap();
    let out = factum(dir.path(), &["verify"], "");
    assert_eq!(out.status.code(), Some(6));
    assert!(stderr(&out).contains("0000000000.seg"), "{}", stderr(&out));
    assert!(stderr(&out).contains("offset"), "{}", stderr(&out));
    assert_eq!(
        factum(dir.path(), &["read", "v"], "").status.code(),
        Some(6),
        "never served"
    );
}

#[test]
fn tail_follows_new_events() {
    let dir = tempfile::tempdir().unwrap();
    factum(dir.path(), &["append", "t"], TWO_EVENTS);
    // A running tail holds the directory, so it follows what is already there from --from.
    let mut child = Command::new(env!("CARGO_BIN_EXE_factum"))
        .args(["tail", "--from", "1"])
        .env("FACTUM_DATA_DIR", dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["position"], 1);
}

#[test]
fn a_second_process_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    factum(dir.path(), &["append", "l"], TWO_EVENTS);
    let mut tail = Command::new(env!("CARGO_BIN_EXE_factum"))
        .args(["tail", "--from", "0"])
        .env("FACTUM_DATA_DIR", dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(tail.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    let out = factum(dir.path(), &["append", "l"], TWO_EVENTS);
    tail.kill().unwrap();
    tail.wait().unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("in use"));
}

/// Runs a processor `notifier` with one handler over the store in `dir`: `notify` fails on
/// `Failing` events while `failing` holds.
fn run_notifier(dir: &Path, failing: bool, append: bool) {
    use factum::{EventProcessor, RetryPolicy};
    use factum::{EventStore, ExpectedState, NewEvent, StreamName};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let engine = factum::Engine::open(dir, factum::EngineOptions::default()).unwrap();
        if append {
            let events = vec![
                NewEvent::json("Fine", &serde_json::json!({})).unwrap(),
                NewEvent::json("Failing", &serde_json::json!({"n": 1})).unwrap(),
            ];
            engine
                .append(
                    &StreamName::user("order-1").unwrap(),
                    ExpectedState::Any,
                    events,
                )
                .await
                .unwrap();
        }
        let store: std::sync::Arc<dyn EventStore> = std::sync::Arc::new(engine.clone());
        let processor = EventProcessor::builder("notifier", store)
            .on_any(factum::handler_fn("notify", move |event| async move {
                if failing && event.event_type == "Failing" {
                    Err("the mail server is down".into())
                } else {
                    Ok(())
                }
            }))
            .retry(RetryPolicy {
                attempts: 1,
                ..RetryPolicy::default()
            })
            .build()
            .unwrap();
        // Starting replays what was asked for; then it stops at once.
        processor.run(std::future::ready(())).await.unwrap();
        let head = engine.head();
        processor.run_until(head).await.unwrap();
        engine.close().unwrap();
    });
}

#[test]
fn dead_letters_are_listed_and_replayed_when_the_processor_next_starts() {
    let dir = tempfile::tempdir().unwrap();
    run_notifier(dir.path(), true, true);

    let out = factum(dir.path(), &["deadletters", "list"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        lines(&out),
        vec![serde_json::json!({"processor": "notifier", "unresolved": 1})]
    );
    let out = factum(dir.path(), &["deadletters", "list", "notifier"], "");
    let letters = lines(&out);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["handler"], "notify");
    assert_eq!(letters[0]["event_type"], "Failing");
    assert_eq!(letters[0]["stream"], "order-1");
    assert_eq!(letters[0]["revision"], 1);
    assert_eq!(letters[0]["error"], "the mail server is down");

    let out = factum(dir.path(), &["deadletters", "replay", "notifier"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lines(&out)[0]["replay_requested"], true);
    assert!(stderr(&out).contains("when it next starts"));
    // Nothing is replayed until the processor starts.
    assert_eq!(
        lines(&factum(
            dir.path(),
            &["deadletters", "list", "notifier"],
            ""
        ))
        .len(),
        1
    );

    // The mail server is back; the processor starts and replays.
    run_notifier(dir.path(), false, false);
    let out = factum(dir.path(), &["deadletters", "list", "notifier"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(lines(&out).is_empty());
    assert!(lines(&factum(dir.path(), &["deadletters", "list"], "")).is_empty());
    let out = factum(dir.path(), &["deadletters", "replay", "notifier"], "");
    assert_eq!(lines(&out)[0]["replay_requested"], false);
}

#[test]
fn dead_letters_of_an_unknown_processor_are_none_and_a_bad_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = factum(dir.path(), &["deadletters", "list", "nobody"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(lines(&out).is_empty());
    assert!(
        stderr(&out).contains("'nobody' has no unresolved dead letters"),
        "{}",
        stderr(&out)
    );
    let out = factum(dir.path(), &["deadletters", "list"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(lines(&out).is_empty());
    assert!(
        stderr(&out).contains("no processor or consumer has unresolved dead letters"),
        "{}",
        stderr(&out)
    );
    let long = "p".repeat(600);
    let out = factum(dir.path(), &["deadletters", "replay", &long], "");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = factum(dir.path(), &["deadletters", "list", ""], "");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = factum(dir.path(), &["deadletters", "replay", ""], "");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // Nothing was written: no replay request, no event at all.
    let out = factum(dir.path(), &["read-all"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(lines(&out).is_empty());
}

/// A broker message the consumer `billing` could not turn into a command, parked in `dir`.
fn park_a_message(dir: &Path) {
    use factum::CommandBus;
    use factum::EventStore;
    use factum::{Decider, Repository, ToAggregate};

    struct Ledger;
    impl Decider for Ledger {
        type State = ();
        type Command = ();
        type Event = serde_json::Value;
        type Error = std::convert::Infallible;
        const CATEGORY: &'static str = "ledger";
        fn initial_state(&self) {}
        fn decide(&self, (): &(), (): &()) -> Result<Vec<serde_json::Value>, Self::Error> {
            Ok(vec![serde_json::json!({"Booked": {}})])
        }
        fn evolve(&self, (): (), _: &serde_json::Value) {}
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let engine = factum::Engine::open(dir, factum::EngineOptions::default()).unwrap();
        let store: std::sync::Arc<dyn EventStore> = std::sync::Arc::new(engine.clone());
        let bus = CommandBus::builder()
            .handle::<ToAggregate<Ledger>, _>(
                std::sync::Arc::new(Repository::new(store.clone(), Ledger)).handler(),
            )
            .build()
            .unwrap();
        let consumer = factum::Consumer::builder("billing", store)
            .bus(bus)
            .on_aggregate::<Ledger, _>("OrderPaid", |m: &factum::IncomingMessage| {
                Err(format!("{} has no amount", m.id))
            })
            .build()
            .unwrap();
        let message = factum::IncomingMessage {
            id: "m-1".into(),
            message_type: "OrderPaid".into(),
            subject: "order.OrderPaid".into(),
            data: "{}".into(),
            headers: Default::default(),
            redelivered: false,
        };
        let outcome = consumer.handle(&message).await;
        assert!(
            matches!(outcome, factum::DeliveryOutcome::DeadLettered(_)),
            "{outcome:?}"
        );
        engine.close().unwrap();
    });
}

#[test]
fn a_consumers_parked_messages_are_listed_and_a_replay_is_requested() {
    let dir = tempfile::tempdir().unwrap();
    park_a_message(dir.path());
    let out = factum(dir.path(), &["deadletters", "list"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        lines(&out),
        vec![serde_json::json!({"processor": "billing", "unresolved": 1})]
    );
    let out = factum(dir.path(), &["deadletters", "list", "billing"], "");
    let letters = lines(&out);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["message_id"], "m-1");
    assert_eq!(letters[0]["message_type"], "OrderPaid");
    assert_eq!(letters[0]["error"], "m-1 has no amount");
    assert_eq!(letters[0]["data"], "{}");
    let out = factum(dir.path(), &["deadletters", "replay", "billing"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lines(&out)[0]["replay_requested"], true);
    assert_eq!(lines(&out)[0]["unresolved"], 1);
    assert!(stderr(&out).contains("'billing' replays its 1 dead letter(s) when it next starts"));
}

/// Every file under `dir` with its bytes.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                found.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    found.sort();
    found
}

#[test]
fn read_only_commands_leave_the_data_directory_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let out = factum(dir.path(), &["append", "cart-1"], TWO_EVENTS);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = files(dir.path());
    for args in [
        &["read", "cart-1"][..],
        &["read-all"],
        &["streams"],
        &["verify"],
        &["export"],
        &["deadletters", "list"],
        &["dcb", "read", "{\"query\": {\"items\": []}}"],
    ] {
        let out = factum(dir.path(), args, "");
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(
            files(dir.path()) == before,
            "{args:?} changed the data directory"
        );
    }
    // A directory without a store reads as an empty one, and is not created.
    let none = dir.path().join("none");
    let out = factum(&none, &["read-all"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert!(!none.exists());
}

#[test]
fn an_append_that_is_durable_exits_0_even_when_the_index_cannot_be_saved() {
    // The data directory on a tmpfs with no page left: the append's frame fits in the last page
    // of the log, saving the index at close does not.
    let mount = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(mount.path())
        .output()
        .unwrap();
    if !mounted.status.success() {
        eprintln!(
            "skipping the full-disk test: mounting a tmpfs is not allowed here ({})",
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(mount.path());
    let data = mount.path().join("data");
    let small = "{\"type\": \"Noted\", \"data\": {}}\n";
    let out = factum(&data, &["append", "note-1"], small);
    assert!(out.status.success(), "{}", stderr(&out));
    // Fill the disk.
    let mut filler = std::fs::File::create(mount.path().join("filler")).unwrap();
    let page = vec![7u8; 4096];
    while std::io::Write::write_all(&mut filler, &page).is_ok() {}
    drop(filler);
    let out = factum(&data, &["append", "note-1", "--expected", "0"], small);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(lines(&out)[0]["last_revision"], 1);
    assert!(stderr(&out).contains("warning"), "{}", stderr(&out));
    // Durable, as the exit code said: there after the index is rebuilt from the log.
    std::fs::remove_file(mount.path().join("filler")).unwrap();
    let out = factum(&data, &["read", "note-1"], "");
    assert_eq!(lines(&out).len(), 2, "{}", stderr(&out));
    let out = factum(&data, &["verify"], "");
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn serve_refuses_caps_of_zero_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for flag in ["--max-subscriptions", "--max-connections"] {
        let out = factum(&data, &["serve", "--listen", "127.0.0.1:0", flag, "0"], "");
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", stderr(&out));
        assert!(stderr(&out).contains("at least 1"), "{}", stderr(&out));
        assert!(!data.exists(), "{flag}: nothing was created");
    }
}
