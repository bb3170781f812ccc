//! One fleet tick: where its connection comes from, the read, the renewal
//! (about every quarter lease) and the acknowledgement (only of a new epoch).

use super::*;

/// Where a fleet tick gets its connection: from the pool, one statement
/// group at a time (no connection held while it drains), or the caller's
/// own (an upgrader, which holds one for its whole command: a second from
/// the pool could wait forever on a one-connection pool).
pub(crate) enum Via<'c, B: Backend> {
    /// Pooled, waiting up to the pool's `connection_timeout` (`refresh`'s
    /// round trips after its first).
    Pool,
    /// The poller thread: pooled, taken before the tick lock (so that an
    /// upgrader of this process never waits behind a poller waiting for
    /// the pool), for up to the pool's `connection_timeout` when a renewal
    /// is due and at most a poll interval otherwise (that tick is skipped).
    Poller,
    /// The caller's own connection, held throughout.
    Held(&'c mut B::Connection),
    /// The poller's connection taken before the tick lock, for the first
    /// round trip (given back before any drain).
    Taken(Conn<B>),
    /// `refresh`'s connection, taken from the pool before the tick lock
    /// (so no tick lock is held while it waits for a busy pool: the shared
    /// poller would leave that member out meanwhile), for the first round
    /// trip; later ones as [`Via::Pool`].
    Ahead(Conn<B>),
}

impl<B: Backend> Via<'_, B> {
    /// Whether this tick renews the lease: the poller only when a renewal
    /// is due ([`renewal_due`]); `refresh` and an upgrader always.
    fn renews(&self, shared: &Shared<B>) -> bool {
        !matches!(self, Via::Poller | Via::Taken(_)) || renewal_due(shared)
    }

    pub(super) fn run<T>(
        &mut self,
        shared: &Shared<B>,
        f: impl FnOnce(&mut B::Connection) -> Result<T>,
    ) -> Result<T> {
        match self {
            Via::Pool => f(&mut *shared.connection()?),
            Via::Poller => {
                let mut conn = poller_connection(shared, shared.poll_interval)?;
                waiting_a_poll(shared, &mut conn, f)
            }
            Via::Taken(conn) => waiting_a_poll(shared, conn, f),
            Via::Held(conn) => f(conn),
            Via::Ahead(conn) => f(&mut **conn),
        }
    }
}

/// Runs the background poller's `f` on `conn` with its writes waiting at
/// most half a lease (at least a poll interval) for this process's write
/// turn and SQLite's write lock (the pool's busy timeout is 5 s; see
/// [`WritesBounded`]): long enough to get through this process's queue of
/// writers under load, short enough that a renewal another process's long
/// write holds back is tried again before the lease runs out. (A switch does
/// not wait behind it: its own writes are bounded by its budget.
/// PostgreSQL's writers do not queue in-process, and its waits are bounded
/// per statement.)
fn waiting_a_poll<B: Backend, T>(
    shared: &Shared<B>,
    conn: &mut Conn<B>,
    f: impl FnOnce(&mut B::Connection) -> Result<T>,
) -> Result<T> {
    let wait = (shared.lease / 2)
        .max(shared.poll_interval)
        .max(Duration::from_millis(1));
    let _bound = WritesBounded::until(Instant::now() + wait);
    f(&mut **conn)
}

/// The poller's connection, taken before the tick lock (waiting for the
/// pool never holds it): up to the pool's `connection_timeout` when a
/// renewal is due, a poll interval otherwise.
fn take_before_the_lock<B: Backend>(shared: &Shared<B>) -> Result<Conn<B>> {
    if renewal_due(shared) {
        shared.connection()
    } else {
        poller_connection(shared, shared.poll_interval)
    }
}

/// A pooled connection for the poller, waiting at most `wait`.
fn poller_connection<B: Backend>(shared: &Shared<B>, wait: Duration) -> Result<Conn<B>> {
    shared
        .pool
        .get_timeout(wait)
        .map_err(|e| crate::shared::pool_error(&e, &shared.secrets))
}

/// One fleet tick (see [`poll_via`]), on pooled connections (the first
/// taken before the tick lock).
pub(crate) fn poll_once<B: Backend>(shared: &Shared<B>) -> Result<State> {
    poll_via(shared, Via::Ahead(shared.connection()?))
}

