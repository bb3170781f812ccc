//! Fixtures shared by the integration tests: the demo repository (accounts
//! whose email moves to account_emails in version 2) and catalog folders
//! written to temporary directories.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use diesel::prelude::*;
use tandem::{Catalog, Repository, Sqlite, Tandem};
use tempfile::TempDir;

mod crash;
mod kit;
#[cfg(feature = "postgres")]
pub mod pg;

#[allow(unused_imports)] // each test binary uses a different part
pub use crash::crash_at_each_step;
#[cfg(feature = "postgres")]
#[allow(unused_imports)]
pub use kit::PgKit;
#[allow(unused_imports)] // each test binary uses a different part
pub(crate) use kit::{per_backend, set_case, Kit, SqliteKit};

// The demo repository and its bindings are the examples' own.
#[path = "../../examples/shared/accounts.rs"]
mod shared;
#[allow(unused_imports)] // each test binary uses a different part
pub use shared::{v1, v2, Accounts as AccountsOn, AccountsV1, AccountsV2};

/// The SQLite form, used by most tests.
pub type Accounts = dyn AccountsOn<SqliteConnection>;

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

/// A row of one `BIGINT` column `n` (counts in raw queries).
#[derive(QueryableByName)]
pub struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub n: i64,
}

/// The live version as the state row says, read on the call's own connection.
pub fn db_version(conn: &mut SqliteConnection) -> i64 {
    AccountsOn::live(&AccountsV1, conn).expect("state row")
}

/// The demo database with its backfill, on `url`.
pub fn open_demo(url: &str) -> Tandem<Sqlite> {
    Tandem::<Sqlite>::builder(url, tandem::testing::demo::catalog().expect("demo catalog"))
        .serves(1..=2)
        .backfill(2, "copy emails", tandem::testing::demo::backfill_emails)
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

/// Suite setup behind PgBouncer: a fresh database on the server named by
/// `PG_DATABASE_URL`, and its URL through the pooler at `PGBOUNCER_URL`
/// (`postgres://postgres@127.0.0.1:PORT`, with `* = host=… pool_size=2` in
/// its `[databases]`); `None` (said aloud) without one, a failure under
/// `TANDEM_REQUIRE_PGBOUNCER=1` (`scripts/test`).
#[cfg(feature = "postgres")]
pub fn pgbouncer_setup(test: &str) -> Option<(pg::PgDb, String)> {
    let Ok(bouncer) = std::env::var("PGBOUNCER_URL") else {
        assert!(
            std::env::var("TANDEM_REQUIRE_PGBOUNCER").as_deref() != Ok("1"),
            "{test}: TANDEM_REQUIRE_PGBOUNCER=1 but PGBOUNCER_URL is not set"
        );
        eprintln!("SKIPPED {test}: needs PGBOUNCER_URL (scripts/test starts a PgBouncer)");
        return None;
    };
    let db = pg::PgDb::new(test)?;
    let name = db.url.rsplit('/').next().unwrap_or_default().to_owned();
    let url = format!("{}/{name}", bouncer.trim_end_matches('/'));
    Some((db, url))
}

/// What a caller thread saw: (binding, state version at start, at end) per
/// call; acknowledged writes (id, email); errors.
pub type Seen = (
    Vec<(u32, i64, i64)>,
    std::collections::BTreeMap<i64, String>,
    Vec<String>,
);

/// A catalog of change files in a temporary directory: each version's
/// folder name and its `change.toml`.
pub fn change_catalog(versions: &[(&str, &str)]) -> (TempDir, Catalog) {
    let dir = tempfile::tempdir().unwrap();
    for (folder, text) in versions {
        std::fs::create_dir(dir.path().join(folder)).unwrap();
        std::fs::write(dir.path().join(folder).join("change.toml"), text).unwrap();
    }
    let catalog = Catalog::from_dir(dir.path()).unwrap();
    (dir, catalog)
}
