//! The schema lock under loom: every interleaving of readers, an escalating
//! writer and nested reads (`RUSTFLAGS="--cfg tandem_loom" cargo test
//! --no-default-features --lib loom`).

use super::*;
use loom::sync::atomic::AtomicUsize;
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

/// parking_lot's rules: a recursive read ignores waiting writers; a fair
/// read waits behind them; a timed write queues (so fair readers wait)
/// and may give up at any point, which the model explores by giving up
/// after a bounded number of wake-ups.
#[derive(Default)]
struct Model {
    state: Mutex<St>,
    changed: Condvar,
}

#[derive(Default)]
struct St {
    readers: usize,
    writer: bool,
    queued_writers: usize,
}

struct ModelRead<'a>(&'a Model);
struct ModelWrite<'a>(&'a Model);

impl Drop for ModelRead<'_> {
    fn drop(&mut self) {
        self.0.state.lock().unwrap().readers -= 1;
        self.0.changed.notify_all();
    }
}

impl Drop for ModelWrite<'_> {
    fn drop(&mut self) {
        self.0.state.lock().unwrap().writer = false;
        self.0.changed.notify_all();
    }
}

impl Model {
    fn read_when(&self, blocked: impl Fn(&St) -> bool) -> ModelRead<'_> {
        let mut st = self.state.lock().unwrap();
        while blocked(&st) {
            st = self.changed.wait(st).unwrap();
        }
        st.readers += 1;
        ModelRead(self)
    }
}

impl RawLock for Model {
    type Read<'a> = ModelRead<'a>;
    type Write<'a> = ModelWrite<'a>;
    fn try_read_recursive(&self) -> Option<Self::Read<'_>> {
        let mut st = self.state.lock().unwrap();
        if st.writer {
            return None;
        }
        st.readers += 1;
        Some(ModelRead(self))
    }
    fn read_recursive(&self) -> Self::Read<'_> {
        self.read_when(|st| st.writer)
    }
    fn read(&self) -> Self::Read<'_> {
        self.read_when(|st| st.writer || st.queued_writers > 0)
    }
    fn try_write(&self) -> Option<Self::Write<'_>> {
        let mut st = self.state.lock().unwrap();
        if st.writer || st.readers > 0 {
            return None;
        }
        st.writer = true;
        Some(ModelWrite(self))
    }
    fn try_write_for(&self, _timeout: Duration) -> Option<Self::Write<'_>> {
        let mut st = self.state.lock().unwrap();
        st.queued_writers += 1;
        for _ in 0..2 {
            if !st.writer && st.readers == 0 {
                st.queued_writers -= 1;
                st.writer = true;
                return Some(ModelWrite(self));
            }
            drop(st);
            thread::yield_now();
            st = self.state.lock().unwrap();
        }
        st.queued_writers -= 1;
        drop(st);
        self.changed.notify_all(); // fair readers may go now
        None
    }
}

fn tight() -> WriterPolicy {
    WriterPolicy {
        patience: Duration::from_micros(100),
        escalation: Duration::from_micros(100),
        attempts: 2,
    }
}

/// Readers and an escalating writer: never both inside, every thread
/// finishes (loom reports a deadlock otherwise), and the escalation
/// flag is down once the writer returns, whatever the outcome.
#[test]
fn readers_and_an_escalating_writer_exclude_and_finish() {
    loom::model(|| {
        let lock = Arc::new(SchemaLock::<Model>::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (lock, inside) = (lock.clone(), inside.clone());
                thread::spawn(move || {
                    let _g = lock.read();
                    inside.fetch_add(1, Ordering::SeqCst);
                    thread::yield_now();
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        // The writer must get in (the readers each hold once): retried
        // until it does, every failed attempt gave up with its budget
        // spent and left the escalation flag down.
        let guard = loop {
            match lock.write(&tight()) {
                Ok(guard) => break guard,
                Err(gave_up) => {
                    assert_eq!(gave_up.attempts, 2, "gave up before its budget");
                    assert!(!lock.escalating.load(Ordering::SeqCst));
                }
            }
            thread::yield_now();
        };
        assert_eq!(
            inside.load(Ordering::SeqCst),
            0,
            "a reader inside the writer"
        );
        drop(guard);
        assert!(!lock.escalating.load(Ordering::SeqCst));
        for r in readers {
            r.join().unwrap();
        }
    });
}

/// A call that takes the read side again on the same thread (a nested
/// call) while the writer escalates: the inner fair read queues behind
/// the writer, which waits for the outer read; the bounded escalation
/// breaks the cycle and both finish.
#[test]
fn a_nested_read_during_escalation_cannot_deadlock() {
    loom::model(|| {
        let lock = Arc::new(SchemaLock::<Model>::default());
        let reader = {
            let lock = lock.clone();
            thread::spawn(move || {
                let _outer = lock.read();
                let _inner = lock.read();
            })
        };
        let _ = lock.write(&tight());
        assert!(!lock.escalating.load(Ordering::SeqCst));
        reader.join().unwrap();
    });
}

/// A reader that holds on through every attempt: the writer gives up
/// with the attempts it made, and a new reader gets in at once.
#[test]
fn a_writer_that_gives_up_leaves_the_lock_free_for_readers() {
    loom::model(|| {
        let lock = Arc::new(SchemaLock::<Model>::default());
        let held = lock.read();
        let err = lock.write(&tight()).err();
        assert_eq!(err.map(|e| e.attempts), Some(2));
        let other = {
            let lock = lock.clone();
            thread::spawn(move || drop(lock.read()))
        };
        other.join().unwrap();
        drop(held);
        assert!(lock.write(&tight()).is_ok());
    });
}
