//! Unit tests of the schema lock on parking_lot.

use super::*;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

fn policy(patience_ms: u64, escalation_ms: u64, attempts: u32) -> WriterPolicy {
    WriterPolicy {
        patience: Duration::from_millis(patience_ms),
        escalation: Duration::from_millis(escalation_ms),
        attempts,
    }
}

#[test]
fn uncontended_write_is_immediate() {
    let lock = SchemaLock::<Parking>::default();
    let w = lock.write(&WriterPolicy::default()).unwrap();
    assert!(!w.escalated);
    assert!(w.waited < Duration::from_millis(50));
}

#[test]
fn waiting_writer_does_not_block_new_readers_while_polite() {
    let lock = Arc::new(SchemaLock::<Parking>::default());
    let held = lock.read();
    let writer = {
        let lock = Arc::clone(&lock);
        thread::spawn(move || lock.write(&policy(300, 1, 1)).map(|g| g.escalated))
    };
    thread::sleep(Duration::from_millis(30));
    // The writer is polling; a new reader on another thread gets in at once.
    let reader = {
        let lock = Arc::clone(&lock);
        thread::spawn(move || {
            let start = Instant::now();
            let _g = lock.read();
            start.elapsed()
        })
    };
    let reader_wait = reader.join().unwrap();
    assert!(
        reader_wait < Duration::from_millis(20),
        "reader waited {reader_wait:?}"
    );
    drop(held);
    assert_eq!(writer.join().unwrap(), Ok(false));
}

#[test]
fn escalation_lands_the_writer_under_saturation_and_bounds_reader_waits() {
    // Eight threads keep the read side held back-to-back with overlap, so a
    // polite writer alone would starve.
    let lock = Arc::new(SchemaLock::<Parking>::default());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(9));
    let calls = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (lock, stop, start, calls) =
                (lock.clone(), stop.clone(), start.clone(), calls.clone());
            thread::spawn(move || {
                start.wait();
                while !stop.load(Ordering::Relaxed) {
                    let _g = lock.read();
                    thread::sleep(Duration::from_micros(300));
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    start.wait();
    thread::sleep(Duration::from_millis(20));
    let guard = lock.write(&policy(20, 10, 50)).expect("writer must land");
    thread::sleep(Duration::from_millis(2)); // the "switch"
    drop(guard);
    thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(calls.load(Ordering::Relaxed) > 0);
    // A reader waits at most for one escalation window plus the switch; allow
    // generous scheduling slack on a shared 2-core machine.
    let max = lock.max_read_wait();
    assert!(max < Duration::from_millis(200), "a reader waited {max:?}");
}

#[test]
fn writer_gives_up_cleanly_and_readers_continue() {
    let lock = Arc::new(SchemaLock::<Parking>::default());
    let held = lock.read();
    let err = lock.write(&policy(5, 5, 3)).unwrap_err();
    assert_eq!(err.attempts, 3);
    assert!(err.waited >= Duration::from_millis(30));
    // Not escalating any more: a fresh reader gets in at once.
    let other = {
        let lock = Arc::clone(&lock);
        thread::spawn(move || {
            let _g = lock.read();
        })
    };
    other.join().unwrap();
    drop(held);
    assert!(lock.write(&policy(5, 5, 1)).is_ok());
}

#[test]
fn readers_wait_for_a_held_writer_and_the_wait_is_recorded() {
    let lock = Arc::new(SchemaLock::<Parking>::default());
    let w = lock.write(&WriterPolicy::default()).unwrap();
    let reader = {
        let lock = Arc::clone(&lock);
        thread::spawn(move || {
            let _g = lock.read();
        })
    };
    thread::sleep(Duration::from_millis(25));
    drop(w);
    reader.join().unwrap();
    assert!(lock.max_read_wait() >= Duration::from_millis(20));
    lock.reset_max_read_wait();
    assert_eq!(lock.max_read_wait(), Duration::ZERO);
}
