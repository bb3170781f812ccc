//! The upgrade lease: taken before a command, renewed while it works (a keeper
//! thread beside long statements), retaken as phases commit, and cleaned up
//! after it whatever happened.

use super::*;

impl<B: Backend> Upgrader<B> {
    pub(super) fn with_lease<T>(
        &self,
        f: impl FnOnce(&mut B::Connection) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.shared.connection()?;
        self.acquire_lease(&mut conn)?;
        let result = self
            .shared
            .verify_checksums(&mut conn)
            .and_then(|()| f(&mut conn));
        if result.as_ref().is_err_and(is_injected_crash) {
            return result; // a "crashed" upgrader leaves everything as a dead process would
        }
        // After a failure the connection may be the broken part: clean up on
        // a fresh one (returning this one to the pool first).
        let conn = if result.is_err() {
            drop(conn);
            None
        } else {
            Some(conn)
        };
        self.clean_up(conn);
        result
    }

    /// Whatever the command did: the fleet does not stay in deploying mode
    /// (a failed switch, or one an earlier upgrader crashed in), and the
    /// lease is given up. While the database cannot be reached (a server
    /// restarting, a connection killed) this retries with backoff, for up to
    /// the lease; a write lock held elsewhere (a frozen SQLite writer) gets
    /// a short wait only. What cannot be done is left to the next command,
    /// which, in this process, takes the lease over at once.
    pub(super) fn clean_up(&self, mut conn: Option<crate::shared::Conn<B>>) {
        let store = &self.shared.store;
        let deadline = Instant::now() + self.lease.min(Duration::from_secs(30));
        let mut backoff = Backoff::default();
        loop {
            let attempt = (|| -> Result<()> {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => {
                        // Not the pool's full `connection_timeout` per try.
                        let wait = deadline
                            .saturating_duration_since(Instant::now())
                            .clamp(Duration::from_millis(100), Duration::from_secs(2));
                        let fresh = self
                            .shared
                            .pool
                            .get_timeout(wait)
                            .map_err(|e| crate::shared::pool_error(&e, &self.shared.secrets))?;
                        conn.insert(fresh)
                    }
                };
                B::set_busy_wait(c, Some(CLEANUP_WAIT))?;
                // The pool's wait back however this ends.
                let restore = crate::shared::RestoreBusyWait::<B>(c);
                let c = &mut *restore.0;
                // Not behind this process's write gate, nor a poller tick
                // (either may be waiting out a frozen writer): the poller
                // adopts steady mode on its next tick.
                if store.read_state::<B>(c)?.mode == Mode::Deploying {
                    B::write_transaction(c, |c| store.set_mode::<B>(c, Mode::Steady, &self.owner))?;
                }
                store.release_lease::<B>(c, &self.owner)?;
                Ok(())
            })();
            let e = match attempt {
                Ok(()) => return,
                Err(e) => e,
            };
            if matches!(e, Error::UpgraderBusy { .. }) {
                // The lease is no longer ours: its holder owns the state now.
                tracing::debug!(error = %e, "the upgrade lease was no longer ours at cleanup");
                return;
            }
            let busy = matches!(&e, Error::Query(q) if B::is_transient(q));
            if busy || Instant::now() >= deadline {
                tracing::warn!(error = %e, "could not return the fleet to steady mode and release the upgrade lease; the next upgrader command will (in this process at once; elsewhere once the lease expires)");
                self.shared.orphaned_leases.lock().push(self.owner.clone());
                return;
            }
            tracing::debug!(error = %e, "cleanup after the command failed; retrying on a fresh connection");
            conn = None;
            self.shared.sweep_pool();
            backoff.wait();
        }
    }

    pub(super) fn acquire_lease(&self, conn: &mut B::Connection) -> Result<()> {
        let deadline = Instant::now() + self.wait_for_lease;
        let mut backoff = Backoff::polling(Duration::from_millis(5), Duration::from_millis(200));
        loop {
            // The lease alone excludes: no session lock, so nothing stays on
            // a pooled connection (a crashed holder's lease expires).
            let holder = self.shared.write_transaction(conn, |c| self.try_lease(c))?;
            match holder {
                None => {
                    self.last_renewal.set(Some(Instant::now()));
                    return Ok(());
                }
                Some((holder, left)) => {
                    if self.take_over(conn, &holder)? {
                        self.last_renewal.set(Some(Instant::now()));
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        return Err(Error::UpgraderBusy {
                            holder,
                            expires_in_ms: left,
                        });
                    }
                    backoff.wait_at_most(Some(deadline.saturating_duration_since(Instant::now())));
                }
            }
        }
    }

    /// Takes the lease over from `holder` if it is an upgrader of this
    /// process whose command returned without releasing it.
    pub(super) fn take_over(&self, conn: &mut B::Connection, holder: &str) -> Result<bool> {
        let orphaned = self
            .shared
            .orphaned_leases
            .lock()
            .iter()
            .any(|o| o == holder);
        if !orphaned {
            return Ok(false);
        }
        let taken = self.shared.write_transaction(conn, |c| {
            self.shared
                .store
                .take_over_lease::<B>(c, &self.owner, holder, self.lease_ms())
        })?;
        self.shared.orphaned_leases.lock().retain(|o| o != holder);
        if taken {
            tracing::info!(
                from = holder,
                "took over the upgrade lease this process left behind"
            );
        }
        Ok(taken)
    }

    /// The upgrade lease in milliseconds (of the database's clock).
    pub(super) fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX / 4)
    }

    /// Renews the lease when a third of it has passed (during long phases).
    pub(super) fn renew_lease(&self, conn: &mut B::Connection) -> Result<()> {
        let due = self
            .last_renewal
            .get()
            .is_none_or(|t| t.elapsed() >= self.lease / 3);
        if due {
            let holder = self.shared.write_transaction(conn, |c| self.try_lease(c))?;
            if let Some((holder, left)) = holder {
                return Err(Error::UpgraderBusy {
                    holder,
                    expires_in_ms: left,
                });
            }
            self.last_renewal.set(Some(Instant::now()));
        }
        Ok(())
    }

    /// What is left of the running switch's `switch_timeout`, if one runs.
    pub(super) fn budget(&self) -> Option<Duration> {
        self.switch_deadline
            .get()
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Takes or renews the lease inside the current transaction: `None`,
    /// or the other holder and the milliseconds its lease has left.
    fn try_lease(&self, c: &mut B::Connection) -> Result<Option<(String, i64)>> {
        self.shared
            .store
            .try_lease::<B>(c, &self.owner, self.lease_ms())
    }

    /// Inside a phase transaction, after its long statements: takes the
    /// lease anew (ours, or lapsed and nobody else's), so the transaction
    /// commits only while this upgrader holds it, with a fresh expiry.
    pub(super) fn claim(&self, c: &mut B::Connection) -> Result<()> {
        match self.try_lease(c)? {
            None => Ok(()),
            Some((holder, left)) => Err(Error::UpgraderBusy {
                holder,
                expires_in_ms: left,
            }),
        }
    }

    /// Runs `f` (a phase's statements, a backfill batch) with a keeper
    /// beside it: a thread that renews the upgrade lease on a connection of
    /// its own every third of the lease, so that a statement longer than the
    /// lease keeps it and no second upgrader gets in meanwhile. (On SQLite
    /// the keeper queues behind the phase's write lock; [`claim`](Self::claim)
    /// then retakes the lease as the phase commits. A one-connection pool
    /// has no connection to spare for it: the claim alone.)
    pub(super) fn kept<T>(&self, f: impl FnOnce() -> T) -> T {
        let out = self.keeping(|keeper| keeper.armed(f));
        self.last_renewal.set(Some(Instant::now()));
        out
    }

    /// Runs `f` with one keeper beside it (see [`kept`](Self::kept)) that
    /// renews the lease only while `f` has it [`armed`](Keeper::armed):
    /// the batches of a backfill share one keeper thread (a thread per
    /// batch cost about as much as the batch), and between batches, where
    /// the upgrader renews the lease itself, nothing renews it for a
    /// thread that stopped.
    pub(super) fn keeping<T>(&self, f: impl FnOnce(&Keeper) -> T) -> T {
        let done = AtomicBool::new(false);
        let keeper = Keeper {
            armed: AtomicBool::new(false),
        };
        let (shared, owner, lease) = (&*self.shared, self.owner.as_str(), self.lease);
        thread::scope(|s| {
            let thread = thread::Builder::new()
                .name("tandem-lease-keeper".to_owned())
                .spawn_scoped(s, || keep_lease(shared, owner, lease, &done, &keeper.armed));
            // Stopped however `f` ends: a panic that unwinds through here
            // would otherwise wait for a keeper that never stops.
            let stop = Stop {
                done: &done,
                keeper: thread.as_ref().ok().map(|t| t.thread().clone()),
            };
            let out = f(&keeper);
            drop(stop);
            match thread {
                Ok(keeper) => {
                    if keeper.join().is_err() {
                        tracing::warn!("the upgrade lease keeper panicked");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no lease keeper thread: a statement longer than the lease may lose it")
                }
            }
            out
        })
    }
}

/// How long the cleanup after a command waits for SQLite's write lock.
const CLEANUP_WAIT: Duration = Duration::from_millis(250);

/// The lease keeper of [`Upgrader::keeping`]: renews the lease while armed.
pub(super) struct Keeper {
    armed: AtomicBool,
}

impl Keeper {
    /// Runs `f` with the lease renewed meanwhile (disarmed however `f`
    /// ends).
    pub(super) fn armed<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Disarm<'a>(&'a AtomicBool);
        impl Drop for Disarm<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        self.armed.store(true, Ordering::Release);
        let _disarm = Disarm(&self.armed);
        f()
    }
}

