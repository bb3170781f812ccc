//! The instance's background threads: the poller, the confirmer and the
//! lease watchdog. Each holds only a weak reference to the shared state, so
//! dropping it stops them.

use super::*;

/// Starts the thread `name`: every `every` (or when unparked at shutdown),
/// `tick` on the shared state while it lives and is not shut down.
fn spawn_ticking<B: Backend>(
    shared: &Arc<Shared<B>>,
    name: &str,
    every: Duration,
    tick: impl Fn(&Shared<B>) + Send + 'static,
) -> Result<thread::Thread> {
    let weak: Weak<Shared<B>> = Arc::downgrade(shared);
    let shutdown: Arc<AtomicBool> = Arc::clone(&shared.shutdown);
    let handle = thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || loop {
            thread::park_timeout(every);
            if shutdown.load(Ordering::Acquire) {
                return;
            }
            let Some(shared) = weak.upgrade() else { return };
            tick(&shared);
        })
        .map_err(|e| Error::Connect {
            target: shared.target.clone(),
            message: format!("cannot start the {name} thread: {e}"),
        })?;
    Ok(handle.thread().clone())
}

/// Starts the poller: each poll interval, a fleet tick ([`poll_via`]).
pub(crate) fn spawn_poller<B: Backend>(shared: &Arc<Shared<B>>) -> Result<thread::Thread> {
    spawn_ticking(shared, "tandem-poller", shared.poll_interval, |shared| {
        // First: after a pause, stop trusting a stale lease before anything else.
        check_lease(shared);
        if wants_tick(shared) {
            poll_alone(shared);
        }
        check_lease(shared);
    })
}

/// Whether the poller ticks for this handle now: not [`held_back`], and
/// not [`quiet`].
pub(super) fn wants_tick<B: Backend>(shared: &Shared<B>) -> bool {
    !held_back(shared) && !quiet(shared)
}

/// Whether the tests pause this handle's fleet ticks or hold back its
/// renewals.
pub(super) fn held_back<B: Backend>(shared: &Shared<B>) -> bool {
    shared.fleet_paused.load(Ordering::Acquire) || shared.renewals_held.load(Ordering::Acquire)
}

/// One poller tick for this handle alone, on its own pool.
pub(super) fn poll_alone<B: Backend>(shared: &Shared<B>) {
    match poll_via(shared, Via::Poller) {
        Ok(_) => {}
        // SQLite's write lock, held by another writer for over a poll
        // interval: tried again next tick (a lease that runs out meanwhile
        // is warned of by `check_lease`). Nothing is broken.
        Err(Error::Query(e)) if B::is_transient(&e) => {
            tracing::debug!(error = %e, "fleet tick waited a poll interval for the write lock; next tick tries again");
        }
        Err(e) => {
            tracing::warn!(error = %e, "fleet poll failed");
            poll_failed(shared);
        }
    }
}

/// After a failed tick: the next one polls, notice or not, and no broken
/// connection stays in the pool for a call to find (perhaps the server
/// restarted).
pub(super) fn poll_failed<B: Backend>(shared: &Shared<B>) {
    if let Some(s) = shared.push.lock().as_ref() {
        s.notice_again();
    }
    shared.sweep_pool();
}

/// Whether this tick may be skipped: the handle hears notices now, none
/// came since its last tick, it is on the steady path, and no renewal is
/// due (see `push`'s module docs).
fn quiet<B: Backend>(shared: &Shared<B>) -> bool {
    let pushed = shared
        .push
        .lock()
        .as_ref()
        .is_some_and(|s| s.listening() && !s.take_notice());
    pushed && shared.path.load() == CallPath::Steady && !tick::renewal_due(shared)
}

/// Starts the confirmer (see the module's "Confirmation reads"): every poll
/// interval (or half a confirmation span, if sooner: `confirm_every`), if
/// no renewal came a poll after one fell due (the poller is held back), a
/// confirmation read. (With a renewal on every tick, as for leases under
/// four polls, that is two polls after the last one.)
pub(crate) fn spawn_confirmer<B: Backend>(shared: &Arc<Shared<B>>) -> Result<thread::Thread> {
    let late =
        coarsetime::Duration::from(renewal_interval(shared).saturating_add(shared.poll_interval));
    spawn_ticking(
        shared,
        "tandem-confirm",
        confirm_every(shared),
        move |shared| {
            if shared.fleet_paused.load(Ordering::Acquire) {
                return;
            }
            let renewed =
                coarsetime::Instant::from_ticks(shared.renewed_at.load(Ordering::Acquire));
            if coarsetime::Instant::now() > renewed + late {
                confirm_steady(shared);
            }
        },
    )
}

/// Starts the lease watchdog: a thread that does no I/O, so a poller stuck
/// in a slow database call (SQLite's busy handler, a network stall) cannot
/// keep the steady path open past the lease. It drops the steady flag as
/// soon as the local lease deadline passes.
pub(crate) fn spawn_watchdog<B: Backend>(shared: &Arc<Shared<B>>) -> Result<thread::Thread> {
    let tick = (shared.lease / 20).clamp(Duration::from_millis(1), Duration::from_millis(50));
    spawn_ticking(shared, "tandem-lease", tick, check_lease)
}