/// One fleet tick: read the state row (and renew the lease, in the same
/// transaction, when this tick renews: see [`Via::renews`]); adopt the row
/// (draining steady calls if the mode or version changes); then
/// acknowledge its epoch if it is new. The lease is renewed before the
/// drain so that a slow drain never makes a live instance look dead: the
/// upgrader waits for it instead.
pub(crate) fn poll_via<B: Backend>(shared: &Shared<B>, mut via: Via<'_, B>) -> Result<State> {
    if matches!(via, Via::Poller) {
        via = Via::Taken(take_before_the_lock(shared)?);
    }
    let mut adopted = shared.adopted_epoch.lock();
    let last_adopted = *adopted;
    let tick = coarsetime::Instant::now();
    let state = if via.renews(shared) {
        let state = via.run(shared, |conn| {
            // The lease runs from the database's clock, not this host's.
            let (state, renewed, observed) = shared.write_transaction(conn, |c| -> Result<_> {
                // Under the shared schema lock, as calls on the locking
                // path and registrations take it: a switch that finds this
                // row live and unacknowledged under its exclusive lock
                // waits for it, and one that found it expired has
                // committed before the read below.
                shared.enter_shared(c)?;
                // Restated with the renewal: the epoch adopted (drained)
                // last, only while the row is still that epoch (so adopting
                // it is a no-op): never one this tick has not acted on.
                let (state, renewed) = shared.store.renew_reading_state::<B>(
                    c,
                    &shared.me.id,
                    millis(shared.lease),
                    last_adopted,
                )?;
                // Before the renewal commits.
                close_if_unadopted(shared, &state, last_adopted);
                let observed = crate::store::restated(last_adopted, &state);
                Ok((state, renewed, observed))
            })?;
            if renewed {
                if let Some(epoch) = observed {
                    shared.acknowledged.store(epoch, Ordering::Release);
                }
            }
            if !renewed && !shared.shutdown.load(Ordering::Acquire) {
                // Our row expired and was removed while we could not renew:
                // join again, acknowledging nothing yet. A switch may have
                // run meanwhile without waiting for us: adopt the state read
                // as we register, not the one read before.
                tracing::warn!(instance = %shared.me.id, "fleet row was gone (lease expired); registering again");
                register(shared, conn, false)
            } else {
                Ok(state)
            }
        })?;
        set_lease_deadline(shared, tick);
        state
    } else {
        // Between renewals a tick only reads: one statement, no transaction,
        // nothing written (SQLite: no write lock; PostgreSQL: no
        // transaction id, no WAL).
        via.run(shared, |conn| shared.store.read_state::<B>(conn))?
    };
    // Given back: no pooled connection is held while draining.
    match via {
        Via::Taken(_) => via = Via::Poller,
        Via::Ahead(_) => via = Via::Pool,
        _ => {}
    }
    let state = adopt_read(shared, *adopted, state, &mut via)?;
    set_adopted(shared, &mut adopted, state.epoch);
    acknowledge(shared, &mut via, state.epoch)?;
    Ok(state)
}

/// A tick's adoption of the state row it read, under its tick lock (the
/// member's `adopted_epoch`, last at `adopted`): drains steady calls if the
/// mode or version changes. Returns the row adopted, for the caller to
/// record ([`set_adopted`]) under that lock: the one read, or, if its
/// epoch went backwards, the row read again (and cached whatever its
/// epoch). No pooled connection is held while it waits for the in-process
/// write lock, unless `via` holds one.
pub(super) fn adopt_read<B: Backend>(
    shared: &Shared<B>,
    adopted: i64,
    state: State,
    via: &mut Via<'_, B>,
) -> Result<State> {
    // (Against the cached epoch too: this process's own switch caches
    // the epoch it wrote, which no tick may have adopted yet.)
    let newest = adopted.max(*shared.cached_epoch.lock());
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
        check_two_versions(shared, &state);
        return readopt(shared, via);
    }
    adopt(shared, &state, false)?;
    Ok(state)
}

/// Records `epoch` as acknowledged in this instance's fleet row, unless the
/// row already says so (as this instance last wrote it): in steady state a
/// tick writes nothing.
fn acknowledge<B: Backend>(shared: &Shared<B>, via: &mut Via<'_, B>, epoch: i64) -> Result<()> {
    if shared.acknowledged.load(Ordering::Acquire) == epoch {
        return Ok(());
    }
    // One statement: on PostgreSQL no transaction block around it.
    via.run(shared, |c| {
        shared.write_statement(c, |c| {
            shared.store.acknowledge::<B>(c, &shared.me.id, epoch)
        })
    })?;
    shared.acknowledged.store(epoch, Ordering::Release);
    Ok(())
}

/// How often the poller renews its lease: about every quarter lease, and
/// no more often than every poll ([`renewal_due`] renews at the first tick
/// from a quarter lease less half a poll on: every second tick at
/// SQLite's defaults, 200 ms poll and 2 s lease; every 7.5 s at
/// PostgreSQL's 30 s lease). Between renewals its ticks only
/// read the state row. A renewal sets `lease_until` a whole lease ahead by
/// the database's clock, so a dead instance's row expires, and drops out,
/// exactly as when every tick renewed: one lease after its last renewal,
/// plus the grace. The local deadline, three quarters of a lease from the
/// renewal's start, stays ahead of the next renewal by half a lease less
/// half a poll (a quarter lease less a poll for leases under four polls,
/// which renew on every tick).
pub(crate) fn renewal_interval<B: Backend>(shared: &Shared<B>) -> Duration {
    (shared.lease / 4).max(shared.poll_interval)
}

/// Whether the last renewal (taken before its round trip) is a renewal
/// interval old, less half a poll so that the tick near the mark renews.
pub(super) fn renewal_due<B: Backend>(shared: &Shared<B>) -> bool {
    let last = coarsetime::Instant::from_ticks(shared.renewed_at.load(Ordering::Acquire));
    let every = renewal_interval(shared).saturating_sub(shared.poll_interval / 2);
    coarsetime::Instant::now() >= last + coarsetime::Duration::from(every)
}
