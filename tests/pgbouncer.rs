//! Behind a real PgBouncer in transaction mode (invariant 11 of
//! `tandem::protocol`: nothing depends on session state on a pooled
//! connection), with a server pool of 2 connections, so that clients share
//! server sessions the way a production pooler makes them.
//!
//! `PGBOUNCER_URL` is the pooler (`postgres://postgres@127.0.0.1:PORT`,
//! with `* = host=… pool_size=2` in its `[databases]`), `PG_DATABASE_URL`
//! the server it pools: each test makes a fresh database on the server and
//! reaches it through the pooler. `scripts/test` starts both and sets
//! `TANDEM_REQUIRE_PGBOUNCER=1`, under which a missing pooler fails.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tandem::{Error, Postgres, StatePhase, Tandem};

use common::pgbouncer_setup as through_pgbouncer;

fn open(url: &str, label: &str, slow_backfill: bool) -> Tandem<Postgres> {
    Tandem::<Postgres>::builder(url, tandem::testing::demo::catalog().unwrap())
        .serves(1..=2)
        .label(label)
        .statement_cache(false)
        .poll_interval(Duration::from_millis(50))
        .pool_size(4)
        .backfill(2, "copy emails", move |conn| {
            if slow_backfill {
                thread::sleep(Duration::from_millis(500));
            }
            tandem::testing::demo::backfill_emails(conn)
        })
        .open()
        .unwrap()
}

/// Upgraders exclude each other with no session state: one works, a second
/// is told who holds the lease, and once the first is done the next command
/// proceeds at once, whichever server connection it lands on (a session
/// advisory lock would stay held on the server connection that took it).
#[test]
fn upgraders_exclude_each_other_behind_pgbouncer() {
    let Some((_db, url)) = through_pgbouncer("upgraders_exclude_each_other_behind_pgbouncer")
    else {
        return;
    };
    let slow = open(&url, "slow", true);
    let other = open(&url, "other", false);
    common::seed(&slow, 30);
    let worker = {
        let slow = slow.clone();
        thread::spawn(move || slow.upgrader().expand())
    };
    thread::sleep(Duration::from_millis(300));
    match other.upgrader().expand() {
        Err(Error::UpgraderBusy { holder, .. }) => {
            assert!(holder.starts_with(slow.instance_id()), "{holder}")
        }
        other => panic!("a second upgrader must be refused while the first works: {other:?}"),
    }
    assert!(!worker.join().unwrap().unwrap().already_done);
    for round in 0..5 {
        // Every command after it proceeds at once, from either handle.
        let db = if round % 2 == 0 { &other } else { &slow };
        let started = Instant::now();
        db.upgrader()
            .expand()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "round {round}: {:?}",
            started.elapsed()
        );
    }
    other.upgrader().switch().unwrap();
    slow.upgrader().contract().unwrap();
    let s = other.state().unwrap();
    assert_eq!(
        (s.version.get(), s.phase, s.upgrader),
        (2, StatePhase::Stable, None)
    );
}

/// A fleet of three handles serving calls through the pooler while one of
/// them upgrades 1 → 2: every call runs one binding whose version is the
/// live one, none fails, every acknowledged write reads back.
#[test]
fn a_fleet_upgrades_behind_pgbouncer() {
    let Some((_db, url)) = through_pgbouncer("a_fleet_upgrades_behind_pgbouncer") else {
        return;
    };
    let fleet: Vec<Tandem<Postgres>> = (0..3)
        .map(|n| open(&url, &format!("i{n}"), false))
        .collect();
    common::seed(&fleet[0], 50);
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = fleet
        .iter()
        .enumerate()
        .map(|(n, db)| {
            let (db, stop) = (db.clone(), stop.clone());
            thread::spawn(move || {
                let repo = common::accounts_on::<diesel::PgConnection>();
                let (mut calls, mut acked, mut errors) = (0u64, Vec::new(), Vec::new());
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let email = format!("{n}-{i}@x");
                    let r = db.unit_of_work(|s| {
                        let r = s.repo(&repo)?;
                        let before = r.live(s.conn())?;
                        let id = r.create(s.conn(), "c", &email)?;
                        let after = r.live(s.conn())?;
                        Ok::<_, Error>((r.version(), before, after, id))
                    });
                    match r {
                        Ok((v, b, a, id)) if i64::from(v) == b && b == a => {
                            calls += 1;
                            acked.push((id, email));
                        }
                        Ok((v, b, a, _)) => errors.push(format!("binding {v}, versions {b}..{a}")),
                        Err(e) => errors.push(e.to_string()),
                    }
                    thread::sleep(Duration::from_millis(2));
                }
                (calls, acked, errors)
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    let reports = fleet[0].upgrader().upgrade_to(2).unwrap();
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let repo = common::accounts_on::<diesel::PgConnection>();
    let mut total = 0;
    for c in callers {
        let (calls, acked, errors) = c.join().unwrap();
        assert!(
            errors.is_empty(),
            "calls failed behind the pooler: {:?}",
            &errors[..errors.len().min(3)]
        );
        total += calls;
        for (id, email) in acked {
            let read = fleet[1].call(&repo, |r, s| r.email(s.conn(), id)).unwrap();
            assert_eq!(read.as_deref(), Some(email.as_str()), "lost write {id}");
        }
    }
    assert!(total > 0, "no call ran");
    assert_eq!(reports.len(), 3, "{reports:?}");
    eprintln!("{total} calls through PgBouncer across expand, switch and contract");
}
