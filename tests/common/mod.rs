//! Fixtures shared by the integration tests: the demo repository (accounts
//! whose email moves to account_emails in version 2) and catalog folders
//! written to temporary directories.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use diesel::prelude::*;
use tandem::{Catalog, Repository, Sqlite, Tandem};
use tempfile::TempDir;

#[cfg(feature = "postgres")]
pub mod pg;

pub mod v1 {
    diesel::table! { accounts (id) { id -> BigInt, name -> Text, email -> Text, } }
}
pub mod v2 {
    diesel::table! { accounts (id) { id -> BigInt, name -> Text, } }
    diesel::table! { account_emails (account_id) { account_id -> BigInt, email -> Text, } }
}
diesel::table! { tandem_state (id) { id -> BigInt, version -> BigInt, } }

/// The demo repository trait over a connection type `C`; `version()` says
/// which binding ran.
pub trait AccountsOn<C>: Send + Sync {
    fn version(&self) -> u32;
    fn create(&self, conn: &mut C, name: &str, email: &str) -> tandem::Result<i64>;
    fn email(&self, conn: &mut C, id: i64) -> tandem::Result<Option<String>>;
    fn set_email(&self, conn: &mut C, id: i64, email: &str) -> tandem::Result<()>;
    /// The version the state row says, read on this connection.
    fn db_version(&self, conn: &mut C) -> i64;
}

/// The SQLite form, used by most tests.
pub type Accounts = dyn AccountsOn<SqliteConnection>;

pub struct AccountsV1;
pub struct AccountsV2;

/// One body for every backend: the diesel DSL used here is portable.
macro_rules! demo_bindings {
    ($conn:ty) => {
        impl AccountsOn<$conn> for AccountsV1 {
            fn version(&self) -> u32 {
                1
            }
            fn create(&self, conn: &mut $conn, name: &str, email: &str) -> tandem::Result<i64> {
                use v1::accounts::dsl;
                Ok(diesel::insert_into(dsl::accounts)
                    .values((dsl::name.eq(name), dsl::email.eq(email)))
                    .returning(dsl::id)
                    .get_result(conn)?)
            }
            fn email(&self, conn: &mut $conn, id: i64) -> tandem::Result<Option<String>> {
                use v1::accounts::dsl;
                Ok(dsl::accounts
                    .find(id)
                    .select(dsl::email)
                    .first(conn)
                    .optional()?)
            }
            fn set_email(&self, conn: &mut $conn, id: i64, email: &str) -> tandem::Result<()> {
                use v1::accounts::dsl;
                diesel::update(dsl::accounts.find(id))
                    .set(dsl::email.eq(email))
                    .execute(conn)?;
                Ok(())
            }
            fn db_version(&self, conn: &mut $conn) -> i64 {
                tandem_state::table
                    .select(tandem_state::version)
                    .first(conn)
                    .expect("state row")
            }
        }

        impl AccountsOn<$conn> for AccountsV2 {
            fn version(&self) -> u32 {
                2
            }
            fn create(&self, conn: &mut $conn, name: &str, email: &str) -> tandem::Result<i64> {
                use v2::{account_emails as e, accounts as a};
                Ok(conn.transaction(|conn| {
                    let id: i64 = diesel::insert_into(a::table)
                        .values(a::name.eq(name))
                        .returning(a::id)
                        .get_result(conn)?;
                    diesel::insert_into(e::table)
                        .values((e::account_id.eq(id), e::email.eq(email)))
                        .execute(conn)?;
                    QueryResult::Ok(id)
                })?)
            }
            fn email(&self, conn: &mut $conn, id: i64) -> tandem::Result<Option<String>> {
                use v2::account_emails::dsl;
                Ok(dsl::account_emails
                    .find(id)
                    .select(dsl::email)
                    .first(conn)
                    .optional()?)
            }
            fn set_email(&self, conn: &mut $conn, id: i64, email: &str) -> tandem::Result<()> {
                use v2::{account_emails as e, accounts as a};
                // Touch the parent row first: every writer then locks accounts
                // before account_emails (the reverse-sync trigger updates
                // accounts), so the contract's DDL can take both tables
                // without a lock-order cycle.
                diesel::update(a::table.find(id))
                    .set(a::id.eq(id))
                    .execute(conn)?;
                diesel::insert_into(e::table)
                    .values((e::account_id.eq(id), e::email.eq(email)))
                    .on_conflict(e::account_id)
                    .do_update()
                    .set(e::email.eq(email))
                    .execute(conn)?;
                Ok(())
            }
            fn db_version(&self, conn: &mut $conn) -> i64 {
                tandem_state::table
                    .select(tandem_state::version)
                    .first(conn)
                    .expect("state row")
            }
        }
    };
}

demo_bindings!(SqliteConnection);
#[cfg(feature = "postgres")]
demo_bindings!(diesel::PgConnection);

