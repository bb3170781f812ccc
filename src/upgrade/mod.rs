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
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;

use crate::backend::Backend;
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::fleet::{self, Membership};
use crate::lock::WriterPolicy;
use crate::retry::{lock_conflict, Retry};
use crate::shared::Shared;
use crate::store::{self, Instance, LiveGroup, Mode, State, StatePhase};
use crate::version::{Phase, Version};

mod backfill;
mod contract;
mod deploying;
mod expand;
mod index;
mod journal;
use journal::run_sql;
mod lease;
use lease::Keeper;
mod plan;
pub use plan::PlannedPhase;
mod switch;
mod tools;

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
    /// Rows the generated backfills of a `change.toml` wrote (expand only;
    /// a resumed walk counts only what it wrote itself).
    pub backfilled_rows: u64,
    /// Indexes a `change.toml` built after expand's transaction (PostgreSQL's
    /// `CREATE INDEX CONCURRENTLY`; expand only; a resumed expand counts
    /// only those it built itself, not one it found built).
    pub indexes_built: u64,
    /// The longest backfill batch, from its transaction's start to its
    /// commit: about the longest any batch held its row locks (and, on
    /// SQLite, the database's write lock) (expand only).
    pub longest_batch: Duration,
    /// Of `duration`, the time the generated backfills' closing checks
    /// took: once a walk ends, one read of the whole table for a row still
    /// pending (one a key change moved behind the walk) (expand only).
    /// What is left of the backfills' time is the walks'.
    pub backfill_checks: Duration,
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
            backfilled_rows: 0,
            indexes_built: 0,
            longest_batch: Duration::ZERO,
            backfill_checks: Duration::ZERO,
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

/// Runs upgrade phases on a [`Tandem`](crate::Tandem) handle's database,
/// sharing its pool and schema lock. Made by
/// [`Tandem::upgrader`](crate::Tandem::upgrader); owned (no borrow of the
/// handle), so it can move into a thread or a task. While it lives, the
/// handle's instance stays in the fleet.
///
/// ```
/// # fn main() -> Result<(), tandem::Error> {
/// let db = tandem::Tandem::<tandem::Sqlite>::builder(":memory:", tandem::testing::demo::catalog()?).open()?;
/// assert_eq!(db.live_version().get(), 1);
/// db.upgrader().upgrade_to(2)?; // expand, switch, contract
/// assert_eq!(db.live_version().get(), 2);
/// # Ok(()) }
/// ```
pub struct Upgrader<B: Backend> {
    shared: Arc<Shared<B>>,
    /// Keeps this instance in the fleet while the upgrader lives.
    _member: Arc<Membership<B>>,
    owner: String,
    lease: Duration,
    wait_for_lease: Duration,
    /// The generated backfills' batch size (rows) and pause between batches.
    batch_rows: u32,
    batch_pause: Duration,
    /// Fault injection, set only through `tandem::testing::faults`.
    pub(crate) crash_at: Option<usize>,
    pub(crate) halt_at: Option<(usize, std::path::PathBuf)>,
    pub(crate) steps_taken: Cell<usize>,
    last_renewal: Cell<Option<Instant>>,
    /// While a switch runs: when its waits must end (`switch_timeout`).
    switch_deadline: Cell<Option<Instant>>,
    /// While a switch runs: (the version switched to, the live version).
    switch_versions: Cell<Option<(Version, Version)>>,
    /// The longest backfill batch transaction of the current expand.
    longest_batch: Cell<Duration>,
}

