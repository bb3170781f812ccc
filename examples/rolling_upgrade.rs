//! A rolling upgrade under load.
//!
//! Worker threads create accounts, read and update emails through the
//! `Accounts` repository while the upgrader moves the schema from version 1
//! (`accounts.email`) to version 2 (`account_emails`): expand with sync
//! triggers and a batched backfill, switch, contract. At the end every
//! acknowledged write is read back through the version 2 binding.
//!
//! ```text
//! cargo run --example rolling_upgrade                       # one process, SQLite file (WAL)
//! cargo run --all-features --example rolling_upgrade -- \
//!     --database-url postgres://user@localhost/db --instances 3   # 3 instance processes
//! ```
//!
//! With `--instances N` the example starts N copies of itself as instance
//! processes (each with `--threads` workers) and acts as the upgrader. The
//! last line is a summary a script can check:
//! `summary: calls=… errors=… lost_writes=… versions_served=1,2 max_pause_ms=…`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use tandem::{Backend, PhaseReport, Repository, Tandem};

#[path = "shared/accounts.rs"]
mod accounts;
use accounts::{repository, Accounts, AccountsV1, AccountsV2};

type Backfill<B> = fn(&mut <B as Backend>::Connection) -> QueryResult<usize>;

#[derive(Clone)]
struct Options {
    database_url: Option<String>,
    instances: usize,
    threads: usize,
    seed_accounts: usize,
    phase: Duration,
    /// Whether this process's SQLite writers queue in-process (`--no-writer-queue` turns it off).
    queue_writers: bool,
    /// Whether diesel caches prepared statements (`--no-statement-cache` for
    /// PgBouncer in transaction mode).
    statement_cache: bool,
    /// Internal: run as instance process number N, coordinating through DIR.
    role: Option<(usize, PathBuf)>,
}

const USAGE: &str = "usage: rolling_upgrade [--database-url URL] [--instances N] [--threads N] \
                     [--seed-accounts N] [--phase-ms MS] [--no-writer-queue] [--no-statement-cache]";

fn options() -> Result<Options, String> {
    let mut o = Options {
        database_url: None,
        instances: 1,
        threads: 0,
        seed_accounts: 5000,
        phase: Duration::from_millis(400),
        queue_writers: true,
        statement_cache: true,
        role: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--database-url" => o.database_url = Some(value()?),
            "--instances" => o.instances = number(value()?)?.max(1),
            "--threads" => o.threads = number(value()?)?,
            "--seed-accounts" => o.seed_accounts = number(value()?)?,
            "--phase-ms" => o.phase = Duration::from_millis(number(value()?)? as u64),
            "--instance" => {
                let n = number(value()?)?;
                o.role = Some((n, PathBuf::from(value()?)));
            }
            "--no-writer-queue" => o.queue_writers = false,
            "--no-statement-cache" => o.statement_cache = false,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}; {USAGE}")),
        }
    }
    if o.threads == 0 {
        o.threads = if o.instances > 1 { 8 } else { 16 };
    }
    Ok(o)
}

/// What worker threads saw.
#[derive(Default)]
struct Log {
    calls: u64,
    errors: Vec<String>,
    /// The last email acknowledged for each account the workers own.
    acknowledged: BTreeMap<i64, String>,
    /// Calls per binding version.
    by_version: BTreeMap<u32, u64>,
    /// Calls whose binding's version differed from the state row's, read
    /// at the start and the end of the same call.
    mismatches: u64,
    slowest: Duration,
    max_pause: Duration,
}

impl Log {
    fn merge(&mut self, other: Log) {
        self.calls += other.calls;
        self.errors.extend(other.errors);
        self.acknowledged.extend(other.acknowledged);
        for (v, n) in other.by_version {
            *self.by_version.entry(v).or_default() += n;
        }
        self.mismatches += other.mismatches;
        self.slowest = self.slowest.max(other.slowest);
        self.max_pause = self.max_pause.max(other.max_pause);
    }

