//! Connections to PostgreSQL: each keeps its prepared statements, and a small pool hands them
//! out round-robin (a connection runs the queries of many tasks at once, pipelined).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use factum_core::StoreError;
use tokio::sync::oneshot;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use factum_pgconnect::PgConnect;

/// A database error as the store reports it: the database failed or could not be reached.
pub(crate) fn unavailable(error: tokio_postgres::Error) -> StoreError {
    let message = match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => with_causes(&error),
    };
    StoreError::Unavailable(message)
}

/// An error and its causes, `outer: inner: …` (a TLS failure says why the handshake failed).
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let text = inner.to_string();
        if !message.ends_with(&text) {
            message = format!("{message}: {text}");
        }
        cause = inner.source();
    }
    message
}

/// Where to connect (and with what TLS), with the store's schema first on the search path.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub connect: PgConnect,
}

impl Target {
    pub fn new(connection: &str, schema: &str) -> Result<Self, StoreError> {
        let mut connect =
            PgConnect::parse(connection).map_err(|e| StoreError::invalid(e.to_string()))?;
        let config = connect.config_mut();
        config.options(format!("-c search_path={schema}"));
        if config.get_application_name().is_none() {
            config.application_name("factum");
        }
        config.connect_timeout(std::time::Duration::from_secs(10));
        Ok(Target { connect })
    }

    /// The same target for the writer's connection, which plans every statement for its
    /// parameters. Its lookups by a list of names (`name = ANY($1)`) would otherwise keep the
    /// plan PostgreSQL chose when the tables were small, a sequential scan, until the next
    /// `ANALYZE`, which never comes where autovacuum is off; with 20 000 streams that scan made
    /// each transaction several milliseconds slower.
    pub fn for_writes(&self) -> Target {
        let mut target = self.clone();
        let config = target.connect.config_mut();
        let options = config.get_options().unwrap_or_default();
        let options = format!("{options} -c plan_cache_mode=force_custom_plan");
        config.options(options);
        target
    }

    /// A new connection; the task that drives it logs when it closes.
    pub async fn connect(&self) -> Result<Client, StoreError> {
        Ok(self.connect_watched().await?.0)
    }

    /// A new connection, and a receiver that completes when it closes.
    pub async fn connect_watched(&self) -> Result<(Client, oneshot::Receiver<()>), StoreError> {
        let (client, connection) = self.connect.connect().await.map_err(unavailable)?;
        let (closed, on_close) = oneshot::channel();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "a PostgreSQL connection closed");
            }
            let _ = closed.send(());
        });
        Ok((client, on_close))
    }
}

/// A connection and its prepared statements.
pub(crate) struct Conn {
    pub client: Client,
    /// The statements prepared on this connection, by their text: the store's own, and those
    /// built at run time (DCB queries: one shape per number of items, tags and types), at most
    /// [`STATEMENTS_MAX`].
    statements: parking_lot::Mutex<HashMap<String, Statement>>,
}

/// Most statements a connection keeps prepared; past it, they are prepared again as used.
const STATEMENTS_MAX: usize = 256;

impl Conn {
    pub async fn open(target: &Target) -> Result<Self, StoreError> {
        Ok(Conn {
            client: target.connect().await?,
            statements: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    async fn statement(&self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(statement) = self.statements.lock().get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await.map_err(unavailable)?;
        let mut statements = self.statements.lock();
        if statements.len() >= STATEMENTS_MAX {
            statements.clear();
        }
        statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// The statements for `sqls`, prepared on this connection if they are not yet.
    pub async fn prepared<const N: usize>(
        &self,
        sqls: [&'static str; N],
    ) -> Result<[Statement; N], StoreError> {
        let mut statements = Vec::with_capacity(N);
        for sql in sqls {
            statements.push(self.statement(sql).await?);
        }
        statements
            .try_into()
            .map_err(|_| StoreError::invalid("a statement went missing"))
    }

    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let statement = self.statement(sql).await?;
        self.client
            .query(&statement, params)
            .await
            .map_err(unavailable)
    }

    pub async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        let statement = self.statement(sql).await?;
        self.client
            .query_opt(&statement, params)
            .await
            .map_err(unavailable)
    }
}

/// Reader connections, opened when first needed and again after they close.
pub(crate) struct Pool {
    target: Target,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    next: AtomicUsize,
}

impl Pool {
    pub fn new(target: Target, size: usize) -> Self {
        Pool {
            target,
            slots: (0..size.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub async fn get(&self) -> Result<Arc<Conn>, StoreError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[index].lock().await;
        if let Some(conn) = slot.as_ref()
            && !conn.client.is_closed()
        {
            return Ok(conn.clone());
        }
        let conn = Arc::new(Conn::open(&self.target).await?);
        *slot = Some(conn.clone());
        Ok(conn)
    }
}
