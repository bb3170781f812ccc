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
//! Adopting a state row that changes the local mode or version closes the
//! steady path (new calls take the locking path) and takes the in-process
//! *write* lock, so the steady calls in flight drain first; only then does
//! the poller acknowledge the row's epoch in the fleet table. The
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
//! path stays open for a confirmation span from before that read (a
//! quarter lease, at most a second: [`confirm_span`]), up to
//! [`RENEWAL_GRACE`] past what the last renewal gave. In exchange, a switch
//! that finds rows in that grace gives notice: it enters deploying mode and
//! waits two spans ([`notice`]) before it goes on without them.
//! A read that saw steady mode was made before the deploying mode was
//! committed, so its span ends before the switch's two do (time
//! measured on each host's monotonic clock only; nothing compares clocks;
//! every instance of a fleet uses the same lease, whatever its poll).
//!
//! An instance (re)registers and renews under the database's shared schema
//! lock and adopts the state row read in that transaction, so a switch that
//! did not see it in the fleet (or saw its row expired) has committed before
//! that read; a renewal that reads a row it has not adopted closes the
//! steady path before it commits. Under its exclusive lock a switch in
//! deploying mode checks again that every live row acknowledged it. A unit
//! of work that waited for its write turn (SQLite's write lock, behind
//! which this instance's renewals queue for up to half a lease) looks at
//! the steady path again once it has the turn. The cached version
//! carries its state row's epoch: a tick that read the row before this
//! process's own switch cannot put the old version back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::limits::{millis, FOREVER, RENEWAL_GRACE};
use crate::shared::{CallPath, Conn, Shared, WritesBounded};
use crate::store::{Instance, Mode, State};
use crate::version::Version;

/// Membership of the fleet, shared by the application's handles and its
/// upgraders, never by tandem's background threads: when the last one
/// drops, the instance leaves the fleet at once.
pub(crate) struct Membership<B: Backend> {
    shared: Arc<Shared<B>>,
}

impl<B: Backend> Membership<B> {
    pub(crate) fn new(shared: Arc<Shared<B>>) -> Self {
        Membership { shared }
    }
}

impl<B: Backend> Drop for Membership<B> {
    fn drop(&mut self) {
        leave(&self.shared);
    }
}

/// Stops the background threads and removes this instance's fleet row
/// (clean shutdown). If the database is unreachable the row expires with
/// its lease.
fn leave<B: Backend>(shared: &Shared<B>) {
    shared.shutdown.store(true, Ordering::Release);
    for thread in shared.threads.lock().drain(..) {
        thread.unpark();
    }
    shared.push.lock().take();
    // Wait for a fleet tick in progress, so it cannot renew after this.
    let _ticks = shared.adopted_epoch.lock();
    match shared.pool.get_timeout(Duration::from_secs(2)) {
        Ok(mut conn) => {
            if let Err(e) = shared.store.deregister::<B>(&mut conn, &shared.me.id) {
                tracing::warn!(error = %e, "could not leave the fleet table; the row expires with its lease");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not leave the fleet table; the row expires with its lease")
        }
    }
}

/// Registers this instance and adopts the state row (at open).
pub(crate) fn join_fleet<B: Backend>(shared: &Shared<B>) -> Result<()> {
    let tick = coarsetime::Instant::now();
    let mut conn = shared.connection()?;
    let state = register(shared, &mut conn, true)?;
    drop(conn);
    // Registered: the lease is fresh, so a steady state can be adopted at once.
    set_lease_deadline(shared, tick);
    let mut adopted = shared.adopted_epoch.lock();
    adopt(shared, &state, true)?;
    set_adopted(shared, &mut adopted, state.epoch);
    Ok(())
}

/// Records the epoch adopted (the poller's lock and the confirmer's copy).
fn set_adopted<B: Backend>(shared: &Shared<B>, adopted: &mut i64, epoch: i64) {
    *adopted = epoch;
    shared.adopted_copy.store(epoch, Ordering::Release);
}

/// The confirmer's read (see the module's "Confirmation reads"): while
/// this instance is on the steady path, a read showing steady mode, the
/// epoch it adopted and its own fleet row keeps the steady path open for
/// a [`confirm_span`] from before the read (never past
/// [`RENEWAL_GRACE`] beyond what the last renewal gave).
pub(crate) fn confirm_steady<B: Backend>(shared: &Shared<B>) {
    if shared.path.load() != CallPath::Steady {
        return;
    }
    let read_at = coarsetime::Instant::now();
    let Some(mut conn) = shared
        .pool
        .try_get()
        .or_else(|| shared.pool.get_timeout(shared.poll_interval).ok())
    else {
        return;
    };
    let row = match shared.store.confirm::<B>(&mut conn, &shared.me.id) {
        Ok(Some(row)) => row,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(error = %e, "confirmation read failed");
            return;
        }
    };
    drop(conn);
    let adopted = shared.adopted_copy.load(Ordering::Acquire);
    if row.mode != Mode::Steady.as_str() || row.epoch != adopted || row.mine != 1 {
        return;
    }
    let span = coarsetime::Duration::from(confirm_span(shared));
    let cap = coarsetime::Instant::from_ticks(shared.renewed_at.load(Ordering::Acquire))
        + coarsetime::Duration::from(shared.lease - shared.lease / 4)
        + coarsetime::Duration::from(RENEWAL_GRACE.saturating_sub(shared.lease / 4));
    let until = (read_at + span).as_ticks().min(cap.as_ticks());
    let before = shared.lease_deadline.fetch_max(until, Ordering::AcqRel);
    if until > before {
        tracing::trace!("steady path confirmed while the lease renewal is late");
    }
}

