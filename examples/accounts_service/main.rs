//! An accounts service across three schema versions, on SQLite (default) or
//! PostgreSQL (`-- --database-url postgres://…`).
//!
//! An installation in the field is at version 1. The new release has
//! bindings for versions 2 and 3 only (the version 1 code is gone). It starts
//! on the old database: requests get `503` with `Retry-After` (typed
//! [`tandem::Error::Upgrading`], no statement ran) while `upgrade_to(3)`
//! walks 1→2→3 in the background, then work again; the "plans" feature is
//! off until the live version is 3 (a version gate, decided once per call).
//!
//! Prints every change of response and a summary, and counts every non-2xx
//! answer by its cause. Exits non-zero unless every request during the
//! upgrade answered 2xx, `503` because the database was behind the release
//! (`Upgrading`, with `Retry-After`), or `404` from the version-gated route
//! while its feature was off: a lock or pool timeout, a missing account or
//! any other error fails the run, and so does a lost account.

mod app;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use app::{AppBackend, Cause, Response, Service};
use tandem::testing::FreshDatabase;

type Failure = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Failure> {
    let mut args = std::env::args().skip(1);
    let mut url = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--database-url" => url = Some(args.next().ok_or("--database-url needs a value")?),
            "-h" | "--help" => {
                println!("usage: accounts_service [--database-url postgres://user@host:port/db]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    match url {
        None => run::<tandem::Sqlite>(&FreshDatabase::sqlite_file()?),
        #[cfg(feature = "postgres")]
        Some(url) => run::<tandem::Postgres>(&FreshDatabase::postgres(&url)?),
        #[cfg(not(feature = "postgres"))]
        Some(_) => Err("PostgreSQL needs the postgres feature: cargo run --all-features --example accounts_service".into()),
    }
}

fn run<B: AppBackend>(fresh: &FreshDatabase) -> Result<(), Failure> {
    println!("== {} at {}", B::NAME, tandem::redact(fresh.url()));

    // The installation in the field: release 1 (version 1 only) and its data.
    let mut ids = Vec::new();
    {
        let old = Service::<B>::open(fresh.url(), 1..=1, "release-1")?;
        for (first, last) in [
            ("Ada", "Lovelace"),
            ("Grace", "Hopper"),
            ("Alan", "Turing"),
            ("Edsger", ""),
        ] {
            let r = old.create_account(
                first,
                last,
                &format!("{}@example.com", first.to_lowercase()),
            );
            ids.push(
                r.body
                    .parse::<i64>()
                    .map_err(|_| format!("create failed: {r:?}"))?,
            );
        }
        println!(
            "release 1 wrote {} accounts: {}",
            ids.len(),
            old.get_account(ids[0]).body
        );
    } // release 1 is stopped

    // Release 3 starts on the old database: it serves versions 2 and 3.
    let new = Arc::new(Service::<B>::open(fresh.url(), 2..=3, "release-3")?);
    let first = new.get_account(ids[0]);
    println!(
        "release 3 on a version 1 database: {} Retry-After: {:?} ({})",
        first.status, first.retry_after, first.body
    );

    // Upgrade in the background, 1→2→3, while requests keep coming.
    let done = Arc::new(AtomicBool::new(false));
    let upgrader = {
        let (new, done) = (Arc::clone(&new), Arc::clone(&done));
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            let result = new.db.upgrader().upgrade_to(3);
            thread::sleep(Duration::from_millis(100));
            done.store(true, Ordering::Release);
            result
        })
    };
    let started = Instant::now();
    let (mut tally, mut last, mut unexpected) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
    let mut causes = BTreeMap::new();
    let mut n = 0usize;
    while !done.load(Ordering::Acquire) {
        n += 1;
        let id = ids[n % ids.len()];
        let responses = [
            ("GET account", new.get_account(id)),
            (
                "PUT plan",
                new.set_plan(id, if n % 2 == 0 { "pro" } else { "free" }),
            ),
        ];
        for (what, r) in responses {
            let kind = describe(what, &r);
            *tally.entry(kind.clone()).or_insert(0usize) += 1;
            if let Some(cause) = r.cause {
                *causes.entry(cause).or_insert(0usize) += 1;
            }
            if !expected_during_upgrade(what, &r) {
                unexpected.push(format!("{what}: {r:?}"));
            }
            if last.get(what) != Some(&kind) {
                println!("{:>7.1} ms  {kind}", started.elapsed().as_secs_f64() * 1e3);
                last.insert(what, kind);
            }
        }
        thread::sleep(Duration::from_millis(1));
    }
    let reports = upgrader
        .join()
        .map_err(|_| "the upgrader thread panicked")??;
    let phases: Vec<String> = reports
        .iter()
        .map(|r| format!("{} {}", r.phase, r.version))
        .collect();
    println!("upgrade_to(3) ran: {}", phases.join(", "));

    // Version 3 features, and nothing lost.
    let add = new.add_email(ids[0], "ada@analytical.engine");
    let set = new.set_plan(ids[0], "enterprise");
    println!(
        "add email: {} {}, set plan: {} {}",
        add.status, add.body, set.status, set.body
    );
    if add.status != 201 || set.status != 204 {
        unexpected.push(format!("version 3 features: {add:?} {set:?}"));
    }
    for &id in &ids {
        let r = new.get_account(id);
        println!("  {}", r.body);
        if r.status != 200 {
            unexpected.push(format!("account {id} after the upgrade: {r:?}"));
        }
    }
    println!("responses during the upgrade:");
    for (kind, count) in &tally {
        println!("  {count:>6} × {kind}");
    }
    println!("non-2xx answers by cause: {causes:?}");
    if causes.get(&Cause::Upgrading).copied().unwrap_or(0) == 0 {
        unexpected.push("no request saw the database behind the release (503 Upgrading): the run did not exercise the upgrade window".to_owned());
    }
    if !unexpected.is_empty() {
        return Err(format!(
            "{} unexpected responses, first: {}",
            unexpected.len(),
            unexpected[0]
        )
        .into());
    }
    println!(
        "ok: every request answered 2xx, 503 Upgrading with Retry-After, or 404 from the gated route while its feature was off"
    );
    Ok(())
}

/// What may answer during the upgrade: success; `503` because the database
/// is behind this release (with `Retry-After`); `404` from the version-gated
/// route while its feature is off. A timeout (lock or pool) is a failure of
/// the run, and so is a missing account.
fn expected_during_upgrade(what: &str, r: &Response) -> bool {
    match r.cause {
        None => (200..300).contains(&r.status),
        Some(Cause::Upgrading) => r.status == 503 && r.retry_after.is_some(),
        Some(Cause::FeatureOff) => what == "PUT plan" && r.status == 404,
        Some(Cause::Busy | Cause::Ahead | Cause::NotFound | Cause::Internal) => false,
    }
}

/// A response, without the parts that change per request.
fn describe(what: &str, r: &Response) -> String {
    let detail = match (r.status, &r.retry_after) {
        (503, Some(s)) => format!("Retry-After: {s}  {}", r.body),
        (200, _) => r
            .body
            .rsplit_once('(')
            .map_or(String::new(), |(_, v)| format!("({v}")),
        (404, _) => r.body.clone(),
        _ => String::new(),
    };
    format!("{what} -> {} {detail}", r.status)
}
