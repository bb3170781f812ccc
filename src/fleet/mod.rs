//! The fleet: every handle is an instance with a row in the fleet table and
//! a lease, renewed by a light background poller that also reads the state
//! row and adopts it.
//!
//! ## Steady and deploying
//!
//! An instance takes the steady path (an atomic load, a coarse-clock lease
//! check and the in-process read lock) only while it has adopted a *steady*
//! state row and holds a fresh lease; every call checks the lease itself. Otherwise — deploying mode, a stale lease (database unreachable,
//! process paused), or just started — calls take the locking path: inside
//! the call's own transaction they take the database's shared schema lock and
//! read the live version.
//!
//! Adopting a state row that changes the local mode or version happens under
//! the in-process *write* lock, so steady calls in flight drain first; only
//! then does the poller acknowledge the row's epoch in the fleet table. The
//! upgrader waits for those acknowledgements (or for a lease to expire)
//! before it switches. When the lease watchdog leaves the steady path it
//! cannot wait for calls in flight; the next adoption drains them before the
//! poller acknowledges anything.
//!
//! ## Confirmation reads
//!
//! A long write can hold an instance's lease renewal back: on SQLite a
//! phase holds the only write lock for as long as its SQL runs. So that its
//! calls do not drop to the locking path (and wait for that write), a third
//! thread, the confirmer, reads the state row and its own fleet row while
//! the renewals are late, in one statement that writes nothing (WAL readers
//! never wait for the writer). If the instance is on the steady path and
//! the read shows steady mode, the adopted epoch and its row, the steady
//! path stays open for a quarter lease from before that read, up to
//! [`RENEWAL_GRACE`] past what the last renewal gave. In exchange, a switch
//! that finds rows in that grace gives notice: it enters deploying mode and
//! waits half a lease ([`Tandem::notice`]) before it goes on without them.
//! A read that saw steady mode was made before the deploying mode was
//! committed, so its quarter lease ends before the switch's half does (time
//! measured on each host's monotonic clock only; nothing compares clocks).
//!
//! An instance (re)registers under the database's shared schema lock and
//! adopts the state row read in that transaction, so a switch that did not
//! see it in the fleet has committed before that read. The cached version
//! carries its state row's epoch: a tick that read the row before this
//! process's own switch cannot put the old version back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::handle::{Inner, Tandem};
use crate::limits::{millis, FOREVER, RENEWAL_GRACE};
use crate::store::{Instance, Mode, State};
use crate::version::Version;

/// Calls take the steady path: the cached version under the in-process lock.
pub(crate) const STEADY: u8 = 0;
/// Calls take the locking path, and no steady call is in flight.
pub(crate) const LOCKING: u8 = 1;
/// Calls take the locking path, but steady calls that entered before the
/// lease watchdog left the steady path may still be in flight: the next
/// adoption drains them before anything is acknowledged.
pub(crate) const UNDRAINED: u8 = 2;

impl<B: Backend> Tandem<B> {
    /// Registers this instance and adopts the state row (at open).
    pub(crate) fn join_fleet(&self) -> Result<()> {
        let inner = &self.inner;
        let tick = coarsetime::Instant::now();
        let mut conn = self.connection()?;
        let state = self.register(&mut conn, true)?;
        drop(conn);
        // Registered: the lease is fresh, so a steady state can be adopted at once.
        self.set_lease_deadline(tick);
        let mut adopted = inner.adopted_epoch.lock();
        self.adopt(&state)?;
        self.set_adopted(&mut adopted, state.epoch);
        Ok(())
    }

    /// Records the epoch adopted (the poller's lock and the confirmer's copy).
    fn set_adopted(&self, adopted: &mut i64, epoch: i64) {
        *adopted = epoch;
        self.inner.adopted_copy.store(epoch, Ordering::Release);
    }

