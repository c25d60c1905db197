//! Personal data in events: sealed with its subject's key before it is stored, read back while
//! the key exists, and read as forgotten — with the rest of each event intact — once the
//! subject is forgotten; on the in-memory store, the embedded engine and PostgreSQL.
#![allow(clippy::unwrap_used)]

mod backends;

use std::path::Path;

use factum_core::{Direction, StoreError};
use factum_toolkit::{
    CommandContext, Decider, Personal, Repository, RepositoryError, forget_subject, open_personal,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum CustomerEvent {
    Registered {
        customer: String,
        email: Personal<String>,
        name: Personal<String>,
    },
    Charged {
        cents: u64,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Customer {
    email: Option<Personal<String>>,
    name: Option<Personal<String>>,
    charged: u64,
}

enum Command {
    Register {
        customer: String,
        email: String,
        name: String,
    },
    Charge(u64),
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

struct Customers;

impl Decider for Customers {
    type State = Customer;
    type Command = Command;
    type Event = CustomerEvent;
    type Error = Never;
    const CATEGORY: &'static str = "customer";

    fn initial_state(&self) -> Customer {
        Customer::default()
    }

    fn decide(&self, _: &Customer, command: &Command) -> Result<Vec<CustomerEvent>, Never> {
        Ok(vec![match command {
            Command::Register {
                customer,
                email,
                name,
            } => CustomerEvent::Registered {
                customer: customer.clone(),
                email: Personal::new(customer, email.clone()),
                name: Personal::new(customer, name.clone()),
            },
            Command::Charge(cents) => CustomerEvent::Charged { cents: *cents },
        }])
    }

    fn evolve(&self, mut state: Customer, event: &CustomerEvent) -> Customer {
        match event {
            CustomerEvent::Registered { email, name, .. } => {
                state.email = Some(email.clone());
                state.name = Some(name.clone());
            }
            CustomerEvent::Charged { cents } => state.charged += cents,
        }
        state
    }
}

/// Whether any file under `dir` holds `needle`.
fn found_in_files(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found_in_files(&path, needle)
        } else {
            std::fs::read(&path)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_subjects_personal_data_reads_as_forgotten_and_its_plaintext_is_nowhere() {
    for (backend, store, dir) in backends::all("personal").await {
        // Snapshots after every event: the state's personal data is sealed there too.
        let repository = Repository::new(store.clone(), Customers).with_snapshots(1);
        let context = CommandContext::new();
        for (id, email, name) in [
            ("cus-1", "ann@example.com", "Ann Andersen"),
            ("cus-2", "bob@example.com", "Bob Brown"),
        ] {
            let register = Command::Register {
                customer: id.into(),
                email: email.into(),
                name: name.into(),
            };
            repository.execute(id, register, &context).await.unwrap();
            repository
                .execute(id, Command::Charge(250), &context)
                .await
                .unwrap();
        }
        let ann = repository.load("cus-1").await.unwrap().state;
        assert_eq!(
            ann.email
                .as_ref()
                .and_then(Personal::value)
                .map(String::as_str),
            Some("ann@example.com"),
            "{backend}"
        );

        // What the store holds is sealed: `$all` (what exports and relays send), and the files.
        let all = store.read_all(0, Direction::Forwards, 1000).await.unwrap();
        let plain = |needle: &str| {
            all.iter()
                .any(|e| String::from_utf8_lossy(&e.data).contains(needle))
        };
        assert!(
            !plain("ann@example.com") && !plain("Ann Andersen"),
            "{backend}"
        );
        assert!(
            plain("cus-1") && plain("\"cents\":250"),
            "{backend}: ids and amounts stay"
        );
        if let Some(dir) = &dir {
            assert!(!found_in_files(dir.path(), b"ann@example.com"), "{backend}");
        }
        // A reader without a repository opens it with the store's keys.
        let registered = all
            .iter()
            .find(|e| e.event_type == "Registered" && e.stream.as_str() == "customer-cus-1")
            .unwrap();
        let opened = open_personal(store.as_ref(), registered)
            .await
            .unwrap()
            .unwrap();
        assert!(opened.to_string().contains("ann@example.com"), "{backend}");
        if backend == "postgres" {
            assert_eq!(postgres_rows_holding("ann@example.com").await, 0);
        }

        // Forgotten: its personal fields read as forgotten, everything else as it was.
        forget_subject(store.as_ref(), "cus-1").await.unwrap();
        let ann = repository.load("cus-1").await.unwrap().state;
        assert!(ann.email.as_ref().unwrap().is_forgotten(), "{backend}");
        assert!(ann.name.as_ref().unwrap().is_forgotten(), "{backend}");
        assert_eq!(ann.email.as_ref().unwrap().subject(), "cus-1");
        assert_eq!(ann.charged, 250, "{backend}");
        let bob = repository.load("cus-2").await.unwrap().state;
        assert_eq!(
            bob.email
                .as_ref()
                .and_then(Personal::value)
                .map(String::as_str),
            Some("bob@example.com"),
            "{backend}: other subjects unchanged"
        );
        // Commands go on on a forgotten customer; its replay from the events says the same.
        repository
            .execute("cus-1", Command::Charge(100), &CommandContext::new())
            .await
            .unwrap();
        let replayed = Repository::new(store.clone(), Customers)
            .load("cus-1")
            .await
            .unwrap()
            .state;
        assert!(replayed.email.unwrap().is_forgotten());
        assert_eq!(replayed.charged, 350, "{backend}");
        let opened = open_personal(store.as_ref(), registered)
            .await
            .unwrap()
            .unwrap();
        assert!(!opened.to_string().contains("@example.com"), "{backend}");
        assert!(
            opened.to_string().contains("\"forgotten\":true"),
            "{backend}"
        );
        if backend == "postgres" {
            assert_eq!(postgres_rows_holding("ann@example.com").await, 0);
        }

        // Forgetting an unknown subject (or twice) says so and changes nothing.
        assert!(matches!(
            forget_subject(store.as_ref(), "cus-1").await,
            Err(StoreError::UnknownSubject(_))
        ));
        assert!(matches!(
            forget_subject(store.as_ref(), "nobody").await,
            Err(StoreError::UnknownSubject(_))
        ));
        assert!(matches!(
            forget_subject(store.as_ref(), "").await,
            Err(StoreError::InvalidInput(_))
        ));
        let bob = repository.load("cus-2").await.unwrap().state;
        assert!(!bob.email.unwrap().is_forgotten());
    }
}

/// Rows of the PostgreSQL store's tables (events, streams, keys) whose text holds `needle`.
async fn postgres_rows_holding(needle: &str) -> i64 {
    let (client, connection) = factum_pgconnect::PgConnect::parse(&backends::url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    tokio::spawn(connection);
    let schema = format!("personal_{}", std::process::id());
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM {schema}.events WHERE position(convert_to($1, 'UTF8') in data) > 0 OR position(convert_to($1, 'UTF8') in metadata) > 0)
                      + (SELECT count(*) FROM {schema}.subject_keys WHERE position(convert_to($1, 'UTF8') in key) > 0)"
            ),
            &[&needle],
        )
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test]
async fn the_codec_alone_refuses_personal_data_it_cannot_seal() {
    let codec = factum_toolkit::EventCodec::new(&Customers);
    let event = CustomerEvent::Registered {
        customer: "cus-9".into(),
        email: Personal::new("cus-9", "eve@example.com".into()),
        name: Personal::new("cus-9", "Eve".into()),
    };
    assert!(matches!(
        codec.encode(&Customers, &event, &CommandContext::new()),
        Err(factum_toolkit::CodecError::Personal(_))
    ));
    let _: Option<RepositoryError<Never>> = None;
}
