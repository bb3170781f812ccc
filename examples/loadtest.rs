//! Load harness: K threads of mixed reads and writes against a backend while
//! the upgrader runs a full expand / switch / contract (accounts.email moves
//! to account_emails), then a saturation run where every thread calls
//! back-to-back while the switch takes the writer lock.
//!
//! ```text
//! cargo run --release --example loadtest                      # SQLite (WAL file)
//! cargo run --release --all-features --example loadtest -- \
//!     --database-url postgres://user@127.0.0.1/postgres \
//!     --json --plot latency.svg                               # SQLite and PostgreSQL
//! cargo run --release --example loadtest -- --quick           # < 1 minute
//! cargo run --release --all-features --example loadtest -- \
//!     --database-url postgres://user@127.0.0.1:5432/postgres \
//!     --pgbouncer postgres://user@127.0.0.1:6432             # and behind PgBouncer
//! ```
//!
//! A third run, the long phase: an expand whose SQL keeps the database busy
//! for 10 s (2 s with `--quick`; on SQLite it holds the only write lock all
//! along), longer than the instances' leases, while threads read through
//! the upgrader's handle and another handle. Reported: the reads' p99 and
//! longest, per handle (the target: at most 100 ms on SQLite).
//!
//! Reported per backend: per-call latency histograms (hdrhistogram) before,
//! during and after the switch (p50 / p99 / p99.9 / max), throughput, the
//! longest wait any call had on the schema lock, the writer's acquisition
//! time, errors and lost writes (every acknowledged write is read back
//! through the version 2 binding), and the steady-state overhead: tandem ÷
//! raw diesel on the same point select over the same pool, interleaved in
//! the same run. `--json` prints one JSON object per backend per line.
//! `--database-url` names a PostgreSQL server database where the harness may
//! `CREATE DATABASE` (it drops what it creates). `--pgbouncer` names a
//! PgBouncer in transaction mode in front of that server: the PostgreSQL
//! runs are made once more through it (`postgres+pgbouncer`), each fresh
//! database reached through the pooler, diesel's statement cache off.
//! Nothing is asserted: it reports.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use hdrhistogram::Histogram;
use tandem::{Backend, PhaseReport, Repository, Tandem};

#[path = "shared/accounts.rs"]
mod accounts;
use accounts::{repository, Accounts, AccountsV1, AccountsV2};

type Backfill<B> = fn(&mut <B as Backend>::Connection) -> QueryResult<usize>;
type Repo<B> = Arc<Repository<dyn Accounts<<B as Backend>::Connection>>>;
type Failure = Box<dyn std::error::Error>;

const USAGE: &str = "usage: loadtest [--threads K] [--seconds S] [--quick] [--json] \
                     [--database-url postgres://…] [--pgbouncer postgres://…] [--plot FILE.svg]";

struct Options {
    threads: usize,
    /// Seconds of load before, between and after the phases.
    seconds: f64,
    quick: bool,
    json: bool,
    database_url: Option<String>,
    pgbouncer: Option<String>,
    plot: Option<String>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        threads: 16,
        seconds: 4.0,
        quick: false,
        json: false,
        database_url: None,
        pgbouncer: None,
        plot: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--threads" => o.threads = value()?.parse().map_err(|e| format!("{flag}: {e}"))?,
            "--seconds" => o.seconds = value()?.parse().map_err(|e| format!("{flag}: {e}"))?,
            "--quick" => o.quick = true,
            "--json" => o.json = true,
            "--database-url" => o.database_url = Some(value()?),
            "--pgbouncer" => o.pgbouncer = Some(value()?),
            "--plot" => o.plot = Some(value()?),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}; {USAGE}")),
        }
    }
    if o.quick {
        o.seconds = o.seconds.min(1.0);
    }
    o.threads = o.threads.max(1);
    Ok(o)
}

/// One call as the caller saw it.
#[derive(Clone, Copy)]
struct Sample {
    /// Start, since the run began.
    at: Duration,
    latency: Duration,
}

#[derive(Default)]
struct WorkerLog {
    samples: Vec<Sample>,
    errors: Vec<String>,
    /// The last email acknowledged for each account this worker owns.
    acked: BTreeMap<i64, String>,
    /// Binding versions that served writes.
    versions: std::collections::BTreeSet<u32>,
}

