//! Calls under concurrency through a switch: every call runs with the live
//! version's binding, no write is lost, units of work see one version, and a
//! switch that cannot get the lock gives up leaving the database as it was.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{accounts, db_version, open_demo, per_backend, temp_db, Kit, SqliteKit};
use tandem::{Error, Sqlite, Tandem, WriterPolicy};

struct Seen {
    /// (binding version, state version at start, state version at end)
    calls: Vec<(u32, i64, i64)>,
    acknowledged: BTreeMap<i64, String>,
    errors: Vec<String>,
}

fn hammer<K: Kit>(db: Tandem<K::B>, stop: Arc<AtomicBool>, start: Arc<Barrier>, n: usize) -> Seen {
    let repo = K::repo();
    let mut seen = Seen {
        calls: Vec::new(),
        acknowledged: BTreeMap::new(),
        errors: Vec::new(),
    };
    start.wait();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let email = format!("t{n}-{i}@x");
        let result = if i % 3 == 0 && !seen.acknowledged.is_empty() {
            let id = *seen
                .acknowledged
                .keys()
                .nth((i as usize) % seen.acknowledged.len())
                .unwrap();
            db.call(&repo, |r, s| {
                let before = K::live(s.conn());
                r.email(s.conn(), id)?;
                Ok::<_, Error>((r.version(), before, K::live(s.conn()), None))
            })
        } else if i % 3 == 1 && !seen.acknowledged.is_empty() {
            let id = *seen.acknowledged.keys().next().unwrap();
            db.unit_of_work(|s| {
                let before = K::live(s.conn());
                let r = s.repo(&repo)?;
                r.set_email(s.conn(), id, &email)?;
                Ok::<_, Error>((r.version(), before, K::live(s.conn()), Some(id)))
            })
        } else {
            db.unit_of_work(|s| {
                let before = K::live(s.conn());
                let r = s.repo(&repo)?;
                let id = r.create(s.conn(), "t", &email)?;
                Ok::<_, Error>((r.version(), before, K::live(s.conn()), Some(id)))
            })
        };
        match result {
            Ok((v, before, after, written)) => {
                seen.calls.push((v, before, after));
                if let Some(id) = written {
                    seen.acknowledged.insert(id, email);
                }
            }
            Err(e) => seen.errors.push(e.to_string()),
        }
    }
    seen
}

fn many_threads_through_a_switch<K: Kit>(url: &str, threads: usize) {
    let db = K::open(url);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|n| {
            let (db, stop, start) = (db.clone(), stop.clone(), start.clone());
            thread::spawn(move || hammer::<K>(db, stop, start, n))
        })
        .collect();
    start.wait();
    thread::sleep(Duration::from_millis(150));
    db.upgrader().expand().unwrap();
    thread::sleep(Duration::from_millis(150));
    let switch = db.upgrader().switch().unwrap();
    thread::sleep(Duration::from_millis(150));
    db.upgrader().contract().unwrap();
    thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);

    let mut all = Vec::new();
    let mut acknowledged = BTreeMap::new();
    for h in handles {
        let seen = h.join().unwrap();
        assert!(
            seen.errors.is_empty(),
            "calls failed: {:?}",
            &seen.errors[..seen.errors.len().min(3)]
        );
        // Per thread, versions never go backwards.
        let versions: Vec<u32> = seen.calls.iter().map(|c| c.0).collect();
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "a thread went from v2 back to v1"
        );
        all.extend(seen.calls);
        acknowledged.extend(seen.acknowledged);
    }
    // Invariant 1: every call ran the binding of the live version, start to end.
    for (binding, before, after) in &all {
        assert_eq!(
            (i64::from(*binding), i64::from(*binding)),
            (*before, *after),
            "a call ran a binding other than the live version"
        );
    }
    let v1 = all.iter().filter(|c| c.0 == 1).count();
    let v2 = all.iter().filter(|c| c.0 == 2).count();
    assert!(v1 > 0 && v2 > 0, "both versions served: v1={v1} v2={v2}");
    // Invariant 4: every acknowledged write reads back through the v2 binding.
    let repo = K::repo();
    let mut lost = 0;
    for (id, email) in &acknowledged {
        let got = db
            .call(&repo, |r, s| {
                Ok::<_, Error>((r.version(), r.email(s.conn(), *id)?))
            })
            .unwrap();
        assert_eq!(got.0, 2);
        if got.1.as_deref() != Some(email.as_str()) {
            lost += 1;
        }
    }
    assert_eq!(lost, 0, "lost writes out of {}", acknowledged.len());
    assert!(acknowledged.len() > 10);
    eprintln!(
        "{} {threads} threads: {} calls (v1={v1}, v2={v2}), {} acknowledged writes, writer waited {:?}, max call lock wait {:?}",
        <K::B as tandem::Backend>::NAME,
        all.len(),
        acknowledged.len(),
        switch.writer_wait,
        db.max_lock_wait()
    );
}

