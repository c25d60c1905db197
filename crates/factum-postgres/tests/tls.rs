//! TLS to PostgreSQL with the local server's own certificate: by default connections are
//! encrypted, `verify-full` checks the certificate and the host name, `verify-ca` only the
//! chain, and a certificate from another root is refused before anything is sent.
//!
//! Needs a server on this machine with `ssl = on` whose certificate file is readable and names
//! `localhost` (Debian's default, the snakeoil certificate). Under `CI=true` that is required;
//! elsewhere the tests skip with the reason printed.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use factum_core::{Direction, EventStore, ExpectedState, NewEvent, StoreError, StreamName};
use factum_pgconnect::{PgConnect, SslMode};
use factum_postgres::PgStore;
use tokio_postgres::config::Host;

/// The test server as key-value pairs without TLS options, its port, and the path of its
/// certificate; `None` (with the reason printed) when it cannot be used outside CI.
async fn server() -> Option<(String, u16, String)> {
    let skip = |reason: String| {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the TLS tests need this under CI=true: {reason}");
        }
        eprintln!("skipping: {reason}");
    };
    let plain = PgConnect::parse(&common::postgres()).unwrap();
    let config = plain.config();
    let Some(Host::Tcp(host)) = config.get_hosts().first() else {
        skip("the test server is not reached over TCP".into());
        return None;
    };
    if !["127.0.0.1", "localhost", "::1"].contains(&host.as_str()) {
        skip(format!("the test server {host} is not on this machine"));
        return None;
    }
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let dbname = config.get_dbname().unwrap_or(user);
    let base = format!("port={port} user={user} dbname={dbname}");
    let Ok((client, connection)) = common::connect().await else {
        skip(format!(
            "PostgreSQL at {} is not reachable",
            common::postgres()
        ));
        return None;
    };
    tokio::spawn(connection);
    let ssl: String = client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    if ssl != "on" {
        skip("the test server has ssl = off".into());
        return None;
    }
    let cert: String = client
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0);
    let cert = if cert.starts_with('/') {
        cert
    } else {
        let dir: String = client
            .query_one("SHOW data_directory", &[])
            .await
            .unwrap()
            .get(0);
        format!("{dir}/{cert}")
    };
    if let Err(e) = std::fs::metadata(&cert) {
        skip(format!(
            "the server's certificate {cert} is not readable: {e}"
        ));
        return None;
    }
    Some((base, port, cert))
}

/// Whether the connection made with `connection` is encrypted, as the server sees it.
async fn encrypted(connection: &str) -> Result<bool, String> {
    let connect = PgConnect::parse(connection).map_err(|e| e.to_string())?;
    let (client, driver) = connect.connect().await.map_err(|e| {
        let mut message = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(inner) = cause {
            message = format!("{message}: {inner}");
            cause = inner.source();
        }
        message
    })?;
    tokio::spawn(driver);
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

/// A root certificate that did not sign the server's.
fn stranger_root(dir: &std::path::Path) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join("stranger.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn connections_are_encrypted_unless_disabled_and_checked_as_asked() {
    let Some((base, _, cert)) = server().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let stranger = stranger_root(dir.path());

    // prefer (the default) and require encrypt without checking the certificate.
    assert_eq!(encrypted(&format!("host=127.0.0.1 {base}")).await, Ok(true));
    assert_eq!(
        encrypted(&format!("host=127.0.0.1 {base} sslmode=require")).await,
        Ok(true)
    );
    assert_eq!(
        encrypted(&format!("host=127.0.0.1 {base} sslmode=disable")).await,
        Ok(false)
    );

    // verify-full: the chain and the name (the certificate names localhost, not 127.0.0.1).
    assert_eq!(
        encrypted(&format!(
            "host=localhost {base} sslmode=verify-full sslrootcert={cert}"
        ))
        .await,
        Ok(true)
    );
    let wrong_name = encrypted(&format!(
        "host=127.0.0.1 {base} sslmode=verify-full sslrootcert={cert}"
    ))
    .await
    .unwrap_err();
    assert!(wrong_name.contains("certificate"), "{wrong_name}");

    // verify-ca: the chain only.
    assert_eq!(
        encrypted(&format!(
            "host=127.0.0.1 {base} sslmode=verify-ca sslrootcert={cert}"
        ))
        .await,
        Ok(true)
    );

    // A certificate from another root is refused in every mode that has a root to check.
    for mode in ["verify-full", "verify-ca", "require", "prefer"] {
        let refused = encrypted(&format!(
            "host=localhost {base} sslmode={mode} sslrootcert={stranger}"
        ))
        .await
        .unwrap_err();
        assert!(refused.contains("certificate"), "{mode}: {refused}");
    }

    // The URL form reads the same options.
    let (user_db, port) = {
        let config = PgConnect::parse(&format!("host=127.0.0.1 {base}")).unwrap();
        let config = config.config();
        (
            format!(
                "{}/{}",
                config.get_user().unwrap(),
                config.get_dbname().unwrap()
            ),
            config.get_ports()[0],
        )
    };
    let (user, db) = user_db.split_once('/').unwrap();
    let url = format!(
        "postgres://{user}@localhost:{port}/{db}?sslmode=verify-full&sslrootcert={}",
        cert.replace('/', "%2F")
    );
    assert_eq!(PgConnect::parse(&url).unwrap().mode(), SslMode::VerifyFull);
    assert_eq!(encrypted(&url).await, Ok(true));
}

#[tokio::test]
async fn the_store_works_over_verified_tls_and_refuses_a_stranger() {
    let Some((base, _, cert)) = server().await else {
        return;
    };
    let Some(schema) = common::schema("tls").await else {
        return;
    };
    let application = format!("factum_tls_{}", std::process::id());
    let connection = format!(
        "host=localhost {base} application_name={application} sslmode=verify-full sslrootcert={cert}"
    );
    let store = PgStore::connect(&connection, common::options(&schema))
        .await
        .unwrap();
    let stream = StreamName::new("cart-1").unwrap();
    let event = NewEvent::json("ItemAdded", &serde_json::json!({"sku": "apple"})).unwrap();
    store
        .append(&stream, ExpectedState::NoStream, vec![event])
        .await
        .unwrap();
    let read = store
        .read_stream(&stream, 0, Direction::Forwards, 10)
        .await
        .unwrap();
    assert_eq!(read.len(), 1);

    // Every connection the store opened (writer, readers, the head's listener) is encrypted.
    let (client, driver) = common::connect().await.unwrap();
    tokio::spawn(driver);
    let mut seen = (0i64, false);
    for _ in 0..100 {
        let row = client
            .query_one(
                "SELECT count(*), coalesce(bool_and(s.ssl), false)
                 FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                 WHERE a.application_name = $1",
                &[&application],
            )
            .await
            .unwrap();
        seen = (row.get(0), row.get(1));
        if seen.0 >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(seen.0 >= 3, "connections seen: {}", seen.0);
    assert!(seen.1, "a connection of the store is not encrypted");
    drop(store);

    let dir = tempfile::tempdir().unwrap();
    let stranger = stranger_root(dir.path());
    let refused = PgStore::connect(
        &format!("host=localhost {base} sslmode=verify-full sslrootcert={stranger}"),
        common::options(&schema),
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(&refused, StoreError::Unavailable(m) if m.contains("certificate")),
        "{refused:?}"
    );
    let bad = PgStore::connect(
        &format!("host=localhost {base} sslmode=verify-full"),
        common::options(&schema),
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(bad, StoreError::InvalidInput(_)), "{bad:?}");
}
