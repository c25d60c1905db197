//! PostgreSQL for the tests: a fresh schema per test, dropped when the test ends.
#![allow(clippy::unwrap_used, dead_code, missing_docs)]

use std::sync::atomic::{AtomicU32, Ordering};

use factum_postgres::{PgOptions, PgStore};

/// The server the tests use; `FACTUM_TEST_POSTGRES` overrides it.
pub fn postgres() -> String {
    std::env::var("FACTUM_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into())
}

/// A connection to [`postgres`], with the TLS its connection string asks for.
pub async fn connect() -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio_postgres::Socket, factum_pgconnect::TlsStream>,
    ),
    tokio_postgres::Error,
> {
    factum_pgconnect::PgConnect::parse(&postgres())
        .unwrap()
        .connect()
        .await
}

/// Drops its schema when dropped.
pub struct Schema(pub String);

impl Drop for Schema {
    fn drop(&mut self) {
        let schema = self.0.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok((client, connection)) = connect().await {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A schema name no other test of this run uses, or `None` (with the reason printed) when
/// PostgreSQL is not reachable outside CI. Under `CI=true` it must be reachable.
pub async fn schema(label: &str) -> Option<Schema> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "fpg_{label}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    match connect().await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .await
                .unwrap();
            Some(Schema(name))
        }
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!(
                "skipping: PostgreSQL at {} is not reachable ({e})",
                postgres()
            );
            None
        }
        Err(e) => panic!("PostgreSQL at {} is needed under CI=true: {e}", postgres()),
    }
}

/// Options for a store in `schema`, with few connections (many tests run at once).
pub fn options(schema: &Schema) -> PgOptions {
    PgOptions {
        schema: schema.0.clone(),
        readers: 2,
        ..PgOptions::default()
    }
}

/// A store in a fresh schema.
pub async fn fresh(label: &str) -> Option<(PgStore, Schema)> {
    let schema = schema(label).await?;
    let store = PgStore::connect(&postgres(), options(&schema))
        .await
        .unwrap();
    Some((store, schema))
}

/// Restarts the local cluster with `pg_ctlcluster`; `false` when this machine cannot.
pub fn restart_postgres() -> bool {
    let Ok(versions) = std::fs::read_dir("/etc/postgresql") else {
        return false;
    };
    let Some(version) = versions
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .next()
    else {
        return false;
    };
    let status = std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect"])
        .arg(&version)
        .args(["main", "restart", "--", "-m", "fast"])
        .status();
    matches!(status, Ok(s) if s.success())
}

/// Skips (outside CI) when this machine cannot restart PostgreSQL.
pub fn cannot_restart() {
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "CI must be able to restart PostgreSQL"
    );
    eprintln!("skipping: cannot restart PostgreSQL here (pg_ctlcluster)");
}
