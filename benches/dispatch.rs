//! Steady-state cost of dispatch and the schema lock: the same SQLite point
//! select and insert, raw diesel vs through tandem, on the same r2d2 pool
//! settings (checkout without ping, the same pragmas), in the same run.
//!
//! ```text
//! cargo bench --bench dispatch            # criterion, then the ratio pass
//! cargo bench --bench dispatch -- --quick # a quick look
//! ```
//!
//! After criterion's report, an interleaved pass alternates raw and tandem
//! rounds (so drift on a shared machine hits both) and prints each median and
//! the overhead ratio.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use tandem::{Repository, Sqlite, Tandem};

diesel::table! { accounts (id) { id -> BigInt, name -> Text, email -> Text, } }

trait Accounts: Send + Sync {
    fn email(&self, conn: &mut SqliteConnection, id: i64) -> QueryResult<String>;
    fn create(&self, conn: &mut SqliteConnection, name: &str, email: &str) -> QueryResult<usize>;
}
struct V1;
impl Accounts for V1 {
    fn email(&self, conn: &mut SqliteConnection, id: i64) -> QueryResult<String> {
        accounts::table.find(id).select(accounts::email).first(conn)
    }
    fn create(&self, conn: &mut SqliteConnection, name: &str, email: &str) -> QueryResult<usize> {
        diesel::insert_into(accounts::table)
            .values((accounts::name.eq(name), accounts::email.eq(email)))
            .execute(conn)
    }
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

struct Setup {
    _dir: tempfile::TempDir,
    raw: Pool<ConnectionManager<SqliteConnection>>,
    db: Tandem<Sqlite>,
    repo: Repository<dyn Accounts>,
}

const ROWS: i64 = 10_000;

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("bench.db").to_string_lossy().into_owned();
    let db = Tandem::<Sqlite>::builder(&url, tandem::demo::catalog().unwrap())
        .serves(1..=1)
        .pool_size(4)
        .open()
        .unwrap();
    let repo = Repository::<dyn Accounts>::builder("accounts")
        .binding(1, Arc::new(V1))
        .build()
        .unwrap();
    db.unit_of_work(|s| -> tandem::Result<()> {
        for i in 0..ROWS {
            s.repo(&repo)?
                .create(s.conn(), &format!("n{i}"), &format!("e{i}@x"))?;
        }
        Ok(())
    })
    .unwrap();
    let raw = Pool::builder()
        .max_size(4)
        .min_idle(Some(1))
        .test_on_check_out(false)
        .connection_customizer(Box::new(Pragmas))
        .build(ConnectionManager::<SqliteConnection>::new(&url))
        .unwrap();
    Setup {
        _dir: dir,
        raw,
        db,
        repo,
    }
}

fn raw_select(s: &Setup, id: i64) -> String {
    let mut conn = s.raw.get().unwrap();
    accounts::table
        .find(id)
        .select(accounts::email)
        .first(&mut conn)
        .unwrap()
}

fn tandem_select(s: &Setup, id: i64) -> String {
    s.db.call(&s.repo, |r, sess| {
        Ok::<_, tandem::Error>(r.email(sess.conn(), id)?)
    })
    .unwrap()
}

fn raw_insert(s: &Setup) -> usize {
    let mut conn = s.raw.get().unwrap();
    diesel::insert_into(accounts::table)
        .values((accounts::name.eq("bench"), accounts::email.eq("bench@x")))
        .execute(&mut conn)
        .unwrap()
}

fn tandem_insert(s: &Setup) -> usize {
    s.db.call(&s.repo, |r, sess| {
        Ok::<_, tandem::Error>(r.create(sess.conn(), "bench", "bench@x")?)
    })
    .unwrap()
}

fn criterion_benches(c: &mut Criterion, s: &Setup) {
    let mut g = c.benchmark_group("sqlite_point_select");
    g.throughput(Throughput::Elements(1));
    let mut id = 0;
    g.bench_function("raw_diesel", |b| {
        b.iter(|| {
            id = id % ROWS + 1;
            black_box(raw_select(s, id))
        })
    });
    g.bench_function("tandem", |b| {
        b.iter(|| {
            id = id % ROWS + 1;
            black_box(tandem_select(s, id))
        })
    });
    g.finish();
    let mut g = c.benchmark_group("sqlite_insert");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw_diesel", |b| b.iter(|| black_box(raw_insert(s))));
    g.bench_function("tandem", |b| b.iter(|| black_box(tandem_insert(s))));
    g.finish();
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

    trait PgAccounts: Send + Sync {
        fn email(&self, conn: &mut PgConnection, id: i64) -> QueryResult<String>;
    }
    struct P1;
    impl PgAccounts for P1 {
        fn email(&self, conn: &mut PgConnection, id: i64) -> QueryResult<String> {
            accounts::table.find(id).select(accounts::email).first(conn)
        }
    }

    pub fn run(quick: bool) {
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
            let db = Tandem::<Postgres>::builder(&url, tandem::demo::catalog().unwrap())
                .serves(1..=1)
                // One connection: raw diesel and tandem then talk to the very
                // same server process (placement on the VM's cores otherwise
                // dominates a loopback round trip).
                .pool_size(1)
                .poll_interval(Duration::from_millis(50))
                .lease(Duration::from_millis(500))
                .open()
                .unwrap();
            let repo = Repository::<dyn PgAccounts>::builder("accounts")
                .binding(1, Arc::new(P1))
                .build()
                .unwrap();
            let mut conn = db.connection().unwrap();
            diesel::sql_query(
                "INSERT INTO accounts (name, email) SELECT 'n' || g, 'e' || g || '@x' FROM generate_series(1, 10000) g",
            )
            .execute(&mut conn)
            .unwrap();
            drop(conn);
            // Raw diesel on tandem's own pool (no ping on checkout either way).
            let raw_select = |i: usize| {
                let mut c = db.connection().unwrap();
                black_box(
                    accounts::table
                        .find((i as i64) % ROWS + 1)
                        .select(accounts::email)
                        .first::<String>(&mut c)
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
            println!("\nPostgreSQL (loopback), interleaved, median per operation");
            report(
                "pg_point_select",
                interleaved(rounds, per, raw_select, steady),
            );
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
    let s = setup();
    let quick = std::env::args().any(|a| a == "--quick");
    let mut c = Criterion::default().configure_from_args();
    criterion_benches(&mut c, &s);
    c.final_summary();

    let (rounds, per) = if quick { (21, 2_000) } else { (101, 5_000) };
    println!(
        "\ninterleaved pass: {rounds} rounds, median per operation (same pool settings, same run)"
    );
    report(
        "sqlite_point_select",
        interleaved(
            rounds,
            per,
            |i| drop(black_box(raw_select(&s, (i as i64) % ROWS + 1))),
            |i| drop(black_box(tandem_select(&s, (i as i64) % ROWS + 1))),
        ),
    );
    let (rounds, per) = if quick { (11, 200) } else { (31, 500) };
    report(
        "sqlite_insert",
        interleaved(
            rounds,
            per,
            |_| {
                black_box(raw_insert(&s));
            },
            |_| {
                black_box(tandem_insert(&s));
            },
        ),
    );
    #[cfg(feature = "postgres")]
    pg::run(quick);
}
