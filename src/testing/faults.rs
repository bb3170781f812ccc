//! Fault injection for tests: an upgrader that crashes or halts at a step
//! boundary, an instance whose lease renewals stop. Only with the `testing`
//! feature; production builds have none of it.
//!
//! Step boundaries are numbered from 1 in the order an upgrader passes them
//! (after taking the lease, after each phase's SQL, after each backfill
//! batch, …); [`UpgraderFaults::steps_taken`] tells how many a run passed,
//! so a test can crash at each in turn.
//!
//! ```
//! use tandem::testing::faults::UpgraderFaults as _;
//! # fn main() -> Result<(), tandem::Error> {
//! let db = tandem::Tandem::<tandem::Sqlite>::builder(":memory:", tandem::testing::demo::catalog()?).open()?;
//! let crashed = db.upgrader().crash_at(1).expand();
//! assert!(matches!(crashed, Err(tandem::Error::InjectedCrash { step: 1, .. })));
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use crate::backend::Backend;
use crate::handle::Tandem;
use crate::upgrade::Upgrader;

/// Faults of an [`Upgrader`].
pub trait UpgraderFaults: Sized {
    /// Fail with [`Error::InjectedCrash`](crate::Error::InjectedCrash) at
    /// step boundary `step` (1-based), leaving the lease held and nothing
    /// cleaned up, as a crashed process would.
    #[must_use]
    fn crash_at(self, step: usize) -> Self;

    /// At step boundary `step`, create the file `marker` and stop there for
    /// good, so that a test can `SIGKILL` the process at exactly that point.
    #[must_use]
    fn halt_at(self, step: usize, marker: impl Into<PathBuf>) -> Self;

    /// Step boundaries passed so far.
    fn steps_taken(&self) -> usize;
}

impl<B: Backend> UpgraderFaults for Upgrader<B> {
    fn crash_at(mut self, step: usize) -> Self {
        self.crash_at = Some(step);
        self
    }

    fn halt_at(mut self, step: usize, marker: impl Into<PathBuf>) -> Self {
        self.halt_at = Some((step, marker.into()));
        self
    }

    fn steps_taken(&self) -> usize {
        self.steps_taken.get()
    }
}

/// Faults of an instance's fleet membership.
pub trait FleetFaults {
    /// Stop (or resume) renewing the lease and acknowledging, as a paused
    /// process or an unreachable database would: the lease watchdog then
    /// moves calls to the locking path.
    fn pause_fleet(&self, paused: bool);

    /// Stop (or resume) renewing the lease and acknowledging, but keep the
    /// confirmation reads, as a long write holding SQLite's lock back would.
    fn hold_renewals(&self, held: bool);

    /// Make every write transaction of this instance (units of work, calls
    /// on the locking path, the fleet ticks' renewals and acknowledgements)
    /// run `stall` once it has its write turn and before it begins, as a
    /// database busy with another writer holds it there (SQLite: its busy
    /// handler, for up to the busy timeout, while this process's other
    /// writers queue behind it). `stall` may block, and may look at
    /// [`std::thread::current`] to pick whom; `None` stops stalling.
    fn stall_writes(&self, stall: Option<std::sync::Arc<dyn Fn() + Send + Sync>>);
}

impl<B: Backend> FleetFaults for Tandem<B> {
    fn pause_fleet(&self, paused: bool) {
        self.shared.fleet_paused.store(paused, Ordering::Release);
    }

    fn hold_renewals(&self, held: bool) {
        self.shared.renewals_held.store(held, Ordering::Release);
    }

    fn stall_writes(&self, stall: Option<std::sync::Arc<dyn Fn() + Send + Sync>>) {
        let on = stall.is_some();
        *self.shared.write_stall.lock() = stall;
        self.shared.stalling.store(on, Ordering::Release);
    }
}
