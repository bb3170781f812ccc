//! A rolling upgrade under load, on a temporary SQLite file (WAL).
//!
//! Worker threads create accounts, read and update emails through the
//! `Accounts` repository while the upgrader moves the schema from version 1
//! (`accounts.email`) to version 2 (`account_emails`): expand with sync
//! triggers and a batched backfill, switch, contract. At the end every
//! acknowledged write is read back through the version 2 binding.
//!
//! ```text
//! cargo run --example rolling_upgrade [-- --threads 16 --seed-accounts 5000 --phase-ms 400]
//! ```
//!
//! The last line is a summary a script can check:
//! `summary: calls=… errors=… lost_writes=… versions_served=1,2 max_pause_ms=…`

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use tandem::{PhaseReport, Repository, Sqlite, Tandem};

/// Version 1: the email lives in `accounts`.
mod v1 {
    diesel::table! { accounts (id) { id -> BigInt, name -> Text, email -> Text, } }
}

/// Version 2: the email lives in `account_emails`.
mod v2 {
    diesel::table! { accounts (id) { id -> BigInt, name -> Text, } }
    diesel::table! { account_emails (account_id) { account_id -> BigInt, email -> Text, } }
}

diesel::table! { tandem_state (id) { id -> BigInt, version -> BigInt, } }

/// The application's repository: one implementation per schema version.
trait Accounts: Send + Sync {
    /// The schema version this binding was written for.
    fn version(&self) -> u32;
    fn create(&self, conn: &mut SqliteConnection, name: &str, email: &str) -> tandem::Result<i64>;
    fn email(&self, conn: &mut SqliteConnection, id: i64) -> tandem::Result<Option<String>>;
    fn set_email(&self, conn: &mut SqliteConnection, id: i64, email: &str) -> tandem::Result<()>;
}

struct AccountsV1;

impl Accounts for AccountsV1 {
    fn version(&self) -> u32 {
        1
    }
    fn create(&self, conn: &mut SqliteConnection, name: &str, email: &str) -> tandem::Result<i64> {
        use v1::accounts::dsl;
        Ok(diesel::insert_into(dsl::accounts)
            .values((dsl::name.eq(name), dsl::email.eq(email)))
            .returning(dsl::id)
            .get_result(conn)?)
    }
    fn email(&self, conn: &mut SqliteConnection, id: i64) -> tandem::Result<Option<String>> {
        use v1::accounts::dsl;
        Ok(dsl::accounts
            .find(id)
            .select(dsl::email)
            .first(conn)
            .optional()?)
    }
    fn set_email(&self, conn: &mut SqliteConnection, id: i64, email: &str) -> tandem::Result<()> {
        use v1::accounts::dsl;
        diesel::update(dsl::accounts.find(id))
            .set(dsl::email.eq(email))
            .execute(conn)?;
        Ok(())
    }
}

struct AccountsV2;

impl Accounts for AccountsV2 {
    fn version(&self) -> u32 {
        2
    }
    fn create(&self, conn: &mut SqliteConnection, name: &str, email: &str) -> tandem::Result<i64> {
        use v2::{account_emails as e, accounts as a};
        // Two inserts, atomic: a savepoint inside the caller's unit of work.
        Ok(conn.transaction(|conn| {
            let id: i64 = diesel::insert_into(a::table)
                .values(a::name.eq(name))
                .returning(a::id)
                .get_result(conn)?;
            diesel::insert_into(e::table)
                .values((e::account_id.eq(id), e::email.eq(email)))
                .execute(conn)?;
            QueryResult::Ok(id)
        })?)
    }
    fn email(&self, conn: &mut SqliteConnection, id: i64) -> tandem::Result<Option<String>> {
        use v2::account_emails::dsl;
        Ok(dsl::account_emails
            .find(id)
            .select(dsl::email)
            .first(conn)
            .optional()?)
    }
    fn set_email(&self, conn: &mut SqliteConnection, id: i64, email: &str) -> tandem::Result<()> {
        use v2::account_emails::dsl;
        diesel::replace_into(dsl::account_emails)
            .values((dsl::account_id.eq(id), dsl::email.eq(email)))
            .execute(conn)?;
        Ok(())
    }
}

struct Options {
    threads: usize,
    seed_accounts: usize,
    phase: Duration,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        threads: 16,
        seed_accounts: 5000,
        phase: Duration::from_millis(400),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--threads" => o.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--seed-accounts" => {
                o.seed_accounts = value()?
                    .parse()
                    .map_err(|e| format!("--seed-accounts: {e}"))?
            }
            "--phase-ms" => {
                o.phase =
                    Duration::from_millis(value()?.parse().map_err(|e| format!("--phase-ms: {e}"))?)
            }
            "-h" | "--help" => {
                return Err(
                    "usage: rolling_upgrade [--threads N] [--seed-accounts N] [--phase-ms MS]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other}; try --help")),
        }
    }
    Ok(o)
}

/// What one worker saw.
#[derive(Default)]
struct WorkerLog {
    calls: u64,
    errors: Vec<String>,
    /// The last email acknowledged for each account this worker owns.
    acknowledged: BTreeMap<i64, String>,
    /// Calls per binding version.
    by_version: BTreeMap<u32, u64>,
    /// Calls whose binding's version differed from the state row's version
    /// read inside the same call.
    mismatches: u64,
    slowest: Duration,
}

