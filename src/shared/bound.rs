//! A deadline for this thread's writes: how long a write waits for this
//! process's write turn and for the database's write lock (SQLite's busy
//! wait). Set by the two writers that must not wait the pool's busy timeout
//! behind somebody else: a switch, for what is left of its
//! `switch_timeout`, and a background poller tick, for a poll interval.
//! Every other write waits as before (its turn, then the busy timeout).
//!
//! A thread-local because the writes it bounds sit deep below the code that
//! knows the deadline (a switch's tick of its own fleet row, through
//! `refresh`, through the fleet's tick); the guard puts the previous bound
//! back however the scope ends.

use std::cell::Cell;
use std::marker::PhantomData;
use std::time::Instant;

thread_local! {
    static WRITES_UNTIL: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Bounds this thread's writes by `until` while it lives (a bound already
/// set and sooner stays).
/// (Not `Send`: it puts back the bound of the thread it was made on.)
#[must_use = "the bound lasts while the guard lives"]
pub(crate) struct WritesBounded {
    previous: Option<Instant>,
    _this_thread: PhantomData<*const ()>,
}

impl WritesBounded {
    pub(crate) fn until(until: Instant) -> Self {
        let previous = WRITES_UNTIL.with(Cell::get);
        Self::set(previous, previous.map_or(until, |p| p.min(until)))
    }

    /// Bounds this thread's writes by `until`, whatever bound is set (a
    /// committed switch's aftermath, after a budget spent before the
    /// commit).
    pub(crate) fn anew(until: Instant) -> Self {
        Self::set(WRITES_UNTIL.with(Cell::get), until)
    }

    fn set(previous: Option<Instant>, bound: Instant) -> Self {
        WRITES_UNTIL.with(|c| c.set(Some(bound)));
        WritesBounded {
            previous,
            _this_thread: PhantomData,
        }
    }
}

impl Drop for WritesBounded {
    fn drop(&mut self) {
        WRITES_UNTIL.with(|c| c.set(self.previous));
    }
}

/// This thread's write deadline, if one is set.
pub(crate) fn writes_until() -> Option<Instant> {
    WRITES_UNTIL.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bound_nests_and_is_put_back() {
        assert_eq!(writes_until(), None);
        let later = Instant::now() + Duration::from_secs(10);
        let sooner = Instant::now() + Duration::from_secs(1);
        {
            let _outer = WritesBounded::until(sooner);
            {
                let _inner = WritesBounded::until(later);
                assert_eq!(writes_until(), Some(sooner), "the sooner bound stays");
            }
            assert_eq!(writes_until(), Some(sooner));
        }
        assert_eq!(writes_until(), None);
        {
            let _spent = WritesBounded::until(sooner);
            let _anew = WritesBounded::anew(later);
            assert_eq!(writes_until(), Some(later), "anew replaces a sooner bound");
        }
        assert_eq!(writes_until(), None);
        let joined = std::thread::spawn(move || {
            let _b = WritesBounded::until(later);
            writes_until()
        });
        assert_eq!(joined.join().ok().flatten(), Some(later));
        assert_eq!(writes_until(), None, "another thread's bound is its own");
    }
}
