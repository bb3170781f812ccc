//! Adopting a state row: the drain of steady calls in flight (the
//! in-process write lock) and the cached version and call path it sets.

use super::*;

/// Inside a renewal's (or a registration's) transaction, before it
/// commits: when the state row read is not the one adopted last, closes
/// the steady path ([`CallPath::Undrained`]). The lease the renewal
/// extends vouches for the adopted state only; until the adoption has
/// drained and cached the new row, no call may trust the cached version:
/// neither a new one nor one that waited for its write turn behind this
/// transaction (a switch may have committed without this instance while
/// its renewals were held back).
pub(super) fn close_if_unadopted<B: Backend>(shared: &Shared<B>, state: &State, adopted: i64) {
    if state.epoch != adopted && shared.path.replace(CallPath::Steady, CallPath::Undrained) {
        tracing::debug!(
            epoch = state.epoch,
            adopted,
            "a renewal read a state row not adopted yet: steady path closed until it is"
        );
    }
}

/// After the state row's epoch went backwards: under the in-process
/// write lock (steady calls drained, and this process's own switch
/// excluded: alone, it commits and caches under that lock), reads the
/// row again and caches it whatever its epoch.
pub(super) fn readopt<B: Backend>(shared: &Shared<B>, via: &mut Via<'_, B>) -> Result<State> {
    let _drained = drain(shared, Version::FIRST)?;
    let state = via.run(shared, |conn| {
        shared.write_transaction(conn, |c| shared.store.read_state::<B>(c))
    })?;
    shared.cache_state(
        state.epoch,
        state.version,
        Some(path_for(shared, &state)),
        true,
    );
    Ok(state)
}

/// The in-process write lock, every steady call in flight drained,
/// within a quarter of the lease (so the poller keeps renewing while
/// calls are slow).
///
/// The steady path closes first ([`CallPath::Undrained`]): a call that
/// starts now takes the locking path, which holds the in-process read
/// lock only to look at the path, so the lock waits for the steady calls
/// already in flight and for no new one. (Waiting for a moment with no
/// steady call at all never comes while each thread's next call starts
/// as the last ends and lasts longer than the writer policy's
/// escalation, as under a busy pooler.) The caller sets the path the
/// state asks for once drained; if the drain times out, calls stay on the
/// locking path and the next tick drains again.
pub(super) fn drain<B: Backend>(shared: &Shared<B>, version: Version) -> Result<Drained<'_>> {
    drain_with(shared, version, true)
}

/// [`drain`]; unless `wait`, one try at the write lock only (a
/// [`Error::LockTimeout`] at once if a steady call is in flight).
fn drain_with<B: Backend>(shared: &Shared<B>, version: Version, wait: bool) -> Result<Drained<'_>> {
    let closed = shared.path.replace(CallPath::Steady, CallPath::Undrained);
    let live = shared.live_version();
    let mut policy = shared.writer;
    if !wait {
        policy.patience = Duration::ZERO;
        policy.escalation = Duration::ZERO;
        policy.attempts = 1;
    }
    let round = policy
        .patience
        .saturating_add(policy.escalation)
        .max(Duration::from_millis(1));
    let rounds = ((shared.lease / 4).as_nanos() / round.as_nanos()).max(1);
    policy.attempts = policy
        .attempts
        .min(u32::try_from(rounds).unwrap_or(u32::MAX));
    let guard = shared.lock.write(&policy).map_err(|g| Error::LockTimeout {
        version,
        live,
        attempts: g.attempts,
        waited: g.waited,
    })?;
    Ok(Drained {
        _guard: guard,
        closed,
    })
}

/// The in-process write lock held by [`drain`], no steady call in flight.
pub(super) struct Drained<'a> {
    _guard: crate::lock::WriteGuard<'a>,
    /// Whether the drain closed the steady path (it was open).
    closed: bool,
}

/// Whether the local path and cached version are what `state` asks for,
/// so that adopting it drains nothing. (`Undrained` never is: steady calls
/// may be in flight.)
fn settled<B: Backend>(shared: &Shared<B>, state: &State) -> bool {
    shared.path.load() == path_for(shared, state)
        && shared.live.load(Ordering::Acquire) == state.version.get()
}

/// Makes the local mode and cached version match `state`, draining steady
/// calls in flight (in-process write lock) when either changes. The
/// drain's budget stays under a quarter of the lease, so the poller keeps
/// renewing while calls are slow.
pub(super) fn adopt<B: Backend>(shared: &Shared<B>, state: &State, joining: bool) -> Result<()> {
    adopt_with(shared, state, joining, true)
}

/// [`adopt`] by a tick, if no steady call is in flight now (nothing to
/// wait for): `None` if one is (the steady path is closed by then, and an
/// [`adopt`] must follow, which waits for it).
pub(super) fn adopt_if_free<B: Backend>(shared: &Shared<B>, state: &State) -> Option<Result<()>> {
    match adopt_with(shared, state, false, false) {
        Err(Error::LockTimeout { .. }) => None,
        adopted => Some(adopted),
    }
}

fn adopt_with<B: Backend>(
    shared: &Shared<B>,
    state: &State,
    joining: bool,
    wait: bool,
) -> Result<()> {
    if !joining {
        // (At open nothing has been served yet: the version read at
        // initialization may be a multi-hop upgrade behind the row.)
        check_two_versions(shared, state);
    }
    let want = path_for(shared, state);
    if settled(shared, state) {
        return Ok(());
    }
    let drained = drain_with(shared, state.version, wait)?;
    // Drained: no steady call is in flight while the guard is held.
    if shared.cache_state(state.epoch, state.version, Some(want), false) {
        tracing::debug!(version = %state.version, mode = state.mode.as_str(), epoch = state.epoch, "adopted state");
    } else {
        // The cached state stands: so does its steady path, closed only
        // for the drain. (A stale lease still sends every call to the
        // locking path, and the watchdog closes it again.)
        if drained.closed {
            shared.path.replace(CallPath::Undrained, CallPath::Steady);
        }
        tracing::debug!(
            epoch = state.epoch,
            "state row older than the cached one (a switch by this process): not adopted"
        );
    }
    Ok(())
}

/// The call path `state` asks for: steady only in steady mode with a
/// fresh lease.
fn path_for<B: Backend>(shared: &Shared<B>, state: &State) -> CallPath {
    if state.mode == Mode::Steady && shared.lease_fresh() {
        CallPath::Steady
    } else {
        CallPath::Locking
    }
}
