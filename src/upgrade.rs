//! The upgrader: expand, switch, contract (and switch back), journaled in
//! the history table, resumable after a crash, one at a time.
//!
//! ## Exclusion
//!
//! Every command first takes the upgrade lease: a compare-and-set of
//! `owner`/`owner_until` on the state row inside a write transaction
//! (SQLite `BEGIN IMMEDIATE`). A second upgrader, in this process or
//! another, gets [`Error::UpgraderBusy`] naming the holder, or waits
//! ([`Upgrader::wait_for_lease`]). A crashed holder's lease expires.
//! Every state transition is itself a compare-and-set that requires the
//! lease, so an upgrader whose lease was taken over cannot write.
//!
//! ## Crash safety
//!
//! Each phase's SQL, its history row and its state change commit in one
//! transaction, so a crash leaves the phase either wholly applied or not at
//! all. The one exception is expand's Rust steps (batched backfill), which
//! run after expand's SQL in their own transactions: the history row says
//! `running` until they finish and the state row still says `stable`; the
//! same command run again skips the SQL and resumes the steps.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::handle::Tandem;
use crate::lock::WriterPolicy;
use crate::meta::{self, Instance, Mode, State, StatePhase};
use crate::version::{Phase, Version};

/// A Rust step of a version's expand phase (see [`Builder::backfill`](crate::Builder::backfill)).
pub(crate) struct Step<B: Backend> {
    pub(crate) version: u32,
    pub(crate) name: String,
    #[allow(clippy::type_complexity)]
    pub(crate) batch: Box<dyn Fn(&mut B::Connection) -> diesel::QueryResult<usize> + Send + Sync>,
}

/// What one phase did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PhaseReport {
    /// The version the phase belongs to.
    pub version: Version,
    /// The phase.
    pub phase: Phase,
    /// The phase had already been applied; nothing was done.
    pub already_done: bool,
    /// Wall time of the phase.
    pub duration: Duration,
    /// Backfill batches committed (expand only).
    pub batches: u64,
    /// For switch and switch back: how long the writer waited for the schema
    /// write lock.
    pub writer_wait: Duration,
    /// For switch and switch back: how long the write lock was held.
    pub held: Duration,
    /// For switch and switch back: whether the writer had to escalate.
    pub escalated: bool,
    /// Attempts of the phase's transaction: 1, plus one per retry after a
    /// lock conflict (`lock_timeout`, deadlock, busy). 0 when the phase
    /// had already been applied, or (expand) its SQL had been applied
    /// before a resume.
    pub attempts: u32,
    /// For switch and switch back with other live instances: how long the
    /// fleet took to acknowledge deploying mode.
    pub fleet_ack: Option<Duration>,
}

impl PhaseReport {
    fn new(version: Version, phase: Phase) -> Self {
        PhaseReport {
            version,
            phase,
            already_done: false,
            duration: Duration::ZERO,
            batches: 0,
            writer_wait: Duration::ZERO,
            held: Duration::ZERO,
            escalated: false,
            attempts: 0,
            fleet_ack: None,
        }
    }

    fn done(version: Version, phase: Phase) -> Self {
        PhaseReport {
            already_done: true,
            ..PhaseReport::new(version, phase)
        }
    }
}

/// Runs upgrade phases through a [`Tandem`] handle. Made by
/// [`Tandem::upgrader`].
///
/// ```
/// # fn main() -> Result<(), tandem::Error> {
/// let db = tandem::Tandem::<tandem::Sqlite>::builder(":memory:", tandem::demo::catalog()?).open()?;
/// assert_eq!(db.live_version().get(), 1);
/// db.upgrader().upgrade_to(2)?; // expand, switch, contract
/// assert_eq!(db.live_version().get(), 2);
/// # Ok(()) }
/// ```
pub struct Upgrader<'t, B: Backend> {
    db: &'t Tandem<B>,
    owner: String,
    lease: Duration,
    wait_for_lease: Duration,
    crash_at: Option<usize>,
    halt_at: Option<(usize, std::path::PathBuf)>,
    steps_taken: Cell<usize>,
    last_renewal: Cell<Option<Instant>>,
    /// While a switch runs: when its waits must end (`switch_timeout`).
    switch_deadline: Cell<Option<Instant>>,
    /// While a switch runs: (the version switched to, the live version).
    switch_versions: Cell<Option<(Version, Version)>>,
}

