//! The escalation and the locking path's read, on the fake backend: what a
//! third backend's lock must do for the switch and the calls to be right.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::backend::exclusive_within;

const KEY: i64 = 7;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A call on the locking path: the shared side and the version, held for `hold`.
fn reader(db: &Arc<FakeDb>, hold: Duration) -> thread::JoinHandle<i64> {
    let db = Arc::clone(db);
    thread::spawn(move || {
        let mut conn = db.connect();
        let version = Fake::enter_shared(&mut conn, "tandem_", "tandem_state", KEY).unwrap();
        thread::sleep(hold);
        conn.commit();
        version
    })
}

fn wait_for_readers(db: &FakeDb, n: usize) {
    let start = Instant::now();
    while db.readers_and_queued().0 < n {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "readers never came"
        );
        thread::sleep(ms(1));
    }
}

#[test]
fn a_free_lock_is_taken_at_once_without_queueing() {
    let db = FakeDb::new(1);
    let mut conn = db.connect();
    let escalated = exclusive_within::<_, Fake>(&mut conn, KEY, ms(100), ms(100)).unwrap();
    assert_eq!(escalated, Some(false));
}

#[test]
fn a_short_reader_is_waited_out_politely_and_new_readers_keep_priority() {
    let db = FakeDb::new(1);
    let first = reader(&db, ms(80));
    wait_for_readers(&db, 1);
    let writer = {
        let db = Arc::clone(&db);
        thread::spawn(move || {
            let mut conn = db.connect();
            let start = Instant::now();
            let got = exclusive_within::<_, Fake>(&mut conn, KEY, ms(2000), ms(100)).unwrap();
            (got, start.elapsed())
        })
    };
    thread::sleep(ms(20));
    // The writer polls without queueing: a reader arriving now gets in at once.
    let start = Instant::now();
    let mut conn = db.connect();
    Fake::enter_shared(&mut conn, "tandem_", "tandem_state", KEY).unwrap();
    assert!(
        start.elapsed() < ms(50),
        "a new reader waited {:?}",
        start.elapsed()
    );
    assert_eq!(db.readers_and_queued(), (2, 0));
    conn.commit();
    first.join().unwrap();
    let (got, waited) = writer.join().unwrap();
    assert_eq!(got, Some(false), "taken while polling, not by queueing");
    assert!(waited >= ms(40), "the writer waited only {waited:?}");
}

#[test]
fn readers_that_never_let_go_make_it_queue_and_it_gets_the_lock() {
    let db = FakeDb::new(1);
    // Overlapping readers: the shared side is never free while they run.
    let stop = Arc::new(AtomicBool::new(false));
    let relay = {
        let db = Arc::clone(&db);
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut held = vec![reader(&db, ms(30))];
            let mut queued_behind = 0;
            while !stop.load(Ordering::Acquire) {
                thread::sleep(ms(10));
                if db.readers_and_queued().1 > 0 {
                    queued_behind += 1;
                }
                held.push(reader(&db, ms(30)));
            }
            for h in held {
                h.join().unwrap();
            }
            queued_behind
        })
    };
    wait_for_readers(&db, 1);
    let mut conn = db.connect();
    let start = Instant::now();
    let got = exclusive_within::<_, Fake>(&mut conn, KEY, ms(60), ms(2000)).unwrap();
    let waited = start.elapsed();
    assert_eq!(got, Some(true), "taken by queueing after the patience");
    assert!(
        waited >= ms(60),
        "escalated before the patience ran out: {waited:?}"
    );
    // The switch commits; the readers queued behind it run again.
    conn.set_version(2);
    conn.commit();
    stop.store(true, Ordering::Release);
    assert!(
        relay.join().unwrap() > 0,
        "no reader ever saw the writer queued"
    );
}

#[test]
fn a_reader_that_never_leaves_times_the_escalation_out_and_readers_go_on() {
    let db = FakeDb::new(1);
    let mut stuck = db.connect();
    Fake::enter_shared(&mut stuck, "tandem_", "tandem_state", KEY).unwrap();
    let mut conn = db.connect();
    let start = Instant::now();
    let got = exclusive_within::<_, Fake>(&mut conn, KEY, ms(20), ms(80)).unwrap();
    assert_eq!(got, None, "the bounded queue must time out");
    assert!(
        start.elapsed() >= ms(100),
        "gave up after {:?}",
        start.elapsed()
    );
    // The queued request is gone: a new reader gets in at once.
    assert_eq!(db.readers_and_queued(), (1, 0));
    let t = Instant::now();
    let mut other = db.connect();
    assert_eq!(
        Fake::enter_shared(&mut other, "tandem_", "tandem_state", KEY).unwrap(),
        1
    );
    assert!(t.elapsed() < ms(50));
}

#[test]
fn a_call_queued_behind_the_switch_reads_the_switched_version() {
    let db = FakeDb::new(1);
    let mut stuck = db.connect();
    Fake::enter_shared(&mut stuck, "tandem_", "tandem_state", KEY).unwrap();
    let writer = {
        let db = Arc::clone(&db);
        thread::spawn(move || {
            let mut conn = db.connect();
            let got = exclusive_within::<_, Fake>(&mut conn, KEY, ms(10), ms(5000)).unwrap();
            assert_eq!(got, Some(true));
            conn.set_version(2);
            conn.commit();
        })
    };
    // Wait until the writer queues, then start a call: it must wait behind
    // the switch and read the version the switch committed.
    let start = Instant::now();
    while db.readers_and_queued().1 == 0 {
        assert!(start.elapsed() < Duration::from_secs(5));
        thread::sleep(ms(1));
    }
    let late = reader(&db, ms(0));
    thread::sleep(ms(30));
    stuck.commit();
    writer.join().unwrap();
    assert_eq!(
        late.join().unwrap(),
        2,
        "a call that waited for the switch runs on N"
    );
}
