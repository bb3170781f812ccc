//! The unit tests' backend: an in-memory database of one state row and one
//! reader/writer lock with PostgreSQL's queueing rules, and a MySQL-flavoured
//! dialect (`?` placeholders kept, `GREATEST`, a bounded `VARCHAR` key, no
//! `RETURNING`). It implements [`Dialect`] and [`Locks`], the two traits a
//! third backend writes beyond its diesel connection, in this one file; the
//! escalation, the plan and the store's DDL run on it unchanged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::result::{DatabaseErrorKind, Error, QueryResult};
use parking_lot::{Condvar, Mutex};

use super::{Dialect, Locks};

/// The fake backend.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Fake;

impl super::sealed::Sealed for Fake {}

impl Dialect for Fake {
    fn key_text() -> &'static str {
        "VARCHAR(191)"
    }

    fn serial_primary_key() -> &'static str {
        "BIGINT AUTO_INCREMENT PRIMARY KEY"
    }

    fn greatest_sql() -> &'static str {
        "GREATEST"
    }

    fn now_ms_sql() -> &'static str {
        "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)"
    }

    fn table_exists_sql() -> &'static str {
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_name = ?"
    }

    fn user_tables_sql() -> &'static str {
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = DATABASE()"
    }

    fn column_names_sql() -> &'static str {
        "SELECT column_name AS name FROM information_schema.columns WHERE table_name = ?"
    }

    fn metadata_extras(_prefix: &str, _state_table: &str) -> Vec<String> {
        Vec::new()
    }

    fn lock_timeout_sql(timeout: Duration) -> Option<String> {
        Some(format!(
            "SET SESSION innodb_lock_wait_timeout = {}",
            timeout.as_secs().max(1)
        ))
    }
}

/// The lock's state: PostgreSQL's rules for one advisory key — shared
/// holders coexist, an exclusive holder excludes everyone, and a queued
/// exclusive request makes new shared requests queue behind it.
#[derive(Debug, Default)]
struct LockState {
    shared: usize,
    exclusive: bool,
    queued_exclusive: usize,
}

/// The fake database: the state row's version and the schema lock.
#[derive(Debug, Default)]
pub(crate) struct FakeDb {
    version: Mutex<i64>,
    lock: Mutex<LockState>,
    changed: Condvar,
}

impl FakeDb {
    pub(crate) fn new(version: i64) -> Arc<FakeDb> {
        Arc::new(FakeDb {
            version: Mutex::new(version),
            ..FakeDb::default()
        })
    }

    /// A connection with an open transaction.
    pub(crate) fn connect(self: &Arc<Self>) -> FakeConn {
        FakeConn {
            db: Arc::clone(self),
            held: Held::Nothing,
        }
    }

    /// How many shared holders and whether an exclusive request queues.
    pub(crate) fn readers_and_queued(&self) -> (usize, usize) {
        let s = self.lock.lock();
        (s.shared, s.queued_exclusive)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Nothing,
    Shared,
    Exclusive,
}

/// A connection inside a transaction; [`commit`](FakeConn::commit) (or drop)
/// ends it and releases its transaction-scoped locks.
#[derive(Debug)]
pub(crate) struct FakeConn {
    db: Arc<FakeDb>,
    held: Held,
}

impl FakeConn {
    pub(crate) fn commit(&mut self) {
        let mut s = self.db.lock.lock();
        match self.held {
            Held::Shared => s.shared = s.shared.saturating_sub(1),
            Held::Exclusive => s.exclusive = false,
            Held::Nothing => {}
        }
        self.held = Held::Nothing;
        self.db.changed.notify_all();
    }

    /// The state row's version, as a switch under the exclusive lock sets it.
    pub(crate) fn set_version(&mut self, version: i64) {
        *self.db.version.lock() = version;
    }
}

impl Drop for FakeConn {
    fn drop(&mut self) {
        self.commit();
    }
}

/// The error PostgreSQL reports when `lock_timeout` cancels a wait.
fn lock_timeout() -> Error {
    Error::DatabaseError(
        DatabaseErrorKind::Unknown,
        Box::new("canceling statement due to lock timeout".to_owned()),
    )
}

impl Locks<FakeConn> for Fake {
    fn enter_shared(
        conn: &mut FakeConn,
        _prefix: &str,
        _state_table: &str,
        _key: i64,
    ) -> QueryResult<i64> {
        let db = Arc::clone(&conn.db);
        let mut s = db.lock.lock();
        while s.exclusive || s.queued_exclusive > 0 {
            db.changed.wait(&mut s);
        }
        s.shared += 1;
        conn.held = Held::Shared;
        drop(s);
        let version = *db.version.lock();
        Ok(version)
    }

    fn try_enter_exclusive(conn: &mut FakeConn, _key: i64) -> QueryResult<bool> {
        let mut s = conn.db.lock.lock();
        if s.shared == 0 && !s.exclusive {
            s.exclusive = true;
            conn.held = Held::Exclusive;
            return Ok(true);
        }
        Ok(false)
    }

    fn enter_exclusive_within(
        conn: &mut FakeConn,
        _key: i64,
        timeout: Duration,
    ) -> QueryResult<()> {
        let db = Arc::clone(&conn.db);
        let deadline = Instant::now() + timeout;
        let mut s = db.lock.lock();
        s.queued_exclusive += 1;
        while s.shared > 0 || s.exclusive {
            if db.changed.wait_until(&mut s, deadline).timed_out() {
                s.queued_exclusive -= 1;
                db.changed.notify_all();
                return Err(lock_timeout());
            }
        }
        s.queued_exclusive -= 1;
        s.exclusive = true;
        conn.held = Held::Exclusive;
        Ok(())
    }

    fn serialize_initialization(conn: &mut FakeConn, key: i64) -> QueryResult<()> {
        Self::enter_exclusive_within(conn, key, Duration::from_secs(60))
    }

    fn set_busy_wait(_conn: &mut FakeConn, _wait: Option<Duration>) -> QueryResult<()> {
        Ok(())
    }

    fn is_transient(error: &Error) -> bool {
        super::locks::is_lock_conflict(error, &["lock timeout"])
    }
}

mod tests;