/// The demo repository on connection type `C`.
pub fn accounts_on<C: 'static>() -> Repository<dyn AccountsOn<C>>
where
    AccountsV1: AccountsOn<C>,
    AccountsV2: AccountsOn<C>,
{
    Repository::<dyn AccountsOn<C>>::builder("accounts")
        .binding(1, Arc::new(AccountsV1))
        .binding(2, Arc::new(AccountsV2))
        .build()
        .expect("contiguous bindings")
}

pub fn accounts() -> Repository<Accounts> {
    accounts_on::<SqliteConnection>()
}

/// Creates `n` accounts `seed` / `s{i}@x` (ids 1..=n on a fresh database)
/// in one unit of work.
pub fn seed<B: tandem::Backend>(db: &Tandem<B>, n: usize)
where
    AccountsV1: AccountsOn<B::Connection>,
    AccountsV2: AccountsOn<B::Connection>,
{
    let repo = accounts_on::<B::Connection>();
    db.unit_of_work(|s| -> tandem::Result<()> {
        let r = s.repo(&repo)?;
        for i in 0..n {
            r.create(s.conn(), "seed", &format!("s{i}@x"))?;
        }
        Ok(())
    })
    .expect("seed accounts");
}

/// The live version as the state row says, read on the call's own connection.
pub fn db_version(conn: &mut SqliteConnection) -> i64 {
    tandem_state::table
        .select(tandem_state::version)
        .first(conn)
        .expect("state row")
}

/// The demo database with its backfill, on `url`.
pub fn open_demo(url: &str) -> Tandem<Sqlite> {
    Tandem::<Sqlite>::builder(url, tandem::demo::catalog().expect("demo catalog"))
        .serves(1..=2)
        .backfill(2, "copy emails", tandem::demo::backfill_emails)
        .open()
        .expect("open demo database")
}

/// A temporary SQLite file URL, kept alive by the returned directory.
pub fn temp_db() -> (TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("test.db").to_string_lossy().into_owned();
    (dir, url)
}

/// Writes `files` (path relative to the catalog folder, contents) into a
/// new temporary folder.
pub fn write_catalog(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_files(dir.path(), files);
    dir
}

pub fn write_files(root: &Path, files: &[(&str, &str)]) {
    for (rel, text) in files {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
    }
}

/// A three-version catalog: v2 adds a column (switch creates a marker table,
/// switch back drops it), v3 adds a table and contracts the v2 column away.
pub const THREE_VERSIONS: &[(&str, &str)] = &[
    (
        "0001_items/expand.sql",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);",
    ),
    (
        "0002_labels/expand.sql",
        "ALTER TABLE items ADD COLUMN label TEXT;",
    ),
    (
        "0002_labels/switch.sql",
        "CREATE TABLE switched_to_2 (x INTEGER);",
    ),
    ("0002_labels/switch_back.sql", "DROP TABLE switched_to_2;"),
    (
        "0003_tags/expand.sql",
        "CREATE TABLE tags (item_id INTEGER NOT NULL, tag TEXT NOT NULL);",
    ),
    ("0003_tags/contract.sql", "DROP TABLE switched_to_2;"),
];

pub fn catalog(files: &[(&str, &str)]) -> (TempDir, Catalog) {
    let dir = write_catalog(files);
    let catalog = Catalog::from_dir(dir.path()).expect("valid catalog");
    (dir, catalog)
}

/// Tables in the SQLite database, by name.
pub fn tables(conn: &mut SqliteConnection) -> Vec<String> {
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    diesel::sql_query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .load::<Name>(conn)
        .expect("list tables")
        .into_iter()
        .map(|n| n.name)
        .collect()
}

/// Columns of an SQLite table.
pub fn columns(conn: &mut SqliteConnection, table: &str) -> Vec<String> {
    #[derive(QueryableByName)]
    struct Col {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    diesel::sql_query(format!("SELECT name FROM pragma_table_info('{table}')"))
        .load::<Col>(conn)
        .expect("table info")
        .into_iter()
        .map(|c| c.name)
        .collect()
}

/// A plain diesel connection (outside tandem) that waits for locks.
pub fn raw(url: &str) -> SqliteConnection {
    use diesel::connection::SimpleConnection;
    let mut conn = SqliteConnection::establish(url).expect("connect");
    conn.batch_execute("PRAGMA busy_timeout = 5000;")
        .expect("busy timeout");
    conn
}

/// Suite setup on SQLite: a temporary database file.
pub fn sqlite_setup(_test: &str) -> Option<(TempDir, String)> {
    Some(temp_db())
}

/// Suite setup on PostgreSQL: a fresh database, or `None` (said aloud) when
/// no server is configured.
#[cfg(feature = "postgres")]
pub fn pg_setup(test: &str) -> Option<(pg::PgDb, String)> {
    let db = pg::PgDb::new(test)?;
    let url = db.url.clone();
    Some((db, url))
}

/// What a caller thread saw: (binding, state version at start, at end) per
/// call; acknowledged writes (id, email); errors.
pub type Seen = (
    Vec<(u32, i64, i64)>,
    std::collections::BTreeMap<i64, String>,
    Vec<String>,
);