/// xorshift: enough randomness to mix operations.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Mixed load: 70 % point reads, 20 % email updates and 10 % new accounts
/// (writes in units of work), `think` between calls (zero: back-to-back).
fn worker<B: Backend>(
    db: Tandem<B>,
    repo: Repo<B>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
    n: usize,
    think: Duration,
    seeded: i64,
) -> WorkerLog {
    let mut log = WorkerLog::default();
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64 ^ (n as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
    let mut owned: Vec<i64> = Vec::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let roll = next(&mut rng) % 10;
        let pick = next(&mut rng);
        let start = Instant::now();
        let result = if roll < 7 {
            let id = (pick % seeded as u64) as i64 + 1;
            db.call(&repo, |r, s| r.email(s.conn(), id)).map(|_| None)
        } else if roll < 9 && !owned.is_empty() {
            let id = owned[(pick % owned.len() as u64) as usize];
            let email = format!("w{n}-{seq}-u@x");
            db.unit_of_work(|s| {
                let r = s.repo(&repo)?;
                r.set_email(s.conn(), id, &email)?;
                Ok::<_, tandem::Error>(r.version())
            })
            .map(|v| {
                log.versions.insert(v);
                Some((id, email))
            })
        } else {
            let email = format!("w{n}-{seq}@x");
            db.unit_of_work(|s| {
                let r = s.repo(&repo)?;
                Ok::<_, tandem::Error>((r.create(s.conn(), "load", &email)?, r.version()))
            })
            .map(|(id, v)| {
                log.versions.insert(v);
                owned.push(id);
                Some((id, email))
            })
        };
        let latency = start.elapsed();
        match result {
            Ok(write) => {
                log.samples.push(Sample {
                    at: start - epoch,
                    latency,
                });
                if let Some((id, email)) = write {
                    log.acked.insert(id, email);
                }
            }
            Err(e) => log.errors.push(e.to_string()),
        }
        if !think.is_zero() {
            thread::sleep(think);
        }
    }
    log
}

/// Runs `threads` workers until `upgrade` returns; merges what they saw.
fn under_load<B: Backend, T>(
    db: &Tandem<B>,
    repo: &Repo<B>,
    threads: usize,
    think: Duration,
    seeded: i64,
    epoch: Instant,
    upgrade: impl FnOnce() -> Result<T, Failure>,
) -> Result<(T, WorkerLog), Failure> {
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..threads)
        .map(|n| {
            let (db, repo, stop) = (db.clone(), Arc::clone(repo), Arc::clone(&stop));
            thread::spawn(move || worker(db, repo, stop, epoch, n, think, seeded))
        })
        .collect();
    let outcome = upgrade();
    stop.store(true, Ordering::Relaxed);
    let mut all = WorkerLog::default();
    for w in workers {
        let log = w.join().map_err(|_| "a worker thread panicked")?;
        all.samples.extend(log.samples);
        all.errors.extend(log.errors);
        all.acked.extend(log.acked);
        all.versions.extend(log.versions);
    }
    all.samples.sort_by_key(|s| s.at);
    Ok((outcome?, all))
}

fn open<B: Backend>(
    url: &str,
    pool: usize,
    statement_cache: bool,
    backfill: Backfill<B>,
) -> Result<Tandem<B>, Failure> {
    Ok(Tandem::<B>::builder(url, tandem::testing::demo::catalog()?)
        .serves(1..=2)
        .pool_size(u32::try_from(pool)? + 2)
        .statement_cache(statement_cache)
        .backfill(2, "copy emails into account_emails", backfill)
        .open()?)
}

fn seed<B: Backend>(db: &Tandem<B>, repo: &Repo<B>, n: i64) -> Result<(), Failure> {
    db.unit_of_work(|s| {
        let r = s.repo(repo)?;
        for i in 0..n {
            r.create(s.conn(), "seed", &format!("seed{i}@x"))?;
        }
        Ok::<_, tandem::Error>(())
    })?;
    Ok(())
}

