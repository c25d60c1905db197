//! `factum --server URL …`: while `factum serve` holds the data directory, a second terminal
//! sends the same commands to it over HTTP and gets what the store itself would have printed,
//! with the same exit codes.
#![allow(clippy::unwrap_used)]
mod common;
use common::factum_in as factum;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// `factum serve` on `data` with `args`; the process and the URL it serves.
fn serve(data: &Path, args: &[&str], scheme: &str) -> (Child, String) {
    let mut all = vec!["--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let (server, mut stderr, _, port) = common::spawn_serve(&all, data);
    // Keep draining stderr so the server never blocks on it.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (server, format!("{scheme}://localhost:{port}"))
}

fn stop(mut server: Child) {
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(server.wait().unwrap().success());
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Checks the exit code, showing stderr when it differs; returns stdout.
fn expect(output: &Output, code: i32) -> String {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn events(count: usize, prefix: &str) -> String {
    (0..count)
        .map(|n| format!("{{\"type\": \"ItemAdded\", \"data\": {{\"sku\": \"{prefix}-{n}\"}}}}\n"))
        .collect()
}

/// The reads compared between the server and the store itself.
const READS: &[&[&str]] = &[
    &["read", "cart-1"],
    &["read", "big-1"],
    &["read", "big-1", "--backwards", "--limit", "1200"],
    &["read", "big-1", "--from", "998", "--limit", "5"],
    &["read-all"],
    &["read-all", "--from", "1", "--limit", "1100"],
    &["read-all", "--backwards", "--limit", "1200"],
    &["read-all", "--backwards", "--from", "1100", "--limit", "3"],
    &["streams"],
    &["streams", "--prefix", "big"],
    &["streams", "--limit", "1"],
    &["metadata", "cart-1"],
    &["export"],
    &["export", "--from", "1000"],
];

#[test]
fn commands_sent_to_a_running_server_print_what_the_store_itself_prints() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (server, url) = serve(&data, &[], "http");
    let remote = |args: &[&str], stdin: &str| {
        let mut all = vec!["--server", url.as_str()];
        all.extend_from_slice(args);
        factum(&data, &all, stdin)
    };

    // The server holds the directory: the store itself is refused, with a pointer to --server.
    let refused = factum(&data, &["streams"], "");
    expect(&refused, 7);
    assert!(text(&refused.stderr).contains("--server"), "{refused:?}");

    let written = expect(&remote(&["append", "cart-1"], &events(2, "fruit")), 0);
    let written: serde_json::Value = serde_json::from_str(&written).unwrap();
    assert_eq!(
        written,
        serde_json::json!({"stream": "cart-1", "first_revision": 0, "last_revision": 1, "position": 1})
    );
    // More than one page of the server's.
    expect(&remote(&["append", "big-1"], &events(1500, "bulk")), 0);
    expect(
        &remote(
            &[
                "metadata",
                "cart-1",
                "--set",
                r#"{"max_count": 10, "custom": {"owner": "shop"}}"#,
            ],
            "",
        ),
        0,
    );

    // Errors keep their exit codes and write nothing.
    let conflict = remote(
        &["append", "cart-1", "--expected", "no-stream"],
        &events(1, "x"),
    );
    expect(&conflict, 3);
    assert!(text(&conflict.stderr).contains("HTTP 409"), "{conflict:?}");
    expect(&remote(&["append", "cart-1"], "{\"type\": \"\"}\n"), 2);
    expect(&remote(&["append", "$system"], &events(1, "x")), 2);
    expect(&remote(&["read", "nobody"], ""), 4);
    expect(
        &remote(&["delete", "nobody", "--expected", "no-stream"], ""),
        4,
    );
    let verify = remote(&["verify"], "");
    expect(&verify, 2);
    assert!(
        text(&verify.stderr).contains("where the store is"),
        "{verify:?}"
    );

    let through_server: Vec<String> = READS
        .iter()
        .map(|args| expect(&remote(args, ""), 0))
        .collect();
    assert_eq!(through_server[1].lines().count(), 1500);
    assert_eq!(through_server[2].lines().count(), 1200);
    assert_eq!(through_server[3].lines().count(), 5);
    assert_eq!(through_server[5].lines().count(), 1100);
    assert_eq!(through_server[6].lines().count(), 1200);
    assert_eq!(through_server[7].lines().count(), 3);
    assert_eq!(through_server[10].lines().count(), 1);
    // Two carts, 1500 bulk events and cart-1's metadata.
    assert_eq!(through_server[12].lines().count(), 1503);
    assert_eq!(through_server[13].lines().count(), 503);
    stop(server);

    // An export taken from the running server restores a store that exports the same bytes.
    let restored = dir.path().join("restored");
    expect(&factum(&restored, &["import"], &through_server[12]), 0);
    assert_eq!(
        expect(&factum(&restored, &["export"], ""), 0),
        through_server[12]
    );

    // The store itself, read directly, prints the same bytes.
    for (args, remote) in READS.iter().zip(&through_server) {
        assert_eq!(&expect(&factum(&data, args, ""), 0), remote, "{args:?}");
    }

    // A tail through the server, filtered here; a delete.
    let (server, url) = serve(&data, &[], "http");
    let remote = |args: &[&str], stdin: &str| {
        let mut all = vec!["--server", url.as_str()];
        all.extend_from_slice(args);
        factum(&data, &all, stdin)
    };
    let mut tail = Command::new(env!("CARGO_BIN_EXE_factum"))
        .args([
            "--server",
            &url,
            "tail",
            "--from",
            "0",
            "--stream-prefix",
            "cart-",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Lines come through a channel, so a tail that prints nothing fails the test, not hangs it.
    let tailed = common::lines_of(tail.stdout.take().unwrap());
    let next = || {
        tailed
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the tail printed the next event")
    };
    let first = next();
    assert!(first.contains("fruit-0"), "{first}");
    assert!(next().contains("fruit-1"));
    expect(&remote(&["append", "other-1"], &events(1, "filtered")), 0);
    expect(&remote(&["append", "cart-1"], &events(1, "live")), 0);
    let live = next();
    assert!(live.contains("live-0"), "{live}");
    tail.kill().unwrap();
    tail.wait().unwrap();

    let deleted = expect(&remote(&["delete", "cart-1", "--expected", "2"], ""), 0);
    assert!(deleted.contains("\"tombstoned\":false"), "{deleted}");
    expect(&remote(&["read", "cart-1"], ""), 4);
    stop(server);
}

#[test]
fn tokens_and_https_reach_a_server_that_asks_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let auth = common::write_auth(dir.path());
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key_pair.serialize_pem()).unwrap();
    let data = dir.path().join("data");
    let (server, url) = serve(
        &data,
        &[
            "--auth",
            auth.to_str().unwrap(),
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
        ],
        "https",
    );
    let ca = cert_file.to_str().unwrap();
    let one = events(1, "apple");

    // Without the certificate the server is not trusted; without a token it says 401.
    let untrusted = factum(&data, &["--server", &url, "append", "cart-1"], &one);
    expect(&untrusted, 1);
    assert!(
        text(&untrusted.stderr).contains("cannot reach"),
        "{untrusted:?}"
    );
    let anonymous = factum(
        &data,
        &["--server", &url, "--server-ca", ca, "append", "cart-1"],
        &one,
    );
    expect(&anonymous, 1);
    assert!(
        text(&anonymous.stderr).contains("HTTP 401"),
        "{anonymous:?}"
    );

    let as_app = |args: &[&str], stdin: &str| {
        common::run(
            common::factum_command()
                .args(["--server", url.as_str(), "--server-ca", ca])
                .args(args)
                .env("FACTUM_DATA_DIR", &data)
                .env("FACTUM_TOKEN", common::APP_TOKEN),
            stdin,
        )
    };
    expect(&as_app(&["append", "cart-1"], &one), 0);
    let forbidden = as_app(&["append", "order-1"], &one);
    expect(&forbidden, 1);
    assert!(
        text(&forbidden.stderr).contains("HTTP 403"),
        "{forbidden:?}"
    );
    let read = expect(&as_app(&["read", "cart-1"], ""), 0);
    assert!(read.contains("apple-0"), "{read}");
    stop(server);
}

#[test]
fn a_bad_server_url_is_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    for url in ["localhost:2113", "ftp://localhost", "http://"] {
        let output = factum(dir.path(), &["--server", url, "streams"], "");
        expect(&output, 2);
        assert!(text(&output.stderr).contains("--server"), "{output:?}");
    }
    let both = factum(
        dir.path(),
        &[
            "--server",
            "http://localhost:1",
            "--store",
            "postgres://x@y/z",
            "streams",
        ],
        "",
    );
    expect(&both, 2);
    // A token that cannot be a header, a certificate file that is missing or not PEM.
    let garbage = dir.path().join("not-a-certificate.pem");
    std::fs::write(&garbage, "hello").unwrap();
    let missing = dir.path().join("missing.pem");
    for (args, named) in [
        (vec!["--token", "a\nb"], "--token"),
        (
            vec!["--server-ca", missing.to_str().unwrap()],
            "--server-ca",
        ),
        (
            vec!["--server-ca", garbage.to_str().unwrap()],
            "--server-ca",
        ),
    ] {
        let mut all = vec!["--server", "https://localhost:1"];
        all.extend(args);
        all.push("streams");
        let output = factum(dir.path(), &all, "");
        expect(&output, 2);
        assert!(text(&output.stderr).contains(named), "{output:?}");
    }
    // Nobody listens: a clear failure, not a hang.
    let down = factum(
        dir.path(),
        &["--server", "http://127.0.0.1:1", "streams"],
        "",
    );
    expect(&down, 1);
    assert!(
        text(&down.stderr).contains("cannot reach the server"),
        "{down:?}"
    );
}

#[test]
fn scavenge_reclaims_hidden_events_offline_and_on_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    expect(&factum(&data, &["append", "cart-1"], &events(200, "a")), 0);
    expect(&factum(&data, &["append", "keep-1"], &events(20, "k")), 0);
    expect(
        &factum(
            &data,
            &["metadata", "cart-1", "--set", r#"{"max_count": 10}"#],
            "",
        ),
        0,
    );
    let before = expect(&factum(&data, &["read", "cart-1"], ""), 0);

    // Offline, on the data directory.
    let report: serde_json::Value =
        serde_json::from_str(&expect(&factum(&data, &["scavenge"], ""), 0)).unwrap();
    assert_eq!(report["events_removed"], 190, "{report}");
    assert!(
        report["bytes_reclaimed"].as_u64().unwrap() > 190 * 50,
        "{report}"
    );
    assert_eq!(expect(&factum(&data, &["read", "cart-1"], ""), 0), before);
    let verified: serde_json::Value =
        serde_json::from_str(&expect(&factum(&data, &["verify"], ""), 0)).unwrap();
    assert_eq!(verified["removed"], 190, "{verified}");
    let all = expect(&factum(&data, &["read-all", "--limit", "1000"], ""), 0);
    assert_eq!(all.lines().count(), 10 + 20 + 1, "{all}");

    // On a running server: the directory is its own, the command goes to it.
    let auth = common::write_auth(dir.path());
    std::fs::write(
        &auth,
        format!(
            "{}[[token]]\nname = \"ops\"\nsecret = \"ops-secret-0123456789\"\nadmin = [\"\"]\n",
            std::fs::read_to_string(&auth).unwrap()
        ),
    )
    .unwrap();
    let (server, url) = serve(&data, &["--auth", auth.to_str().unwrap()], "http");
    let remote = |token: &str, args: &[&str], stdin: &str| {
        let mut all = vec!["--server", url.as_str(), "--token", token];
        all.extend_from_slice(args);
        factum(&data, &all, stdin)
    };
    let refused = factum(&data, &["scavenge"], "");
    expect(&refused, 7);
    assert!(text(&refused.stderr).contains("--server"), "{refused:?}");
    expect(
        &remote(common::APP_TOKEN, &["append", "cart-1"], &events(100, "b")),
        0,
    );
    // Scavenging takes admin on every stream.
    let denied = remote(common::APP_TOKEN, &["scavenge"], "");
    assert_ne!(denied.status.code(), Some(0));
    assert!(text(&denied.stderr).contains("HTTP 403"), "{denied:?}");
    let report: serde_json::Value = serde_json::from_str(&expect(
        &remote(
            "ops-secret-0123456789",
            &["scavenge", "--past-checkpoints"],
            "",
        ),
        0,
    ))
    .unwrap();
    assert_eq!(report["events_removed"], 100, "{report}");
    assert_eq!(report["below"], serde_json::Value::Null, "{report}");
    let read = expect(&remote("ops-secret-0123456789", &["read", "cart-1"], ""), 0);
    assert_eq!(read.lines().count(), 10);
    assert!(read.contains("\"revision\":299"), "{read}");
    stop(server);
    let verified: serde_json::Value =
        serde_json::from_str(&expect(&factum(&data, &["verify"], ""), 0)).unwrap();
    assert_eq!(verified["removed"], 290, "{verified}");
}