impl<B: Backend> fmt::Debug for Upgrader<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upgrader")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// Distinguishes upgraders of one handle from each other.
static UPGRADER_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl<'t, B: Backend> Upgrader<'t, B> {
    pub(crate) fn new(db: &'t Tandem<B>) -> Self {
        let seq = UPGRADER_SEQ.fetch_add(1, Ordering::Relaxed);
        Upgrader {
            db,
            owner: format!("{}#u{seq}", db.instance_id()),
            lease: Duration::from_secs(30),
            wait_for_lease: Duration::ZERO,
            crash_at: None,
            halt_at: None,
            steps_taken: Cell::new(0),
            last_renewal: Cell::new(None),
            switch_deadline: Cell::new(None),
            switch_versions: Cell::new(None),
        }
    }

    /// How long the upgrade lease lasts without renewal; a crashed upgrader
    /// blocks others for at most this long. Renewed during long phases.
    /// Defaults to 30 s.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(10));
        self
    }

    /// Wait up to `timeout` for another upgrader's lease instead of failing
    /// at once with [`Error::UpgraderBusy`]. Defaults to no wait.
    /// `Duration::MAX` waits as long as it takes (any timeout is capped at
    /// 100 years).
    pub fn wait_for_lease(mut self, timeout: Duration) -> Self {
        self.wait_for_lease = timeout.min(crate::handle::FOREVER);
        self
    }

    /// Test hook: fail with [`Error::InjectedCrash`] at step boundary `step`
    /// (1-based), leaving the lease held as a crashed process would.
    #[doc(hidden)]
    pub fn crash_at(mut self, step: usize) -> Self {
        self.crash_at = Some(step);
        self
    }

    /// Test hook: at step boundary `step`, create the file `marker` and stop
    /// there for good, so that a test can SIGKILL the process at exactly that
    /// point.
    #[doc(hidden)]
    pub fn halt_at(mut self, step: usize, marker: impl Into<std::path::PathBuf>) -> Self {
        self.halt_at = Some((step, marker.into()));
        self
    }

    /// Test hook: step boundaries passed so far.
    #[doc(hidden)]
    pub fn steps_taken(&self) -> usize {
        self.steps_taken.get()
    }

    /// This upgrader's id in the state and history tables.
    pub fn id(&self) -> &str {
        &self.owner
    }

    /// Applies the next version's expand phase: its SQL in one transaction,
    /// then its Rust steps in batches. The live version is unchanged.
    ///
    /// # Errors
    ///
    /// [`Error::UpgraderBusy`], [`Error::PhaseOutOfOrder`] (a switched version
    /// is not contracted yet), [`Error::UnknownVersion`] (nothing to expand),
    /// [`Error::ChecksumDrift`], [`Error::PhaseFailed`], [`Error::StepFailed`].
    pub fn expand(&self) -> Result<PhaseReport> {
        self.with_lease(|conn| self.expand_locked(conn))
    }

    /// Switches the live version to the expanded one: `switch.sql` and the
    /// version bump in one transaction, under the schema write lock. Calls in
    /// flight finish first; calls arriving meanwhile wait, then run with the
    /// new version's bindings.
    ///
    /// # Errors
    ///
    /// [`Error::PhaseOutOfOrder`] (not expanded), [`Error::SwitchRefused`]
    /// (this binary could not serve the new version), [`Error::LockTimeout`]
    /// (database unchanged), [`Error::PhaseFailed`], and as [`expand`](Upgrader::expand).
    pub fn switch(&self) -> Result<PhaseReport> {
        self.with_lease(|conn| self.switch_locked(conn, Phase::Switch))
    }

    /// Undoes the switch (before contract): `switch_back.sql` and the version
    /// bump back, under the schema write lock, as the switch does.
    ///
    /// # Errors
    ///
    /// [`Error::PhaseOutOfOrder`] (not in the switch window),
    /// [`Error::NoSwitchBack`], and as [`switch`](Upgrader::switch).
    pub fn switch_back(&self) -> Result<PhaseReport> {
        self.with_lease(|conn| self.switch_locked(conn, Phase::SwitchBack))
    }

    /// Removes the previous version's structures (`contract.sql`). Only after
    /// the switch.
    ///
    /// # Errors
    ///
    /// [`Error::PhaseOutOfOrder`] (contract before switch), and as
    /// [`expand`](Upgrader::expand).
    pub fn contract(&self) -> Result<PhaseReport> {
        self.with_lease(|conn| self.contract_locked(conn))
    }

    /// Runs every remaining phase of every version up to `target`, from
    /// wherever the database stands (1→2→3 and further), ending contracted.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownVersion`] (target not in the catalog),
    /// [`Error::NotRollForward`], and those of the phases.
    pub fn upgrade_to(&self, target: u32) -> Result<Vec<PhaseReport>> {
        let latest = self.db.catalog().latest();
        let target = Version::new(target).ok_or(Error::InvalidVersion {
            value: i64::from(target),
            context: "upgrade_to",
        })?;
        if target > latest {
            return Err(Error::UnknownVersion {
                version: target,
                latest,
            });
        }
        self.with_lease(|conn| {
            let mut reports = Vec::new();
            loop {
                let state = self.read_state(conn)?;
                if state.version > target {
                    return Err(Error::NotRollForward {
                        live: state.version,
                        target,
                    });
                }
                let report = match state.phase {
                    StatePhase::Stable if state.version == target => return Ok(reports),
                    StatePhase::Expanded if state.version == target => return Ok(reports),
                    StatePhase::Stable => self.expand_locked(conn)?,
                    StatePhase::Expanded => self.switch_locked(conn, Phase::Switch)?,
                    StatePhase::Switched => self.contract_locked(conn)?,
                };
                reports.push(report);
            }
        })
    }

    /// Removes an instance's row from the fleet table, whatever its lease
    /// says, and journals it in the history table (phase `evict`, the row as
    /// it was in `detail`). Returns that description.
    ///
    /// For a row whose instance is gone but whose lease says otherwise (a
    /// ghost: a hand-written row, a clock that was far ahead), which holds
    /// every switch back until it expires (at most two hours from when a
    /// switch first sees it). Evict only instances you know are stopped: a
    /// live one registers again on its next poll, but a switch in between
    /// would not wait for its calls. `SwitchRefused` and
    /// `FleetNotAcknowledged` name the ids; [`Tandem::instances`] lists them.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownInstance`] if no row has that id, [`Error::UpgraderBusy`],
    /// or a database error.
    pub fn evict(&self, instance_id: &str) -> Result<String> {
        self.with_lease(|conn| {
            self.db.write_transaction(conn, |c| -> Result<String> {
                let state = self.db.inner.meta.read_state::<B>(c)?;
                let described =
                    self.db
                        .inner
                        .meta
                        .evict::<B>(c, instance_id)?
                        .ok_or_else(|| Error::UnknownInstance {
                            id: instance_id.to_owned(),
                        })?;
                let now = meta::now_ms();
                self.db.inner.meta.record::<B>(
                    c,
                    state.version,
                    meta::EVICT,
                    "-",
                    now,
                    Some(now),
                    meta::APPLIED,
                    &self.owner,
                    Some(&described),
                )?;
                tracing::warn!(instance = %described, "evicted from the fleet table");
                Ok(described)
            })
        })
    }

    // ---- lease -------------------------------------------------------------

    fn with_lease<T>(&self, f: impl FnOnce(&mut B::Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.db.connection()?;
        self.acquire_lease(&mut conn)?;
        let result = self
            .db
            .verify_checksums(&mut conn)
            .and_then(|()| f(&mut conn));
        if matches!(result, Err(Error::InjectedCrash { .. })) {
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
    fn clean_up(&self, mut conn: Option<crate::handle::Conn<B>>) {
        let meta = &self.db.inner.meta;
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
                        let fresh =
                            self.db.inner.pool.get_timeout(wait).map_err(|e| {
                                crate::handle::pool_error(&e, &self.db.inner.secrets)
                            })?;
                        conn.insert(fresh)
                    }
                };
                B::set_busy_wait(c, Some(CLEANUP_WAIT))?;
                // Not behind this process's write gate, nor a poller tick
                // (either may be waiting out a frozen writer): the poller
                // adopts steady mode on its next tick.
                if meta.read_state::<B>(c)?.mode == Mode::Deploying {
                    B::write_transaction(c, |c| meta.set_mode::<B>(c, Mode::Steady, &self.owner))?;
                }
                meta.release_lease::<B>(c, &self.owner)?;
                B::set_busy_wait(c, None)?;
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
                self.db
                    .inner
                    .orphaned_leases
                    .lock()
                    .push(self.owner.clone());
                if let Some(c) = conn.as_mut() {
                    let _ = B::set_busy_wait(c, None);
                }
                return;
            }
            tracing::debug!(error = %e, "cleanup after the command failed; retrying on a fresh connection");
            conn = None;
            self.db.sweep_pool();
            backoff.wait();
        }
    }

    fn acquire_lease(&self, conn: &mut B::Connection) -> Result<()> {
        let deadline = Instant::now() + self.wait_for_lease;
        let mut backoff = Duration::from_millis(5);
        loop {
            // The lease alone excludes: no session lock, so nothing stays on
            // a pooled connection (a crashed holder's lease expires).
            let holder = self.db.write_transaction(conn, |c| {
                self.db
                    .inner
                    .meta
                    .try_lease::<B>(c, &self.owner, self.lease_ms())
            })?;
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
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
            }
        }
    }

    /// Takes the lease over from `holder` if it is an upgrader of this
    /// process whose command returned without releasing it.
    fn take_over(&self, conn: &mut B::Connection, holder: &str) -> Result<bool> {
        let orphaned = self
            .db
            .inner
            .orphaned_leases
            .lock()
            .iter()
            .any(|o| o == holder);
        if !orphaned {
            return Ok(false);
        }
        let taken = self.db.write_transaction(conn, |c| {
            self.db
                .inner
                .meta
                .take_over_lease::<B>(c, &self.owner, holder, self.lease_ms())
        })?;
        self.db.inner.orphaned_leases.lock().retain(|o| o != holder);
        if taken {
            tracing::info!(
                from = holder,
                "took over the upgrade lease this process left behind"
            );
        }
        Ok(taken)
    }

    /// The upgrade lease in milliseconds (of the database's clock).
    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX / 4)
    }

    /// Renews the lease when a third of it has passed (during long phases).
    fn renew_lease(&self, conn: &mut B::Connection) -> Result<()> {
        self.bound_waits(conn)?;
        let due = self
            .last_renewal
            .get()
            .is_none_or(|t| t.elapsed() >= self.lease / 3);
        if due {
            let holder = self.db.write_transaction(conn, |c| {
                self.db
                    .inner
                    .meta
                    .try_lease::<B>(c, &self.owner, self.lease_ms())
            })?;
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
    fn budget(&self) -> Option<Duration> {
        self.switch_deadline
            .get()
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// During a switch: the connection waits for SQLite's write lock no
    /// longer than the switch has left.
    fn bound_waits(&self, conn: &mut B::Connection) -> Result<()> {
        if let Some(left) = self.budget() {
            B::set_busy_wait(conn, Some(left.max(Duration::from_millis(1))))?;
        }
        Ok(())
    }

    /// Inside a phase transaction, after its long statements: takes the
    /// lease anew (ours, or lapsed and nobody else's), so the transaction
    /// commits only while this upgrader holds it, with a fresh expiry.
    fn claim(&self, c: &mut B::Connection) -> Result<()> {
        match self
            .db
            .inner
            .meta
            .try_lease::<B>(c, &self.owner, self.lease_ms())?
        {
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
    fn kept<T>(&self, f: impl FnOnce() -> T) -> T {
        let done = AtomicBool::new(false);
        let (db, owner, lease) = (self.db, self.owner.as_str(), self.lease);
        let out = thread::scope(|s| {
            let keeper = thread::Builder::new()
                .name("tandem-lease-keeper".to_owned())
                .spawn_scoped(s, || keep_lease(db, owner, lease, &done));
            let out = f();
            done.store(true, Ordering::Release);
            match keeper {
                Ok(keeper) => {
                    keeper.thread().unpark();
                    if keeper.join().is_err() {
                        tracing::warn!("the upgrade lease keeper panicked");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no lease keeper thread: a statement longer than the lease may lose it")
                }
            }
            out
        });
        self.last_renewal.set(Some(Instant::now()));
        out
    }

    /// A step boundary: where the crash-injection hook may strike.
    fn step(&self, at: &str) -> Result<()> {
        let n = self.steps_taken.get() + 1;
        self.steps_taken.set(n);
        if let Some((_, marker)) = self.halt_at.as_ref().filter(|(k, _)| *k == n) {
            tracing::warn!(step = n, at, "halting for the test to kill this process");
            let _ = std::fs::write(marker, at);
            loop {
                thread::sleep(Duration::from_secs(3600));
            }
        }
        if self.crash_at == Some(n) {
            tracing::warn!(step = n, at, "injected crash");
            return Err(Error::InjectedCrash {
                step: n,
                at: at.to_owned(),
            });
        }
        Ok(())
    }

    fn read_state(&self, conn: &mut B::Connection) -> Result<State> {
        let state = self.db.inner.meta.read_state::<B>(conn)?;
        let latest = self.db.catalog().latest();
        if state.version > latest {
            return Err(Error::UnknownVersion {
                version: state.version,
                latest,
            });
        }
        Ok(state)
    }

    /// Inside a phase transaction: the state is still what the phase was
    /// planned on, and this upgrader still holds the lease.
    fn recheck(&self, conn: &mut B::Connection, planned: &State) -> Result<()> {
        let now_state = self.db.inner.meta.read_state::<B>(conn)?;
        if now_state.upgrader.as_deref() != Some(self.owner.as_str()) {
            return Err(Error::UpgraderBusy {
                holder: now_state
                    .upgrader
                    .unwrap_or_else(|| "nobody (our lease expired)".to_owned()),
                expires_in_ms: 0,
            });
        }
        if (now_state.version, now_state.phase) != (planned.version, planned.phase) {
            return Err(Error::MetadataCorrupt {
                table: self.db.inner.meta.state_table().to_owned(),
                detail: format!(
                    "the state changed under the upgrade lease (planned {} {}, found {} {})",
                    planned.version,
                    planned.phase.as_str(),
                    now_state.version,
                    now_state.phase.as_str()
                ),
            });
        }
        Ok(())
    }

    /// Inside a phase transaction: moves the state row `from` -> `to` under
    /// this upgrader's lease; returns the row's new epoch.
    fn transition(
        &self,
        c: &mut B::Connection,
        from: (Version, StatePhase),
        to: (Version, StatePhase),
    ) -> Result<i64> {
        let meta = &self.db.inner.meta;
        meta.transition::<B>(c, from, to, &self.owner)?
            .ok_or_else(|| Error::MetadataCorrupt {
                table: meta.state_table().to_owned(),
                detail: format!(
                    "the state row left {} {} under the upgrade lease of {}",
                    from.0,
                    from.1.as_str(),
                    self.owner
                ),
            })
    }

    fn out_of_order(
        attempted: Phase,
        version: Version,
        state: &State,
        hint: &'static str,
    ) -> Error {
        Error::PhaseOutOfOrder {
            attempted,
            version,
            live: state.version,
            state: state.phase.as_str(),
            hint,
        }
    }

    /// A phase transaction: under a short `lock_timeout` where the backend
    /// has one, and retried with backoff and jitter while it hits lock
    /// conflicts. A phase thus gives way to application calls instead of
    /// making them queue behind it, and gives up its locks long before
    /// PostgreSQL's deadlock detector could pick a call as the victim.
    /// Returns the attempts it took.
    fn phase_tx(
        &self,
        conn: &mut B::Connection,
        body: impl Fn(&mut B::Connection) -> Result<()>,
    ) -> Result<u32> {
        let attempts = self.db.inner.writer.attempts.max(1);
        let mut backoff = Backoff::default();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.db.write_transaction(conn, |c| {
                self.db.ddl_preamble(c)?;
                body(c)
            });
            match result {
                Ok(()) => return Ok(attempt),
                Err(e) => match lock_conflict::<B>(e, attempt, attempts) {
                    Retry::Again => backoff.wait(),
                    Retry::Stop(e) => return Err(e),
                },
            }
        }
    }

    /// Appends the history row of a phase that is `applied` (finished now)
    /// or `running`, inside the phase's transaction.
    fn journal(
        &self,
        c: &mut B::Connection,
        version: Version,
        phase: Phase,
        checksum: &str,
        started: i64,
        outcome: &str,
    ) -> Result<()> {
        let finished = (outcome != meta::RUNNING).then(meta::now_ms);
        self.db.inner.meta.record::<B>(
            c,
            version,
            phase.as_str(),
            checksum,
            started,
            finished,
            outcome,
            &self.owner,
            None,
        )
    }

    /// Journals a failed phase in its own transaction (the phase's own rolled back).
    fn journal_failure(
        &self,
        conn: &mut B::Connection,
        version: Version,
        phase: Phase,
        checksum: &str,
        started: i64,
        error: &Error,
    ) {
        let detail = error.to_string();
        let result = self.db.write_transaction(conn, |c| {
            self.db.inner.meta.record::<B>(
                c,
                version,
                phase.as_str(),
                checksum,
                started,
                Some(meta::now_ms()),
                meta::FAILED,
                &self.owner,
                Some(&detail),
            )
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not journal the failed phase");
        }
    }

    // ---- phases ------------------------------------------------------------

    fn expand_locked(&self, conn: &mut B::Connection) -> Result<PhaseReport> {
        let started = Instant::now();
        let state = self.read_state(conn)?;
        let latest = self.db.catalog().latest();
        let target = state.version.next().filter(|t| *t <= latest);
        let target = match (state.phase, target) {
            (StatePhase::Expanded, Some(target)) => {
                return Ok(PhaseReport::done(target, Phase::Expand))
            }
            (StatePhase::Switched, _) => {
                return Err(Self::out_of_order(
                    Phase::Expand,
                    state.version.next().unwrap_or(state.version),
                    &state,
                    "contract the live version first: at most two versions may be in use",
                ))
            }
            (_, None) => {
                return Err(Error::UnknownVersion {
                    version: state.version.next().unwrap_or(state.version),
                    latest,
                })
            }
            (_, Some(target)) => target,
        };
        let mut report = PhaseReport::new(target, Phase::Expand);
        let checksum = self.db.phase_checksum(target, Phase::Expand);
        let sql = self
            .db
            .catalog()
            .phase(target, Phase::Expand, B::NAME)
            .map(|s| s.text.to_owned())
            .unwrap_or_default();
        let meta = &self.db.inner.meta;

        let resumed = meta.history::<B>(conn)?.iter().any(|h| {
            h.version == target && h.phase == Phase::Expand.as_str() && h.outcome == meta::RUNNING
        });
        if !resumed {
            self.step("expand: before SQL")?;
            let now = meta::now_ms();
            let applied = self.kept(|| {
                self.phase_tx(conn, |c| {
                    self.recheck(c, &state)?;
                    run_sql(c, &sql, target, Phase::Expand)?;
                    self.claim(c)?;
                    self.step("expand: SQL run, before commit")?;
                    self.journal(c, target, Phase::Expand, &checksum, now, meta::RUNNING)
                })
            });
            if let Err(e @ (Error::PhaseFailed { .. } | Error::PhaseContended { .. })) = &applied {
                self.journal_failure(conn, target, Phase::Expand, &checksum, now, e);
            }
            report.attempts = applied?;
            tracing::info!(version = %target, "expand SQL applied");
            self.step("expand: SQL committed")?;
        } else {
            tracing::info!(version = %target, "resuming expand: SQL already applied");
        }

        for step in self
            .db
            .inner
            .steps
            .iter()
            .filter(|s| s.version == target.get())
        {
            loop {
                self.renew_lease(conn)?;
                self.step("expand: before backfill batch")?;
                let batches = report.batches;
                let changed = self
                    .kept(|| {
                        self.db.write_transaction(conn, |c| -> Result<usize> {
                            let changed = (step.batch)(c).map_err(|source| Error::StepFailed {
                                version: target,
                                step: step.name.clone(),
                                batches,
                                source,
                            })?;
                            self.claim(c)?;
                            Ok(changed)
                        })
                    })
                    .map_err(|e| match e {
                        // The transaction around the batch (its claim, commit).
                        Error::Query(source) => Error::StepFailed {
                            version: target,
                            step: step.name.clone(),
                            batches,
                            source,
                        },
                        e => e,
                    })?;
                if changed == 0 {
                    break;
                }
                report.batches += 1;
            }
        }

        self.step("expand: before finishing")?;
        self.db.write_transaction(conn, |c| -> Result<()> {
            let now = meta::now_ms();
            self.recheck(c, &state)?;
            self.transition(
                c,
                (state.version, StatePhase::Stable),
                (state.version, StatePhase::Expanded),
            )?;
            meta.finish_running::<B>(c, target, Phase::Expand, now)?;
            self.step("expand: finished, before commit")
        })?;
        report.duration = started.elapsed();
        tracing::info!(version = %target, batches = report.batches, duration = ?report.duration, "expand done");
        Ok(report)
    }

    /// The switch (or switch back) within `switch_timeout`: every wait
    /// before the commit is bounded by what is left of it; a lock conflict
    /// past it is [`Error::LockTimeout`].
    fn switch_locked(&self, conn: &mut B::Connection, phase: Phase) -> Result<PhaseReport> {
        let started = Instant::now();
        self.switch_deadline
            .set(Some(started + self.db.inner.switch_timeout));
        let result = self.switch_within(conn, phase);
        self.switch_deadline.set(None);
        if let Err(e) = B::set_busy_wait(conn, None) {
            tracing::debug!(error = %e, "could not restore the connection's busy timeout");
        }
        let versions = self.switch_versions.take();
        match (result, versions) {
            (Err(Error::Query(e)), Some((version, live)))
                if B::is_transient(&e) && started.elapsed() >= self.db.inner.switch_timeout =>
            {
                Err(Error::LockTimeout {
                    version,
                    live,
                    attempts: 1,
                    waited: started.elapsed(),
                })
            }
            (result, _) => result,
        }
    }

    fn switch_within(&self, conn: &mut B::Connection, phase: Phase) -> Result<PhaseReport> {
        let started = Instant::now();
        let state = self.read_state(conn)?;
        // (from, to): the state before and after, and the version whose files run.
        let (owner_version, to) = match (phase, state.phase) {
            (Phase::Switch, StatePhase::Switched) => {
                return Ok(PhaseReport::done(state.version, phase))
            }
            (Phase::Switch, StatePhase::Expanded) => {
                let Some(target) = state.version.next() else {
                    return unreachable_state();
                };
                (target, (target, StatePhase::Switched))
            }
            (Phase::Switch, _) => {
                return Err(Self::out_of_order(
                    phase,
                    state.version.next().unwrap_or(state.version),
                    &state,
                    "run expand first",
                ))
            }
            (_, StatePhase::Switched) => {
                let Some(previous) = state.version.previous() else {
                    return unreachable_state();
                };
                (state.version, (previous, StatePhase::Expanded))
            }
            (_, StatePhase::Expanded) => {
                let version = state.version.next().unwrap_or(state.version);
                if self.already_switched_back(conn, version)? {
                    return Ok(PhaseReport::done(version, phase));
                }
                return Err(Self::out_of_order(
                    phase,
                    version,
                    &state,
                    "switch back is possible only between switch and contract",
                ));
            }
            (_, _) => {
                return Err(Self::out_of_order(
                    phase,
                    state.version,
                    &state,
                    "switch back is possible only between switch and contract",
                ))
            }
        };
        let catalog = self.db.catalog();
        if phase == Phase::SwitchBack
            && catalog
                .phase(owner_version, Phase::Switch, B::NAME)
                .is_some()
            && catalog
                .phase(owner_version, Phase::SwitchBack, B::NAME)
                .is_none()
        {
            return Err(Error::NoSwitchBack {
                version: owner_version,
            });
        }
        // Invariant 3: every live instance must be able to serve the version
        // switched to (this one included).
        let me = self.db.instance_id().to_owned();
        let grace = crate::fleet::millis(self.db.inner.lease);
        let (instances, noticed) = self.db.write_transaction(conn, |c| -> Result<_> {
            let meta = &self.db.inner.meta;
            Ok((
                meta.live_instances::<B>(c, grace)?,
                meta.noticed_instances::<B>(c, grace)?,
            ))
        })?;
        let served = self.db.served_versions();
        let mut lacking: Vec<String> = instances
            .iter()
            .filter(|i| i.id != me && !i.serves(to.0))
            .map(Instance::describe)
            .collect();
        if served.contains(&state.version) && !served.contains(&to.0) {
            lacking.insert(
                0,
                format!(
                    "{me} (this instance, serves {}..={})",
                    served.start(),
                    served.end()
                ),
            );
        }
        if !lacking.is_empty() {
            return Err(Error::SwitchRefused {
                version: to.0,
                instances: lacking,
            });
        }
        self.check_catalogs(&instances, state.version, to.0)?;

        self.switch_versions.set(Some((to.0, state.version)));
        let checksum = self.db.phase_checksum(owner_version, phase);
        let sql = catalog
            .phase(owner_version, phase, B::NAME)
            .map(|s| s.text.to_owned());
        let meta = &self.db.inner.meta;
        let policy = self.db.inner.writer;
        let mut report = PhaseReport::new(owner_version, phase);
        // With other live instances, the fleet moves to the locking path first.
        // Rows in the renewal grace get notice too (deploying mode, then a
        // wait): their instances may be alive with their renewals held back.
        let mut deploying = state.mode == Mode::Deploying;
        if deploying {
            // Resuming deploying mode a crashed upgrader set: this instance
            // may still be steady (its poller has not adopted it yet).
            self.leave_steady_path(conn, state.epoch, owner_version, phase)?;
            let notice_until = Instant::now() + self.db.notice();
            self.await_acknowledged(conn, state.epoch, owner_version, phase, Some(notice_until))?;
        } else if instances.iter().chain(noticed.iter()).any(|i| i.id != me) {
            report.fleet_ack = Some(self.enter_deploying(conn, owner_version, phase)?);
            deploying = true;
        }
        let mut backoff = Backoff::default();
        loop {
            if report.attempts > 0 && self.budget() == Some(Duration::ZERO) {
                return Err(Error::LockTimeout {
                    version: to.0,
                    live: state.version,
                    attempts: report.attempts,
                    waited: started.elapsed(),
                });
            }
            report.attempts += 1;
            self.renew_lease(conn)?;
            self.step("switch: before write lock")?;
            // Alone, this process's steady calls are the only readers: drain
            // them in-process. In deploying mode every call takes the database
            // lock instead. (Calls take the in-process lock before the
            // database's, and so does this: no lock-order inversion.)
            let guard = if deploying {
                None
            } else {
                let guard = self
                    .db
                    .inner
                    .lock
                    .write(&policy)
                    .map_err(|g| Error::LockTimeout {
                        version: to.0,
                        live: state.version,
                        attempts: g.attempts,
                        waited: g.waited,
                    })?;
                report.writer_wait += guard.waited;
                report.escalated |= guard.escalated;
                Some(guard)
            };
            let held_from = Instant::now();
            let now = meta::now_ms();
            let result =
                self.db
                    .write_transaction(conn, |c| -> Result<(Option<i64>, Duration, bool)> {
                        let (db_wait, db_escalated) =
                            self.enter_exclusive(c, &policy, to.0, state.version)?;
                        self.db.ddl_preamble(c)?;
                        self.recheck(c, &state)?;
                        // The fleet again, under the exclusive lock (instances
                        // register under the shared one): one that joined since
                        // we looked may lack the new version, or, alone before,
                        // we now need deploying mode.
                        let live = meta.live_instances::<B>(c, grace)?;
                        let lacking: Vec<String> = live
                            .iter()
                            .filter(|i| i.id != me && !i.serves(to.0))
                            .map(Instance::describe)
                            .collect();
                        if !lacking.is_empty() {
                            return Err(Error::SwitchRefused {
                                version: to.0,
                                instances: lacking,
                            });
                        }
                        self.check_catalogs(&live, state.version, to.0)?;
                        if !deploying
                            && (live.iter().any(|i| i.id != me)
                                || meta
                                    .noticed_instances::<B>(c, grace)?
                                    .iter()
                                    .any(|i| i.id != me))
                        {
                            return Ok((None, db_wait, db_escalated));
                        }
                        if let Some(sql) = &sql {
                            run_sql(c, sql, owner_version, phase)?;
                        }
                        self.step("switch: SQL run, before commit")?;
                        let epoch = self.transition(c, (state.version, state.phase), to)?;
                        self.journal(c, owner_version, phase, &checksum, now, meta::APPLIED)?;
                        Ok((Some(epoch), db_wait, db_escalated))
                    });
            match result {
                Ok((Some(epoch), db_wait, db_escalated)) => {
                    // Alone, still under the write lock: calls after this see
                    // the new version. (In deploying mode calls read it from
                    // the database.) Tagged with the new row's epoch, so a
                    // poller tick that read the row before the switch cannot
                    // put the old version back.
                    // Forced: the row this switch just wrote is the truth,
                    // even if the epoch went backwards (a restore) since
                    // this process cached one.
                    self.db.cache_state(epoch, to.0, None, true);
                    report.writer_wait += db_wait;
                    report.escalated |= db_escalated;
                    report.held = held_from.elapsed().saturating_sub(db_wait);
                    drop(guard);
                    break;
                }
                Ok((None, _, _)) => {
                    drop(guard);
                    report.fleet_ack = Some(self.enter_deploying(conn, owner_version, phase)?);
                    deploying = true;
                }
                Err(Error::LockTimeout { .. }) if report.attempts < policy.attempts.max(1) => {
                    drop(guard);
                    backoff.wait_at_most(self.budget());
                }
                Err(Error::LockTimeout { version, live, .. }) => {
                    drop(guard);
                    return Err(Error::LockTimeout {
                        version,
                        live,
                        attempts: report.attempts,
                        waited: started.elapsed(),
                    });
                }
                // SQLite's write lock, busy past the wait the budget allowed.
                Err(Error::Query(e)) if B::is_transient(&e) => {
                    drop(guard);
                    if report.attempts >= policy.attempts.max(1)
                        || self.budget() == Some(Duration::ZERO)
                    {
                        return Err(Error::LockTimeout {
                            version: to.0,
                            live: state.version,
                            attempts: report.attempts,
                            waited: started.elapsed(),
                        });
                    }
                    backoff.wait_at_most(self.budget());
                }
                Err(e) => match lock_conflict::<B>(e, report.attempts, policy.attempts.max(1)) {
                    Retry::Again => {
                        drop(guard);
                        backoff.wait_at_most(self.budget());
                    }
                    Retry::Stop(e) => {
                        // If the commit reached the database before the error (a lost
                        // connection), adopt what the database says, under the lock.
                        if !matches!(e, Error::InjectedCrash { .. }) {
                            // On this command's connection first: a one-connection
                            // pool (SQLite `:memory:`) has no other to give. If it
                            // is the broken part, on a fresh one, briefly.
                            let meta = &self.db.inner.meta;
                            let actual = meta.read_state::<B>(conn).or_else(|_| {
                                let mut fresh = self
                                    .db
                                    .inner
                                    .pool
                                    .get_timeout(Duration::from_secs(2))
                                    .map_err(|e| {
                                        crate::handle::pool_error(&e, &self.db.inner.secrets)
                                    })?;
                                meta.read_state::<B>(&mut fresh)
                            });
                            if let Ok(actual) = actual {
                                self.db
                                    .cache_state(actual.epoch, actual.version, None, true);
                            }
                        }
                        drop(guard);
                        if matches!(e, Error::PhaseFailed { .. } | Error::PhaseContended { .. }) {
                            self.journal_failure(conn, owner_version, phase, &checksum, now, &e);
                        }
                        return Err(e);
                    }
                },
            }
        }
        self.step("switch: committed")?;
        if deploying {
            // Let the fleet see the new version (they are on the locking path,
            // so lagging is safe), then return everyone to the steady path.
            let epoch = self.read_state(conn)?.epoch;
            let behind =
                self.db
                    .await_fleet(conn, epoch, self.fleet_timeout(), None, &mut |c| {
                        self.renew_lease(c)
                    })?;
            if !behind.is_empty() {
                tracing::warn!(behind = behind.len(), "some instances have not seen the switch yet; they stay on the locking path until they do");
            }
            self.leave_deploying(conn)?;
        }
        report.duration = started.elapsed();
        tracing::info!(
            from = %state.version, to = %to.0, writer_wait = ?report.writer_wait, held = ?report.held,
            escalated = report.escalated, deploying, "{phase} done"
        );
        Ok(report)
    }

    /// Invariant 10: no switch while a live instance's SQL for the version
    /// switched from or to differs from this binary's (which matches what
    /// the database applied: checked as every command starts). Rows from
    /// releases that did not record their catalog are not compared.
    fn check_catalogs(&self, instances: &[Instance], from: Version, to: Version) -> Result<()> {
        let me = self.db.instance_id();
        let catalog = self.db.catalog();
        let disagreeing: Vec<String> = instances
            .iter()
            .filter(|i| i.id != me)
            .filter(|i| {
                [from, to].into_iter().any(|v| {
                    i.digest(v)
                        .is_some_and(|theirs| theirs != catalog.digest(v, B::NAME))
                })
            })
            .map(Instance::describe)
            .collect();
        if disagreeing.is_empty() {
            return Ok(());
        }
        Err(Error::CatalogDisagrees {
            from,
            to,
            instances: disagreeing,
        })
    }

    /// How long the upgrader waits for the fleet to acknowledge a change: a
    /// live instance acknowledges within a poll interval or two once its
    /// steady calls have drained (which may take the writer policy's whole
    /// budget under load), and a dead one drops out a lease after its lease
    /// expired (see `Meta::live_instances`).
    fn fleet_timeout(&self) -> Duration {
        let w = &self.db.inner.writer;
        let drain = w
            .patience
            .saturating_add(w.escalation)
            .saturating_mul(w.attempts.max(1));
        (self.db.inner.lease.saturating_mul(2))
            .max(drain)
            .saturating_add(self.db.inner.poll_interval.saturating_mul(4))
            .min(crate::handle::FOREVER)
            .min(self.budget().unwrap_or(crate::handle::FOREVER))
    }

    /// Sets deploying mode, moves this instance to the locking path, and waits
    /// for every other live instance to acknowledge (having drained its steady
    /// calls). If they do not, returns to steady mode and fails.
    fn enter_deploying(
        &self,
        conn: &mut B::Connection,
        version: Version,
        phase: Phase,
    ) -> Result<Duration> {
        let epoch = self.db.write_transaction(conn, |c| {
            self.db
                .inner
                .meta
                .set_mode::<B>(c, Mode::Deploying, &self.owner)
        })?;
        tracing::info!(
            epoch,
            "deploying mode: waiting for the fleet to move to the locking path"
        );
        let asked = Instant::now();
        self.leave_steady_path(conn, epoch, version, phase)?;
        self.step("switch: deploying, before fleet acknowledgement")?;
        // Notice runs from the commit of deploying mode (it is over by now).
        let notice_until = asked + self.db.notice();
        self.await_acknowledged(conn, epoch, version, phase, Some(notice_until))?;
        Ok(asked.elapsed())
    }

    /// In deploying mode: moves this instance to the locking path, its
    /// steady calls in flight drained (not just flagged). The fleet's
    /// acknowledgements cover the *other* instances only, so an upgrader
    /// must do this itself before it switches — also when it resumes
    /// deploying mode that a crashed upgrader set, which its own poller may
    /// not have adopted yet. If the calls do not drain in time, returns the
    /// fleet to steady mode and fails.
    fn leave_steady_path(
        &self,
        conn: &mut B::Connection,
        epoch: i64,
        version: Version,
        phase: Phase,
    ) -> Result<()> {
        let asked = Instant::now();
        let deadline = asked + self.fleet_timeout();
        loop {
            // The wait can outlast a short upgrade lease: keep it.
            self.renew_lease(conn)?;
            // A successful refresh adopted deploying mode (draining) or a
            // later state; either way the path it left is the one to check.
            match self.db.refresh() {
                Ok(_) if self.db.on_drained_locking_path() => return Ok(()),
                Ok(_) | Err(Error::LockTimeout { .. }) if Instant::now() < deadline => {}
                Ok(_) => {
                    self.leave_deploying(conn)?;
                    return Err(Error::FleetNotAcknowledged {
                        phase,
                        version,
                        epoch,
                        waited: asked.elapsed(),
                        instances: vec![format!(
                            "{} (this instance: its calls did not drain)",
                            self.db.instance_id()
                        )],
                    });
                }
                Err(e) => {
                    self.leave_deploying(conn)?;
                    return Err(e);
                }
            }
        }
    }

    /// Waits for every live instance to acknowledge `epoch` (and, until
    /// `notice_until`, those in the renewal grace); if they do not, returns
    /// the fleet to steady mode and fails.
    fn await_acknowledged(
        &self,
        conn: &mut B::Connection,
        epoch: i64,
        version: Version,
        phase: Phase,
        notice_until: Option<Instant>,
    ) -> Result<()> {
        let waited = Instant::now();
        let behind =
            self.db
                .await_fleet(conn, epoch, self.fleet_timeout(), notice_until, &mut |c| {
                    self.renew_lease(c)
                })?;
        if behind.is_empty() {
            return Ok(());
        }
        self.leave_deploying(conn)?;
        Err(Error::FleetNotAcknowledged {
            phase,
            version,
            epoch,
            waited: waited.elapsed(),
            instances: behind.iter().map(Instance::describe).collect(),
        })
    }

    /// Returns to steady mode and adopts it locally.
    fn leave_deploying(&self, conn: &mut B::Connection) -> Result<()> {
        self.db.write_transaction(conn, |c| {
            self.db
                .inner
                .meta
                .set_mode::<B>(c, Mode::Steady, &self.owner)
        })?;
        // If calls are slow to drain the poller adopts steady mode later; the
        // locking path is safe meanwhile.
        if let Err(e) = self.db.refresh() {
            tracing::debug!(error = %e, "steady mode set; this instance adopts it on its next poll");
        }
        Ok(())
    }

    /// Inside the switch's transaction: the database's exclusive schema lock.
    /// Polls without queueing for `patience` (queued exclusive requests
    /// would stall new readers), then queues for at most `escalation`.
    /// Returns the wait and whether it escalated.
    fn enter_exclusive(
        &self,
        c: &mut B::Connection,
        policy: &WriterPolicy,
        version: Version,
        live: Version,
    ) -> Result<(Duration, bool)> {
        let key = self.db.inner.lock_key;
        let start = Instant::now();
        let polite_until = start + policy.patience;
        let mut backoff = Duration::from_micros(50);
        loop {
            if B::try_enter_exclusive(c, key)? {
                return Ok((start.elapsed(), false));
            }
            let now = Instant::now();
            if now >= polite_until {
                break;
            }
            thread::sleep(backoff.min(polite_until - now));
            backoff = (backoff * 2).min(Duration::from_millis(2));
        }
        match B::enter_exclusive_within(c, key, policy.escalation) {
            Ok(()) => Ok((start.elapsed(), true)),
            Err(e) if B::is_transient(&e) => Err(Error::LockTimeout {
                version,
                live,
                attempts: 1,
                waited: start.elapsed(),
            }),
            Err(e) => Err(Error::Query(e)),
        }
    }

    fn already_switched_back(&self, conn: &mut B::Connection, version: Version) -> Result<bool> {
        let history = self.db.inner.meta.history::<B>(conn)?;
        let last = history.iter().rev().find(|h| {
            h.version == version
                && h.outcome == meta::APPLIED
                && (h.phase == "switch" || h.phase == "switch_back")
        });
        Ok(last.is_some_and(|h| h.phase == "switch_back"))
    }

    fn contract_locked(&self, conn: &mut B::Connection) -> Result<PhaseReport> {
        let started = Instant::now();
        let state = self.read_state(conn)?;
        match state.phase {
            StatePhase::Switched => {}
            StatePhase::Stable => return Ok(PhaseReport::done(state.version, Phase::Contract)),
            StatePhase::Expanded => {
                return Err(Self::out_of_order(
                    Phase::Contract,
                    state.version.next().unwrap_or(state.version),
                    &state,
                    "switch first: contract removes what the live version still uses",
                ))
            }
        }
        let version = state.version;
        let checksum = self.db.phase_checksum(version, Phase::Contract);
        let sql = self
            .db
            .catalog()
            .phase(version, Phase::Contract, B::NAME)
            .map(|s| s.text.to_owned());
        // Invariant 3: no live instance may still use the previous version:
        // each must have acknowledged the switched state.
        self.await_acknowledged(conn, state.epoch, version, Phase::Contract, None)?;
        self.step("contract: before SQL")?;
        let now = meta::now_ms();
        let result = self.kept(|| {
            self.phase_tx(conn, |c| {
                self.recheck(c, &state)?;
                if let Some(sql) = &sql {
                    run_sql(c, sql, version, Phase::Contract)?;
                }
                self.claim(c)?;
                self.step("contract: SQL run, before commit")?;
                self.transition(
                    c,
                    (version, StatePhase::Switched),
                    (version, StatePhase::Stable),
                )?;
                self.journal(c, version, Phase::Contract, &checksum, now, meta::APPLIED)
            })
        });
        if let Err(e @ (Error::PhaseFailed { .. } | Error::PhaseContended { .. })) = &result {
            self.journal_failure(conn, version, Phase::Contract, &checksum, now, e);
        }
        let attempts = result?;
        self.step("contract: committed")?;
        let mut report = PhaseReport::new(version, Phase::Contract);
        report.attempts = attempts;
        report.duration = started.elapsed();
        tracing::info!(%version, duration = ?report.duration, "contract done");
        Ok(report)
    }
}

/// The lease keeper's loop (see [`Upgrader::kept`]): renews `owner`'s
/// upgrade lease every third of `lease` until `done`.
fn keep_lease<B: Backend>(db: &Tandem<B>, owner: &str, lease: Duration, done: &AtomicBool) {
    let every = (lease / 3).max(Duration::from_millis(1));
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 4);
    let mut conn = None;
    loop {
        thread::park_timeout(every);
        if done.load(Ordering::Acquire) {
            return;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match db.inner.pool.get_timeout(every) {
                Ok(c) => conn.insert(c),
                Err(_) => continue,
            },
        };
        let renewed = db.write_transaction(&mut **c, |c| {
            db.inner.meta.try_lease::<B>(c, owner, lease_ms)
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

/// Runs a phase's SQL; a database error becomes [`Error::PhaseFailed`].
fn run_sql<C: SimpleConnection>(
    conn: &mut C,
    sql: &str,
    version: Version,
    phase: Phase,
) -> Result<()> {
    conn.batch_execute(sql)
        .map_err(|source| Error::PhaseFailed {
            version,
            phase,
            source,
        })
}

/// For states the match arms above have ruled out.
#[cold]
fn unreachable_state<T>() -> Result<T> {
    Err(Error::MetadataCorrupt {
        table: "state".to_owned(),
        detail: "version out of range".to_owned(),
    })
}

/// What to do after a failed phase transaction.
enum Retry {
    /// A lock conflict with attempts left: back off and try again.
    Again,
    /// Give up with this error.
    Stop(Error),
}

/// A phase's lock conflict (lock timeout, deadlock, busy) is retried while
/// attempts are left and becomes [`Error::PhaseContended`] after the last;
/// any other error stops at once.
fn lock_conflict<B: Backend>(e: Error, attempt: u32, attempts: u32) -> Retry {
    match e {
        Error::PhaseFailed { ref source, .. } if B::is_transient(source) && attempt < attempts => {
            tracing::debug!(attempt, error = %source, "phase hit a lock conflict; retrying");
            Retry::Again
        }
        Error::PhaseFailed {
            version,
            phase,
            source,
        } if B::is_transient(&source) => Retry::Stop(Error::PhaseContended {
            version,
            phase,
            attempts,
            source,
        }),
        other => Retry::Stop(other),
    }
}

/// How long the cleanup after a command waits for SQLite's write lock.
const CLEANUP_WAIT: Duration = Duration::from_millis(250);

/// Exponential backoff with jitter between retries: 5 ms doubling to 500 ms.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(5))
    }
}

impl Backoff {
    fn wait(&mut self) {
        self.wait_at_most(None);
    }

    /// As [`wait`](Self::wait), never longer than `left`.
    fn wait_at_most(&mut self, left: Option<Duration>) {
        thread::sleep((self.0 + jitter(self.0)).min(left.unwrap_or(Duration::MAX)));
        self.0 = (self.0 * 2).min(Duration::from_millis(500));
    }
}

/// Up to `base` of jitter, from the clock's low bits (no RNG needed for this).
fn jitter(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let base_ns = u32::try_from(base.as_nanos()).unwrap_or(u32::MAX).max(1);
    Duration::from_nanos(u64::from(nanos % base_ns))
}