    /// One line per record, for instance processes to hand to the upgrader.
    fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut out = format!(
            "S {} {} {} {}\n",
            self.calls,
            self.mismatches,
            self.slowest.as_nanos(),
            self.max_pause.as_nanos()
        );
        for (v, n) in &self.by_version {
            out.push_str(&format!("V {v} {n}\n"));
        }
        for (id, email) in &self.acknowledged {
            out.push_str(&format!("A {id} {email}\n"));
        }
        for e in &self.errors {
            out.push_str(&format!("E {}\n", e.replace('\n', " ")));
        }
        std::fs::write(path, out)
    }

    fn read(path: &Path) -> Result<Log, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut log = Log::default();
        for line in text.lines() {
            let f: Vec<&str> = line.splitn(5, ' ').collect();
            let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            match f.first() {
                Some(&"S") => {
                    log.calls = n(1);
                    log.mismatches = n(2);
                    log.slowest = Duration::from_nanos(n(3));
                    log.max_pause = Duration::from_nanos(n(4));
                }
                Some(&"V") => {
                    log.by_version.insert(n(1) as u32, n(2));
                }
                Some(&"A") => {
                    log.acknowledged
                        .insert(n(1) as i64, f.get(2).unwrap_or(&"").to_string());
                }
                _ => log.errors.push(line.trim_start_matches("E ").to_owned()),
            }
        }
        Ok(log)
    }
}

/// xorshift: enough randomness to mix operations, no dependency.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn worker<B: Backend>(
    db: Tandem<B>,
    accounts: Arc<Repository<dyn Accounts<B::Connection>>>,
    stop: Arc<AtomicBool>,
    tag: String,
) -> Log {
    let mut log = Log::default();
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64
        ^ tag
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let mut owned: Vec<i64> = Vec::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let roll = next_random(&mut rng) % 10;
        let pick = next_random(&mut rng) as usize;
        seq += 1;
        let started = Instant::now();
        // Each call checks invariant 1: its binding's version is the live
        // version at its start and its end.
        let result = if roll <= 3 || owned.is_empty() {
            // Writes go through a unit of work: one transaction (on SQLite
            // queued fairly in-process).
            let email = format!("{tag}-{seq}@example.com");
            db.unit_of_work(|s| {
                let repo = s.repo(&accounts)?;
                let before = repo.live(s.conn())?;
                let id = repo.create(s.conn(), &format!("{tag} #{seq}"), &email)?;
                let matched = before == repo.live(s.conn())? && before == i64::from(repo.version());
                Ok::<_, tandem::Error>((repo.version(), matched, Some((id, email))))
            })
        } else if roll <= 7 {
            let id = owned[pick % owned.len()];
            db.call(&accounts, |repo, s| {
                let before = repo.live(s.conn())?;
                repo.email(s.conn(), id)?;
                let matched = before == repo.live(s.conn())? && before == i64::from(repo.version());
                Ok::<_, tandem::Error>((repo.version(), matched, None))
            })
        } else {
            let id = owned[pick % owned.len()];
            let email = format!("{tag}-{seq}-updated@example.com");
            db.unit_of_work(|s| {
                let repo = s.repo(&accounts)?;
                let before = repo.live(s.conn())?;
                repo.set_email(s.conn(), id, &email)?;
                let matched = before == repo.live(s.conn())? && before == i64::from(repo.version());
                Ok::<_, tandem::Error>((repo.version(), matched, Some((id, email))))
            })
        };
        log.calls += 1;
        log.slowest = log.slowest.max(started.elapsed());
        match result {
            Ok((version, matched, outcome)) => {
                *log.by_version.entry(version).or_default() += 1;
                log.mismatches += u64::from(!matched);
                if let Some((id, email)) = outcome {
                    if !log.acknowledged.contains_key(&id) {
                        owned.push(id);
                    }
                    log.acknowledged.insert(id, email);
                }
            }
            Err(e) => log.errors.push(e.to_string()),
        }
    }
    log
}

fn open<B: Backend>(
    o: &Options,
    url: &str,
    label: &str,
    backfill: Backfill<B>,
) -> Result<Tandem<B>, Box<dyn std::error::Error>> {
    let pool = o.threads;
    Ok(Tandem::<B>::builder(url, tandem::testing::demo::catalog()?)
        .queue_writers(o.queue_writers)
        .statement_cache(o.statement_cache)
        .serves(1..=2)
        .pool_size(u32::try_from(pool)? + 2)
        .backfill(2, "copy emails into account_emails", backfill)
        .label(label)
        .open()?)
}

