//! The steady call's cost in instructions, for `valgrind --tool=callgrind`
//! (repeatable on a shared, noisy machine, unlike a timer): `N` point
//! selects through tandem's steady path, or the same `N` through raw diesel
//! on the same pooled SQLite `:memory:` connection.
//!
//! ```text
//! scripts/callgrind        # builds this, runs both sides at two N, prints per-call counts
//! cargo run --release --example steady_cost -- tandem 1000
//! cargo run --release --example steady_cost -- raw 1000
//! ```
//!
//! The per-call figure is the difference between two runs of different `N`
//! divided by the difference in `N`, so setup (opening, the catalog, the
//! 1000 rows) cancels out.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use tandem::{Repository, Sqlite, Tandem};

diesel::table! { accounts (id) { id -> BigInt, name -> Text, email -> Text, } }

trait Accounts: Send + Sync {
    fn email(&self, conn: &mut SqliteConnection, id: i64) -> QueryResult<String>;
}
struct V1;
impl Accounts for V1 {
    fn email(&self, conn: &mut SqliteConnection, id: i64) -> QueryResult<String> {
        accounts::table.find(id).select(accounts::email).first(conn)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let side = args.next().unwrap_or_else(|| "tandem".to_owned());
    let n: i64 = args.next().map_or(Ok(1000), |s| s.parse())?;
    let db = Tandem::<Sqlite>::builder(":memory:", tandem::testing::demo::catalog()?)
        .serves(1..=1)
        // Under valgrind the process runs some 50 times slower: a long lease
        // keeps every measured call on the steady path.
        .poll_interval(Duration::from_secs(60))
        .lease(Duration::from_secs(600))
        .open()?;
    assert!(db.steady(), "the measured calls must take the steady path");
    diesel::sql_query(
        "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 1000) \
         INSERT INTO accounts (name, email) SELECT 'n' || i, 'e' || i || '@x' FROM g",
    )
    .execute(&mut db.connection()?)?;
    let repo = Repository::<dyn Accounts>::builder("accounts")
        .binding(1, Arc::new(V1))
        .build()?;
    match side.as_str() {
        "tandem" => tandem_calls(&db, &repo, n)?,
        "raw" => raw_calls(&db, n)?,
        other => return Err(format!("unknown side {other:?}: tandem or raw").into()),
    }
    if !db.steady() {
        return Err(
            "the lease went stale during the run: the count includes locking-path calls".into(),
        );
    }
    Ok(())
}

/// The measured loop through tandem (scripts/callgrind counts only inside
/// these two functions, so the background threads' ticks, which run by the
/// wall clock, never enter the count).
#[inline(never)]
fn tandem_calls(
    db: &Tandem<Sqlite>,
    repo: &Repository<dyn Accounts>,
    n: i64,
) -> tandem::Result<()> {
    for i in 0..n {
        black_box(db.call(repo, |r, s| {
            Ok::<_, tandem::Error>(r.email(s.conn(), i % 1000 + 1)?)
        })?);
    }
    Ok(())
}

/// The same loop through raw diesel on the same pool.
#[inline(never)]
fn raw_calls(db: &Tandem<Sqlite>, n: i64) -> Result<(), Box<dyn std::error::Error>> {
    for i in 0..n {
        black_box(V1.email(&mut *db.connection()?, i % 1000 + 1)?);
    }
    Ok(())
}
