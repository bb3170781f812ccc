//! Steady-state cost of dispatch and the schema lock, raw diesel vs tandem
//! on the same query and the same pool settings, in the same run: a point
//! select, an insert, and a unit of work of three repository calls (select,
//! insert, select) against the same raw transaction. On SQLite `:memory:`
//! (raw diesel on tandem's own single connection), an SQLite WAL file (a raw
//! r2d2 pool with the same pragmas) and PostgreSQL when `PG_DATABASE_URL` is
//! set (raw diesel on tandem's own pool), plus the locking path (deploying
//! mode) on PostgreSQL with its round trips counted.
//!
//! ```text
//! cargo bench --bench dispatch                        # SQLite
//! PG_DATABASE_URL=postgres://… cargo bench --all-features --bench dispatch
//! cargo bench --bench dispatch -- --quick             # a quick look
//! ```
//!
//! After criterion's report, an interleaved pass alternates raw and tandem
//! operation by operation (so drift on a shared machine hits both) and
//! prints each median and the overhead ratio.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem::testing::faults::FleetFaults as _;

use criterion::{Criterion, Throughput};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use tandem::{Repository, Sqlite, Tandem};

diesel::table! { accounts (id) { id -> BigInt, name -> Text, email -> Text, } }

const ROWS: i64 = 10_000;

/// The repository, over a backend's connection type `C`.
trait Accounts<C>: Send + Sync {
    fn email(&self, conn: &mut C, id: i64) -> QueryResult<String>;
    fn create(&self, conn: &mut C, name: &str, email: &str) -> QueryResult<usize>;
}
struct V1;

/// The statements, shared by the binding and the raw side.
macro_rules! statements {
    ($conn:ty) => {
        impl Accounts<$conn> for V1 {
            fn email(&self, conn: &mut $conn, id: i64) -> QueryResult<String> {
                accounts::table.find(id).select(accounts::email).first(conn)
            }
            fn create(&self, conn: &mut $conn, name: &str, email: &str) -> QueryResult<usize> {
                diesel::insert_into(accounts::table)
                    .values((accounts::name.eq(name), accounts::email.eq(email)))
                    .execute(conn)
            }
        }
    };
}
statements!(SqliteConnection);
#[cfg(feature = "postgres")]
statements!(diesel::PgConnection);

fn repo<C: 'static>() -> Repository<dyn Accounts<C>>
where
    V1: Accounts<C>,
{
    Repository::<dyn Accounts<C>>::builder("accounts")
        .binding(1, Arc::new(V1))
        .build()
        .unwrap()
}

