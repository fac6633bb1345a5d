//! What every PostgreSQL pool of a node shares (ADR 0016): the control plane's store and the
//! skills' key-value store (agent-runtime's `KvStore::connect_postgres`) open theirs here, so
//! both hand out connections the same way and name the server the same way.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Connections per pool. A node opens two pools (control plane, key-value store) and one
/// listener: 17 of the server's `max_connections`. Writes to 16 key-value namespaces at once ran
/// 1.4x faster with 8 than with 4 and no faster with 16 (BENCHMARKS.md, issue 14).
pub const POOL_CONNECTIONS: u32 = 8;

/// The server of `options` for messages, without the password:
/// `postgres://user@host:port/database`.
pub fn location(options: &PgConnectOptions) -> String {
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    )
}

/// A pool of [`POOL_CONNECTIONS`] that waits at most 10 s for a connection and ends a
/// transaction left open on a connection before handing it out again.
///
/// A unit whose future was dropped while `BEGIN` was in flight (a request cancelled by its
/// client, a guest stopped at its deadline) can hand its connection back with the server-side
/// transaction still open; the next `BEGIN` would then run inside it. Checking costs one round
/// trip per acquire: outside a transaction a simple-protocol query is the first statement of its
/// own, and PostgreSQL gives it `now() = statement_timestamp()` (the extended protocol starts
/// the transaction at Parse, before the statement's timestamp); inside one (or an aborted one,
/// which refuses the SELECT) the connection is rolled back. Asking first spares every acquire
/// a "there is no transaction in progress" warning in the log.
pub fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(POOL_CONNECTIONS)
        .acquire_timeout(Duration::from_secs(10))
        .before_acquire(|connection, _| {
            Box::pin(async move {
                // A `&str` without arguments is sent as a simple query.
                let idle = sqlx::Executor::fetch_one(&mut *connection, "SELECT now() = statement_timestamp()")
                    .await
                    .and_then(|row| sqlx::Row::try_get::<bool, _>(&row, 0))
                    .unwrap_or(false);
                if !idle {
                    sqlx::query("ROLLBACK").execute(&mut *connection).await?;
                }
                Ok(true)
            })
        })
}
