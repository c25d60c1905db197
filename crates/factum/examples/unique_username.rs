//! Unique user names, a case of the dynamic consistency boundaries specification
//! (dcb.events): a name is held by one account at a time; it can be released and claimed
//! again. No stream per name is needed: the events of a name are tagged with it, and a claim
//! is appended only if no event of that name came since the claim's read.
//!
//! `cargo run --example unique_username` runs it on the embedded store (`FACTUM_DATA_DIR`,
//! default `./factum-data`); `cargo test --example unique_username` runs its tests, among
//! them 64 accounts racing for eight names.

use factum::{CommandContext, Decision, DecisionError, Decisions, EventStore, Query};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum UsernameEvent {
    UsernameClaimed { name: String, account: String },
    UsernameReleased { name: String, account: String },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
enum Refused {
    #[error("the user name {name} is taken by {holder}")]
    Taken { name: String, holder: String },
    #[error("{account} does not hold the user name {name}")]
    NotHolder { name: String, account: String },
}

/// Claim `name` for `account`, or release it.
#[derive(Clone, Debug)]
enum Command {
    Claim { name: String, account: String },
    Release { name: String, account: String },
}

impl Command {
    fn name(&self) -> &str {
        match self {
            Command::Claim { name, .. } | Command::Release { name, .. } => name,
        }
    }
}

fn tag(name: &str) -> String {
    format!("username:{name}")
}

/// The names: who holds each, from its events.
struct Usernames;

impl Decision for Usernames {
    /// The account holding the command's name.
    type State = Option<String>;
    type Command = Command;
    type Event = UsernameEvent;
    type Error = Refused;

    fn query(&self, command: &Command) -> Query {
        Query::item(
            ["UsernameClaimed", "UsernameReleased"],
            [tag(command.name())],
        )
    }
    fn initial_state(&self, _: &Command) -> Option<String> {
        None
    }
    fn evolve(&self, _: Option<String>, event: &UsernameEvent) -> Option<String> {
        match event {
            UsernameEvent::UsernameClaimed { account, .. } => Some(account.clone()),
            UsernameEvent::UsernameReleased { .. } => None,
        }
    }
    fn decide(
        &self,
        holder: &Option<String>,
        command: &Command,
    ) -> Result<Vec<UsernameEvent>, Refused> {
        match (command, holder) {
            (Command::Claim { name, account }, None) => Ok(vec![UsernameEvent::UsernameClaimed {
                name: name.clone(),
                account: account.clone(),
            }]),
            // Claiming a name one already holds changes nothing.
            (Command::Claim { account, .. }, Some(holder)) if holder == account => Ok(vec![]),
            (Command::Claim { name, .. }, Some(holder)) => Err(Refused::Taken {
                name: name.clone(),
                holder: holder.clone(),
            }),
            (Command::Release { name, account }, Some(holder)) if holder == account => {
                Ok(vec![UsernameEvent::UsernameReleased {
                    name: name.clone(),
                    account: account.clone(),
                }])
            }
            (Command::Release { name, account }, _) => Err(Refused::NotHolder {
                name: name.clone(),
                account: account.clone(),
            }),
        }
    }
    fn tags(&self, event: &UsernameEvent) -> Vec<String> {
        match event {
            UsernameEvent::UsernameClaimed { name, .. }
            | UsernameEvent::UsernameReleased { name, .. } => vec![tag(name)],
        }
    }
}

async fn run(store: impl EventStore + Clone + 'static) -> anyhow::Result<()> {
    let names = Decisions::new(store, Usernames);
    let context = CommandContext::new();
    let claim = |account: &str| Command::Claim {
        name: "ada".into(),
        account: account.into(),
    };
    for command in [
        claim("account-1"),
        claim("account-2"),
        Command::Release {
            name: "ada".into(),
            account: "account-1".into(),
        },
        claim("account-2"),
    ] {
        match names.execute(&command, &context).await {
            Ok(done) => println!("{command:?}: done ({} event(s))", done.events.len()),
            Err(DecisionError::Rejected(e)) => println!("{command:?}: {e}"),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::var("FACTUM_DATA_DIR").unwrap_or_else(|_| "./factum-data".into());
    let store = factum::Engine::open(&dir, factum::EngineOptions::default())?;
    run(store.clone()).await?;
    store.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;
    use std::sync::Arc;

    use factum::testing::given_decision;
    use factum::{Direction, MemoryStore};

    use super::*;

    fn claimed(name: &str, account: &str) -> UsernameEvent {
        UsernameEvent::UsernameClaimed {
            name: name.into(),
            account: account.into(),
        }
    }

    fn released(name: &str, account: &str) -> UsernameEvent {
        UsernameEvent::UsernameReleased {
            name: name.into(),
            account: account.into(),
        }
    }

    fn claim(name: &str, account: &str) -> Command {
        Command::Claim {
            name: name.into(),
            account: account.into(),
        }
    }

    #[test]
    fn claim_release_and_claim_again() {
        given_decision(Usernames, [])
            .when(claim("ada", "a1"))
            .then([claimed("ada", "a1")]);
        given_decision(Usernames, [claimed("ada", "a1")])
            .when(claim("ada", "a2"))
            .then_rejected(Refused::Taken {
                name: "ada".into(),
                holder: "a1".into(),
            });
        given_decision(Usernames, [claimed("ada", "a1")])
            .when(claim("ada", "a1"))
            .then([]);
        given_decision(Usernames, [claimed("ada", "a1")])
            .when(Command::Release {
                name: "ada".into(),
                account: "a1".into(),
            })
            .then([released("ada", "a1")]);
        given_decision(Usernames, [claimed("ada", "a1"), released("ada", "a1")])
            .when(claim("ada", "a2"))
            .then([claimed("ada", "a2")]);
        given_decision(Usernames, [claimed("ada", "a1")])
            .when(Command::Release {
                name: "ada".into(),
                account: "a2".into(),
            })
            .then_rejected_with(|e| matches!(e, Refused::NotHolder { .. }));
    }

    /// 64 accounts race for eight names; then each holder releases its name and the others
    /// race again: at every moment one holder per name.
    async fn race(store: Arc<dyn EventStore>) {
        let names = Arc::new(Decisions::new(store.clone(), Usernames).with_attempts_max(200));
        for round in 0..2 {
            let mut tasks = Vec::new();
            for a in 0..64 {
                let names = names.clone();
                tasks.push(tokio::spawn(async move {
                    let command = claim(&format!("name-{}", a % 8), &format!("a{a}-{round}"));
                    match names.execute(&command, &CommandContext::new()).await {
                        Ok(done) => !done.events.is_empty(),
                        Err(DecisionError::Rejected(Refused::Taken { .. })) => false,
                        Err(e) => panic!("{e}"),
                    }
                }));
            }
            let mut won = 0;
            for task in tasks {
                won += usize::from(task.await.unwrap());
            }
            assert_eq!(won, 8, "round {round}: one claim per name wins");
            // The holders let go.
            let all = store
                .read_query(&Query::all(), None, Direction::Forwards, 10_000)
                .await
                .unwrap();
            let mut holders: HashMap<String, Option<String>> = HashMap::new();
            for e in &all.events {
                let data: serde_json::Value = serde_json::from_slice(&e.data).unwrap();
                let (name, account) = (
                    data["name"].as_str().unwrap().to_owned(),
                    data["account"].as_str().unwrap().to_owned(),
                );
                let holder = holders.entry(name.clone()).or_default();
                match e.event_type.as_str() {
                    "UsernameClaimed" => {
                        assert!(holder.is_none(), "{name} claimed while held");
                        *holder = Some(account);
                    }
                    _ => *holder = None,
                }
            }
            for (name, holder) in holders {
                let account = holder.unwrap();
                names
                    .execute(&Command::Release { name, account }, &CommandContext::new())
                    .await
                    .unwrap();
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn accounts_racing_for_names_in_memory() {
        race(Arc::new(MemoryStore::new())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn accounts_racing_for_names_on_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let store = factum::Engine::open(dir.path(), factum::EngineOptions::default()).unwrap();
        race(Arc::new(store.clone())).await;
        store.close().unwrap();
    }

    #[tokio::test]
    async fn the_walk_through_runs() {
        run(MemoryStore::new()).await.unwrap();
    }
}