/// How long one confirmation read keeps the steady path open: a quarter
/// lease, but at most a second, so that the notice a switch gives
/// ([`notice`]) stays short with a long lease (PostgreSQL's 30 s default).
/// It depends on the lease only, never on the poll interval: the switch
/// computes the notice from its own settings, and the fleet shares one
/// lease (`Builder::lease`), not necessarily one poll interval. The
/// confirmer reads often enough to keep the path open from one read to the
/// next ([`confirm_every`]).
pub(crate) fn confirm_span<B: Backend>(shared: &Shared<B>) -> Duration {
    (shared.lease / 4).min(CONFIRM_SPAN)
}

/// How often the confirmer wakes: every poll interval, or twice a
/// [`confirm_span`] if that is sooner (it reads only while renewals are
/// late).
pub(crate) fn confirm_every<B: Backend>(shared: &Shared<B>) -> Duration {
    shared
        .poll_interval
        .min(confirm_span(shared) / 2)
        .max(Duration::from_millis(1))
}

/// The most a confirmation read keeps the steady path open (see
/// [`confirm_span`]).
const CONFIRM_SPAN: Duration = Duration::from_secs(1);

/// How long a switch waits after entering deploying mode before it goes
/// on without fleet rows in the renewal grace: twice the longest a
/// confirmation read keeps an instance on the steady path
/// ([`confirm_span`]; half a lease for leases up to 4 s, 2 s beyond).
pub(crate) fn notice<B: Backend>(shared: &Shared<B>) -> Duration {
    confirm_span(shared).saturating_mul(2)
}

/// Registers this instance's fleet row and returns the state row read in
/// the same transaction, after taking the database's shared schema lock
/// (SQLite: its write lock). A switch that did not see this instance in
/// the fleet has therefore committed before that read, or starts after
/// the row is visible: the state returned is never older than a switch
/// that did not wait for this instance. `acknowledge` records the state's
/// epoch as observed (a first join); otherwise none is.
fn register<B: Backend>(
    shared: &Shared<B>,
    conn: &mut B::Connection,
    acknowledge: bool,
) -> Result<State> {
    let (state, observed) = shared.write_transaction(conn, |c| -> Result<_> {
        shared.enter_shared(c)?;
        let state = shared.store.read_state::<B>(c)?;
        close_if_unadopted(shared, &state, shared.adopted_copy.load(Ordering::Acquire));
        let mut me = shared.me.clone();
        me.observed_epoch = if acknowledge { state.epoch } else { 0 };
        shared.store.register::<B>(c, &me, millis(shared.lease))?;
        Ok((state, me.observed_epoch))
    })?;
    shared.acknowledged.store(observed, Ordering::Release);
    Ok(state)
}

/// `renewed_at`: taken before the renewal's round trip. A quarter of the
/// lease is kept as margin against clock and scheduling slack (and the
/// coarse clock's resolution, a few milliseconds).
fn set_lease_deadline<B: Backend>(shared: &Shared<B>, renewed_at: coarsetime::Instant) {
    let fresh_for = coarsetime::Duration::from(shared.lease - shared.lease / 4);
    let deadline = (renewed_at + fresh_for).as_ticks();
    shared
        .renewed_at
        .fetch_max(renewed_at.as_ticks(), Ordering::AcqRel);
    // (A confirmation read may have set a later one; both hold.)
    shared.lease_deadline.fetch_max(deadline, Ordering::AcqRel);
}

/// Leaves the steady path if the lease went stale. The watchdog must not
/// block, so this does not wait for steady calls in flight: it leaves the
/// instance [`CallPath::Undrained`], and the poller drains them before it
/// acknowledges anything (or the upgrader could switch under them).
pub(crate) fn check_lease<B: Backend>(shared: &Shared<B>) {
    if !shared.lease_fresh() && shared.path.replace(CallPath::Steady, CallPath::Undrained) {
        tracing::warn!(instance = %shared.me.id, "lease not renewed in time: calls take the locking path");
    }
}

