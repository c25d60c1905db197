//! `factum dcb read|append|tail`: the JSON of the HTTP API's `/dcb/…`, where the store is and
//! with `--server`, with the exit codes of the other commands (3 for a failed condition, 2
//! for bad input) and nothing written when refused.
#![allow(clippy::unwrap_used, missing_docs)]
mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// A child process that is killed when the test is done with it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stdout_json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Runs `factum dcb …` in `data`, on a server when `server` is given.
fn dcb(data: &Path, server: Option<&str>, args: &[&str], stdin: &str) -> Output {
    let mut all: Vec<&str> = Vec::new();
    if let Some(server) = server {
        all.extend(["--server", server]);
    }
    all.push("dcb");
    all.extend(args);
    common::factum_in(data, &all, stdin)
}

fn checks(data: &Path, server: Option<&str>) {
    let course = json!({"items": [{"types": ["StudentEnrolled"], "tags": ["course:c1"]}]});
    let read = stdout_json(&dcb(
        data,
        server,
        &["read", &json!({"query": course}).to_string()],
        "",
    ));
    assert_eq!(read, json!({"events": [], "head": null}));
    let enrol = |student: &str, after: Value| {
        json!({
            "events": [{"type": "StudentEnrolled", "data": {"student": student},
                        "tags": ["course:c1", format!("student:{student}")]}],
            "condition": {"fail_if_events_match": course, "after": after}
        })
        .to_string()
    };
    // The request on stdin.
    let appended = stdout_json(&dcb(data, server, &["append"], &enrol("s1", Value::Null)));
    assert_eq!(appended, json!({"position": 0}));
    // The same decision again: exit 3, the condition named, nothing written.
    let refused = dcb(data, server, &["append", &enrol("s2", Value::Null)], "");
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("condition"), "{message}");
    let read = stdout_json(&dcb(
        data,
        server,
        &["read", &json!({"query": course}).to_string()],
        "",
    ));
    assert_eq!(read["head"], 0);
    assert_eq!(read["events"].as_array().unwrap().len(), 1);
    assert_eq!(
        read["events"][0]["tags"],
        json!(["course:c1", "student:s1"])
    );
    // Decided on that read: goes through.
    let appended = stdout_json(&dcb(data, server, &["append", &enrol("s2", json!(0))], ""));
    assert_eq!(appended, json!({"position": 1}));
    // Bad input: exit 2, nothing written.
    for bad in [
        json!({"events": [{"type": "A", "data": 1, "tags": [""]}]}),
        json!({"events": []}),
        json!({"events": [{"type": "A", "data": 1}], "condition": {"fail_if_events_match": {"items": [{"tags": [""]}]}}}),
    ] {
        let output = dcb(data, server, &["append", &bad.to_string()], "");
        assert_eq!(output.status.code(), Some(2), "{bad}: {output:?}");
    }
    let output = dcb(data, server, &["read", "{\"query\": 1}"], "");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let read = stdout_json(&dcb(
        data,
        server,
        &["read", &json!({"backwards": true, "limit": 1}).to_string()],
        "",
    ));
    assert_eq!(read["events"][0]["position"], 1, "nothing more was written");
}

#[test]
fn dcb_commands_where_the_store_is() {
    let dir = tempfile::tempdir().unwrap();
    checks(dir.path(), None);
    // `tail` from the start prints what matches, one line each.
    let tail = common::factum_command()
        .args([
            "dcb",
            "tail",
            "--from-start",
            "--query",
            r#"{"items": [{"tags": ["student:s2"]}]}"#,
        ])
        .env("FACTUM_DATA_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut tail = KillOnDrop(tail);
    let lines = common::lines_of(tail.0.stdout.take().unwrap());
    let line = lines.recv_timeout(Duration::from_secs(20)).unwrap();
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["position"], 1);
    assert_eq!(event["tags"], json!(["course:c1", "student:s2"]));
}

#[test]
fn dcb_commands_on_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _stderr, _, port) = common::spawn_serve(&["--listen", "127.0.0.1:0"], dir.path());
    let _server = KillOnDrop(server);
    let base = format!("http://127.0.0.1:{port}");
    let elsewhere = tempfile::tempdir().unwrap();
    checks(elsewhere.path(), Some(&base));
    // `tail` follows live: from the current end it prints only what comes next.
    let tail = common::factum_command()
        .args([
            "--server",
            &base,
            "dcb",
            "tail",
            "--query",
            r#"{"items": [{"tags": ["course:c1"]}]}"#,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut tail = KillOnDrop(tail);
    let lines = common::lines_of(tail.0.stdout.take().unwrap());
    // Until the subscription is open, an append may land before it: append until one shows.
    let mut shown = None;
    for n in 0..50 {
        let request = json!({"events": [{"type": "Noted", "data": n, "tags": ["course:c1"]}]});
        let appended = stdout_json(&dcb(
            elsewhere.path(),
            Some(&base),
            &["append", &request.to_string()],
            "",
        ));
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(300)) {
            shown = Some((appended, line));
            break;
        }
    }
    let (appended, line) = shown.expect("tail prints new events");
    let event: Value = serde_json::from_str(&line).unwrap();
    assert!(event["position"].as_u64().unwrap() <= appended["position"].as_u64().unwrap());
    assert!(
        event["position"].as_u64().unwrap() > 1,
        "from the end: not the old ones"
    );
    assert_eq!(event["tags"], json!(["course:c1"]));
}
