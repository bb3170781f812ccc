//! What a steady fleet costs the database: N instances (one handle each, in
//! this process) on one PostgreSQL database at the default poll interval,
//! and, from the server's statistics, the transactions, fleet-row writes
//! and WAL they cause per instance per second. Reports, never asserts.
//!
//! ```text
//! cargo run --release --all-features --example fleet_overhead -- \
//!     --database-url postgres://postgres@127.0.0.1:5432/postgres --instances 1,10,50 --seconds 10
//! ```
//!
//! Each N gets a fresh database (dropped after). The window starts once
//! every instance has joined; it ends when the handles are dropped, so that
//! each server backend flushes its statistics as it exits (PostgreSQL
//! flushes a live backend's at most once a second).

use std::time::{Duration, Instant};

use diesel::prelude::*;
use tandem::testing::FreshDatabase;
use tandem::{Postgres, Tandem};

#[derive(QueryableByName, Debug, Clone, Copy)]
struct Counters {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    commits: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    fleet_writes: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    wal: i64,
}

fn counters(url: &str) -> Counters {
    let mut conn = PgConnection::establish(url).expect("connect for the statistics");
    diesel::sql_query(
        "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) AS commits, \
         COALESCE((SELECT n_tup_upd + n_tup_ins + n_tup_del FROM pg_stat_user_tables \
                   WHERE relname = 'tandem_fleet'), 0) AS fleet_writes, \
         (pg_current_wal_lsn() - '0/0'::pg_lsn)::BIGINT AS wal",
    )
    .get_result(&mut conn)
    .expect("read the statistics")
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let server = arg("--database-url")
        .or_else(|| std::env::var("PG_DATABASE_URL").ok())
        .expect("--database-url postgres://… (or PG_DATABASE_URL)");
    let sizes: Vec<usize> = arg("--instances")
        .unwrap_or_else(|| "1,10,50".to_owned())
        .split(',')
        .map(|n| n.trim().parse().expect("--instances 1,10,50"))
        .collect();
    let seconds: u64 = arg("--seconds").map_or(10, |s| s.parse().expect("--seconds N"));
    println!(
        "steady fleet at the default poll interval (200 ms), {seconds} s per size, per instance per second:"
    );
    for n in sizes {
        let fresh = FreshDatabase::postgres(&server).expect("a fresh database");
        let url = fresh.url().to_owned();
        let catalog = tandem::testing::demo::catalog().expect("demo catalog");
        let handles: Vec<Tandem<Postgres>> = (0..n)
            .map(|i| {
                Tandem::<Postgres>::builder(&url, catalog.clone())
                    .label(&format!("overhead-{i}"))
                    .pool_size(2)
                    .open()
                    .expect("open an instance")
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        // (The statistics of the counting connection itself: one commit
        // each time, subtracted below.)
        let before = counters(&url);
        let start = Instant::now();
        std::thread::sleep(Duration::from_secs(seconds));
        let elapsed = start.elapsed().as_secs_f64();
        drop(handles); // each backend flushes its statistics as it exits
        std::thread::sleep(Duration::from_millis(1500));
        let after = counters(&url);
        let per = |d: i64| d as f64 / elapsed / n as f64;
        println!(
            "N={n:>4}: commits {:.2}/s, fleet row writes {:.2}/s, WAL {:.0} B/s (window {elapsed:.1} s; \
             the window's end includes each instance leaving: 1 delete)",
            per(after.commits - before.commits - 1),
            per(after.fleet_writes - before.fleet_writes),
            per(after.wal - before.wal),
        );
        drop(fresh);
    }
}