/// The pragmas tandem's SQLite backend sets, for the raw pool.
#[derive(Debug)]
struct Pragmas;
impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for Pragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(
            "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// The three operations on one backend, raw and through tandem, in
/// criterion and in the interleaved ratio pass. `$txn` opens the raw
/// transaction the way tandem's unit of work does on that backend.
macro_rules! suite {
    ($name:ident, $backend:ty, $conn:ty, $txn:expr) => {
        fn $name(
            c: &mut Criterion,
            label: &str,
            db: &Tandem<$backend>,
            raw: &dyn Fn() -> PooledConnection<ConnectionManager<$conn>>,
            quick: bool,
        ) {
            let repo = repo::<$conn>();
            let txn = $txn;
            let raw_select = |i: usize| {
                black_box(V1.email(&mut *raw(), (i as i64) % ROWS + 1).unwrap());
            };
            let tandem_select = |i: usize| {
                black_box(
                    db.call(&repo, |r, s| {
                        Ok::<_, tandem::Error>(r.email(s.conn(), (i as i64) % ROWS + 1)?)
                    })
                    .unwrap(),
                );
            };
            let raw_insert = |_: usize| {
                black_box(V1.create(&mut *raw(), "bench", "bench@x").unwrap());
            };
            let tandem_insert = |_: usize| {
                black_box(
                    db.call(&repo, |r, s| {
                        Ok::<_, tandem::Error>(r.create(s.conn(), "bench", "bench@x")?)
                    })
                    .unwrap(),
                );
            };
            let raw_uow = |i: usize| {
                let id = (i as i64) % ROWS + 1;
                black_box(
                    txn(&mut *raw(), &|c: &mut $conn| {
                        let a = V1.email(c, id)?;
                        V1.create(c, "bench", &a)?;
                        V1.email(c, id % ROWS + 1)
                    })
                    .unwrap(),
                );
            };
            let tandem_uow = |i: usize| {
                let id = (i as i64) % ROWS + 1;
                black_box(
                    db.unit_of_work(|s| {
                        let a = s.repo(&repo)?.email(s.conn(), id)?;
                        s.repo(&repo)?.create(s.conn(), "bench", &a)?;
                        Ok::<_, tandem::Error>(s.repo(&repo)?.email(s.conn(), id % ROWS + 1)?)
                    })
                    .unwrap(),
                );
            };
            let ops: [(&str, &dyn Fn(usize), &dyn Fn(usize)); 3] = [
                ("point_select", &raw_select, &tandem_select),
                ("insert", &raw_insert, &tandem_insert),
                ("unit_of_work_3_calls", &raw_uow, &tandem_uow),
            ];
            for (op, raw_op, tandem_op) in ops {
                let mut g = c.benchmark_group(format!("{label}/{op}"));
                g.throughput(Throughput::Elements(1));
                let mut i = 0;
                g.bench_function("raw_diesel", |b| {
                    b.iter(|| {
                        i += 1;
                        raw_op(i)
                    })
                });
                g.bench_function("tandem", |b| {
                    b.iter(|| {
                        i += 1;
                        tandem_op(i)
                    })
                });
                g.finish();
            }
            let (rounds, per) = if quick { (11, 200) } else { (41, 1000) };
            println!(
                "\n{label}: interleaved pass, {rounds}x{per} operations each, median per operation"
            );
            for (op, raw_op, tandem_op) in ops {
                report(
                    &format!("{label}/{op}"),
                    interleaved(rounds, per, raw_op, tandem_op),
                );
            }
        }
    };
}

suite!(
    sqlite_suite,
    Sqlite,
    SqliteConnection,
    |c: &mut SqliteConnection, f: &dyn Fn(&mut SqliteConnection) -> QueryResult<String>| c
        .immediate_transaction(|c| f(c))
);

#[cfg(feature = "postgres")]
suite!(
    pg_suite,
    tandem::Postgres,
    diesel::PgConnection,
    |c: &mut diesel::PgConnection, f: &dyn Fn(&mut diesel::PgConnection) -> QueryResult<String>| c
        .transaction(|c| f(c))
);

/// A demo database at version 1 with `ROWS` accounts on `url`.
fn sqlite_db(url: &str) -> Tandem<Sqlite> {
    let db = Tandem::<Sqlite>::builder(url, tandem::testing::demo::catalog().unwrap())
        .serves(1..=1)
        .pool_size(4)
        .open()
        .unwrap();
    diesel::sql_query(
        "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 10000) \
         INSERT INTO accounts (name, email) SELECT 'n' || i, 'e' || i || '@x' FROM g",
    )
    .execute(&mut db.connection().unwrap())
    .unwrap();
    db
}

/// Median time of one operation, raw and tandem alternating operation by
/// operation (`rounds * per_round` of each), so both see the same machine
/// state: on a shared VM, where the client and the server land decides a
/// loopback round trip (26 or 100 µs) for seconds at a time.
fn interleaved(
    rounds: usize,
    per_round: usize,
    mut raw: impl FnMut(usize),
    mut tandem: impl FnMut(usize),
) -> (Duration, Duration) {
    let n = rounds * per_round;
    let mut r = Vec::with_capacity(n);
    let mut t = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        raw(i);
        r.push(start.elapsed());
        let start = Instant::now();
        tandem(i);
        t.push(start.elapsed());
    }
    r.sort();
    t.sort();
    (r[n / 2], t[n / 2])
}

fn report(name: &str, (raw, tandem): (Duration, Duration)) {
    let ratio = tandem.as_secs_f64() / raw.as_secs_f64();
    println!(
        "ratio {name:<20} raw {:>8.3} µs  tandem {:>8.3} µs  tandem/raw {ratio:.4} ({:+.2} %)",
        raw.as_secs_f64() * 1e6,
        tandem.as_secs_f64() * 1e6,
        (ratio - 1.0) * 100.0
    );
}

/// PostgreSQL, when `PG_DATABASE_URL` is set and the `postgres` feature is
/// on: the steady path against raw diesel on the same pool settings, and the
/// locking path (deploying mode, a stale lease) in round trips.
#[cfg(feature = "postgres")]
mod pg {
    use super::*;
    use diesel::PgConnection;
    use tandem::Postgres;

