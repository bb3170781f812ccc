//! The refinery pattern: a test case is a generic function over [`Kit`],
//! and [`per_backend!`] turns a list of cases into one `#[test]` per case
//! and backend (modules `sqlite` and `postgres`), instead of hand-written
//! SQLite/PostgreSQL pairs.

use diesel::prelude::*;
use tandem::{Backend, Repository, Tandem};

thread_local! {
    /// The case running on this thread, for the SKIPPED line of a backend
    /// that is not configured.
    static CASE: std::cell::Cell<&'static str> = const { std::cell::Cell::new("a per-backend case") };
}

/// Names the case running on this thread (`per_backend!` does).
pub fn set_case(name: &'static str) {
    CASE.with(|c| c.set(name));
}

#[allow(dead_code)] // only PostgreSQL's kit reads it
fn case() -> &'static str {
    CASE.with(std::cell::Cell::get)
}

/// Each case once per backend: `per_backend!(case_a, case_b)` with
/// `fn case_a<K: Kit>()`.
#[allow(unused_macros)] // each test binary uses a different part
macro_rules! per_backend {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $case() {
                $crate::common::set_case(stringify!($case));
                super::$case::<$crate::common::SqliteKit>();
            })*
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            $(#[test]
            fn $case() {
                $crate::common::set_case(stringify!($case));
                super::$case::<$crate::common::PgKit>();
            })*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use per_backend;

/// How the cases reach a backend outside tandem.
pub trait Kit: 'static {
    type B: Backend;
    type Guard;
    /// A fresh, empty database, or `None` when the backend is not
    /// configured (said aloud; a failure under `TANDEM_REQUIRE_PG=1`).
    fn fresh() -> Option<(Self::Guard, String)>;
    /// A fresh database whose URL carries `password`, where the backend
    /// takes one.
    fn fresh_with_password(password: &str) -> Option<(Self::Guard, String)>;
    /// A URL carrying `password` on which connecting fails.
    fn unreachable_url(password: &str) -> String;
    /// Runs SQL outside tandem.
    fn exec(url: &str, sql: &str);
    /// Rows of a query whose one column is `line`.
    fn lines(url: &str, sql: &str) -> Option<Vec<String>>;
    /// Queries that describe the schema, one line per object.
    const SCHEMA: &'static [&'static str];
    /// The demo database with its backfill, on `url`.
    fn open(url: &str) -> Tandem<Self::B> {
        Tandem::<Self::B>::builder(url, tandem::testing::demo::catalog().unwrap())
            .serves(1..=2)
            .backfill(2, "copy emails", |c| Self::backfill_emails(c))
            .open()
            .unwrap()
    }
    /// The demo repository on this backend.
    fn repo() -> Repository<dyn super::AccountsOn<<Self::B as Backend>::Connection>>;
    /// The demo's backfill (`tandem::testing::demo::backfill_emails`) on
    /// this backend's connection.
    fn backfill_emails(conn: &mut <Self::B as Backend>::Connection) -> diesel::QueryResult<usize>;
    /// The live version as the state row says, read on `conn` (inside a
    /// call: the version the call's binding must match).
    fn live(conn: &mut <Self::B as Backend>::Connection) -> i64;
    /// The query listing the application's tables, one `line` each.
    const TABLES: &'static str;
    /// The query listing table `{table}`'s columns, one `line` each.
    const COLUMNS: &'static str;

    /// The application's tables, by name.
    fn tables(url: &str) -> Vec<String> {
        Self::lines(url, Self::TABLES).expect("list tables")
    }

    /// A table's columns.
    fn columns(url: &str, table: &str) -> Vec<String> {
        Self::lines(url, &Self::COLUMNS.replace("{table}", table)).expect("list columns")
    }
}

#[derive(QueryableByName)]
pub struct Line {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub line: String,
}

pub struct SqliteKit;

