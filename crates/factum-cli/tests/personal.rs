//! `factum forget SUBJECT`: on the data directory, and with `--server` on a running
//! `factum serve`; personal data written by the toolkit is sealed in the log and in exports,
//! and a forgotten subject's data reads as forgotten.
#![allow(clippy::unwrap_used)]
mod common;
use common::factum_in as factum;

use std::path::Path;
use std::process::Command;

use factum::{CommandContext, Decider, Engine, EngineOptions, Personal, Repository};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Event {
    Registered {
        email: Personal<String>,
        plan: String,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

struct Customers;

impl Decider for Customers {
    type State = Option<Personal<String>>;
    type Command = (String, String);
    type Event = Event;
    type Error = Never;
    const CATEGORY: &'static str = "customer";
    fn initial_state(&self) -> Self::State {
        None
    }
    fn decide(&self, _: &Self::State, (id, email): &(String, String)) -> Result<Vec<Event>, Never> {
        Ok(vec![Event::Registered {
            email: Personal::new(id, email.clone()),
            plan: "gold".into(),
        }])
    }
    fn evolve(&self, _: Self::State, event: &Event) -> Self::State {
        let Event::Registered { email, .. } = event;
        Some(email.clone())
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn holds(dir: &Path, needle: &str) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            holds(&path, needle)
        } else {
            text(&std::fs::read(&path).unwrap()).contains(needle)
        }
    })
}

async fn email_of(data: &Path, id: &str) -> Personal<String> {
    let store = Engine::open(data, EngineOptions::default()).unwrap();
    let repository = Repository::new(store.clone(), Customers);
    let state = repository.load(id).await.unwrap().state.unwrap();
    store.close().unwrap();
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_makes_a_subjects_personal_data_read_as_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let store = Engine::open(&data, EngineOptions::default()).unwrap();
        let repository = Repository::new(store.clone(), Customers);
        for (id, email) in [("cus-1", "ann@example.com"), ("cus-2", "bob@example.com")] {
            repository
                .execute(id, (id.into(), email.into()), &CommandContext::new())
                .await
                .unwrap();
        }
        store.close().unwrap();
    }
    let export = factum(&data, &["export"], "");
    assert!(export.status.success());
    let export = text(&export.stdout);
    assert!(
        !export.contains("ann@example.com") && export.contains("gold"),
        "{export}"
    );
    assert!(!holds(&data, "ann@example.com"));

    // Offline, on the data directory.
    let forgotten = factum(&data, &["forget", "cus-1"], "");
    assert!(forgotten.status.success(), "{}", text(&forgotten.stderr));
    assert_eq!(text(&forgotten.stdout).trim(), r#"{"forgotten":"cus-1"}"#);
    assert!(email_of(&data, "cus-1").await.is_forgotten());
    assert_eq!(
        email_of(&data, "cus-2").await.value().unwrap(),
        "bob@example.com"
    );
    // Unknown (or forgotten before): exit 4, nothing changed; not a subject id: exit 2.
    assert_eq!(
        factum(&data, &["forget", "cus-1"], "").status.code(),
        Some(4)
    );
    assert_eq!(
        factum(&data, &["forget", "nobody"], "").status.code(),
        Some(4)
    );
    assert_eq!(factum(&data, &["forget", ""], "").status.code(), Some(2));

    // On a running server.
    let (mut server, mut stderr, _, port) =
        common::spawn_serve(&["--listen", "127.0.0.1:0"], &data);
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let url = format!("http://127.0.0.1:{port}");
    let remote = factum(&data, &["--server", &url, "forget", "cus-2"], "");
    assert!(remote.status.success(), "{}", text(&remote.stderr));
    assert_eq!(
        factum(&data, &["--server", &url, "forget", "cus-2"], "")
            .status
            .code(),
        Some(4)
    );
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(server.wait().unwrap().success());
    assert!(email_of(&data, "cus-2").await.is_forgotten());
    assert!(!holds(&data, "bob@example.com"));
}
