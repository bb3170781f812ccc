//! The instance's background threads: the poller, the confirmer and the
//! lease watchdog. Each holds only a weak reference to the handle's state.

use super::*;

/// Starts the poller of `inner`. It holds only a weak reference, so dropping
/// the last handle stops it.
pub(crate) fn spawn_poller<B: Backend>(inner: &Arc<Shared<B>>) -> Result<thread::Thread> {
    let weak: Weak<Shared<B>> = Arc::downgrade(inner);
    let shutdown: Arc<AtomicBool> = Arc::clone(&inner.shutdown);
    let interval = inner.poll_interval;
    let handle = thread::Builder::new()
        .name("tandem-poller".to_owned())
        .spawn(move || loop {
            thread::park_timeout(interval);
            if shutdown.load(Ordering::Acquire) {
                return;
            }
            let Some(shared) = weak.upgrade() else { return };
            // First: after a pause, stop trusting a stale lease before anything else.
            check_lease(&shared);
            if !shared.fleet_paused.load(Ordering::Acquire)
                && !shared.renewals_held.load(Ordering::Acquire)
            {
                if let Err(e) = poll_once(&shared) {
                    tracing::warn!(error = %e, "fleet poll failed");
                    // Perhaps the server restarted: no broken connection
                    // stays in the pool for a call to find.
                    shared.sweep_pool();
                }
            }
            check_lease(&shared);
        })
        .map_err(|e| Error::Connect {
            target: inner.target.clone(),
            message: format!("cannot start the fleet poller thread: {e}"),
        })?;
    Ok(handle.thread().clone())
}

/// Starts the confirmer of `inner` (see the module's "Confirmation
/// reads"): every poll interval, if the last renewal is more than two poll
/// intervals old (the poller is held back), a confirmation read.
pub(crate) fn spawn_confirmer<B: Backend>(inner: &Arc<Shared<B>>) -> Result<thread::Thread> {
    let weak: Weak<Shared<B>> = Arc::downgrade(inner);
    let shutdown: Arc<AtomicBool> = Arc::clone(&inner.shutdown);
    let interval = inner.poll_interval;
    let late = coarsetime::Duration::from(interval.saturating_mul(2));
    let handle = thread::Builder::new()
        .name("tandem-confirm".to_owned())
        .spawn(move || loop {
            thread::park_timeout(interval);
            if shutdown.load(Ordering::Acquire) {
                return;
            }
            let Some(inner) = weak.upgrade() else { return };
            if inner.fleet_paused.load(Ordering::Acquire) {
                continue;
            }
            let renewed = coarsetime::Instant::from_ticks(inner.renewed_at.load(Ordering::Acquire));
            if coarsetime::Instant::now() > renewed + late {
                confirm_steady(&inner);
            }
        })
        .map_err(|e| Error::Connect {
            target: inner.target.clone(),
            message: format!("cannot start the confirmer thread: {e}"),
        })?;
    Ok(handle.thread().clone())
}

/// Starts the lease watchdog of `inner`: a thread that does no I/O, so a
/// poller stuck in a slow database call (SQLite's busy handler, a network
/// stall) cannot keep the steady path open past the lease. It drops the
/// steady flag as soon as the local lease deadline passes.
pub(crate) fn spawn_watchdog<B: Backend>(inner: &Arc<Shared<B>>) -> Result<thread::Thread> {
    let weak: Weak<Shared<B>> = Arc::downgrade(inner);
    let shutdown: Arc<AtomicBool> = Arc::clone(&inner.shutdown);
    let tick = (inner.lease / 20).clamp(Duration::from_millis(1), Duration::from_millis(50));
    let handle = thread::Builder::new()
        .name("tandem-lease".to_owned())
        .spawn(move || loop {
            thread::park_timeout(tick);
            if shutdown.load(Ordering::Acquire) {
                return;
            }
            let Some(inner) = weak.upgrade() else { return };
            check_lease(&inner);
        })
        .map_err(|e| Error::Connect {
            target: inner.target.clone(),
            message: format!("cannot start the lease watchdog thread: {e}"),
        })?;
    Ok(handle.thread().clone())
}