impl Kit for SqliteKit {
    type B = tandem::Sqlite;
    type Guard = tempfile::TempDir;
    fn fresh() -> Option<(Self::Guard, String)> {
        Some(super::temp_db())
    }
    fn fresh_with_password(password: &str) -> Option<(Self::Guard, String)> {
        // SQLite ignores URI parameters it does not know: a URL with a
        // password (a configuration shared with a server backend) opens.
        let (dir, path) = super::temp_db();
        Some((dir, format!("file:{path}?password={password}")))
    }
    fn unreachable_url(password: &str) -> String {
        format!("file:/nonexistent/dir/app.db?mode=rw&password={password}")
    }
    fn exec(url: &str, sql: &str) {
        use diesel::connection::SimpleConnection;
        super::raw(url).batch_execute(sql).unwrap();
    }
    fn lines(url: &str, sql: &str) -> Option<Vec<String>> {
        let rows = diesel::sql_query(sql)
            .load::<Line>(&mut super::raw(url))
            .ok()?;
        Some(rows.into_iter().map(|r| r.line).collect())
    }
    const SCHEMA: &'static [&'static str] = &[
        "SELECT type || ' ' || name || ' ' || coalesce(sql, '') AS line FROM sqlite_master ORDER BY name",
    ];
    const TABLES: &'static str =
        "SELECT name AS line FROM sqlite_master WHERE type = 'table' ORDER BY name";
    const COLUMNS: &'static str = "SELECT name AS line FROM pragma_table_info('{table}')";
    fn live(conn: &mut diesel::SqliteConnection) -> i64 {
        super::db_version(conn)
    }
    fn backfill_emails(conn: &mut diesel::SqliteConnection) -> diesel::QueryResult<usize> {
        tandem::testing::demo::backfill_emails(conn)
    }
    fn repo() -> Repository<dyn super::AccountsOn<diesel::SqliteConnection>> {
        super::accounts()
    }
}

#[cfg(feature = "postgres")]
pub struct PgKit;

#[cfg(feature = "postgres")]
impl Kit for PgKit {
    type B = tandem::Postgres;
    type Guard = super::pg::PgDb;
    fn fresh() -> Option<(Self::Guard, String)> {
        super::pg_setup(case())
    }
    fn fresh_with_password(password: &str) -> Option<(Self::Guard, String)> {
        // The test server trusts loopback, so any password is accepted.
        let (db, url) = super::pg_setup(case())?;
        let with_password = url.split_once("://").and_then(|(scheme, rest)| {
            let (userinfo, host) = rest.split_once('@')?;
            let user = userinfo.split(':').next()?;
            Some(format!("{scheme}://{user}:{password}@{host}"))
        });
        let url = with_password.unwrap_or_else(|| {
            panic!("PG_DATABASE_URL names no user (postgres://USER@HOST/...): {url}")
        });
        Some((db, url))
    }
    fn unreachable_url(password: &str) -> String {
        format!("postgres://app:{password}@127.0.0.1:1/app")
    }
    fn exec(url: &str, sql: &str) {
        use diesel::connection::SimpleConnection;
        diesel::PgConnection::establish(url)
            .unwrap()
            .batch_execute(sql)
            .unwrap();
    }
    fn lines(url: &str, sql: &str) -> Option<Vec<String>> {
        let mut conn = diesel::PgConnection::establish(url).unwrap();
        let rows = diesel::sql_query(sql).load::<Line>(&mut conn).ok()?;
        Some(rows.into_iter().map(|r| r.line).collect())
    }
    const SCHEMA: &'static [&'static str] = &[
        "SELECT 'column ' || table_name || ' ' || column_name || ' ' || data_type || ' ' || is_nullable || ' ' || coalesce(column_default, '') AS line \
         FROM information_schema.columns WHERE table_schema = 'public' ORDER BY table_name, column_name",
        "SELECT 'index ' || indexname || ' ' || indexdef AS line FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname",
        "SELECT 'trigger ' || trigger_name || ' ' || event_object_table || ' ' || event_manipulation AS line \
         FROM information_schema.triggers WHERE trigger_schema = 'public' ORDER BY 1",
        "SELECT 'function ' || p.proname || ' ' || md5(p.prosrc) AS line FROM pg_proc p \
         JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' ORDER BY 1",
    ];
    const TABLES: &'static str = "SELECT table_name::text AS line FROM information_schema.tables \
         WHERE table_schema = current_schema() ORDER BY table_name";
    const COLUMNS: &'static str = "SELECT column_name::text AS line FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = '{table}' ORDER BY ordinal_position";
    fn live(conn: &mut diesel::PgConnection) -> i64 {
        super::AccountsOn::live(&super::AccountsV1, conn).expect("state row")
    }
    fn backfill_emails(conn: &mut diesel::PgConnection) -> diesel::QueryResult<usize> {
        tandem::testing::demo::backfill_emails(conn)
    }
    fn repo() -> Repository<dyn super::AccountsOn<diesel::PgConnection>> {
        super::accounts_on::<diesel::PgConnection>()
    }
}