    pub fn run(c: &mut Criterion, quick: bool) {
        let Ok(server) = std::env::var("PG_DATABASE_URL") else {
            println!("\nPostgreSQL: skipped (set PG_DATABASE_URL; scripts/test does)");
            return;
        };
        let mut admin = PgConnection::establish(&server).unwrap();
        let name = format!("tandem_bench_{}", std::process::id());
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .unwrap();
        let url = match server.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => server.clone(),
        };
        {
            let db = Tandem::<Postgres>::builder(&url, tandem::testing::demo::catalog().unwrap())
                .serves(1..=1)
                // One connection: raw diesel and tandem then talk to the very
                // same server process (placement on the VM's cores otherwise
                // dominates a loopback round trip).
                .pool_size(1)
                .poll_interval(Duration::from_millis(50))
                .lease(Duration::from_millis(500))
                .open()
                .unwrap();
            let repo = repo::<PgConnection>();
            let mut conn = db.connection().unwrap();
            diesel::sql_query(
                "INSERT INTO accounts (name, email) SELECT 'n' || g, 'e' || g || '@x' FROM generate_series(1, 10000) g",
            )
            .execute(&mut conn)
            .unwrap();
            drop(conn);
            // Raw diesel on tandem's own pool (no ping on checkout either way).
            pg_suite(c, "postgres", &db, &|| db.connection().unwrap(), quick);
            let raw_select = |i: usize| {
                black_box(
                    V1.email(&mut *db.connection().unwrap(), (i as i64) % ROWS + 1)
                        .unwrap(),
                );
            };
            let steady = |i: usize| {
                black_box(
                    db.call(&repo, |r, s| {
                        Ok::<_, tandem::Error>(r.email(s.conn(), (i as i64) % ROWS + 1)?)
                    })
                    .unwrap(),
                );
            };
            let (rounds, per) = if quick { (11, 200) } else { (41, 500) };
            println!("\npostgres locking path (deploying mode), interleaved with raw selects");
            let uow = |i: usize| {
                black_box(
                    db.unit_of_work(|s| {
                        Ok::<_, tandem::Error>(
                            s.repo(&repo)?.email(s.conn(), (i as i64) % ROWS + 1)?,
                        )
                    })
                    .unwrap(),
                );
            };
            // Every figure below is interleaved with the same raw select, so
            // each difference is taken within one scheduling regime.
            let (r0, rt) = interleaved(rounds, per, raw_select, |_| {
                let mut c = db.connection().unwrap();
                diesel::sql_query("SELECT 1").execute(&mut c).unwrap();
            });
            let (r3, uow_steady) = interleaved(rounds, per, raw_select, uow);
            // The locking path: a stale lease (as in deploying mode).
            db.pause_fleet(true);
            while db.steady() {
                std::thread::sleep(Duration::from_millis(10));
            }
            let (r1, call_locking) = interleaved(rounds, per, raw_select, steady);
            let (r2, uow_locking) = interleaved(rounds, per, raw_select, uow);
            db.pause_fleet(false);
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            let rt_us = us(rt);
            println!(
                "locking path      round trip {:.1} µs (raw select {:.1} µs); call on the locking path {:.1} µs vs raw {:.1} µs = \
                 +{:.2} round trips (counted: BEGIN, lock+version, COMMIT = 3); unit of work locking {:.1} µs vs steady {:.1} µs \
                 (raw {:.1} / {:.1} µs) = +{:.2} round trips (counted: lock+version = 1)",
                rt_us,
                us(r0),
                us(call_locking),
                us(r1),
                (us(call_locking) - us(r1)) / rt_us,
                us(uow_locking),
                us(uow_steady),
                us(r2),
                us(r3),
                ((us(uow_locking) - us(r2)) - (us(uow_steady) - us(r3))) / rt_us,
            );
        }
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .unwrap();
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let mut c = Criterion::default().configure_from_args();

    // SQLite :memory:: one connection, shared by raw diesel and tandem.
    let mem = sqlite_db(":memory:");
    sqlite_suite(
        &mut c,
        "sqlite_memory",
        &mem,
        &|| mem.connection().unwrap(),
        quick,
    );
    drop(mem);

    // SQLite WAL file: a raw r2d2 pool with tandem's pool settings and pragmas.
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("bench.db").to_string_lossy().into_owned();
    let file = sqlite_db(&url);
    let raw = Pool::builder()
        .max_size(4)
        .min_idle(Some(1))
        .test_on_check_out(false)
        .connection_customizer(Box::new(Pragmas))
        .build(ConnectionManager::<SqliteConnection>::new(&url))
        .unwrap();
    sqlite_suite(&mut c, "sqlite_wal", &file, &|| raw.get().unwrap(), quick);
    drop(file);

    #[cfg(feature = "postgres")]
    pg::run(&mut c, quick);
    #[cfg(not(feature = "postgres"))]
    println!("\nPostgreSQL: not built (cargo bench --all-features, with PG_DATABASE_URL set)");
    c.final_summary();
}
