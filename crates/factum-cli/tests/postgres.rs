//! `factum --store postgres://…`: every command on the PostgreSQL store, and `export | import`
//! moving a store from the embedded engine to PostgreSQL and back, byte for byte.
#![allow(clippy::unwrap_used)]
mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn factum(dir: &Path, store: Option<&str>, args: &[&str], stdin: &str) -> Output {
    let mut command = common::factum_command();
    command.env("FACTUM_DATA_DIR", dir);
    if let Some(schema) = store {
        command.args(["--store", URL, "--store-schema", schema]);
    }
    common::run(command.args(args), stdin)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Drops a schema (before and after a test).
fn drop_schema(schema: &str) -> Result<(), tokio_postgres::Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(URL, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await
    })
}

/// A fresh schema name, or `None` when PostgreSQL is not reachable outside CI.
fn fresh_schema(label: &str) -> Option<String> {
    let schema = format!("fcli_{label}_{}", std::process::id());
    match drop_schema(&schema) {
        Ok(()) => Some(schema),
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipping: PostgreSQL at {URL} is not reachable ({e})");
            None
        }
        Err(e) => panic!("PostgreSQL at {URL} is needed under CI=true: {e}"),
    }
}

/// A child process that is killed if the test fails before it stops it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn commands_work_on_postgres_and_export_import_moves_a_store_across_backends() {
    let Some(schema) = fresh_schema("move") else {
        return;
    };
    let pg = Some(schema.as_str());
    let embedded = tempfile::tempdir().unwrap();
    let dir = embedded.path();
    let events = "{\"type\": \"ItemAdded\", \"data\": { \"sku\" : \"apple\",  \"qty\": 2 }}\n\
                  {\"type\": \"ItemAdded\", \"data\": {\"sku\": \"pear\"}, \"metadata\": {\"$correlationId\": \"c-1\"}}\n";
    for (stream, input) in [("cart-1", events), ("cart-2", events), ("cart-1", events)] {
        let out = factum(dir, None, &["append", stream], input);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert!(
        factum(
            dir,
            None,
            &["metadata", "cart-1", "--set", r#"{"max_count": 3}"#],
            ""
        )
        .status
        .success()
    );
    assert!(
        factum(dir, None, &["delete", "cart-2"], "")
            .status
            .success()
    );
    let exported = factum(dir, None, &["export"], "");
    assert!(exported.status.success());

    // Into PostgreSQL: the same log, byte for byte, and the same reads.
    let out = factum(
        dir,
        pg,
        &["import"],
        &String::from_utf8(exported.stdout.clone()).unwrap(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(factum(dir, pg, &["export"], "").stdout, exported.stdout);
    for args in [
        &["read", "cart-1"][..],
        &["read", "cart-1", "--backwards"],
        &["read-all"],
        &["streams"],
    ] {
        assert_eq!(
            factum(dir, pg, args, "").stdout,
            factum(dir, None, args, "").stdout,
            "{args:?}"
        );
    }
    assert_eq!(
        factum(dir, pg, &["read", "cart-2"], "").status.code(),
        Some(4)
    );
    let verified = factum(dir, pg, &["verify"], "");
    assert!(verified.status.success(), "{}", stderr(&verified));
    let report: serde_json::Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert_eq!(report["ok"], true);

    // Writes on PostgreSQL keep the rules: a wrong expected revision exits 3, writes nothing.
    let out = factum(dir, pg, &["append", "cart-1", "--expected", "0"], events);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = factum(dir, pg, &["append", "cart-1", "--expected", "3"], events);
    assert!(out.status.success(), "{}", stderr(&out));

    // And back into a new embedded store.
    let back = tempfile::tempdir().unwrap();
    let from_pg = factum(dir, pg, &["export"], "");
    let out = factum(
        back.path(),
        None,
        &["import"],
        &String::from_utf8(from_pg.stdout.clone()).unwrap(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        factum(back.path(), None, &["export"], "").stdout,
        from_pg.stdout
    );

    // Scavenging on PostgreSQL: what max count and the soft delete hide goes, reads stay.
    let read_before = factum(dir, pg, &["read", "cart-1"], "").stdout;
    let scavenged = factum(dir, pg, &["scavenge"], "");
    assert!(scavenged.status.success(), "{}", stderr(&scavenged));
    let report: serde_json::Value = serde_json::from_slice(&scavenged.stdout).unwrap();
    assert_eq!(report["events_removed"], 4, "{report}");
    assert_eq!(factum(dir, pg, &["read", "cart-1"], "").stdout, read_before);
    let verified = factum(dir, pg, &["verify"], "");
    assert!(verified.status.success(), "{}", stderr(&verified));
    let report: serde_json::Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert_eq!(report["removed"], 4, "{report}");

    // factum serve on the PostgreSQL store.
    let mut server = Command::new(env!("CARGO_BIN_EXE_factum"))
        .args([
            "--store",
            URL,
            "--store-schema",
            &schema,
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("FACTUM_DATA_DIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = std::io::BufReader::new(server.stderr.take().unwrap());
    let server = KillOnDrop(server);
    let mut banner = String::new();
    std::io::BufRead::read_line(&mut log, &mut banner).unwrap();
    // Keep reading what it says, so that it never writes into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut log, &mut std::io::sink()));
    assert!(banner.contains("PostgreSQL"), "{banner}");
    let address = banner
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let mut connection = std::net::TcpStream::connect(&address).unwrap();
    write!(
        connection,
        "GET /streams/cart-1?limit=100 HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut connection, &mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    // Metadata keeps the newest three.
    assert_eq!(response.matches("\"ItemAdded\"").count(), 3, "{response}");
    // SIGTERM: it stops cleanly.
    let mut server = server;
    assert!(
        Command::new("kill")
            .arg(server.0.id().to_string())
            .status()
            .unwrap()
            .success()
    );
    assert!(server.0.wait().unwrap().success());

    // A store that is not PostgreSQL is refused with a clear message.
    let out = Command::new(env!("CARGO_BIN_EXE_factum"))
        .args(["--store", "mysql://x", "streams"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("PostgreSQL URL"), "{}", stderr(&out));
    drop_schema(&schema).unwrap();
}
