//! Invoice numbers with no gaps, a case of the dynamic consistency boundaries specification
//! (dcb.events): each invoice takes the number after the last one issued, even when many are
//! issued at once. The decision reads the last `InvoiceIssued` event (a query by type), and
//! appends the next one only if no invoice was issued since that read; a loser of the race
//! reads again and takes the next number.
//!
//! `cargo run --example invoice_numbers` runs it on the embedded store (`FACTUM_DATA_DIR`,
//! default `./factum-data`); `cargo test --example invoice_numbers` runs its tests, among them
//! 64 invoices issued at once.

use factum::{CommandContext, Decision, Decisions, EventStore, Query};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum InvoiceEvent {
    InvoiceIssued {
        number: u64,
        customer: String,
        amount_cents: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
enum Refused {
    #[error("an invoice needs an amount")]
    NoAmount,
}

/// Issue an invoice to a customer.
#[derive(Clone, Debug)]
struct Issue {
    customer: String,
    amount_cents: u64,
}

struct IssueInvoice;

impl Decision for IssueInvoice {
    /// The last number issued.
    type State = u64;
    type Command = Issue;
    type Event = InvoiceEvent;
    type Error = Refused;

    fn query(&self, _: &Issue) -> Query {
        Query::item(["InvoiceIssued"], Vec::<String>::new())
    }
    fn initial_state(&self, _: &Issue) -> u64 {
        0
    }
    fn evolve(&self, last: u64, event: &InvoiceEvent) -> u64 {
        match event {
            InvoiceEvent::InvoiceIssued { number, .. } => last.max(*number),
        }
    }
    fn decide(&self, last: &u64, command: &Issue) -> Result<Vec<InvoiceEvent>, Refused> {
        if command.amount_cents == 0 {
            return Err(Refused::NoAmount);
        }
        Ok(vec![InvoiceEvent::InvoiceIssued {
            number: last + 1,
            customer: command.customer.clone(),
            amount_cents: command.amount_cents,
        }])
    }
    fn tags(&self, event: &InvoiceEvent) -> Vec<String> {
        match event {
            InvoiceEvent::InvoiceIssued {
                number, customer, ..
            } => vec![format!("invoice:{number}"), format!("customer:{customer}")],
        }
    }
}

async fn run(store: impl EventStore + Clone + 'static) -> anyhow::Result<()> {
    let invoices = Decisions::new(store, IssueInvoice);
    let context = CommandContext::new();
    for (customer, amount_cents) in [("acme", 12_000), ("globex", 4_550), ("acme", 990)] {
        let done = invoices
            .execute(
                &Issue {
                    customer: customer.into(),
                    amount_cents,
                },
                &context,
            )
            .await?;
        for event in done.events {
            println!("{event:?}");
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

    use std::sync::Arc;

    use factum::testing::given_decision;
    use factum::{Direction, MemoryStore};

    use super::*;

    fn issued(number: u64) -> InvoiceEvent {
        InvoiceEvent::InvoiceIssued {
            number,
            customer: "c".into(),
            amount_cents: 100,
        }
    }

    fn issue() -> Issue {
        Issue {
            customer: "c".into(),
            amount_cents: 100,
        }
    }

    #[test]
    fn the_next_number_follows_the_last() {
        given_decision(IssueInvoice, [])
            .when(issue())
            .then([issued(1)]);
        let tags = given_decision(IssueInvoice, [issued(1), issued(2)])
            .when(issue())
            .then([issued(3)]);
        assert_eq!(
            tags,
            [vec!["invoice:3".to_owned(), "customer:c".to_owned()]]
        );
        given_decision(IssueInvoice, [issued(1)])
            .when(Issue {
                customer: "c".into(),
                amount_cents: 0,
            })
            .then_rejected(Refused::NoAmount);
    }

    /// 64 invoices issued at once: numbered 1 to 64, none twice, none missing.
    async fn race(store: Arc<dyn EventStore>) {
        let invoices = Arc::new(Decisions::new(store.clone(), IssueInvoice).with_attempts_max(500));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let invoices = invoices.clone();
            tasks.push(tokio::spawn(async move {
                invoices
                    .execute(&issue(), &CommandContext::new())
                    .await
                    .unwrap()
                    .attempts
            }));
        }
        let mut attempts = 0;
        for task in tasks {
            attempts += task.await.unwrap();
        }
        assert!(attempts >= 64);
        let read = store
            .read_query(
                &Query::item(["InvoiceIssued"], Vec::<String>::new()),
                None,
                Direction::Forwards,
                1000,
            )
            .await
            .unwrap();
        let numbers: Vec<u64> = read
            .events
            .iter()
            .map(|e| {
                serde_json::from_slice::<serde_json::Value>(&e.data).unwrap()["number"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(numbers, (1..=64).collect::<Vec<_>>());
        assert_eq!(store.head(), 64, "nothing but the invoices was written");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn invoices_issued_at_once_have_no_gaps_in_memory() {
        race(Arc::new(MemoryStore::new())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn invoices_issued_at_once_have_no_gaps_on_the_engine() {
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