/// Runs `threads` workers on `db` until `until` returns.
fn serve<B: Backend>(
    db: &Tandem<B>,
    threads: usize,
    tag: &str,
    until: impl FnOnce() -> Result<(), Box<dyn std::error::Error>>,
) -> Result<Log, Box<dyn std::error::Error>>
where
    AccountsV1: Accounts<B::Connection>,
    AccountsV2: Accounts<B::Connection>,
{
    let accounts = repository::<B>()?;
    db.reset_max_lock_wait();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..threads)
        .map(|n| {
            let (db, accounts, stop) = (db.clone(), Arc::clone(&accounts), Arc::clone(&stop));
            let tag = format!("{tag}w{n}");
            thread::spawn(move || worker(db, accounts, stop, tag))
        })
        .collect();
    let outcome = until();
    stop.store(true, Ordering::Relaxed);
    let mut log = Log::default();
    for w in workers {
        log.merge(w.join().map_err(|_| "a worker thread panicked")?);
    }
    log.max_pause = db.max_lock_wait();
    outcome.map(|()| log)
}

fn report_phase(label: &str, r: &PhaseReport) {
    let lock = if matches!(r.phase, tandem::Phase::Switch | tandem::Phase::SwitchBack) {
        format!(
            ", writer waited {:.2} ms, held the lock {:.2} ms{}{}",
            r.writer_wait.as_secs_f64() * 1e3,
            r.held.as_secs_f64() * 1e3,
            if r.escalated { " (escalated)" } else { "" },
            r.fleet_ack.map_or(String::new(), |d| format!(
                ", fleet acknowledged deploying mode in {:.1} ms",
                d.as_secs_f64() * 1e3
            ))
        )
    } else {
        String::new()
    };
    let batches = if r.batches > 0 {
        format!(", {} backfill batches", r.batches)
    } else {
        String::new()
    };
    println!(
        "  {label:<9} version {} in {:.1} ms{batches}{lock}",
        r.version,
        r.duration.as_secs_f64() * 1e3
    );
}