/// On a SQLite file and on a fresh PostgreSQL database (default pool of 10
/// connections for 16 threads).
fn sixteen_threads_through_a_switch<K: Kit>() {
    let Some((_db, url)) = K::fresh() else { return };
    many_threads_through_a_switch::<K>(&url, 16);
}

per_backend!(sixteen_threads_through_a_switch);

#[test]
fn eight_threads_through_a_switch_in_memory() {
    many_threads_through_a_switch::<SqliteKit>(":memory:", 8);
}

#[test]
fn a_unit_of_work_in_flight_finishes_on_its_version_before_the_switch() {
    let (_dir, url) = temp_db();
    let db = open_demo(&url);
    let repo = accounts();
    db.upgrader().expand().unwrap();
    let (entered_tx, entered_rx) = mpsc::channel();
    let uow = {
        let db = db.clone();
        thread::spawn(move || {
            let repo = accounts();
            db.unit_of_work(|s| -> tandem::Result<(u32, i64, i64, Instant)> {
                let first = db_version(s.conn());
                let r = s.repo(&repo)?;
                let id = r.create(s.conn(), "long", "long@x")?;
                entered_tx.send(()).unwrap();
                // The switch is attempted meanwhile; this unit of work keeps its version.
                thread::sleep(Duration::from_millis(150));
                r.set_email(s.conn(), id, "long2@x")?;
                Ok((r.version(), first, db_version(s.conn()), Instant::now()))
            })
        })
    };
    entered_rx.recv().unwrap();
    let switch_started = Instant::now();
    db.upgrader().switch().unwrap();
    let switched_at = Instant::now();
    let (version, first, last, finished) = uow.join().unwrap().unwrap();
    assert_eq!(
        (version, first, last),
        (1, 1, 1),
        "the unit of work ran wholly on version 1"
    );
    assert!(
        finished <= switched_at,
        "the switch waited for the unit of work in flight"
    );
    // (On SQLite the upgrader queues behind the unit of work's write
    // transaction already when taking its lease, before the schema lock.)
    assert!(
        switched_at - switch_started >= Duration::from_millis(100),
        "the switch did not wait"
    );
    // The write it made is there, through v2.
    assert_eq!(
        db.call(&repo, |r, s| r.email(s.conn(), 1))
            .unwrap()
            .as_deref(),
        Some("long2@x")
    );
    db.unit_of_work(|s| {
        assert_eq!((s.version().get(), db_version(s.conn())), (2, 2));
        Ok::<_, Error>(())
    })
    .unwrap();
}

