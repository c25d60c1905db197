//! KurrentDB's official Python and Node clients, unchanged, against `factum serve`.
//!
//! - Python (PyPI `kurrentdbclient`): `tests/kurrentdb/python_client.py` runs in a virtual
//!   environment this test makes, against a plain server on the embedded store, one on
//!   PostgreSQL, and one with TLS and tokens.
//! - Node (npm `@kurrent/kurrentdb-client`): `tests/kurrentdb/node_client.cjs`, a smoke test
//!   of append, read and subscribe, on the embedded store.
//!
//! Each client is installed once and kept under the target directory. Outside CI a test is
//! skipped, with the reason, when its runtime or the package registry is not there; under
//! `CI=true` it must run.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use factum_server::auth::Auth;

mod common;
use common::{CLIENT_TOKENS, certificate, drop_schema, engine, in_ci, postgres, serve};

/// The Python client release the tests pin.
const PYTHON_CLIENT: &str = "kurrentdbclient==1.3.5";

/// The Node client release the tests pin.
const NODE_CLIENT: &str = "@kurrent/kurrentdb-client@1.3.1";

/// Runs `command`; its output as the error when it fails.
fn run(command: &mut Command) -> Result<(), String> {
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
}

/// Installs a client under the target directory once (`install` fills `dir`); `None` (with
/// the reason printed) when it cannot be installed outside CI.
fn installed(
    dir: &str,
    what: &str,
    install: impl FnOnce(&Path) -> Result<(), String>,
) -> Option<PathBuf> {
    // The tests run at the same time; one installs while the others wait for it.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _installing = INSTALLING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(dir);
    let ready = dir.join("installed");
    if ready.exists() {
        return Some(dir);
    }
    // What an interrupted install left is made again from nothing.
    let _ = std::fs::remove_dir_all(&dir);
    match install(&dir) {
        Ok(()) => {
            std::fs::write(&ready, what).unwrap();
            Some(dir)
        }
        Err(e) if !in_ci() => {
            eprintln!("skipping: {what} could not be installed ({e})");
            None
        }
        Err(e) => panic!("{what} is needed under CI=true: {e}"),
    }
}

/// The virtual environment's Python, made with the client installed if it is not there yet.
fn python() -> Option<PathBuf> {
    let venv = installed("kurrentdbclient-1.3.5", PYTHON_CLIENT, |venv| {
        run(Command::new("python3").arg("-m").arg("venv").arg(venv))?;
        run(Command::new(venv.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(PYTHON_CLIENT))
    })?;
    Some(venv.join("bin/python"))
}

/// The `node_modules` directory holding the Node client, installed if it is not there yet.
fn node_modules() -> Option<PathBuf> {
    let prefix = installed("kurrentdb-client-1.3.1", NODE_CLIENT, |prefix| {
        std::fs::create_dir_all(prefix).map_err(|e| e.to_string())?;
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(prefix)
            .arg(NODE_CLIENT))
    })?;
    Some(prefix.join("node_modules"))
}

/// Runs `program` on the script `name` (in `tests/kurrentdb`) with `args`; fails the test with
/// its output unless it says "ok".
async fn script(program: &Path, name: &str, args: &[String], env: &[(&str, &Path)]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/kurrentdb")
        .join(name);
    let mut command = tokio::process::Command::new(program);
    command.arg(script).args(args).kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .expect("the client's checks end within 5 minutes")
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success() && stdout.trim_end().ends_with("ok"),
        "{name} {args:?} failed:\n{stdout}\n{stderr}"
    );
}

const PY: &str = "python_client.py";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_works_on_the_embedded_store() {
    let Some(python) = tokio::task::spawn_blocking(python).await.unwrap() else {
        return;
    };
    let (store, _dir) = engine();
    let served = serve(store, factum_server::Config::default()).await;
    script(&python, PY, &["plain".into(), served.port.to_string()], &[]).await;
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_works_on_postgresql() {
    let Some(python) = tokio::task::spawn_blocking(python).await.unwrap() else {
        return;
    };
    let Some((store, schema)) = postgres("py").await else {
        return;
    };
    let served = serve(store, factum_server::Config::default()).await;
    script(&python, PY, &["plain".into(), served.port.to_string()], &[]).await;
    served.stop().await;
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_over_tls_with_tokens() {
    let Some(python) = tokio::task::spawn_blocking(python).await.unwrap() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path, _) = certificate(dir.path());
    let (store, _data) = engine();
    let served = serve(
        store,
        factum_server::Config {
            tls: Some(factum_server::tls::load(&cert_path, &key_path).unwrap()),
            auth: Some(Arc::new(Auth::from_toml(CLIENT_TOKENS).unwrap())),
            ..factum_server::Config::default()
        },
    )
    .await;
    let args = [
        "secure".into(),
        served.port.to_string(),
        cert_path.display().to_string(),
    ];
    script(&python, PY, &args, &[]).await;
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_client_appends_reads_and_subscribes() {
    let Some(modules) = tokio::task::spawn_blocking(node_modules).await.unwrap() else {
        return;
    };
    let (store, _dir) = engine();
    let served = serve(store, factum_server::Config::default()).await;
    let args = [served.port.to_string()];
    script(
        Path::new("node"),
        "node_client.cjs",
        &args,
        &[("NODE_PATH", &modules)],
    )
    .await;
    served.stop().await;
}