/// Ends a keeper when dropped: sets `done` and wakes it.
struct Stop<'a> {
    done: &'a AtomicBool,
    keeper: Option<thread::Thread>,
}

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        if let Some(keeper) = &self.keeper {
            keeper.unpark();
        }
    }
}

/// The lease keeper's loop (see [`Upgrader::kept`]): renews `owner`'s
/// upgrade lease every third of `lease` while `armed`, until `done`.
fn keep_lease<B: Backend>(
    shared: &Shared<B>,
    owner: &str,
    lease: Duration,
    done: &AtomicBool,
    armed: &AtomicBool,
) {
    let every = (lease / 3).max(Duration::from_millis(1));
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 4);
    let mut conn = None;
    loop {
        thread::park_timeout(every);
        if done.load(Ordering::Acquire) {
            return;
        }
        if !armed.load(Ordering::Acquire) {
            // Its connection back to the pool between batches: the
            // application's calls and the fleet need it more.
            conn = None;
            continue;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match shared.pool.get_timeout(every) {
                Ok(c) => conn.insert(c),
                Err(_) => continue,
            },
        };
        let renewed = shared.write_transaction(&mut **c, |c| {
            shared.store.try_lease::<B>(c, owner, lease_ms)
        });
        match renewed {
            Ok(None) => tracing::trace!(owner, "upgrade lease renewed during a phase"),
            Ok(Some((holder, _))) => {
                tracing::warn!(owner, holder = %holder, "the upgrade lease was taken over during a phase; the phase will not commit");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not renew the upgrade lease during a phase; retrying");
                conn = None;
            }
        }
    }
}