/// A switch whose `switch.sql` takes a while (a recursive count) holds the
/// schema write lock for that long: calls arriving meanwhile wait for it,
/// then run with version 2; none runs with version 1 after it.
#[test]
fn calls_arriving_during_the_switch_wait_and_run_with_the_new_version() {
    let (_c, cat) = common::catalog(&[
        (
            "0001_items/expand.sql",
            "CREATE TABLE items (id INTEGER PRIMARY KEY);",
        ),
        (
            "0002_more/expand.sql",
            "CREATE TABLE more_items (id INTEGER PRIMARY KEY);",
        ),
        (
            "0002_more/switch.sql",
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) \
             SELECT count(*) FROM c;",
        ),
    ]);
    let (_dir, url) = temp_db();
    let db = Tandem::<Sqlite>::builder(&url, cat)
        .serves(1..=2)
        .open()
        .unwrap();
    db.upgrader().expand().unwrap();
    let switcher = {
        let db = db.clone();
        thread::spawn(move || {
            let started = Instant::now();
            let report = db.upgrader().switch();
            (started, Instant::now(), report)
        })
    };
    // (binding version, state row version, when the call started, how long it took)
    let mut calls = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !switcher.is_finished() || calls.len() < 20 {
        assert!(Instant::now() < deadline, "the switch did not finish");
        let started = Instant::now();
        let (binding, live) = db
            .call(&accounts(), |r, s| {
                Ok::<_, Error>((r.version(), db_version(s.conn())))
            })
            .unwrap();
        calls.push((binding, live, started, started.elapsed()));
        thread::sleep(Duration::from_millis(2));
    }
    let (switch_started, switch_returned, report) = switcher.join().unwrap();
    let report = report.unwrap();
    assert!(
        report.held >= Duration::from_millis(40),
        "the slow switch.sql held the lock only {:?}: the test needs a wider window",
        report.held
    );
    assert!(
        calls.iter().all(|(b, d, ..)| i64::from(*b) == *d),
        "a call ran a binding other than the live version"
    );
    assert!(
        calls.windows(2).all(|w| w[0].0 <= w[1].0),
        "a call ran version 1 after one ran version 2"
    );
    assert!(
        calls
            .iter()
            .filter(|c| c.0 == 1)
            .all(|c| c.2 < switch_returned),
        "a call started after the switch returned and ran version 1"
    );
    // The call that arrived while the switch held the lock waited for it,
    // and then ran with the new version.
    let waited = calls
        .iter()
        .filter(|c| c.0 == 2 && c.2 > switch_started)
        .map(|c| c.3)
        .max()
        .unwrap_or_default();
    assert!(
        waited >= report.held / 4,
        "no call waited for the switch (longest wait of a version 2 call {waited:?}, lock held {:?})",
        report.held
    );
    eprintln!(
        "switch held the lock {:?}; the longest call waited {waited:?}",
        report.held
    );
}

#[test]
fn a_switch_that_cannot_get_the_lock_gives_up_cleanly() {
    let (_dir, url) = temp_db();
    let db = Tandem::<Sqlite>::builder(&url, tandem::testing::demo::catalog().unwrap())
        .writer_policy(WriterPolicy {
            patience: Duration::from_millis(10),
            escalation: Duration::from_millis(5),
            attempts: 3,
        })
        .open()
        .unwrap();
    db.upgrader().expand().unwrap();
    let (entered_tx, entered_rx) = mpsc::channel();
    let long = {
        let db = db.clone();
        thread::spawn(move || {
            db.call(&accounts(), |r, _| {
                entered_tx.send(()).unwrap();
                thread::sleep(Duration::from_millis(300));
                Ok::<_, Error>(r.version())
            })
        })
    };
    entered_rx.recv().unwrap();
    let err = db.upgrader().switch().unwrap_err();
    match &err {
        Error::LockTimeout {
            version,
            live,
            attempts,
            ..
        } => assert_eq!((version.get(), live.get(), *attempts), (2, 1, 3)),
        other => panic!("expected LockTimeout, got {other:?}"),
    }
    assert!(err.to_string().contains("still at version 1"), "{err}");
    // Calls go on meanwhile, with version 1.
    assert_eq!(
        db.call(&accounts(), |r, _| Ok::<_, Error>(r.version()))
            .unwrap(),
        1
    );
    assert_eq!(long.join().unwrap().unwrap(), 1);
    let s = db.state().unwrap();
    assert_eq!(
        (s.version.get(), s.phase, s.upgrader),
        (1, tandem::StatePhase::Expanded, None)
    );
    // Once the load is gone the same command succeeds.
    db.upgrader().switch().unwrap();
    assert_eq!(db.live_version().get(), 2);
}
