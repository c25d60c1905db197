//! KurrentDB's official Python client (PyPI `kurrentdbclient`), unchanged, against
//! `factum serve`: `tests/kurrentdb/python_client.py` runs in a virtual environment this test
//! makes (once; it is kept under the target directory), against a plain server on the
//! embedded store, one on PostgreSQL, and one with TLS and tokens.
//!
//! Outside CI the test is skipped, with the reason, when Python or the package index is not
//! there; under `CI=true` it must run.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use factum_core::EventStore;
use factum_server::auth::Auth;
use tokio::sync::oneshot;

/// The client release the tests pin.
const CLIENT: &str = "kurrentdbclient==1.3.5";

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// The virtual environment's Python, made with the client installed if it is not there yet.
fn python() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kurrentdbclient-1.3.5");
    let python = venv.join("bin").join("python");
    let ready = venv.join("installed");
    if ready.exists() {
        return Some(python);
    }
    let run = |command: &mut Command| -> Result<(), String> {
        let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{command:?}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    };
    let made = run(Command::new("python3").arg("-m").arg("venv").arg(&venv)).and_then(|()| {
        run(Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(CLIENT))
    });
    match made {
        Ok(()) => {
            std::fs::write(&ready, CLIENT).unwrap();
            Some(python)
        }
        Err(e) if !in_ci() => {
            eprintln!("skipping: the Python client could not be installed ({e})");
            None
        }
        Err(e) => panic!("the Python client is needed under CI=true: {e}"),
    }
}

struct Served {
    port: u16,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn serve(store: Arc<dyn EventStore>, config: factum_server::Config) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(factum_server::serve(listener, store, config, async move {
        let _ = stopped.await;
    }));
    Served { port, stop, task }
}

impl Served {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// Runs the script with `args`; fails the test with its output unless it says "ok".
async fn script(python: &Path, args: &[String]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kurrentdb/python_client.py");
    let mut command = tokio::process::Command::new(python);
    command.arg(script).args(args);
    let output = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .expect("the Python client's checks end within 5 minutes")
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success() && stdout.trim_end().ends_with("ok"),
        "python {args:?} failed:\n{stdout}\n{stderr}"
    );
}

fn engine() -> (Arc<dyn EventStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let engine = factum_engine::Engine::open(dir.path().join("data"), Default::default()).unwrap();
    (Arc::new(engine), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_works_on_the_embedded_store() {
    let Some(python) = tokio::task::spawn_blocking(python).await.unwrap() else {
        return;
    };
    let (store, _dir) = engine();
    let served = serve(store, factum_server::Config::default()).await;
    script(&python, &["plain".into(), served.port.to_string()]).await;
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_works_on_postgresql() {
    let Some(python) = tokio::task::spawn_blocking(python).await.unwrap() else {
        return;
    };
    let url = std::env::var("FACTUM_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into());
    let schema = format!("fgrpc_py_{}", std::process::id());
    let options = factum_postgres::PgOptions {
        schema: schema.clone(),
        ..factum_postgres::PgOptions::default()
    };
    let store = match factum_postgres::PgStore::connect(&url, options).await {
        Ok(store) => store,
        Err(e) if !in_ci() => {
            eprintln!("skipping: PostgreSQL at {url} is not reachable ({e})");
            return;
        }
        Err(e) => panic!("PostgreSQL at {url} is needed under CI=true: {e}"),
    };
    let served = serve(Arc::new(store), factum_server::Config::default()).await;
    script(&python, &["plain".into(), served.port.to_string()]).await;
    served.stop().await;
    let (client, connection) = factum_pgconnect::PgConnect::parse(&url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
}

const TOKENS: &str = r#"
[[token]]
name = "orders"
secret = "orders-0123456789"
write = ["order-"]
read = ["order-"]

[[token]]
name = "reader"
secret = "reader-0123456789"
read = [""]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_over_tls_with_tokens() {
    let Some(python) = tokio::task::spawn_blocking(python).await.unwrap() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key_pair.serialize_pem()).unwrap();
    let (store, _data) = engine();
    let served = serve(
        store,
        factum_server::Config {
            tls: Some(factum_server::tls::load(&cert_path, &key_path).unwrap()),
            auth: Some(Arc::new(Auth::from_toml(TOKENS).unwrap())),
            ..factum_server::Config::default()
        },
    )
    .await;
    script(
        &python,
        &[
            "secure".into(),
            served.port.to_string(),
            cert_path.display().to_string(),
        ],
    )
    .await;
    served.stop().await;
}