/// xorshift: enough randomness to mix operations, no dependency.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn worker(
    db: Tandem<Sqlite>,
    accounts: Arc<Repository<dyn Accounts>>,
    stop: Arc<AtomicBool>,
    n: usize,
) -> WorkerLog {
    let mut log = WorkerLog::default();
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64 ^ (n as u64 + 1);
    let mut owned: Vec<i64> = Vec::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let roll = next_random(&mut rng) % 10;
        seq += 1;
        let t0 = Instant::now();
        // Invariant 1: the binding's version is the live version for the whole
        // call; read the state row at the start and the end of each call.
        let live = |s: &mut tandem::Session<'_, Sqlite>| -> tandem::Result<i64> {
            Ok(tandem_state::table
                .select(tandem_state::version)
                .first(s.conn())?)
        };
        let pick = next_random(&mut rng) as usize;
        let result = if roll <= 3 || owned.is_empty() {
            // Writes go through a unit of work: one transaction, queued fairly.
            db.unit_of_work(|s| {
                let before = live(s)?;
                let repo = s.repo(&accounts)?;
                let email = format!("w{n}-{seq}@example.com");
                let id = repo.create(s.conn(), &format!("worker {n} #{seq}"), &email)?;
                let matched = before == live(s)? && before == i64::from(repo.version());
                Ok::<_, tandem::Error>((repo.version(), matched, Some((id, email))))
            })
        } else if roll <= 7 {
            let id = owned[pick % owned.len()];
            db.call(&accounts, |repo, s| {
                let before = live(s)?;
                repo.email(s.conn(), id)?;
                let matched = before == live(s)? && before == i64::from(repo.version());
                Ok::<_, tandem::Error>((repo.version(), matched, None))
            })
        } else {
            let id = owned[pick % owned.len()];
            db.unit_of_work(|s| {
                let before = live(s)?;
                let repo = s.repo(&accounts)?;
                let email = format!("w{n}-{seq}-updated@example.com");
                repo.set_email(s.conn(), id, &email)?;
                let matched = before == live(s)? && before == i64::from(repo.version());
                Ok::<_, tandem::Error>((repo.version(), matched, Some((id, email))))
            })
        };
        log.calls += 1;
        let took = t0.elapsed();
        if took > log.slowest {
            log.slowest = took;
        }
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

fn report_phase(label: &str, r: &PhaseReport) {
    let lock = if matches!(r.phase, tandem::Phase::Switch | tandem::Phase::SwitchBack) {
        format!(
            ", writer waited {:.2} ms, held the lock {:.2} ms{}",
            r.writer_wait.as_secs_f64() * 1e3,
            r.held.as_secs_f64() * 1e3,
            if r.escalated { " (escalated)" } else { "" }
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let o = options()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("rolling.db");
    let url = path.to_string_lossy().into_owned();

    let db = Tandem::<Sqlite>::builder(&url, tandem::demo::catalog()?)
        .serves(1..=2)
        .pool_size(u32::try_from(o.threads)? + 2)
        .backfill(
            2,
            "copy emails into account_emails",
            tandem::demo::backfill_emails,
        )
        .label("rolling_upgrade")
        .open()?;
    let accounts: Arc<Repository<dyn Accounts>> = Arc::new(
        Repository::<dyn Accounts>::builder("accounts")
            .binding(1, Arc::new(AccountsV1))
            .binding(2, Arc::new(AccountsV2))
            .build()?,
    );

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
        "tandem rolling upgrade: {} threads on {} (SQLite WAL), {} seeded accounts",
        o.threads, url, o.seed_accounts
    );
    db.reset_max_lock_wait();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..o.threads)
        .map(|n| {
            let (db, accounts, stop) = (db.clone(), Arc::clone(&accounts), Arc::clone(&stop));
            thread::spawn(move || worker(db, accounts, stop, n))
        })
        .collect();

    let upgrader = db.upgrader();
    let mut reports = Vec::new();
    thread::sleep(o.phase);
    reports.push(("expand", upgrader.expand()?));
    thread::sleep(o.phase);
    reports.push(("switch", upgrader.switch()?));
    thread::sleep(o.phase);
    reports.push(("contract", upgrader.contract()?));
    thread::sleep(o.phase);
    stop.store(true, Ordering::Relaxed);

    let mut total = WorkerLog::default();
    let mut errors = Vec::new();
    for w in workers {
        let log = w.join().map_err(|_| "a worker thread panicked")?;
        total.calls += log.calls;
        total.mismatches += log.mismatches;
        total.slowest = total.slowest.max(log.slowest);
        errors.extend(log.errors);
        for (v, n) in log.by_version {
            *total.by_version.entry(v).or_default() += n;
        }
        total.acknowledged.extend(log.acknowledged);
    }
    let elapsed = started.elapsed();
    let max_pause = db.max_lock_wait();

    // Every acknowledged write, read back through the version 2 binding.
    let v2 = AccountsV2;
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
    for e in errors.iter().take(5) {
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
        errors.len() as u64 + total.mismatches,
        lost,
        total
            .by_version
            .keys()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        max_pause.as_secs_f64() * 1e3
    );
    let failed = !errors.is_empty() || lost > 0 || total.mismatches > 0;
    if failed {
        return Err("the upgrade lost writes or failed calls".into());
    }
    Ok(())
}
