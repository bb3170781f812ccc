//! Long phases (issue 10, item 8): a phase whose SQL runs longer than the
//! upgrade lease keeps the lease (renewed beside it), commits, and no second
//! upgrader gets in meanwhile.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use tandem::{Backend, Error, StatePhase, Tandem};

const LEASE: Duration = Duration::from_secs(1);
/// The slow phase runs about this long: three leases.
const PHASE: Duration = Duration::from_secs(3);

/// SQL that keeps the database busy for about `PHASE`.
trait Slow: Backend {
    fn slow_sql() -> String;
}

impl Slow for tandem::Sqlite {
    /// A recursive count, sized by timing a smaller one on this machine.
    fn slow_sql() -> String {
        use diesel::{Connection, RunQueryDsl, SqliteConnection};
        let count = |n: u64| {
            format!(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) \
                 SELECT count(*) FROM c"
            )
        };
        let mut conn = SqliteConnection::establish(":memory:").unwrap();
        let probe = 500_000u64;
        let start = Instant::now();
        diesel::sql_query(count(probe)).execute(&mut conn).unwrap();
        let per_row = start.elapsed().as_secs_f64() / probe as f64;
        let n = (PHASE.as_secs_f64() / per_row) as u64;
        format!("{};", count(n))
    }
}

#[cfg(feature = "postgres")]
impl Slow for tandem::Postgres {
    fn slow_sql() -> String {
        format!("SELECT pg_sleep({});", PHASE.as_secs_f64())
    }
}

fn open<B: Slow>(url: &str, catalog: tandem::Catalog, label: &str) -> Tandem<B> {
    Tandem::<B>::builder(url, catalog)
        .serves(1..=2)
        .label(label)
        .poll_interval(Duration::from_millis(50))
        .open()
        .unwrap()
}

fn files(slow: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "0001_items/expand.sql",
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);".to_owned(),
        ),
        (
            "0002_slow/expand.sql",
            format!("ALTER TABLE items ADD COLUMN label TEXT; {slow}"),
        ),
    ]
}

macro_rules! long_phases {
    ($module:ident, $backend:ty, $setup:expr) => {
        mod $module {
            use super::*;
            type B = $backend;

            /// An expand three leases long commits and reports success: the
            /// lease was renewed while its SQL ran. (Before: the expand
            /// committed, then failed with `another upgrader (nobody (our
            /// lease expired)) is running`.)
            #[test]
            fn a_phase_longer_than_the_lease_keeps_it() {
                let Some((_guard, url)) = $setup("a_phase_longer_than_the_lease_keeps_it") else {
                    return;
                };
                let slow = <B as Slow>::slow_sql();
                let owned = files(&slow);
                let refs: Vec<(&str, &str)> = owned.iter().map(|(p, t)| (*p, t.as_str())).collect();
                let (_c, catalog) = common::catalog(&refs);
                let db = open::<B>(&url, catalog, "long");
                let started = Instant::now();
                let report = db.upgrader().lease(LEASE).expand().unwrap();
                let took = started.elapsed();
                assert!(
                    took > LEASE * 2,
                    "the phase must outlast the lease for this test to mean anything: {took:?}"
                );
                let state = db.state().unwrap();
                assert_eq!(
                    (state.version.get(), state.phase),
                    (1, StatePhase::Expanded)
                );
                assert!(state.upgrader.is_none(), "the lease is released: {state:?}");
                eprintln!("expand of {took:?} under a {LEASE:?} lease: {report:?}");
            }
        }
    };
}

long_phases!(sqlite, tandem::Sqlite, common::sqlite_setup);
#[cfg(feature = "postgres")]
long_phases!(postgres, tandem::Postgres, common::pg_setup);

/// PostgreSQL: while a phase three leases long runs, a second upgrader is
/// told who holds the lease, every time it asks. (Before: once the lease
/// lapsed, the second got in and ran the same expand beside the first.)
#[cfg(feature = "postgres")]
#[test]
fn no_second_upgrader_gets_in_during_a_long_phase() {
    let Some((_guard, url)) = common::pg_setup("no_second_upgrader_gets_in_during_a_long_phase")
    else {
        return;
    };
    type B = tandem::Postgres;
    let slow = <B as Slow>::slow_sql();
    let owned = files(&slow);
    let refs: Vec<(&str, &str)> = owned.iter().map(|(p, t)| (*p, t.as_str())).collect();
    let (_c, catalog) = common::catalog(&refs);
    let first = open::<B>(&url, catalog.clone(), "first");
    let second = open::<B>(&url, catalog, "second");
    let worker = {
        let first = first.clone();
        thread::spawn(move || first.upgrader().lease(LEASE).expand())
    };
    thread::sleep(LEASE / 2);
    let mut refused = 0;
    while !worker.is_finished() {
        match second.upgrader().lease(LEASE).expand() {
            Err(Error::UpgraderBusy { holder, .. }) => {
                assert!(holder.starts_with(first.instance_id()), "{holder}");
                refused += 1;
            }
            Ok(report) if report.already_done => break,
            other => panic!("a second upgrader got in during the first one's phase: {other:?}"),
        }
        thread::sleep(LEASE / 4);
    }
    let report = worker.join().unwrap().unwrap();
    assert!(!report.already_done);
    assert!(
        refused >= 8,
        "the second upgrader asked throughout the phase: {refused}"
    );
}