/// Live instances (expired ones are removed on the way).
///
/// # Errors
///
/// A database error, or [`Error::MetadataCorrupt`] for a fleet row with
/// an impossible version.
pub(crate) fn instances<B: Backend>(shared: &Shared<B>) -> Result<Vec<Instance>> {
    let mut conn = shared.connection()?;
    shared.write_transaction(&mut conn, |c| {
        shared.store.live_instances::<B>(c, millis(shared.lease))
    })
}

/// Waits until every live instance other than this one has acknowledged
/// `epoch`, or until `timeout`; returns those that have not. Until
/// `notice_until`, rows in the renewal grace count too (a switch giving
/// notice: see the module's "Confirmation reads").
pub(crate) fn await_fleet<B: Backend>(
    shared: &Shared<B>,
    conn: &mut B::Connection,
    epoch: i64,
    timeout: Duration,
    notice_until: Option<Instant>,
    between_polls: &mut dyn FnMut(&mut B::Connection) -> Result<()>,
) -> Result<Vec<Instance>> {
    let deadline = Instant::now() + timeout.min(FOREVER);
    let grace = millis(shared.lease);
    // The first counts come a millisecond apart (a pushed fleet
    // acknowledges within milliseconds, and each check saved is a
    // millisecond of the switch), later ones further apart up to
    // `ACK_CHECK`.
    let mut checks = 0u32;
    let mut pause = Duration::from_millis(1);
    loop {
        let noticing = notice_until.is_some_and(|n| Instant::now() < n);
        // One counting read per check (no write, no rows fetched, whatever
        // the fleet's size); the rows are read (and expired ones removed)
        // only to name those behind when time is up.
        if Instant::now() >= deadline {
            return fetch_behind(shared, conn, epoch, grace, noticing);
        }
        let behind = shared
            .store
            .count_behind::<B>(conn, &shared.me.id, epoch, grace, noticing)?;
        if behind == 0 {
            return Ok(Vec::new());
        }
        // (The upgrader renews its lease here: the wait may be long.)
        between_polls(conn)?;
        thread::sleep(pause);
        checks = checks.saturating_add(1);
        if checks >= QUICK_CHECKS {
            pause = pause
                .saturating_mul(2)
                .min(ACK_CHECK)
                .min(shared.poll_interval / 4)
                .max(Duration::from_millis(1));
        }
    }
}

/// How many of [`await_fleet`]'s first counts come a millisecond apart
/// (about the first 50 ms of a wait: a pushed fleet of 500 acknowledged
/// within 20 here).
const QUICK_CHECKS: u32 = 40;

/// How often [`await_fleet`] counts the laggards after its
/// [`QUICK_CHECKS`] (doubling up to this; a quarter poll if that is shorter):
/// pushed instances acknowledge within milliseconds, and the count is one
/// read of the fleet table's rows, made only during a switch's wait, by its
/// one upgrader.
const ACK_CHECK: Duration = Duration::from_millis(10);

/// The rows [`await_fleet`] waits for: live instances other than this one
/// (with `noticing`, those in the renewal grace too; expired ones removed on
/// the way) that have not acknowledged an epoch from `epoch` to the state
/// row's.
fn fetch_behind<B: Backend>(
    shared: &Shared<B>,
    conn: &mut B::Connection,
    epoch: i64,
    grace: i64,
    noticing: bool,
) -> Result<Vec<Instance>> {
    let (instances, current) = shared.write_transaction(conn, |c| -> Result<_> {
        let current = shared.store.read_state::<B>(c)?.epoch;
        let mut live = shared.store.live_instances::<B>(c, grace)?;
        if noticing {
            live.extend(shared.store.noticed_instances::<B>(c, grace)?);
        }
        Ok((live, current))
    })?;
    // An acknowledgement beyond the state row's own epoch was never made by
    // an instance (a ghost row, a hand edit): it counts as none.
    Ok(instances
        .into_iter()
        .filter(|i| i.id != shared.me.id && !(epoch..=current).contains(&i.observed_epoch))
        .collect())
}

/// Whether calls take the locking path with no steady call left in
/// flight (not [`CallPath::Undrained`]): what an upgrader needs of its own
/// instance before it switches.
pub(crate) fn on_drained_locking_path<B: Backend>(shared: &Shared<B>) -> bool {
    shared.path.load() == CallPath::Locking
}

mod adopt;
use adopt::{adopt, adopt_if_free, close_if_unadopted, readopt};
pub(crate) mod group;
mod missed;
pub(crate) mod push;
mod threads;
mod tick;

use missed::check_two_versions;
pub(crate) use threads::{spawn_confirmer, spawn_poller, spawn_watchdog};
pub(crate) use tick::{poll_once, poll_via, renewal_interval, Via};

#[cfg(test)]
#[cfg(feature = "sqlite")]
mod tests;