fn wait_for(path: &Path, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {}", path.display()));
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// An instance process (`--instance N DIR`): serve until DIR/stop exists.
fn instance<B: Backend>(
    o: &Options,
    url: &str,
    n: usize,
    dir: &Path,
    backfill: Backfill<B>,
) -> Result<(), Box<dyn std::error::Error>>
where
    AccountsV1: Accounts<B::Connection>,
    AccountsV2: Accounts<B::Connection>,
{
    let db = open::<B>(o, url, &format!("instance-{n}"), backfill)?;
    let log = serve(&db, o.threads, &format!("i{n}"), || {
        std::fs::write(dir.join(format!("ready-{n}")), "")?;
        wait_for(&dir.join("stop"), Duration::from_secs(600))?;
        Ok(())
    })?;
    log.write(&dir.join(format!("log-{n}")))?;
    Ok(())
}

fn run<B: Backend>(
    o: &Options,
    url: &str,
    backfill: Backfill<B>,
) -> Result<(), Box<dyn std::error::Error>>
where
    AccountsV1: Accounts<B::Connection>,
    AccountsV2: Accounts<B::Connection>,
{
    if let Some((n, dir)) = &o.role {
        return instance::<B>(o, url, *n, dir, backfill);
    }
    let db = open::<B>(o, url, "upgrader", backfill)?;
    let accounts = repository::<B>()?;

    // Data written before the upgrade, which the backfill must carry over.
    let mut seeded = BTreeMap::new();
    db.unit_of_work(|s| -> tandem::Result<()> {
        let repo = s.repo(&accounts)?;
        for i in 0..o.seed_accounts {
            let email = format!("seed{i}@example.com");
            let id = repo.create(s.conn(), &format!("seed {i}"), &email)?;
            seeded.insert(id, email);
        }
        Ok(())
    })?;
    println!(
        "tandem rolling upgrade on {} ({}): {} instance process(es) x {} threads, {} seeded accounts",
        tandem::redact(url),
        B::NAME,
        o.instances,
        o.threads,
        o.seed_accounts
    );

    let started = Instant::now();
    let mut reports = Vec::new();
    let upgrade =
        |reports: &mut Vec<(&'static str, PhaseReport)>| -> Result<(), Box<dyn std::error::Error>> {
            let upgrader = db.upgrader();
            thread::sleep(o.phase);
            reports.push(("expand", upgrader.expand()?));
            thread::sleep(o.phase);
            reports.push(("switch", upgrader.switch()?));
            thread::sleep(o.phase);
            reports.push(("contract", upgrader.contract()?));
            thread::sleep(o.phase);
            Ok(())
        };
    let total = if o.instances == 1 {
        serve(&db, o.threads, "w", || upgrade(&mut reports))?
    } else {
        let dir = tempfile::tempdir()?;
        let exe = std::env::current_exe()?;
        let mut children: Vec<Child> = Vec::new();
        for n in 0..o.instances {
            children.push(
                Command::new(&exe)
                    .args([
                        "--database-url",
                        url,
                        "--threads",
                        &o.threads.to_string(),
                        "--instance",
                        &n.to_string(),
                    ])
                    .arg(dir.path())
                    .args((!o.queue_writers).then_some("--no-writer-queue"))
                    .args((!o.statement_cache).then_some("--no-statement-cache"))
                    .stdout(Stdio::null())
                    .spawn()?,
            );
        }
        for n in 0..o.instances {
            wait_for(
                &dir.path().join(format!("ready-{n}")),
                Duration::from_secs(60),
            )?;
        }
        let upgraded = upgrade(&mut reports);
        std::fs::write(dir.path().join("stop"), "")?;
        let mut total = Log::default();
        for (n, mut child) in children.into_iter().enumerate() {
            if !child.wait()?.success() {
                total.errors.push(format!("instance process {n} failed"));
                continue;
            }
            total.merge(Log::read(&dir.path().join(format!("log-{n}")))?);
        }
        upgraded?;
        total
    };
    let elapsed = started.elapsed();

    // Every acknowledged write, read back through the version 2 binding.
    let v2: &dyn Accounts<B::Connection> = &AccountsV2;
    let mut conn = db.connection()?;
    let mut lost = 0u64;
    for (id, email) in seeded.iter().chain(total.acknowledged.iter()) {
        let expected = total.acknowledged.get(id).unwrap_or(email);
        if v2.email(&mut conn, *id)?.as_deref() != Some(expected.as_str()) {
            lost += 1;
        }
    }

    println!("phases:");
    for (label, r) in &reports {
        report_phase(label, r);
    }
    println!(
        "calls: {} in {:.2} s ({:.0}/s), slowest {:.1} ms (lock wait and database); by binding version: {}",
        total.calls,
        elapsed.as_secs_f64(),
        total.calls as f64 / elapsed.as_secs_f64(),
        total.slowest.as_secs_f64() * 1e3,
        total.by_version.iter().map(|(v, n)| format!("v{v}={n}")).collect::<Vec<_>>().join(" ")
    );
    println!(
        "checks: {} acknowledged writes + {} seeded rows read back through v2, {} lost; {} calls ran a binding other than the live version",
        total.acknowledged.len(),
        seeded.len(),
        lost,
        total.mismatches
    );
    for e in total.errors.iter().take(5) {
        println!("error: {e}");
    }
    println!("live version: {}; history:", db.live_version());
    for h in db.history()? {
        println!(
            "  v{} {:<8} {:<8} sha256 {}…",
            h.version,
            h.phase,
            h.outcome,
            &h.checksum[..h.checksum.len().min(12)]
        );
    }
    println!(
        "summary: calls={} errors={} lost_writes={} versions_served={} max_pause_ms={:.3}",
        total.calls,
        total.errors.len() as u64 + total.mismatches,
        lost,
        total
            .by_version
            .keys()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        total.max_pause.as_secs_f64() * 1e3
    );
    if !total.errors.is_empty() || lost > 0 || total.mismatches > 0 {
        return Err("the upgrade lost writes or failed calls".into());
    }
    // The point of the demo is calls on both sides of the switch: a run in
    // which only one version served calls exercised nothing.
    if !(total.by_version.contains_key(&1) && total.by_version.contains_key(&2)) {
        return Err(format!(
            "calls ran with versions {:?} only: both version 1 and version 2 must have served calls",
            total.by_version.keys().collect::<Vec<_>>()
        )
        .into());
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let o = options()?;
    match o.database_url.clone() {
        Some(url) if url.starts_with("postgres") => {
            #[cfg(feature = "postgres")]
            return run::<tandem::Postgres>(&o, &url, tandem::testing::demo::backfill_emails);
            #[cfg(not(feature = "postgres"))]
            return Err(format!(
                "{} is a PostgreSQL URL: build with --features postgres (or --all-features)",
                tandem::redact(&url)
            )
            .into());
        }
        Some(path) => run::<tandem::Sqlite>(&o, &path, tandem::testing::demo::backfill_emails),
        None => {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("rolling.db").to_string_lossy().into_owned();
            run::<tandem::Sqlite>(&o, &path, tandem::testing::demo::backfill_emails)
        }
    }
}