impl<B: Backend> fmt::Debug for Upgrader<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upgrader")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// Distinguishes upgraders of one handle from each other.
static UPGRADER_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl<B: Backend> Upgrader<B> {
    pub(crate) fn new(shared: Arc<Shared<B>>, member: Arc<Membership<B>>) -> Self {
        let seq = UPGRADER_SEQ.fetch_add(1, Ordering::Relaxed);
        Upgrader {
            owner: format!("{}#u{seq}", shared.instance),
            shared,
            _member: member,
            lease: Duration::from_secs(30),
            wait_for_lease: Duration::ZERO,
            batch_rows: 1000,
            batch_pause: Duration::ZERO,
            crash_at: None,
            halt_at: None,
            steps_taken: Cell::new(0),
            last_renewal: Cell::new(None),
            switch_deadline: Cell::new(None),
            switch_versions: Cell::new(None),
            longest_batch: Cell::new(Duration::ZERO),
        }
    }

    /// How long the upgrade lease lasts without renewal; a crashed upgrader
    /// blocks others for at most this long. Renewed during long phases.
    /// Defaults to 30 s.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(10));
        self
    }

    /// The batches of the backfills a `change.toml` generates: `rows` per
    /// batch (at least 1; defaults to 1,000), each its own transaction,
    /// with `pause` between them (defaults to none) to leave the database
    /// room for the application's calls. Progress is logged per batch
    /// (`tracing`, at info: rows done and the table's estimated rows).
    pub fn backfill_batches(mut self, rows: u32, pause: Duration) -> Self {
        self.batch_rows = rows.max(1);
        self.batch_pause = pause;
        self
    }

    /// Wait up to `timeout` for another upgrader's lease instead of failing
    /// at once with [`Error::UpgraderBusy`]. Defaults to no wait.
    /// `Duration::MAX` waits as long as it takes (any timeout is capped at
    /// 100 years).
    pub fn wait_for_lease(mut self, timeout: Duration) -> Self {
        self.wait_for_lease = timeout.min(crate::limits::FOREVER);
        self
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
        self.with_lease(|conn| self.expand_leased(conn))
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
        self.with_lease(|conn| self.switch_leased(conn, Phase::Switch))
    }

    /// Undoes the switch (before contract): `switch_back.sql` and the version
    /// bump back, under the schema write lock, as the switch does.
    ///
    /// # Errors
    ///
    /// [`Error::PhaseOutOfOrder`] (not in the switch window),
    /// [`Error::NoSwitchBack`], and as [`switch`](Upgrader::switch).
    pub fn switch_back(&self) -> Result<PhaseReport> {
        self.with_lease(|conn| self.switch_leased(conn, Phase::SwitchBack))
    }

    /// Removes the previous version's structures (`contract.sql`). Only after
    /// the switch.
    ///
    /// # Errors
    ///
    /// [`Error::PhaseOutOfOrder`] (contract before switch), and as
    /// [`expand`](Upgrader::expand).
    pub fn contract(&self) -> Result<PhaseReport> {
        self.with_lease(|conn| self.contract_leased(conn))
    }

    /// Runs every remaining phase of every version up to `target`, from
    /// wherever the database stands (1→2→3 and further), ending contracted.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownVersion`] (target not in the catalog),
    /// [`Error::NotRollForward`], and those of the phases.
    pub fn upgrade_to(&self, target: u32) -> Result<Vec<PhaseReport>> {
        let target = self.target_version(target, "upgrade_to")?;
        self.with_lease(|conn| {
            let mut reports = Vec::new();
            loop {
                let state = self.read_state(conn)?;
                let at = plan::At {
                    version: state.version,
                    phase: state.phase,
                };
                let report = match plan::toward(at, target) {
                    Err(live) => return Err(Error::NotRollForward { live, target }),
                    Ok(None) => return Ok(reports),
                    Ok(Some(Phase::Expand)) => self.expand_leased(conn)?,
                    Ok(Some(Phase::Contract)) => self.contract_leased(conn)?,
                    Ok(Some(phase)) => self.switch_leased(conn, phase)?,
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
    /// live one registers again at its next lease renewal (within about a
    /// quarter lease), but a switch in between would not wait for its calls. `SwitchRefused` and
    /// `FleetNotAcknowledged` name the ids; [`Tandem::instances`](crate::Tandem::instances) lists them.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownInstance`] if no row has that id, [`Error::UpgraderBusy`],
    /// or a database error.
    pub fn evict(&self, instance_id: &str) -> Result<String> {
        self.with_lease(|conn| {
            self.shared.write_transaction(conn, |c| -> Result<String> {
                let state = self.shared.store.read_state::<B>(c)?;
                let described = self
                    .shared
                    .store
                    .evict::<B>(c, instance_id)?
                    .ok_or_else(|| Error::UnknownInstance {
                        id: instance_id.to_owned(),
                    })?;
                let now = store::now_ms();
                self.shared.store.record::<B>(
                    c,
                    state.version,
                    store::EVICT,
                    "-",
                    now,
                    Some(now),
                    store::APPLIED,
                    &self.owner,
                    Some(&described),
                )?;
                tracing::warn!(instance = %described, "evicted from the fleet table");
                Ok(described)
            })
        })
    }

    /// A step boundary: where the fault injection of
    /// `tandem::testing::faults` may strike (never without the `testing`
    /// feature, which alone can set it).
    fn step(&self, at: &str) -> Result<()> {
        let n = self.steps_taken.get() + 1;
        self.steps_taken.set(n);
        if self.halt_at.is_none() && self.crash_at.is_none() {
            return Ok(());
        }
        self.fault(n, at)
    }

    #[cold]
    fn fault(&self, n: usize, at: &str) -> Result<()> {
        if let Some((_, marker)) = self.halt_at.as_ref().filter(|(k, _)| *k == n) {
            tracing::warn!(step = n, at, "halting for the test to kill this process");
            let _ = std::fs::write(marker, at);
            loop {
                thread::sleep(Duration::from_secs(3600));
            }
        }
        #[cfg(feature = "testing")]
        if self.crash_at == Some(n) {
            tracing::warn!(step = n, at, "injected crash");
            return Err(Error::InjectedCrash {
                step: n,
                at: at.to_owned(),
            });
        }
        Ok(())
    }

    /// `target` as a version of the catalog (`context` names the command).
    fn target_version(&self, target: u32, context: &'static str) -> Result<Version> {
        let latest = self.shared.catalog.latest();
        let target = Version::new(target).ok_or(Error::InvalidVersion {
            value: i64::from(target),
            context,
        })?;
        if target > latest {
            return Err(Error::UnknownVersion {
                version: target,
                latest,
            });
        }
        Ok(target)
    }

    fn read_state(&self, conn: &mut B::Connection) -> Result<State> {
        let state = self.shared.store.read_state::<B>(conn)?;
        let latest = self.shared.catalog.latest();
        if state.version > latest {
            return Err(Error::UnknownVersion {
                version: state.version,
                latest,
            });
        }
        Ok(state)
    }

    /// Inside a phase transaction: the state is still what the phase was
    /// planned on, and this upgrader still holds the lease. Returns the
    /// state row as read (its mode and epoch may have moved: deploying).
    fn recheck(&self, conn: &mut B::Connection, planned: &State) -> Result<State> {
        self.checked(self.shared.store.read_state::<B>(conn)?, planned)
    }

    /// [`recheck`](Self::recheck), the state row held until the transaction
    /// ends: a batch's fence, which writes nothing.
    fn fence(&self, conn: &mut B::Connection, planned: &State) -> Result<State> {
        self.checked(self.shared.store.read_state_held::<B>(conn)?, planned)
    }

    fn checked(&self, now_state: State, planned: &State) -> Result<State> {
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
                table: self.shared.store.state_table().to_owned(),
                detail: format!(
                    "the state changed under the upgrade lease (planned {} {}, found {} {})",
                    planned.version,
                    planned.phase.as_str(),
                    now_state.version,
                    now_state.phase.as_str()
                ),
            });
        }
        Ok(now_state)
    }

    /// Inside a phase transaction: moves the state row `from` -> `to` under
    /// this upgrader's lease; returns the row's new epoch.
    fn transition(
        &self,
        c: &mut B::Connection,
        from: (Version, StatePhase),
        to: (Version, StatePhase),
    ) -> Result<i64> {
        let store = &self.shared.store;
        store
            .transition::<B>(c, from, to, &self.owner)?
            .ok_or_else(|| Error::MetadataCorrupt {
                table: store.state_table().to_owned(),
                detail: format!(
                    "the state row left {} {} under the upgrade lease of {}",
                    from.0,
                    from.1.as_str(),
                    self.owner
                ),
            })
    }

    /// What `phase` does from `state` (see [`plan`]), refusals as errors.
    fn next_step(&self, state: &State, phase: Phase) -> Result<plan::Next> {
        let at = plan::At {
            version: state.version,
            phase: state.phase,
        };
        let latest = self.shared.catalog.latest();
        plan::next(at, phase, latest)
            .map_err(|r| r.into_error(at, latest, self.shared.store.state_table()))
    }
}

/// For plan answers the command cannot get (a switch back's from expand).
#[cold]
fn unreachable_state<T>(state_table: &str) -> Result<T> {
    Err(Error::MetadataCorrupt {
        table: state_table.to_owned(),
        detail: "version out of range".to_owned(),
    })
}

/// Whether `e` is the fault injection's crash (an upgrader that must leave
/// everything as a crashed process would; never without the `testing`
/// feature).
fn is_injected_crash(e: &Error) -> bool {
    #[cfg(feature = "testing")]
    if matches!(e, Error::InjectedCrash { .. }) {
        return true;
    }
    let _ = e;
    false
}
