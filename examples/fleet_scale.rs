//! The fleet at scale: N instances (one handle each, `pool_size(1)`) spread
//! over several OS processes on one PostgreSQL database, at the default
//! poll interval and lease. For each N it reports, from the server's own
//! statistics, what the steady fleet costs per instance per second
//! (statements from `pg_stat_statements`, `BEGIN`/`COMMIT` included;
//! commits; fleet-table row writes; WAL), then times a switch under calls:
//! how long after deploying mode was committed every instance had
//! acknowledged it (both ends on the database's clock), the switch's
//! duration, and the slowest call meanwhile. It ends with the per-instance
//! figures scaled to 10,000 instances. Reports, never asserts.
//!
//! ```text
//! cargo run --release --all-features --example fleet_scale -- \
//!     --database-url postgres://postgres@127.0.0.1:5432/postgres \
//!     --instances 1,10,100,500 --processes 5 --seconds 30 [--no-push] [--lease-ms N] [--no-calls]
//! ```
//!
//! `--no-calls` switches with no calls running (the switch then has no
//! call in flight to drain: what is left of its duration is the protocol's
//! own).
//!
//! The server needs `shared_preload_libraries = 'pg_stat_statements'`
//! (without it statements are reported as n/a) and `max_connections` above
//! the largest N plus a few per process (each handle keeps one pooled
//! connection; each process one listening session). Each N gets a fresh
//! database, dropped after.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use tandem::testing::FreshDatabase;
use tandem::{Error, Postgres, Tandem};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

fn open(url: &str, label: &str, push: bool) -> Tandem<Postgres> {
    let builder =
        Tandem::<Postgres>::builder(url, tandem::testing::demo::catalog().expect("demo catalog"))
            .serves(1..=2)
            .label(label)
            .pool_size(1)
            .push(push)
            .backfill(2, "copy emails", tandem::testing::demo::backfill_emails);
    match lease() {
        Some(lease) => builder.lease(lease),
        None => builder,
    }
    .open()
    .expect("open an instance")
}

/// `--lease-ms N`: every handle's lease instead of the default (30 s).
fn lease() -> Option<Duration> {
    arg("--lease-ms").map(|ms| Duration::from_millis(ms.parse().expect("--lease-ms N")))
}