    /// The confirmer's read (see the module's "Confirmation reads"): while
    /// this instance is on the steady path, a read showing steady mode, the
    /// epoch it adopted and its own fleet row keeps the steady path open for
    /// a quarter lease from before the read (never past
    /// [`RENEWAL_GRACE`] beyond what the last renewal gave).
    pub(crate) fn confirm_steady(&self) {
        let inner = &self.inner;
        if inner.path.load(Ordering::Acquire) != STEADY {
            return;
        }
        let read_at = coarsetime::Instant::now();
        let Some(mut conn) = inner
            .pool
            .try_get()
            .or_else(|| inner.pool.get_timeout(inner.poll_interval).ok())
        else {
            return;
        };
        let row = match inner.store.confirm::<B>(&mut conn, &inner.me.id) {
            Ok(Some(row)) => row,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "confirmation read failed");
                return;
            }
        };
        drop(conn);
        let adopted = inner.adopted_copy.load(Ordering::Acquire);
        if row.mode != Mode::Steady.as_str() || row.epoch != adopted || row.mine != 1 {
            return;
        }
        let quarter = coarsetime::Duration::from(inner.lease / 4);
        let cap = coarsetime::Instant::from_ticks(inner.renewed_at.load(Ordering::Acquire))
            + coarsetime::Duration::from(inner.lease - inner.lease / 4)
            + coarsetime::Duration::from(RENEWAL_GRACE.saturating_sub(inner.lease / 4));
        let until = (read_at + quarter).as_ticks().min(cap.as_ticks());
        let before = inner.lease_deadline.fetch_max(until, Ordering::AcqRel);
        if until > before {
            tracing::trace!("steady path confirmed while the lease renewal is late");
        }
    }

    /// How long a switch waits after entering deploying mode before it goes
    /// on without fleet rows in the renewal grace: half a lease, twice the
    /// longest a confirmation read keeps an instance on the steady path.
    pub(crate) fn notice(&self) -> Duration {
        self.inner.lease / 2
    }

    /// One poller tick: read the state row and renew the lease; adopt the
    /// row (draining steady calls if the mode or version changes); then
    /// acknowledge its epoch. The lease is renewed before the drain so that
    /// a slow drain never makes a live instance look dead: the upgrader
    /// waits for it instead.
    pub(crate) fn poll_once(&self) -> Result<State> {
        let inner = &self.inner;
        let mut adopted = inner.adopted_epoch.lock();
        let tick = coarsetime::Instant::now();
        let state = {
            let mut conn = self.connection()?;
            // The lease runs from the database's clock, not this host's.
            let (state, renewed) = self.write_transaction(&mut conn, |c| -> Result<_> {
                let state = inner.store.read_state::<B>(c)?;
                let renewed = inner
                    .store
                    .renew::<B>(c, &inner.me.id, millis(inner.lease))?;
                Ok((state, renewed))
            })?;
            if !renewed && !inner.shutdown.load(Ordering::Acquire) {
                // Our row expired and was removed while we could not renew:
                // join again, acknowledging nothing yet. A switch may have
                // run meanwhile without waiting for us: adopt the state read
                // as we register, not the one read before.
                tracing::warn!(instance = %inner.me.id, "fleet row was gone (lease expired); registering again");
                self.register(&mut conn, false)?
            } else {
                state
            }
        };
        self.set_lease_deadline(tick);
        // (Against the cached epoch too: this process's own switch caches
        // the epoch it wrote, which no tick may have adopted yet.)
        let newest = (*adopted).max(*inner.cached_epoch.lock());
        if state.epoch < newest {
            // Ticks are serialized and each reads committed state: an older
            // epoch than the last one adopted means the row itself went
            // backwards (a restore, a hand edit). Epoch order is meaningless
            // from here on; adopt the row as it is now instead.
            tracing::error!(
                epoch = state.epoch,
                adopted = newest,
                "the state row's epoch went backwards (a restore or a hand edit?): \
                 dropping the cached version and adopting the row as it is now"
            );
            let fresh = self.readopt()?;
            self.set_adopted(&mut adopted, fresh.epoch);
            let mut conn = self.connection()?;
            self.write_transaction(&mut conn, |c| {
                inner.store.acknowledge::<B>(c, &inner.me.id, fresh.epoch)
            })?;
            return Ok(fresh);
        }
        // No connection is held while waiting for the in-process write lock.
        self.adopt(&state)?;
        self.set_adopted(&mut adopted, state.epoch);
        let mut conn = self.connection()?;
        self.write_transaction(&mut conn, |c| {
            inner.store.acknowledge::<B>(c, &inner.me.id, state.epoch)
        })?;
        Ok(state)
    }

    /// Registers this instance's fleet row and returns the state row read in
    /// the same transaction, after taking the database's shared schema lock
    /// (SQLite: its write lock). A switch that did not see this instance in
    /// the fleet has therefore committed before that read, or starts after
    /// the row is visible: the state returned is never older than a switch
    /// that did not wait for this instance. `acknowledge` records the state's
    /// epoch as observed (a first join); otherwise none is.
    fn register(&self, conn: &mut B::Connection, acknowledge: bool) -> Result<State> {
        let inner = &self.inner;
        self.write_transaction(conn, |c| -> Result<State> {
            let key = inner.lock_key;
            B::enter_shared(c, inner.store.prefix(), inner.store.state_table(), key)?;
            let state = inner.store.read_state::<B>(c)?;
            let mut me = inner.me.clone();
            me.observed_epoch = if acknowledge { state.epoch } else { 0 };
            inner.store.register::<B>(c, &me, millis(inner.lease))?;
            Ok(state)
        })
    }

    /// After the state row's epoch went backwards: under the in-process
    /// write lock (steady calls drained, and this process's own switch
    /// excluded: alone, it commits and caches under that lock), reads the
    /// row again and caches it whatever its epoch.
    fn readopt(&self) -> Result<State> {
        let inner = &self.inner;
        let _drained = self.drain(Version::FIRST)?;
        let mut conn = self.connection()?;
        let state = self.write_transaction(&mut conn, |c| inner.store.read_state::<B>(c))?;
        self.cache_state(
            state.epoch,
            state.version,
            Some(self.path_for(&state)),
            true,
        );
        Ok(state)
    }

    /// The in-process write lock, every steady call in flight drained,
    /// within a quarter of the lease (so the poller keeps renewing while
    /// calls are slow).
    fn drain(&self, version: Version) -> Result<crate::lock::WriteGuard<'_>> {
        let inner = &self.inner;
        let live = self.live_version();
        let mut policy = inner.writer;
        let round = policy
            .patience
            .saturating_add(policy.escalation)
            .max(Duration::from_millis(1));
        let rounds = ((inner.lease / 4).as_nanos() / round.as_nanos()).max(1);
        policy.attempts = policy
            .attempts
            .min(u32::try_from(rounds).unwrap_or(u32::MAX));
        inner.lock.write(&policy).map_err(|g| Error::LockTimeout {
            version,
            live,
            attempts: g.attempts,
            waited: g.waited,
        })
    }

    /// Makes the local mode and cached version match `state`, draining steady
    /// calls in flight (in-process write lock) when either changes. The
    /// drain's budget stays under a quarter of the lease, so the poller keeps
    /// renewing while calls are slow.
    fn adopt(&self, state: &State) -> Result<()> {
        let inner = &self.inner;
        let want = self.path_for(state);
        // UNDRAINED never equals `want`: steady calls may be in flight.
        let same = inner.path.load(Ordering::Acquire) == want
            && inner.live.load(Ordering::Acquire) == state.version.get();
        if same {
            return Ok(());
        }
        let _drained = self.drain(state.version)?;
        // Drained: no steady call is in flight while the guard is held.
        if self.cache_state(state.epoch, state.version, Some(want), false) {
            tracing::debug!(version = %state.version, mode = state.mode.as_str(), epoch = state.epoch, "adopted state");
        } else {
            tracing::debug!(
                epoch = state.epoch,
                "state row older than the cached one (a switch by this process): not adopted"
            );
        }
        Ok(())
    }

    /// The call path `state` asks for: steady only in steady mode with a
    /// fresh lease.
    fn path_for(&self, state: &State) -> u8 {
        if state.mode == Mode::Steady && self.lease_fresh() {
            STEADY
        } else {
            LOCKING
        }
    }

    /// Caches the live version (and the call path, if given) of the state
    /// row with `epoch`, unless a newer row is cached already (or `force`:
    /// the row was read or written just now under the in-process write
    /// lock, such as this process's own switch); returns whether it did.
    /// Callers hold the in-process write lock, or calls take the locking
    /// path.
    pub(crate) fn cache_state(
        &self,
        epoch: i64,
        version: Version,
        path: Option<u8>,
        force: bool,
    ) -> bool {
        let inner = &self.inner;
        let mut cached = inner.cached_epoch.lock();
        if epoch < *cached && !force {
            return false;
        }
        *cached = epoch;
        inner.live.store(version.get(), Ordering::Release);
        if let Some(path) = path {
            inner.path.store(path, Ordering::Release);
        }
        true
    }

    /// `renewed_at`: taken before the renewal's round trip. A quarter of the
    /// lease is kept as margin against clock and scheduling slack (and the
    /// coarse clock's resolution, a few milliseconds).
    fn set_lease_deadline(&self, renewed_at: coarsetime::Instant) {
        let fresh_for = coarsetime::Duration::from(self.inner.lease - self.inner.lease / 4);
        let deadline = (renewed_at + fresh_for).as_ticks();
        self.inner
            .renewed_at
            .fetch_max(renewed_at.as_ticks(), Ordering::AcqRel);
        // (A confirmation read may have set a later one; both hold.)
        self.inner
            .lease_deadline
            .fetch_max(deadline, Ordering::AcqRel);
    }

    /// Whether the lease, last renewed, still counts as fresh. Checked by
    /// every steady call too (a few nanoseconds), so that after a pause of
    /// the whole process no call trusts the cached version before the
    /// watchdog has run.
    #[inline]
    pub(crate) fn lease_fresh(&self) -> bool {
        coarsetime::Instant::now().as_ticks() < self.inner.lease_deadline.load(Ordering::Acquire)
    }

    /// Leaves the steady path if the lease went stale. The watchdog must not
    /// block, so this does not wait for steady calls in flight: it leaves the
    /// instance [`UNDRAINED`], and the poller drains them before it
    /// acknowledges anything (or the upgrader could switch under them).
    pub(crate) fn check_lease(&self) {
        if !self.lease_fresh()
            && self
                .inner
                .path
                .compare_exchange(STEADY, UNDRAINED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            tracing::warn!(instance = %self.inner.me.id, "lease not renewed in time: calls take the locking path");
        }
    }

    /// Live instances (expired ones are removed on the way).
    ///
    /// # Errors
    ///
    /// A database error, or [`Error::MetadataCorrupt`] for a fleet row with
    /// an impossible version.
    pub fn instances(&self) -> Result<Vec<Instance>> {
        let mut conn = self.connection()?;
        self.write_transaction(&mut conn, |c| {
            self.inner
                .store
                .live_instances::<B>(c, millis(self.inner.lease))
        })
    }

    /// Waits until every live instance other than this one has acknowledged
    /// `epoch`, or until `timeout`; returns those that have not. Until
    /// `notice_until`, rows in the renewal grace count too (a switch giving
    /// notice: see the module's "Confirmation reads").
    pub(crate) fn await_fleet(
        &self,
        conn: &mut B::Connection,
        epoch: i64,
        timeout: Duration,
        notice_until: Option<Instant>,
        between_polls: &mut dyn FnMut(&mut B::Connection) -> Result<()>,
    ) -> Result<Vec<Instance>> {
        let deadline = Instant::now() + timeout.min(FOREVER);
        loop {
            let noticing = notice_until.is_some_and(|n| Instant::now() < n);
            let (instances, current) = self.write_transaction(conn, |c| -> Result<_> {
                let current = self.inner.store.read_state::<B>(c)?.epoch;
                let grace = millis(self.inner.lease);
                let mut live = self.inner.store.live_instances::<B>(c, grace)?;
                if noticing {
                    live.extend(self.inner.store.noticed_instances::<B>(c, grace)?);
                }
                Ok((live, current))
            })?;
            // An acknowledgement beyond the state row's own epoch was never
            // made by an instance (a ghost row, a hand edit): it counts as
            // none.
            let behind: Vec<Instance> = instances
                .into_iter()
                .filter(|i| {
                    i.id != self.inner.me.id && !(epoch..=current).contains(&i.observed_epoch)
                })
                .collect();
            if behind.is_empty() || Instant::now() >= deadline {
                return Ok(behind);
            }
            // (The upgrader renews its lease here: the wait may be long.)
            between_polls(conn)?;
            thread::sleep((self.inner.poll_interval / 4).max(Duration::from_millis(1)));
        }
    }

    /// Whether calls of this instance currently take the steady path.
    pub fn steady(&self) -> bool {
        self.inner.path.load(Ordering::Acquire) == STEADY && self.lease_fresh()
    }

    /// Whether calls take the locking path with no steady call left in
    /// flight (not [`UNDRAINED`]): what an upgrader needs of its own
    /// instance before it switches.
    pub(crate) fn on_drained_locking_path(&self) -> bool {
        self.inner.path.load(Ordering::Acquire) == LOCKING
    }

    /// Test hook: stop (or resume) renewing the lease, as a paused process or
    /// an unreachable database would.
    #[doc(hidden)]
    pub fn pause_fleet(&self, paused: bool) {
        self.inner.fleet_paused.store(paused, Ordering::Release);
    }

    /// Test hook: stop (or resume) renewing the lease and acknowledging,
    /// but keep the confirmation reads, as a long write holding SQLite's
    /// lock back would.
    #[doc(hidden)]
    pub fn hold_renewals(&self, held: bool) {
        self.inner.renewals_held.store(held, Ordering::Release);
    }
}

mod threads;
pub(crate) use threads::{spawn_confirmer, spawn_poller, spawn_watchdog};

#[cfg(test)]
#[cfg(feature = "sqlite")]
mod tests;