/// tandem ÷ raw diesel on the same point select over the same pool,
/// alternating operation by operation; medians.
fn overhead<B: Backend>(
    db: &Tandem<B>,
    repo: &Repo<B>,
    seeded: i64,
    quick: bool,
) -> Result<f64, Failure>
where
    AccountsV1: Accounts<B::Connection>,
{
    let n = if quick { 3_000 } else { 20_000 };
    let (mut raw, mut ours) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let id = (i as i64) % seeded + 1;
        let start = Instant::now();
        std::hint::black_box(AccountsV1.email(&mut *db.connection()?, id)?);
        raw.push(start.elapsed());
        let start = Instant::now();
        std::hint::black_box(db.call(repo, |r, s| r.email(s.conn(), id))?);
        ours.push(start.elapsed());
    }
    raw.sort();
    ours.sort();
    Ok(ours[n / 2].as_secs_f64() / raw[n / 2].as_secs_f64())
}

/// Latency percentiles of a slice of samples, in ms.
struct Percentiles {
    calls: u64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn percentiles<'a>(samples: impl Iterator<Item = &'a Sample>) -> Result<Percentiles, Failure> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for s in samples {
        h.saturating_record(u64::try_from(s.latency.as_micros())?.max(1));
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(Percentiles {
        calls: h.len(),
        p50: ms(h.value_at_quantile(0.50)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    })
}

/// Everything one backend's runs measured.
struct Outcome {
    backend: &'static str,
    calls: u64,
    errors: usize,
    lost_writes: usize,
    versions: Vec<u32>,
    overhead_ratio: f64,
    throughput: f64,
    phases: Vec<(&'static str, Duration, Duration)>,
    windows: Vec<(&'static str, Percentiles)>,
    switch_max_wait: Duration,
    writer_acquire: Duration,
    switch_held: Duration,
    saturation: Saturation,
    long: LongPhase,
    samples: Vec<Sample>,
    first_errors: Vec<String>,
}

/// The long phase's run: reads beside an expand longer than the leases.
struct LongPhase {
    expand: Duration,
    /// (handle, percentiles of its reads during the expand).
    reads: Vec<(&'static str, Percentiles)>,
    errors: usize,
}

/// SQL that keeps the database busy for about `d`.
trait SlowSql: Backend {
    fn slow_sql(d: Duration) -> Result<String, Failure>;
}

impl SlowSql for tandem::Sqlite {
    /// A recursive count, sized by timing a smaller one on this machine.
    fn slow_sql(d: Duration) -> Result<String, Failure> {
        let count = |n: u64| {
            format!(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) \
                 SELECT count(*) FROM c"
            )
        };
        let mut conn = SqliteConnection::establish(":memory:")?;
        let probe = 500_000u64;
        let start = Instant::now();
        diesel::sql_query(count(probe)).execute(&mut conn)?;
        let per_row = start.elapsed().as_secs_f64() / probe as f64;
        Ok(format!("{};", count((d.as_secs_f64() / per_row) as u64)))
    }
}

#[cfg(feature = "postgres")]
impl SlowSql for tandem::Postgres {
    fn slow_sql(d: Duration) -> Result<String, Failure> {
        Ok(format!("SELECT pg_sleep({});", d.as_secs_f64()))
    }
}

/// Reads (point selects through the version 1 binding) on two handles, one
/// of them the upgrader's, while an expand of `d` runs.
fn long_phase<B: SlowSql>(
    o: &Options,
    fresh: &mut dyn FnMut(&str) -> Result<String, Failure>,
    statement_cache: bool,
    d: Duration,
) -> Result<LongPhase, Failure>
where
    AccountsV1: Accounts<B::Connection>,
    AccountsV2: Accounts<B::Connection>,
{
    let demo = tandem::testing::demo::catalog()?;
    let v1 = demo
        .phase(tandem::Version::FIRST, tandem::Phase::Expand, B::NAME)
        .ok_or("the demo catalog has no version 1")?
        .text
        .to_owned();
    let dir = tempfile::tempdir()?;
    for (file, text) in [
        ("0001_accounts/expand.sql", v1),
        (
            "0002_slow/expand.sql",
            format!(
                "CREATE TABLE labels (id INTEGER PRIMARY KEY); {}",
                B::slow_sql(d)?
            ),
        ),
    ] {
        let path = dir.path().join(file);
        std::fs::create_dir_all(path.parent().ok_or("no parent")?)?;
        std::fs::write(path, text)?;
    }
    let catalog = tandem::Catalog::from_dir(dir.path())?;
    let url = fresh("long")?;
    let open = |label: &str| {
        Tandem::<B>::builder(&url, catalog.clone())
            .serves(1..=2)
            .label(label)
            .pool_size(u32::try_from(o.threads)? + 2)
            .statement_cache(statement_cache)
            .open()
            .map_err(Failure::from)
    };
    let upgrader = open("upgrader")?;
    let other = open("other")?;
    let repo = repository::<B>()?;
    seed(&upgrader, &repo, 1000)?;
    let stop = Arc::new(AtomicBool::new(false));
    let per_handle = (o.threads / 2).max(1);
    let epoch = Instant::now();
    let mut workers = Vec::new();
    for (name, db) in [
        ("the upgrader's handle", &upgrader),
        ("another handle", &other),
    ] {
        for n in 0..per_handle {
            let (db, repo, stop) = (db.clone(), repo.clone(), stop.clone());
            workers.push((
                name,
                thread::spawn(move || {
                    let mut log = WorkerLog::default();
                    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ n as u64;
                    while !stop.load(Ordering::Relaxed) {
                        let id = i64::try_from(next(&mut rng) % 1000).unwrap_or(0) + 1;
                        let at = epoch.elapsed();
                        let started = Instant::now();
                        match db.call(&repo, |r, s| r.email(s.conn(), id)) {
                            Ok(_) => log.samples.push(Sample {
                                at,
                                latency: started.elapsed(),
                            }),
                            Err(e) => log.errors.push(e.to_string()),
                        }
                        thread::sleep(Duration::from_millis(1));
                    }
                    log
                }),
            ));
        }
    }
    thread::sleep(Duration::from_millis(500));
    let from = epoch.elapsed();
    let expanded = upgrader.upgrader().expand();
    let to = epoch.elapsed();
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut logs: BTreeMap<&'static str, Vec<Sample>> = BTreeMap::new();
    let mut errors = 0;
    for (name, w) in workers {
        let log = w.join().map_err(|_| "a reader panicked")?;
        errors += log.errors.len();
        logs.entry(name).or_default().extend(log.samples);
    }
    expanded?;
    let mut reads = Vec::new();
    for (name, samples) in &logs {
        reads.push((
            *name,
            percentiles(
                samples
                    .iter()
                    .filter(|s| s.at < to && s.at + s.latency >= from),
            )?,
        ));
    }
    Ok(LongPhase {
        expand: to - from,
        reads,
        errors,
    })
}

struct Saturation {
    calls: u64,
    writer_acquire: Duration,
    escalated: bool,
    max_stall: Duration,
    during: Percentiles,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The main run and the saturation run on one backend. `fresh` makes a new
/// empty database and returns its URL.
fn run<B: SlowSql>(
    backend: &'static str,
    statement_cache: bool,
    o: &Options,
    fresh: &mut dyn FnMut(&str) -> Result<String, Failure>,
    backfill: Backfill<B>,
) -> Result<Outcome, Failure>
where
    AccountsV1: Accounts<B::Connection>,
    AccountsV2: Accounts<B::Connection>,
{
    let seeded: i64 = if o.quick { 2_000 } else { 20_000 };
    let gap = Duration::from_secs_f64(o.seconds);
    let think = Duration::from_millis(1);
    let repo = repository::<B>()?;

    // --- the main run: paced load through expand, switch, contract --------
    let db = open::<B>(&fresh("main")?, o.threads, statement_cache, backfill)?;
    seed(&db, &repo, seeded)?;
    let overhead_ratio = overhead(&db, &repo, seeded, o.quick)?;
    let epoch = Instant::now();
    let mut phases = Vec::new();
    let mut switch_report: Option<PhaseReport> = None;
    let mut switch_max_wait = Duration::ZERO;
    let (_, log) = under_load(&db, &repo, o.threads, think, seeded, epoch, || {
        let up = db.upgrader();
        thread::sleep(gap);
        let t = epoch.elapsed();
        up.expand()?;
        phases.push(("expand", t, epoch.elapsed()));
        thread::sleep(gap);
        db.reset_max_lock_wait();
        let t = epoch.elapsed();
        switch_report = Some(up.switch()?);
        phases.push(("switch", t, epoch.elapsed()));
        switch_max_wait = db.max_lock_wait();
        thread::sleep(gap);
        let t = epoch.elapsed();
        up.contract()?;
        phases.push(("contract", t, epoch.elapsed()));
        thread::sleep(gap);
        Ok(())
    })?;
    let elapsed = log
        .samples
        .last()
        .map_or(Duration::ZERO, |s| s.at + s.latency);
    let (s0, s1) = phases
        .iter()
        .find(|p| p.0 == "switch")
        .map(|p| (p.1, p.2))
        .ok_or("no switch")?;
    let windows = vec![
        (
            "before",
            percentiles(log.samples.iter().filter(|s| s.at + s.latency < s0))?,
        ),
        (
            "during",
            percentiles(
                log.samples
                    .iter()
                    .filter(|s| s.at < s1 && s.at + s.latency >= s0),
            )?,
        ),
        (
            "after",
            percentiles(log.samples.iter().filter(|s| s.at >= s1))?,
        ),
    ];
    let two = repository::<B>()?;
    let mut lost_writes = 0;
    for (id, email) in &log.acked {
        let got = db.call(&two, |r, s| r.email(s.conn(), *id))?;
        if got.as_deref() != Some(email.as_str()) {
            lost_writes += 1;
        }
    }
    let live = db.call(&two, |r, s| r.live(s.conn()))?;
    if live != 2 {
        return Err(format!("the upgrade ended at version {live}, not 2").into());
    }
    let report = switch_report.ok_or("no switch report")?;
    drop(db);

    // --- the saturation run: back-to-back calls while the switch waits ----
    let db = open::<B>(&fresh("saturation")?, o.threads, statement_cache, backfill)?;
    seed(&db, &repo, seeded)?;
    db.upgrader().expand()?;
    let sat_epoch = Instant::now();
    let mut window = (Duration::ZERO, Duration::ZERO);
    let (sat_report, sat_log) = under_load(
        &db,
        &repo,
        o.threads,
        Duration::ZERO,
        seeded,
        sat_epoch,
        || {
            thread::sleep(gap.min(Duration::from_secs(1)));
            db.reset_max_lock_wait();
            let t = sat_epoch.elapsed();
            let r = db.upgrader().switch()?;
            window = (t, sat_epoch.elapsed());
            thread::sleep(Duration::from_millis(300));
            Ok(r)
        },
    )?;
    let saturation = Saturation {
        calls: sat_log.samples.len() as u64,
        writer_acquire: sat_report.writer_wait,
        escalated: sat_report.escalated,
        max_stall: db.max_lock_wait(),
        during: percentiles(
            sat_log
                .samples
                .iter()
                .filter(|s| s.at < window.1 && s.at + s.latency >= window.0),
        )?,
    };
    drop(db);

    // --- the long phase: reads beside an expand longer than the leases ------
    let long = long_phase::<B>(
        o,
        fresh,
        statement_cache,
        Duration::from_secs(if o.quick { 2 } else { 10 }),
    )?;

    Ok(Outcome {
        backend,
        calls: log.samples.len() as u64 + saturation.calls,
        errors: log.errors.len() + sat_log.errors.len() + long.errors,
        lost_writes,
        versions: log.versions.iter().copied().collect(),
        overhead_ratio,
        throughput: log.samples.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        phases,
        windows,
        switch_max_wait,
        writer_acquire: report.writer_wait,
        switch_held: report.held,
        saturation,
        long,
        first_errors: log
            .errors
            .iter()
            .chain(&sat_log.errors)
            .take(3)
            .cloned()
            .collect(),
        samples: log.samples,
    })
}

fn print_human(o: &Outcome, threads: usize) {
    println!("\n== {} ({threads} threads, 1 ms think time) ==", o.backend);
    println!(
        "steady overhead: tandem / raw diesel point select = {:.4} ({:+.2} %)",
        o.overhead_ratio,
        (o.overhead_ratio - 1.0) * 100.0
    );
    for (name, from, to) in &o.phases {
        println!(
            "phase {name:<8} {:>8.1} ms .. {:>8.1} ms ({:.1} ms)",
            ms(*from),
            ms(*to),
            ms(*to - *from)
        );
    }
    println!("latency     calls      p50 ms   p99 ms   p99.9 ms   max ms");
    for (name, p) in &o.windows {
        println!(
            "{name:<8} {:>8} {:>10.3} {:>8.3} {:>10.3} {:>8.3}",
            p.calls, p.p50, p.p99, p.p999, p.max
        );
    }
    println!(
        "switch: writer acquired the lock in {:.3} ms, held it {:.3} ms; longest wait of any call on the schema lock {:.3} ms",
        ms(o.writer_acquire),
        ms(o.switch_held),
        ms(o.switch_max_wait)
    );
    println!(
        "saturation ({threads} threads back-to-back): writer acquired in {:.3} ms (escalated: {}), longest reader stall {:.3} ms, p99 during the switch {:.3} ms over {} calls",
        ms(o.saturation.writer_acquire),
        o.saturation.escalated,
        ms(o.saturation.max_stall),
        o.saturation.during.p99,
        o.saturation.during.calls
    );
    for (name, p) in &o.long.reads {
        println!(
            "long phase (expand of {:.1} s): reads through {name}: {} calls, p99 {:.3} ms, max {:.3} ms",
            o.long.expand.as_secs_f64(),
            p.calls,
            p.p99,
            p.max
        );
    }
    println!(
        "calls {} ({:.0}/s paced), errors {}, lost writes {}, versions that served writes {:?}",
        o.calls, o.throughput, o.errors, o.lost_writes, o.versions
    );
    for e in &o.first_errors {
        println!("  error: {e}");
    }
}

fn json(o: &Outcome) -> String {
    let mut s = format!(
        "{{\"backend\":\"{}\",\"calls\":{},\"errors\":{},\"lost_writes\":{},\"steady_overhead_ratio\":{:.5},\
         \"switch_max_wait_ms\":{:.3},\"switch_p99_ms\":{:.3},\"writer_acquire_ms\":{:.3},\"switch_held_ms\":{:.3},\
         \"throughput_per_s\":{:.1}",
        o.backend,
        o.calls,
        o.errors,
        o.lost_writes,
        o.overhead_ratio,
        ms(o.switch_max_wait),
        o.windows.iter().find(|w| w.0 == "during").map_or(0.0, |w| w.1.p99),
        ms(o.writer_acquire),
        ms(o.switch_held),
        o.throughput
    );
    for (name, p) in &o.windows {
        let _ = write!(
            s,
            ",\"{name}_p50_ms\":{:.3},\"{name}_p99_ms\":{:.3},\"{name}_p999_ms\":{:.3},\"{name}_max_ms\":{:.3}",
            p.p50, p.p99, p.p999, p.max
        );
    }
    let _ = write!(
        s,
        ",\"saturation_writer_acquire_ms\":{:.3},\"saturation_escalated\":{},\"saturation_max_stall_ms\":{:.3},\"saturation_switch_p99_ms\":{:.3}",
        ms(o.saturation.writer_acquire),
        o.saturation.escalated,
        ms(o.saturation.max_stall),
        o.saturation.during.p99
    );
    let _ = write!(
        s,
        ",\"long_expand_s\":{:.3},\"long_read_errors\":{}",
        o.long.expand.as_secs_f64(),
        o.long.errors
    );
    for (name, p) in &o.long.reads {
        let which = if name.starts_with("another") {
            "other"
        } else {
            "upgrader"
        };
        let _ = write!(
            s,
            ",\"long_reads_{which}_p99_ms\":{:.3},\"long_reads_{which}_max_ms\":{:.3}",
            p.p99, p.max
        );
    }
    s.push('}');
    s
}

/// Latency over time, one panel per backend: the slowest call of each 20 ms
/// bucket and the median, phases shaded.
fn plot(path: &str, outcomes: &[Outcome]) -> Result<(), Failure> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1100, 380 * outcomes.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    for (o, area) in outcomes.iter().zip(root.split_evenly((outcomes.len(), 1))) {
        let bucket = Duration::from_millis(20);
        let mut buckets: BTreeMap<u128, Vec<f64>> = BTreeMap::new();
        for s in &o.samples {
            buckets
                .entry(s.at.as_nanos() / bucket.as_nanos())
                .or_default()
                .push(ms(s.latency));
        }
        let series = |pick: fn(&mut Vec<f64>) -> f64| -> Vec<(f64, f64)> {
            buckets
                .iter()
                .map(|(b, v)| {
                    let mut v = v.clone();
                    v.sort_by(f64::total_cmp);
                    (*b as f64 * bucket.as_secs_f64(), pick(&mut v).max(0.001))
                })
                .collect()
        };
        let max_line = series(|v| v[v.len() - 1]);
        let median_line = series(|v| v[v.len() / 2]);
        let x_end = max_line.last().map_or(1.0, |p| p.0) + 0.1;
        let y_top = max_line.iter().map(|p| p.1).fold(1.0, f64::max) * 2.0;
        let mut chart = ChartBuilder::on(&area)
            .caption(
                format!(
                    "{}: call latency over time (max and median per 20 ms; switch max wait {:.2} ms, writer acquired in {:.2} ms)",
                    o.backend,
                    ms(o.switch_max_wait),
                    ms(o.writer_acquire)
                ),
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..x_end, (0.001..y_top).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("seconds since the load started")
            .y_desc("latency (ms, log)")
            .draw()?;
        let shades = [
            RGBColor(255, 230, 180),
            RGBColor(255, 170, 170),
            RGBColor(190, 220, 255),
        ];
        for ((name, from, to), shade) in o.phases.iter().zip(shades) {
            let (a, b) = (
                from.as_secs_f64(),
                to.as_secs_f64().max(from.as_secs_f64() + 0.01),
            );
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(a, 0.001), (b, y_top)],
                    shade.mix(0.6).filled(),
                )))?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], shade.filled())
                });
        }
        chart
            .draw_series(LineSeries::new(max_line, &RED))?
            .label("max")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], RED));
        chart
            .draw_series(LineSeries::new(median_line, &BLUE))?
            .label("median")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], BLUE));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn main() -> Result<(), Failure> {
    let o = options()?;
    let mut outcomes = Vec::new();

    let dir = tempfile::tempdir()?;
    let mut sqlite_fresh = |name: &str| -> Result<String, Failure> {
        Ok(dir
            .path()
            .join(format!("{name}.db"))
            .to_string_lossy()
            .into_owned())
    };
    outcomes.push(run::<tandem::Sqlite>(
        "sqlite",
        true,
        &o,
        &mut sqlite_fresh,
        tandem::testing::demo::backfill_emails,
    )?);

    if let Some(url) = &o.database_url {
        #[cfg(feature = "postgres")]
        {
            let mut created = Vec::new();
            let mut pg_fresh = |_name: &str| -> Result<String, Failure> {
                let db = tandem::testing::FreshDatabase::postgres(url)?;
                let fresh_url = db.url().to_owned();
                created.push(db); // dropped (and the database with it) at the end
                Ok(fresh_url)
            };
            let outcome = run::<tandem::Postgres>(
                "postgres",
                true,
                &o,
                &mut pg_fresh,
                tandem::testing::demo::backfill_emails,
            );
            drop(created);
            outcomes.push(outcome?);
            if let Some(bouncer) = &o.pgbouncer {
                let mut created = Vec::new();
                let mut bouncer_fresh = |_name: &str| -> Result<String, Failure> {
                    let db = tandem::testing::FreshDatabase::postgres(url)?;
                    let name = db.url().rsplit('/').next().unwrap_or_default().to_owned();
                    created.push(db);
                    Ok(format!("{}/{name}", bouncer.trim_end_matches('/')))
                };
                let outcome = run::<tandem::Postgres>(
                    "postgres+pgbouncer",
                    false,
                    &o,
                    &mut bouncer_fresh,
                    tandem::testing::demo::backfill_emails,
                );
                drop(created);
                outcomes.push(outcome?);
            }
        }
        #[cfg(not(feature = "postgres"))]
        return Err(format!(
            "{} needs the postgres feature: cargo run --release --all-features --example loadtest",
            tandem::redact(url)
        )
        .into());
    }

    for outcome in &outcomes {
        if o.json {
            println!("{}", json(outcome));
        } else {
            print_human(outcome, o.threads);
        }
    }
    if let Some(path) = &o.plot {
        plot(path, &outcomes)?;
        if !o.json {
            println!("\nplot written to {path}");
        }
    }
    Ok(())
}