/// A child process: opens `--count` handles, says `ready`, on `calls`
/// starts one caller thread (a unit of work every 2 ms, round robin over
/// its handles), on `stop` prints `calls <n> errors <n> max_us <n>` and
/// exits (dropping its handles: each leaves the fleet).
fn child(url: &str) {
    let count: usize = arg("--count").map_or(1, |c| c.parse().expect("--count N"));
    let push = !flag("--no-push");
    let handles: Vec<Tandem<Postgres>> = (0..count)
        .map(|i| open(url, &format!("scale-{}-{i}", std::process::id()), push))
        .collect();
    let pushed = handles.iter().filter(|h| h.pushed()).count();
    println!("ready {pushed}");
    let stop = Arc::new(AtomicBool::new(false));
    let mut caller = None;
    for line in std::io::stdin().lock().lines() {
        match line.expect("read a command").as_str() {
            "calls" => {
                let (handles, stop) = (handles.clone(), Arc::clone(&stop));
                caller = Some(thread::spawn(move || {
                    let (mut calls, mut errors, mut max) = (0u64, 0u64, Duration::ZERO);
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let r = handles[i % handles.len()].unit_of_work(|s| {
                            diesel::sql_query("SELECT 1").execute(s.conn())?;
                            Ok::<_, Error>(())
                        });
                        max = max.max(started.elapsed());
                        calls += 1;
                        errors += u64::from(r.is_err());
                        i += 1;
                        thread::sleep(Duration::from_millis(2));
                    }
                    (calls, errors, max)
                }));
            }
            "stop" => break,
            other => panic!("unknown command {other}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (calls, errors, max) = caller
        .map(|c| c.join().expect("the caller"))
        .unwrap_or_default();
    println!("calls {calls} errors {errors} max_us {}", max.as_micros());
    drop(handles);
}

#[derive(QueryableByName, Debug, Clone, Copy)]
struct Counters {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    statements: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    commits: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    fleet_writes: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    wal: i64,
}

#[derive(QueryableByName)]
struct Statements {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    statements: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    commits: Option<i64>,
}

/// The counters of database `name`: statements and commits from
/// `pg_stat_statements` (read through `admin`, a connection to the database
/// holding the extension, so that the measured one has no view of it), or
/// `None` where it is not loaded; the fleet table's writes and the WAL
/// through `conn`.
fn counters(conn: &mut PgConnection, admin: Option<&mut PgConnection>, name: &str) -> Counters {
    let statements = admin.map(|admin| {
        diesel::sql_query(
            "SELECT sum(calls)::BIGINT AS statements, \
             sum(calls) FILTER (WHERE query = 'COMMIT')::BIGINT AS commits \
             FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1)",
        )
        .bind::<diesel::sql_types::Text, _>(name)
        .get_result::<Statements>(admin)
        .expect("read pg_stat_statements")
    });
    let mut c: Counters = diesel::sql_query(
        "SELECT NULL::BIGINT AS statements, NULL::BIGINT AS commits, \
         COALESCE((SELECT n_tup_upd + n_tup_ins + n_tup_del FROM pg_stat_user_tables \
                   WHERE relname = 'tandem_fleet'), 0)::BIGINT AS fleet_writes, \
         (pg_current_wal_lsn() - '0/0'::pg_lsn)::BIGINT AS wal",
    )
    .get_result(conn)
    .expect("read the statistics");
    if let Some(s) = statements {
        c.statements = Some(s.statements.unwrap_or(0));
        c.commits = Some(s.commits.unwrap_or(0));
    }
    c
}

#[derive(QueryableByName)]
struct Acked {
    #[diesel(sql_type = diesel::sql_types::Text)]
    mode: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    behind: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    since_ms: i64,
}

/// Polls the state and fleet rows every millisecond until deploying mode
/// has been acknowledged by every instance but the upgrader's own; returns
/// how long after deploying mode was committed that was, in milliseconds
/// of the database's clock.
fn acknowledgement_ms(url: &str, upgrader: &str) -> Option<i64> {
    let mut conn = PgConnection::establish(url).expect("connect the monitor");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let row: Acked = diesel::sql_query(
            "SELECT s.mode, \
             (SELECT count(*) FROM tandem_fleet f WHERE f.observed_epoch < s.epoch AND f.id <> $1) AS behind, \
             ((extract(epoch FROM clock_timestamp()) * 1000)::BIGINT - s.updated_at) AS since_ms \
             FROM tandem_state s WHERE s.id = 1",
        )
        .bind::<diesel::sql_types::Text, _>(upgrader)
        .get_result(&mut conn)
        .expect("read the fleet");
        if row.mode == "deploying" && row.behind == 0 {
            return Some(row.since_ms);
        }
        thread::sleep(Duration::from_millis(1));
    }
    None
}

struct Fleet {
    children: Vec<Child>,
}

impl Fleet {
    fn spawn(url: &str, n: usize, processes: usize, push: bool) -> (Fleet, usize) {
        let exe = std::env::current_exe().expect("this example's path");
        let processes = processes.clamp(1, n);
        let mut children = Vec::new();
        for p in 0..processes {
            let count = n / processes + usize::from(p < n % processes);
            let mut cmd = Command::new(&exe);
            cmd.args([
                "--child",
                "--database-url",
                url,
                "--count",
                &count.to_string(),
            ]);
            if !push {
                cmd.arg("--no-push");
            }
            if let Some(ms) = arg("--lease-ms") {
                cmd.args(["--lease-ms", &ms]);
            }
            children.push(
                cmd.stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("start a child process"),
            );
        }
        let mut pushed = 0;
        for c in &mut children {
            let line = read_line(c);
            pushed += line
                .strip_prefix("ready ")
                .and_then(|p| p.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("a child said {line:?}"));
        }
        (Fleet { children }, pushed)
    }

    fn tell(&mut self, command: &str) {
        for c in &mut self.children {
            let stdin = c.stdin.as_mut().expect("the child's stdin");
            writeln!(stdin, "{command}").expect("tell a child");
        }
    }

    /// Stops the callers: (calls, errors, slowest call).
    fn stop(mut self) -> (u64, u64, Duration) {
        self.tell("stop");
        let (mut calls, mut errors, mut max) = (0, 0, Duration::ZERO);
        for mut c in self.children {
            let line = read_line(&mut c);
            let f: Vec<u64> = line
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            calls += f[0];
            errors += f[1];
            max = max.max(Duration::from_micros(f[2]));
            c.wait().expect("a child exits");
        }
        (calls, errors, max)
    }
}

fn read_line(c: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(c.stdout.as_mut().expect("the child's stdout"))
        .read_line(&mut line)
        .expect("read a child's line");
    line.trim().to_owned()
}

fn main() {
    let server = arg("--database-url")
        .or_else(|| std::env::var("PG_DATABASE_URL").ok())
        .expect("--database-url postgres://… (or PG_DATABASE_URL)");
    if flag("--child") {
        return child(&server);
    }
    let sizes: Vec<usize> = arg("--instances")
        .unwrap_or_else(|| "1,10,100".to_owned())
        .split(',')
        .map(|n| n.trim().parse().expect("--instances 1,10,100"))
        .collect();
    let processes: usize = arg("--processes").map_or(5, |p| p.parse().expect("--processes N"));
    let seconds: u64 = arg("--seconds").map_or(10, |s| s.parse().expect("--seconds N"));
    let push = !flag("--no-push");
    let mut admin = PgConnection::establish(&server).expect("connect to the server");
    let statements = diesel::sql_query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&mut admin)
        .and_then(|_| {
            diesel::sql_query("SELECT count(*) FROM pg_stat_statements").execute(&mut admin)
        })
        .is_ok();
    println!(
        "steady fleet at the default poll (200 ms), lease {:?}, push {}, {seconds} s window; \
         per instance per second, then a switch under calls:",
        lease().unwrap_or(Duration::from_secs(30)),
        if push { "on" } else { "off" }
    );
    println!(
        "| N | processes | pushed | statements/s | commits/s | fleet row writes/s | WAL B/s | acknowledged (ms) | switch (ms) | slowest call (ms) | calls, errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut largest = None;
    for n in sizes {
        let fresh = FreshDatabase::postgres(&server).expect("a fresh database");
        let url = fresh.url().to_owned();
        let mut conn = PgConnection::establish(&url).expect("connect for the statistics");
        let name = url.rsplit('/').next().unwrap_or_default().to_owned();
        let upgrader = open(&url, "scale-upgrader", push);
        let (fleet, pushed) = Fleet::spawn(&url, n, processes, push);
        thread::sleep(Duration::from_secs(2)); // every open's own work done
        let before = counters(&mut conn, statements.then_some(&mut admin), &name);
        let started = Instant::now();
        thread::sleep(Duration::from_secs(seconds));
        let after = counters(&mut conn, statements.then_some(&mut admin), &name);
        let elapsed = started.elapsed().as_secs_f64();
        // The instances: the children's and the upgrader's. The counting
        // connection's own statement (one autocommit read, no COMMIT) is
        // subtracted from the statements.
        let per = |d: i64| d as f64 / elapsed / (n + 1) as f64;
        let delta =
            |a: Option<i64>, b: Option<i64>, own: i64| a.zip(b).map(|(a, b)| per(a - b - own));
        let steady = (
            delta(after.statements, before.statements, 1),
            delta(after.commits, before.commits, 0),
            per(after.fleet_writes - before.fleet_writes),
            per(after.wal - before.wal),
        );
        let shown = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.2}"));
        let mut fleet = fleet;
        if !flag("--no-calls") {
            fleet.tell("calls");
        }
        thread::sleep(Duration::from_millis(500));
        upgrader.upgrader().expand().expect("expand");
        let monitor = {
            let (url, id) = (url.clone(), upgrader.instance_id().to_owned());
            thread::spawn(move || acknowledgement_ms(&url, &id))
        };
        let switch_started = Instant::now();
        let report = upgrader.upgrader().switch().expect("switch");
        let switch = switch_started.elapsed();
        eprintln!(
            "N = {n}: the switch's fleet acknowledgement {:?}, schema write lock waited {:?} and held {:?}",
            report.fleet_ack, report.writer_wait, report.held
        );
        let acked = monitor.join().expect("the monitor");
        thread::sleep(Duration::from_millis(300));
        let (calls, errors, slowest) = fleet.stop();
        println!(
            "| {n} | {} | {pushed} | {} | {} | {:.2} | {:.0} | {} | {:.0} | {:.1} | {calls}, {errors} |",
            processes.clamp(1, n),
            shown(steady.0),
            shown(steady.1),
            steady.2,
            steady.3,
            acked.map_or("n/a".to_owned(), |a| a.to_string()),
            switch.as_secs_f64() * 1000.0,
            slowest.as_secs_f64() * 1000.0,
        );
        largest = Some(steady);
        drop(upgrader);
        drop(conn);
        drop(fresh);
    }
    if let Some((statements, commits, writes, wal)) = largest {
        let k = 10_000.0;
        println!(
            "scaled to 10,000 instances (the last N's per-instance figures, linear): {} statements/s, \
             {} commits/s ({} transaction ids a day), {:.0} fleet row writes/s, {:.1} GB of WAL a day",
            statements.map_or("n/a".to_owned(), |s| format!("{:.0}", s * k)),
            commits.map_or("n/a".to_owned(), |c| format!("{:.0}", c * k)),
            commits.map_or("n/a".to_owned(), |c| format!("{:.2e}", c * k * 86_400.0)),
            writes * k,
            wal * k * 86_400.0 / 1e9,
        );
    }
}
