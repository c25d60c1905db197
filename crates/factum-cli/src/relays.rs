//! Relays from a relays file, run beside `factum serve` or alone by `factum relay`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use factum::{EventStore, RelayError, RelaysConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Relays running in tasks until [`Running::stop`].
pub struct Running {
    stop: watch::Sender<bool>,
    tasks: Vec<(String, JoinHandle<Result<(), RelayError>>)>,
}

/// Reads the relays file and starts each relay over `store`, telling on stderr where each
/// publishes and from which checkpoint.
pub async fn start(path: &Path, store: Arc<dyn EventStore>, prefix: &str) -> Result<Running> {
    let config = RelaysConfig::from_file(path).map_err(|e| crate::bad(e.to_string()))?;
    let (stop, stopped) = watch::channel(false);
    let mut built = Vec::new();
    for relay in &config.relay {
        let (relay_task, publisher) = relay
            .build(store.clone())
            .map_err(|e| crate::bad(e.to_string()))?;
        built.push((relay, relay_task, publisher));
    }
    let mut tasks = Vec::new();
    for (config, relay, mut publisher) in built {
        let checkpoint = store.read_checkpoint(relay.name()).await?;
        let target = match (&config.nats, &config.rabbitmq, &config.kafka) {
            (Some(nats), _, _) => format!("NATS {}", nats.url),
            (_, Some(rabbitmq), _) => {
                format!("RabbitMQ {} exchange {}", rabbitmq.url, rabbitmq.exchange)
            }
            (_, _, Some(kafka)) => match (&kafka.topic, &kafka.topic_prefix) {
                (Some(topic), _) => format!("Kafka {} topic {topic}", kafka.brokers),
                (_, prefix) => format!(
                    "Kafka {} topics {}.{{category}}",
                    kafka.brokers,
                    prefix.as_deref().unwrap_or_default()
                ),
            },
            _ => String::new(),
        };
        eprintln!(
            "{prefix}: relay {} → {target}, {}",
            relay.name(),
            match checkpoint {
                Some(c) => format!("resuming after position {c}"),
                None => "from the start of the log".to_owned(),
            }
        );
        // Say so when another runner holds the relay's name (another `factum relay` or
        // `factum serve --relays` on this store), and when this one takes over.
        let mut status = relay.status();
        let (label, watched) = (prefix.to_owned(), relay.name().to_owned());
        tokio::spawn(async move {
            let mut waiting = false;
            while status.changed().await.is_ok() {
                let standby = status.borrow_and_update().standby;
                if standby && !waiting {
                    eprintln!(
                        "{label}: relay {watched} waits: another runner holds its name \
                         (another `factum relay` or `factum serve --relays` on this store)"
                    );
                } else if !standby && waiting {
                    eprintln!("{label}: relay {watched} took over");
                }
                waiting = standby;
            }
        });
        let mut stopped = stopped.clone();
        let name = relay.name().to_owned();
        let task = tokio::spawn(async move {
            let result = relay
                .run(publisher.as_mut(), async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await;
            if let Err(e) = &result {
                tracing::error!(relay = relay.name(), error = %e, "relay stopped");
            }
            result
        });
        tasks.push((name, task));
    }
    Ok(Running { stop, tasks })
}

impl Running {
    /// How many relays run.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Waits until every relay has stopped by itself (which only a store failure makes them do).
    pub async fn until_failed(&mut self) -> Result<()> {
        for (name, task) in self.tasks.drain(..) {
            task.await?
                .map_err(|e| anyhow::anyhow!("relay {name}: {e}"))?;
        }
        Ok(())
    }

    /// Stops every relay (each saves nothing it has not published) and waits for them.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        let mut failed = None;
        for (name, task) in self.tasks {
            if let Err(e) = task.await? {
                failed = Some(anyhow::anyhow!("relay {name}: {e}"));
            }
        }
        failed.map_or(Ok(()), Err)
    }
}
