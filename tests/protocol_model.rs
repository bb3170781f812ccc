//! The fleet protocol as a model, checked exhaustively with `stateright`
//! (issue 14): every interleaving of up to three instances (poller with
//! renewing and read-only ticks, lease watchdog, calls on the steady and the
//! locking path, steady units of work waiting for their write turn), one or
//! two upgraders (in different processes, excluded by the upgrade lease)
//! that can crash, freeze past their lease and resume, and the database
//! (state row, upgrade lease, fleet rows, the schema lock, its clock), with
//! crashes, freezes past the lease (an instance that takes no step while
//! time passes), a lost connection (that instance's open transaction rolled
//! back) or a server restart (every open one). One check puts instances 0
//! and 1 in one process whose handles share one poller (`fleet::group`,
//! issue 16). Instance 1's host clock is
//! skewed (behind by `SKEW`); the code never reads a host's wall clock, so
//! it changes nothing until leases are written from it (a fix switched
//! off). Host monotonic clocks run at the database's rate: under NTP they
//! drift by at most 500 ppm, far inside the quarter lease the local
//! deadline leaves. Clocks are kept as ticks left (a lease, a
//! local deadline, a steady call's age), so time itself is unbounded;
//! epochs are bounded, and the checks of the code's protocol go a bounded
//! number of actions deep (sized so that the whole file runs in well under
//! two minutes in a debug build; `TANDEM_MODEL_DEPTH` raises it).
//!
//! Checked in every reachable state: invariants 1–3 of `src/protocol.rs`
//! (one binding per call and it is the live version's; at most two versions
//! in use; no switch while a live instance lacks N, no contract while one
//! may still use N-1) and "no statement through a binding whose structures
//! are gone". Then each fix the code carries is switched off in turn, and
//! the checker must find a counterexample, printed as a trace.
//!
//! What the model assumes (the README's "Known limits"): a call on the
//! steady path ends within a lease of its start (a process frozen in the
//! middle of a steady call is the one limit left). A steady unit of work
//! waiting for its write turn is not bounded: it may wait forever.
//! Confirmation reads (the renewal grace of long SQLite writes) and
//! switch back are not modelled.
//!
//! ## Model actions and the code that implements them
//!
//! | action | code |
//! |---|---|
//! | `Time` | the clock: the database's and each host's monotonic one; the lease watchdog (`fleet::check_lease`) runs with it |
//! | `Join`, `JoinInsert` | `fleet::join_fleet`, `fleet::register` (under `Shared::enter_shared`) |
//! | `Renew` | `fleet::tick::poll_via`, the renewal transaction (`Store::renew_reading_state`: on PostgreSQL the state read and the renewal in one statement, on SQLite two, in one transaction either way; `fleet::close_if_unadopted` before its commit, `set_lease_deadline`) |
//! | `Poll` | `fleet::tick::poll_via` between renewals (`renewal_due` false): the state row read alone |
//! | (a notice) | `fleet::push`: `Store::announce` in `set_mode`/`transition`, the hearer unparking pollers. A notice only makes a `Renew` or `Poll` happen sooner: both are enabled in every state where the tick is idle, whatever the time, so every tick a notice can cause (or a lost one fail to cause) is already an interleaving checked; no action of its own |
//! | `GroupRenew`, `GroupPoll` | `fleet::group::tick_batch` (PostgreSQL, one poller for a process's handles): on its reserved connection, every member's tick lock in id order, then one renewal transaction for all (`Store::renew_many`: the state read, every lease, `close_if_unadopted` per member) or one state read; each member then adopts and acknowledges on its own (`adopt_and_acknowledge`: `Adopt`, `Drained`, `Store::acknowledge_many`), and the next group tick waits for every drain |
//! | `GroupLost` | the reserved connection lost: the group tick's transaction rolled back, no member adopts; calls run on the members' own pools |
//! | `Adopt` | `fleet::tick::poll_via` after the read: the epoch check (`readopt`), `fleet::adopt`, `fleet::drain` closing the path |
//! | `Drained` | `fleet::adopt` / `readopt` once `SchemaLock::write` is held: `Shared::cache_state`, `path_for`; then `set_adopted` and `fleet::tick::acknowledge` |
//! | `StartCall` | `Tandem::call`: `Shared::steady`, `served_live` or `call_locking` / `Tandem::enter_shared` |
//! | `StartUnit`, `UnitTurn` | `Tandem::unit_of_work` on the steady path: the cached version, the write turn (`Shared::write_transaction`), the check inside the transaction |
//! | `Statement` | a binding's statement (checked against the state row and the structures) |
//! | `Crash`, `ServerRestart` | a process killed; every open transaction rolled back (`tests/server_restart.rs`) |
//! | `LostConnection` | a connection killed (`tests/bad_input.rs`, `tests/postgres.rs`): the call's or tick's transaction rolled back, the tick's error path (`sweep_pool`) |
//! | `Up(u, _)` | upgrader `u`, in instance `u`'s process; each command under `Upgrader::with_lease` (`acquire_lease`, `Store::try_lease`; `clean_up` at its end: steady mode and `release_lease`, only while the lease is its own) |
//! | `Expand` | `Upgrader::expand` (its transaction `claim`s the lease) |
//! | `StartSwitch` | `Upgrader::switch_within`: `fleet_ready`, then `enter_deploying` (`Store::set_mode`, fenced) or alone |
//! | `AloneCommit` | `switch_attempt` without deploying mode: the in-process write lock, `switch_transaction` (`recheck`: the lease's holder) |
//! | `LeftSteady` | `Upgrader::leave_steady_path` (`fleet::on_drained_locking_path`) |
//! | `Acked`, `GiveUp` | `Upgrader::await_acknowledged` (`fleet::await_fleet`), `leave_deploying` (`Store::set_mode`, fenced) |
//! | `SwitchCommit` | `switch_transaction` in deploying mode: exclusive lock, `recheck` (the lease's holder, the planned version), acknowledgements again, `transition` |
//! | `LeaveDeploying` | `after_deploying_commit` (`Store::set_mode`, fenced) |
//! | `Contract` | `Upgrader::contract_leased` (its transaction `claim`s the lease) |
//! | `RenewLease` | `Upgrader::renew_lease` and the lease keeper (`keep_lease`) |
//! | `Crash`, `Resume` (upgrader) | an upgrader killed or frozen at a step; the next `switch` on a deploying state row |
//!
//! The counterexamples found with a fix switched off are printed
//! (`cargo test --test protocol_model -- --nocapture`).

use std::fmt::Write as _;

use stateright::{Checker, Model, Property};

/// The lease, in ticks of the model's clock.
const LEASE: i16 = 2;
/// How long a renewal keeps the steady path open locally (the code: three
/// quarters of the lease; here half, the nearest tick below).
const FRESH: i16 = 1;
/// The skew of instance 1's host clock (behind), when leases are written from hosts' clocks.
const SKEW: i16 = 2 * LEASE;
/// Instances modelled at most.
const N: usize = 3;
/// Upgraders modelled at most: upgrader `u` runs in instance `u`'s process.
const U: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Mode {
    Steady,
    Deploying,
}

/// The state row's phase for its version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Phase {
    /// Nothing pending.
    Stable,
    /// The next version is expanded.
    Expanded,
    /// Switched to; the previous version is not contracted yet.
    Switched,
}

/// The state row as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Snap {
    epoch: u8,
    version: u8,
    mode: Mode,
}

/// A fleet row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Row {
    /// Ticks of the database's clock until `lease_until` (negative: past;
    /// at `-LEASE` the row is no longer live, and stays there).
    lease_left: i16,
    observed: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Db {
    version: u8,
    phase: Phase,
    mode: Mode,
    epoch: u8,
    /// Bit `v`: version `v`'s structures exist.
    structures: u8,
    fleet: [Option<Row>; N],
    /// The upgrade lease's holder (an upgrader's index) and the ticks of
    /// the database's clock until it lapses (0: lapsed; it stays with its
    /// holder until someone takes it).
    owner: Option<u8>,
    owner_left: i16,
}

impl Db {
    fn snap(&self) -> Snap {
        Snap {
            epoch: self.epoch,
            version: self.version,
            mode: self.mode,
        }
    }

    /// `Store::live_instances`: a row is live for a lease past its own.
    fn live(&self, i: usize) -> bool {
        self.fleet[i].is_some_and(|r| r.lease_left > -LEASE)
    }

    /// `Store::try_lease`: upgrader `u` may take the upgrade lease (free,
    /// its own, or lapsed).
    fn claimable(&self, u: usize) -> bool {
        self.owner.is_none_or(|o| usize::from(o) == u) || self.owner_left <= 0
    }

    /// `Upgrader::recheck`, `Store::set_mode`: the write is made only while
    /// the state row names `u` as the holder (lapsed or not: nobody took it).
    fn held_by(&self, u: usize) -> bool {
        self.owner.is_some_and(|o| usize::from(o) == u)
    }

    /// `Store::release_lease`.
    fn release(&mut self, u: usize) {
        if self.held_by(u) {
            self.owner = None;
            self.owner_left = 0;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Path {
    Steady,
    Locking,
    Undrained,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Call {
    Idle,
    /// On the steady path for `age` ticks, with the cached version.
    Steady {
        v: u8,
        age: i16,
    },
    /// On the locking path: holds the database's shared lock, read `v`.
    Locking {
        v: u8,
    },
    /// A steady unit of work waiting for its write turn, having read `v`.
    Unit {
        v: u8,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Tick {
    Idle,
    Read(Snap),
    /// Waiting for the steady calls to drain: the row to cache (`None`:
    /// read again, the epoch went backwards), whether the path was closed.
    Draining {
        snap: Option<Snap>,
        closed: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Life {
    Down,
    /// Registration read the state row but has not inserted its row (only
    /// when registration does not take the shared lock).
    Joining(Snap),
    Up,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Inst {
    life: Life,
    path: Path,
    cached: u8,
    cached_epoch: u8,
    adopted: u8,
    /// Ticks of this host's monotonic clock until the lease deadline (0: stale).
    fresh: i16,
    tick: Tick,
    call: Call,
    /// The tick under way is the shared poller's (`grouped`).
    batched: bool,
}

impl Inst {
    const DOWN: Inst = Inst {
        life: Life::Down,
        path: Path::Locking,
        cached: 0,
        cached_epoch: 0,
        adopted: 0,
        fresh: 0,
        tick: Tick::Idle,
        call: Call::Idle,
        batched: false,
    };

    /// `Shared::steady`.
    fn steady(&self) -> bool {
        self.life == Life::Up && self.path == Path::Steady && self.fresh > 0
    }

    /// Holds the in-process read lock (a drain waits for it).
    fn holds_read_lock(&self) -> bool {
        matches!(self.call, Call::Steady { .. } | Call::Unit { .. })
    }

    /// `fleet::path_for`.
    fn path_for(&self, snap: Snap) -> Path {
        if snap.mode == Mode::Steady && self.fresh > 0 {
            Path::Steady
        } else {
            Path::Locking
        }
    }

    /// Closes the steady path (`Steady` -> `Undrained`); whether it was open.
    fn close(&mut self) -> bool {
        let open = self.path == Path::Steady;
        if open {
            self.path = Path::Undrained;
        }
        open
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Pc {
    Idle,
    Alone,
    LeaveSteady { resumed: bool },
    AwaitAcks,
    SwitchTx,
    AfterCommit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Violation {
    StaleBinding { inst: usize, binding: u8, live: u8 },
    StructuresGone { inst: usize, binding: u8 },
    ThreeVersions { low: u8, high: u8 },
    SwitchWhileLacking { inst: usize, version: u8 },
    ContractWhileInUse { inst: usize, version: u8 },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    db: Db,
    inst: [Inst; N],
    /// Each upgrader's place in its command.
    ups: [Pc; U],
    violation: Option<Violation>,
    switched: bool,
    contracted: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Action {
    Time,
    Join(usize),
    JoinInsert(usize),
    Renew(usize),
    Poll(usize),
    Adopt(usize),
    Drained(usize),
    StartCall(usize),
    StartUnit(usize),
    Statement(usize),
    UnitTurn(usize),
    Crash(usize),
    LostConnection(usize),
    ServerRestart,
    /// The shared poller of the process holding instances 0 and 1 (when
    /// `grouped`): one renewal transaction for both members.
    GroupRenew,
    /// The shared poller's read between renewals: one state read for both.
    GroupPoll,
    /// The shared poller's reserved connection lost: its open tick rolled
    /// back for both members (their calls, on their own pools, go on).
    GroupLost,
    /// A step of upgrader `u`.
    Up(usize, Step),
}

/// An upgrader's steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Step {
    Expand,
    StartSwitch,
    AloneCommit,
    LeftSteady,
    Acked,
    GiveUp,
    SwitchCommit,
    LeaveDeploying,
    Contract,
    RenewLease,
    Crash,
    Resume,
}

/// The behaviour the code has; each switched off in turn by the tests.
#[derive(Clone, Copy, Debug)]
struct Fixes {
    /// A resuming upgrader drains its own instance's steady calls
    /// (`an_upgrader_resuming_deploying_mode_drains_its_own_calls_first`).
    resume_drains_own: bool,
    /// A state row older than the one cached is never adopted
    /// (`a_state_row_read_before_a_switch_is_not_adopted_after_it`).
    epoch_guard: bool,
    /// Registration reads the state row under the shared schema lock
    /// (`an_instance_joining_during_a_switch_adopts_the_switched_version`).
    register_under_lock: bool,
    /// Leases are written and compared on the database's clock
    /// (`tests/clock_skew.rs`).
    db_clock: bool,
    /// A steady unit of work looks at the steady path again with its turn
    /// (`a_unit_of_work_waiting_for_its_write_turn_…`).
    unit_rechecks: bool,
    /// An upgrader's writes to the state row (mode, switch) are made only
    /// while the row names it as the lease's holder (`Upgrader::recheck`,
    /// `Store::set_mode`). No code test freezes an upgrader in the middle
    /// of a switch while another takes its lease; this check stands for it.
    lease_fences: bool,
    /// The shared poller acknowledges a member's epoch once that member's
    /// own adoption has drained (`group::acknowledge_adopted`, for the
    /// adoptions that ended), not with the first member's.
    acks_own_drain: bool,
}

const CODE: Fixes = Fixes {
    resume_drains_own: true,
    epoch_guard: true,
    register_under_lock: true,
    db_clock: true,
    unit_rechecks: true,
    lease_fences: true,
    acks_own_drain: true,
};

#[derive(Clone, Debug)]
struct Protocol {
    /// The newest version each instance's binary serves (0: not modelled).
    serves: [u8; N],
    max_version: u8,
    max_epoch: u8,
    /// Upgraders (1 or 2), in instances 0 and 1.
    upgraders: usize,
    /// Whether upgraders may crash (and resume).
    upgrader_crashes: bool,
    /// Whether instances may crash, lose their connection, and the server
    /// restart.
    crashes: bool,
    /// Whether ticks between renewals only read (`poll_via`'s read-only
    /// tick), beside ticks that renew; and whether steady units of work run.
    /// (Switched off to keep a check small: that only removes behaviours.)
    polls: bool,
    units: bool,
    /// Where the check starts: version 2 expanded and every instance up
    /// (a smaller space, for a counterexample that needs a long run-up);
    /// else version 1 with instance 0 up.
    expanded: bool,
    /// Instances 0 and 1 are two handles of one process on PostgreSQL
    /// (`fleet::group`): one poller ticks both (`GroupRenew`, `GroupPoll`),
    /// a crash takes both down, the poller's connection is its own.
    /// Instance 0 keeps a tick of its own too: the upgrader's (`Via::Held`).
    grouped: bool,
    fixes: Fixes,
}

impl Protocol {
    /// The lease a renewal writes, from now: on the database's clock, or
    /// (a fix switched off) from instance 1's host clock, behind by `SKEW`.
    fn lease_written(&self, i: usize) -> i16 {
        if !self.fixes.db_clock && i == 1 {
            LEASE - SKEW
        } else {
            LEASE
        }
    }

    fn instances(&self) -> impl Iterator<Item = usize> + '_ {
        (0..N).filter(|&i| self.serves[i] > 0)
    }

    /// The members of the shared poller's group (when `grouped`).
    const GROUP: [usize; 2] = [0, 1];

    /// The instances in `i`'s process: a crash takes them all down.
    fn process_of(&self, i: usize) -> Vec<usize> {
        if self.grouped && Self::GROUP.contains(&i) {
            Self::GROUP.to_vec()
        } else {
            vec![i]
        }
    }

    /// The shared poller's actions: a tick when every live member's tick
    /// is idle (the group's next tick waits for every member's drain).
    fn group_actions(&self, s: &State, out: &mut Vec<Action>) {
        let up: Vec<&Inst> = Self::GROUP
            .iter()
            .map(|&i| &s.inst[i])
            .filter(|i| i.life == Life::Up)
            .collect();
        if up.is_empty() {
            return;
        }
        if up.iter().all(|i| i.tick == Tick::Idle) {
            out.push(Action::GroupRenew);
            if self.polls {
                out.push(Action::GroupPoll);
            }
        }
        if self.crashes && up.iter().any(|i| matches!(i.tick, Tick::Read(_))) {
            out.push(Action::GroupLost);
        }
    }

    fn step_group(&self, s: &mut State, action: Action) {
        for i in Self::GROUP {
            if s.inst[i].life != Life::Up {
                continue;
            }
            match action {
                Action::GroupRenew => {
                    self.renew(s, i);
                    s.inst[i].batched = true;
                }
                Action::GroupPoll => {
                    self.step_instance(s, Action::Poll(i));
                    s.inst[i].batched = true;
                }
                Action::GroupLost => {
                    if matches!(s.inst[i].tick, Tick::Read(_)) {
                        s.inst[i].tick = Tick::Idle;
                        s.inst[i].batched = false;
                    }
                }
                _ => {}
            }
        }
    }

    /// Records the first violation of a statement through `binding` on `i`.
    fn statement(&self, s: &mut State, i: usize, binding: u8) {
        let v = if binding != s.db.version {
            Some(Violation::StaleBinding {
                inst: i,
                binding,
                live: s.db.version,
            })
        } else if s.db.structures & (1 << binding) == 0 {
            Some(Violation::StructuresGone { inst: i, binding })
        } else {
            None
        };
        s.violation = s.violation.or(v);
    }

    /// Whether an instance other than upgrader `u`'s is live.
    fn others_live(&self, s: &State, u: usize) -> bool {
        self.instances().any(|j| j != u && s.db.live(j))
    }

    fn lacking(&self, s: &State, version: u8) -> Option<usize> {
        self.instances()
            .find(|&j| s.db.live(j) && self.serves[j] < version)
    }

    /// Whether a live instance other than upgrader `u`'s has not
    /// acknowledged the state row's epoch.
    fn unacked(&self, s: &State, u: usize) -> bool {
        self.instances().any(|j| {
            j != u && s.db.live(j) && s.db.fleet[j].is_some_and(|r| r.observed != s.db.epoch)
        })
    }

    fn any_locking_call(s: &State) -> bool {
        s.inst
            .iter()
            .any(|i| matches!(i.call, Call::Locking { .. }))
    }

    /// Upgrader `u`'s switch commits: the state row, and its process's cache.
    fn commit_switch(&self, s: &mut State, u: usize) {
        let to = s.db.version + 1;
        if let Some(j) = self.lacking(s, to) {
            s.violation = s.violation.or(Some(Violation::SwitchWhileLacking {
                inst: j,
                version: to,
            }));
        }
        s.db.version = to;
        s.db.phase = Phase::Switched;
        s.db.epoch += 1;
        s.inst[u].cached = to;
        s.inst[u].cached_epoch = s.db.epoch;
        s.switched = true;
    }

    fn check_two_versions(&self, s: &mut State) {
        let mut low = u8::MAX;
        let mut high = 0;
        for inst in s.inst.iter().filter(|i| i.life == Life::Up) {
            let used = match inst.call {
                Call::Steady { v, .. } | Call::Locking { v } => Some(v),
                Call::Idle | Call::Unit { .. } => None,
            };
            let cached = inst.steady().then_some(inst.cached);
            for v in used.into_iter().chain(cached) {
                low = low.min(v);
                high = high.max(v);
            }
        }
        if high > low.saturating_add(1) {
            s.violation = s.violation.or(Some(Violation::ThreeVersions { low, high }));
        }
    }

    fn instance_actions(&self, s: &State, i: usize, out: &mut Vec<Action>) {
        let inst = &s.inst[i];
        match inst.life {
            Life::Down => {
                if s.db.version <= self.serves[i] {
                    out.push(Action::Join(i));
                }
                return;
            }
            Life::Joining(_) => {
                out.push(Action::JoinInsert(i));
                return;
            }
            Life::Up => {}
        }
        let own_poller = !(self.grouped && i == 1);
        match inst.tick {
            Tick::Idle if !own_poller => {}
            Tick::Idle => {
                out.push(Action::Renew(i));
                if self.polls {
                    out.push(Action::Poll(i));
                }
            }
            Tick::Read(_) => out.push(Action::Adopt(i)),
            Tick::Draining { .. } if !inst.holds_read_lock() => out.push(Action::Drained(i)),
            Tick::Draining { .. } => {}
        }
        match inst.call {
            Call::Idle => {
                out.push(Action::StartCall(i));
                if self.units && inst.steady() {
                    out.push(Action::StartUnit(i));
                }
            }
            Call::Steady { .. } | Call::Locking { .. } => out.push(Action::Statement(i)),
            Call::Unit { .. } => out.push(Action::UnitTurn(i)),
        }
        if self.crashes {
            out.push(Action::Crash(i));
            let open = inst.call != Call::Idle || matches!(inst.tick, Tick::Read(_));
            if open {
                out.push(Action::LostConnection(i));
            }
        }
    }

    fn upgrader_actions(&self, s: &State, u: usize, out: &mut Vec<Action>) {
        if s.inst[u].life != Life::Up {
            return;
        }
        let db = &s.db;
        let mut step = |step| out.push(Action::Up(u, step));
        match s.ups[u] {
            Pc::Idle => {
                // Each command takes the lease first (`Upgrader::with_lease`).
                if !db.claimable(u) {
                    return;
                }
                let steady = db.mode == Mode::Steady;
                if steady && db.phase == Phase::Stable && db.version < self.max_version {
                    step(Step::Expand);
                }
                if steady
                    && db.phase == Phase::Expanded
                    && self.lacking(s, db.version + 1).is_none()
                {
                    step(Step::StartSwitch);
                }
                if steady && db.phase == Phase::Switched && !self.unacked(s, u) {
                    step(Step::Contract);
                }
                if db.mode == Mode::Deploying {
                    step(Step::Resume);
                }
                return;
            }
            Pc::Alone => {
                if !s.inst[u].holds_read_lock() && !Self::any_locking_call(s) {
                    step(Step::AloneCommit);
                }
            }
            Pc::LeaveSteady { resumed } => {
                // The upgrader's own tick (`poll_via` on its connection, after
                // any tick of the poller: ticks are serialized) adopted the
                // deploying row and left this instance drained on the locking
                // path.
                let own = &s.inst[u];
                let drained = own.tick == Tick::Idle
                    && own.adopted == s.db.epoch
                    && own.path == Path::Locking;
                let skips = resumed && !self.fixes.resume_drains_own;
                if drained || skips {
                    step(Step::LeftSteady);
                }
                step(Step::GiveUp);
            }
            Pc::AwaitAcks => {
                if !self.unacked(s, u) {
                    step(Step::Acked);
                }
                step(Step::GiveUp);
            }
            Pc::SwitchTx => {
                if !Self::any_locking_call(s) {
                    step(Step::SwitchCommit);
                }
            }
            Pc::AfterCommit => step(Step::LeaveDeploying),
        }
        // Inside a command: the lease renewed as it waits
        // (`Upgrader::renew_lease`); only another upgrader could take it.
        if self.upgraders > 1 {
            step(Step::RenewLease);
        }
        if self.upgrader_crashes {
            step(Step::Crash);
        }
    }

    fn step_instance(&self, s: &mut State, action: Action) {
        match action {
            Action::Join(i) => {
                if self.fixes.register_under_lock {
                    let snap = s.db.snap();
                    self.register(s, i, snap);
                } else {
                    s.inst[i].life = Life::Joining(s.db.snap());
                }
            }
            Action::JoinInsert(i) => {
                if let Life::Joining(snap) = s.inst[i].life {
                    self.register(s, i, snap);
                }
            }
            Action::Renew(i) => self.renew(s, i),
            Action::Adopt(i) => {
                let inst = &mut s.inst[i];
                let Tick::Read(snap) = inst.tick else { return };
                let newest = inst.adopted.max(inst.cached_epoch);
                if self.fixes.epoch_guard && snap.epoch < newest {
                    let closed = inst.close();
                    inst.tick = Tick::Draining { snap: None, closed };
                } else if inst.path == inst.path_for(snap) && inst.cached == snap.version {
                    self.acknowledge(s, i, snap.epoch);
                } else {
                    let closed = inst.close();
                    inst.tick = Tick::Draining {
                        snap: Some(snap),
                        closed,
                    };
                }
            }
            Action::Drained(i) => {
                let fresh = s.db.snap();
                let inst = &mut s.inst[i];
                let Tick::Draining { snap, closed } = inst.tick else {
                    return;
                };
                let forced = snap.is_none();
                let row = snap.unwrap_or(fresh);
                if forced || !self.fixes.epoch_guard || row.epoch >= inst.cached_epoch {
                    inst.cached = row.version;
                    inst.cached_epoch = row.epoch;
                    inst.path = inst.path_for(row);
                } else if closed && inst.path == Path::Undrained {
                    inst.path = Path::Steady;
                }
                let batched = s.inst[i].batched;
                self.acknowledge(s, i, row.epoch);
                if batched && !self.fixes.acks_own_drain {
                    // (The fix switched off: the rows of the other members
                    // of the same tick too, drained or not.)
                    for j in Self::GROUP {
                        if s.inst[j].batched {
                            if let Some(r) = s.db.fleet[j].as_mut() {
                                r.observed = row.epoch;
                            }
                        }
                    }
                }
            }
            Action::StartCall(i) => {
                let inst = &s.inst[i];
                let v = if inst.steady() {
                    inst.cached
                } else {
                    s.db.version
                };
                if v > self.serves[i] || v == 0 {
                    return; // `VersionNotServed` before any statement
                }
                s.inst[i].call = if inst.steady() {
                    Call::Steady { v, age: 0 }
                } else {
                    Call::Locking { v }
                };
            }
            Action::StartUnit(i) => {
                let v = s.inst[i].cached;
                if v <= self.serves[i] {
                    s.inst[i].call = Call::Unit { v };
                }
            }
            Action::Statement(i) => {
                let (Call::Steady { v, .. } | Call::Locking { v }) = s.inst[i].call else {
                    return;
                };
                self.statement(s, i, v);
                s.inst[i].call = Call::Idle;
            }
            Action::UnitTurn(i) => {
                let Call::Unit { v } = s.inst[i].call else {
                    return;
                };
                let v = if self.fixes.unit_rechecks && !s.inst[i].steady() {
                    s.db.version
                } else {
                    v
                };
                if v <= self.serves[i] {
                    self.statement(s, i, v);
                }
                s.inst[i].call = Call::Idle;
            }
            Action::Poll(i) => s.inst[i].tick = Tick::Read(s.db.snap()),
            Action::Crash(i) => {
                for j in self.process_of(i) {
                    s.inst[j] = Inst::DOWN;
                    if let Some(pc) = s.ups.get_mut(j) {
                        *pc = Pc::Idle;
                    }
                }
            }
            Action::LostConnection(i) => {
                // Its open transaction rolled back: the call fails (no
                // statement ran), the tick fails before it adopts anything.
                let inst = &mut s.inst[i];
                inst.call = Call::Idle;
                if matches!(inst.tick, Tick::Read(_)) {
                    inst.tick = Tick::Idle;
                    inst.batched = false;
                }
            }
            _ => {}
        }
    }

    /// Instance `i`'s renewal, reading the state row; its steady path
    /// closed before the renewal commits if the row is not the one it
    /// adopted (`close_if_unadopted`).
    fn renew(&self, s: &mut State, i: usize) {
        let snap = s.db.snap();
        let lease = self.lease_written(i);
        if let Some(row) = s.db.fleet[i].as_mut() {
            row.lease_left = lease;
        }
        let inst = &mut s.inst[i];
        if snap.epoch != inst.adopted {
            inst.close();
        }
        inst.fresh = inst.fresh.max(FRESH);
        inst.tick = Tick::Read(snap);
    }

    /// The end of a tick: the epoch adopted, and acknowledged in the fleet
    /// row. (The code writes the acknowledgement in a transaction of its
    /// own, later: an earlier acknowledgement only lets a switch go sooner.)
    fn acknowledge(&self, s: &mut State, i: usize, epoch: u8) {
        s.inst[i].adopted = epoch;
        s.inst[i].tick = Tick::Idle;
        s.inst[i].batched = false;
        if let Some(row) = s.db.fleet[i].as_mut() {
            row.observed = epoch;
        }
    }

    /// `fleet::register` and the adoption at open.
    fn register(&self, s: &mut State, i: usize, snap: Snap) {
        s.db.fleet[i] = Some(Row {
            lease_left: self.lease_written(i),
            observed: snap.epoch,
        });
        s.inst[i] = Inst {
            life: Life::Up,
            path: if snap.mode == Mode::Steady {
                Path::Steady
            } else {
                Path::Locking
            },
            cached: snap.version,
            cached_epoch: snap.epoch,
            adopted: snap.epoch,
            fresh: FRESH,
            tick: Tick::Idle,
            call: Call::Idle,
            batched: false,
        };
    }

    /// Upgrader `u` takes the upgrade lease, a lease ahead. (With one
    /// upgrader nobody else could take it: its expiry is not tracked.)
    fn take_lease(&self, s: &mut State, u: usize) {
        s.db.owner = u8::try_from(u).ok();
        s.db.owner_left = if self.upgraders > 1 { LEASE } else { 0 };
    }

    /// Whether upgrader `u`'s write to the state row is made (it holds the
    /// lease, or the fence is switched off).
    fn fenced_write(&self, s: &State, u: usize) -> bool {
        !self.fixes.lease_fences || s.db.held_by(u)
    }

    /// Sets the mode (`Store::set_mode`, under the fence); whether it did.
    fn set_mode(&self, s: &mut State, u: usize, mode: Mode) -> bool {
        let made = self.fenced_write(s, u);
        if made {
            s.db.mode = mode;
            s.db.epoch += 1;
        }
        made
    }

    /// Deploying mode, or the switch alone (`Upgrader::switch_within`).
    fn deploying_or_alone(&self, s: &mut State, u: usize) {
        if !self.others_live(s, u) {
            s.ups[u] = Pc::Alone;
        } else if self.set_mode(s, u, Mode::Deploying) {
            s.ups[u] = Pc::LeaveSteady { resumed: false };
        } else {
            s.ups[u] = Pc::Idle; // `UpgraderBusy`
        }
    }

    /// The command's end (`Upgrader::clean_up`): steady mode, the lease
    /// given up (both only while it is this upgrader's).
    fn clean_up(&self, s: &mut State, u: usize) {
        if s.db.mode == Mode::Deploying && s.db.held_by(u) {
            s.db.mode = Mode::Steady;
            s.db.epoch += 1;
        }
        s.db.release(u);
        s.ups[u] = Pc::Idle;
    }

    fn step_upgrader(&self, s: &mut State, u: usize, step: Step) {
        match step {
            Step::Expand => {
                self.take_lease(s, u);
                s.db.structures |= 1 << (s.db.version + 1);
                s.db.phase = Phase::Expanded;
                s.db.epoch += 1;
                self.clean_up(s, u);
            }
            Step::StartSwitch => {
                self.take_lease(s, u);
                self.deploying_or_alone(s, u);
            }
            Step::AloneCommit => {
                if !self.fenced_write(s, u) {
                    s.ups[u] = Pc::Idle; // `UpgraderBusy`
                } else if self.others_live(s, u) {
                    self.deploying_or_alone(s, u);
                } else if self.lacking(s, s.db.version + 1).is_some() {
                    self.clean_up(s, u); // `SwitchRefused`
                } else {
                    self.commit_switch(s, u);
                    self.clean_up(s, u);
                }
            }
            Step::LeftSteady => s.ups[u] = Pc::AwaitAcks,
            Step::Acked => s.ups[u] = Pc::SwitchTx,
            Step::GiveUp => {
                self.set_mode(s, u, Mode::Steady);
                self.clean_up(s, u);
            }
            Step::SwitchCommit => {
                if !self.fenced_write(s, u) || s.db.phase != Phase::Expanded {
                    // `UpgraderBusy`; or, with the fence off, the state row
                    // is not the one planned (`MetadataCorrupt`).
                    s.ups[u] = Pc::Idle;
                } else if self.unacked(s, u) {
                    s.db.epoch += 1; // deploying mode again
                    s.ups[u] = Pc::LeaveSteady { resumed: false };
                } else if self.lacking(s, s.db.version + 1).is_some() {
                    self.clean_up(s, u); // `SwitchRefused`
                } else {
                    self.commit_switch(s, u);
                    s.ups[u] = Pc::AfterCommit;
                }
            }
            Step::LeaveDeploying => {
                self.set_mode(s, u, Mode::Steady);
                self.clean_up(s, u);
            }
            Step::Contract => {
                self.take_lease(s, u);
                let old = s.db.version - 1;
                for j in self.instances() {
                    let inst = &s.inst[j];
                    let uses = matches!(inst.call, Call::Steady { v, .. } | Call::Locking { v } if v == old)
                        || inst.steady() && inst.cached == old;
                    if inst.life == Life::Up && uses {
                        s.violation = s.violation.or(Some(Violation::ContractWhileInUse {
                            inst: j,
                            version: old,
                        }));
                    }
                }
                s.db.structures &= !(1 << old);
                s.db.phase = Phase::Stable;
                s.db.epoch += 1;
                s.contracted = true;
                self.clean_up(s, u);
            }
            Step::RenewLease => {
                if s.db.claimable(u) {
                    self.take_lease(s, u);
                } else {
                    s.ups[u] = Pc::Idle; // `UpgraderBusy`: another took it
                }
            }
            Step::Crash => s.ups[u] = Pc::Idle,
            Step::Resume => {
                self.take_lease(s, u);
                s.ups[u] = if s.db.phase == Phase::Switched {
                    Pc::AfterCommit
                } else {
                    Pc::LeaveSteady { resumed: true }
                };
            }
        }
    }
}

impl Model for Protocol {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let db = Db {
            version: 1,
            phase: Phase::Stable,
            mode: Mode::Steady,
            epoch: 1,
            structures: 1 << 1,
            fleet: [None; N],
            owner: None,
            owner_left: 0,
        };
        let mut s = State {
            db,
            inst: [Inst::DOWN; N],
            ups: [Pc::Idle; U],
            violation: None,
            switched: false,
            contracted: false,
        };
        if self.expanded {
            s.db.structures |= 1 << 2;
            s.db.phase = Phase::Expanded;
            s.db.epoch += 1;
            let snap = s.db.snap();
            for i in self.instances() {
                self.register(&mut s, i, snap);
            }
        } else {
            // Instance 0 (the upgrader's) is up; the others join when they will.
            self.register(&mut s, 0, db.snap());
        }
        vec![s]
    }

    fn actions(&self, s: &State, out: &mut Vec<Action>) {
        if s.violation.is_some() {
            return;
        }
        let steady_calls_end_in_time = s.inst.iter().all(|i| match i.call {
            Call::Steady { age, .. } => age + 1 < LEASE,
            _ => true,
        });
        if steady_calls_end_in_time {
            out.push(Action::Time);
        }
        for i in self.instances() {
            self.instance_actions(s, i, out);
        }
        if self.grouped {
            self.group_actions(s, out);
        }
        if self.crashes && Self::any_locking_call(s) {
            out.push(Action::ServerRestart);
        }
        for u in 0..self.upgraders {
            self.upgrader_actions(s, u, out);
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Time => {
                // Every clock moves on. The lease watchdog (and every call,
                // which checks the lease itself) leaves the steady path once
                // its deadline passed.
                for inst in &mut s.inst {
                    inst.fresh = (inst.fresh - 1).max(0);
                    if inst.life == Life::Up && inst.fresh == 0 {
                        inst.close();
                    }
                    if let Call::Steady { age, .. } = &mut inst.call {
                        *age += 1;
                    }
                }
                for row in s.db.fleet.iter_mut().flatten() {
                    row.lease_left = (row.lease_left - 1).max(-LEASE);
                }
                s.db.owner_left = (s.db.owner_left - 1).max(0);
            }
            Action::ServerRestart => {
                for inst in &mut s.inst {
                    if matches!(inst.call, Call::Locking { .. }) {
                        inst.call = Call::Idle;
                    }
                }
            }
            Action::Up(u, step) => self.step_upgrader(&mut s, u, step),
            Action::GroupRenew | Action::GroupPoll | Action::GroupLost => {
                self.step_group(&mut s, action);
            }
            _ => self.step_instance(&mut s, action),
        }
        self.check_two_versions(&mut s);
        Some(s)
    }

    fn within_boundary(&self, s: &State) -> bool {
        s.db.epoch <= self.max_epoch
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "one binding per call, the live version's",
                |_, s: &State| !matches!(s.violation, Some(Violation::StaleBinding { .. })),
            ),
            Property::always(
                "no statement through a binding whose structures are gone",
                |_, s: &State| !matches!(s.violation, Some(Violation::StructuresGone { .. })),
            ),
            Property::always("at most two versions in use", |_, s: &State| {
                !matches!(s.violation, Some(Violation::ThreeVersions { .. }))
            }),
            Property::always("the fleet is ready", |_, s: &State| {
                !matches!(
                    s.violation,
                    Some(
                        Violation::SwitchWhileLacking { .. } | Violation::ContractWhileInUse { .. }
                    )
                )
            }),
            Property::sometimes("a switch commits", |_, s: &State| s.switched),
            Property::sometimes("a contract commits", |_, s: &State| s.contracted),
        ]
    }
}

const SAFETY: [&str; 4] = [
    "one binding per call, the live version's",
    "no statement through a binding whose structures are gone",
    "at most two versions in use",
    "the fleet is ready",
];

/// A state in one line.
fn describe(s: &State) -> String {
    let mut out = format!(
        "db: v{} {:?} {:?} epoch {} |",
        s.db.version, s.db.phase, s.db.mode, s.db.epoch
    );
    for (i, inst) in s.inst.iter().enumerate() {
        if inst.life == Life::Down && s.db.fleet[i].is_none() {
            continue;
        }
        let row = s.db.fleet[i].map_or("-".to_owned(), |r| {
            format!("lease left {} ack {}", r.lease_left, r.observed)
        });
        let _ = write!(
            out,
            " i{i}: {:?} {:?} v{} e{} fresh {} {:?} {:?} ({row}) |",
            inst.life, inst.path, inst.cached, inst.cached_epoch, inst.fresh, inst.tick, inst.call
        );
    }
    let _ = write!(
        out,
        " upgraders {:?}, lease {:?} ({} left)",
        s.ups, s.db.owner, s.db.owner_left
    );
    out
}

/// A path as a trace: each state in one line, the action taken under it.
fn trace(path: stateright::Path<State, Action>) -> String {
    let mut out = String::new();
    for (state, action) in path.into_vec() {
        let _ = writeln!(out, "  {}", describe(&state));
        if let Some(action) = action {
            let _ = writeln!(out, "    -> {action:?}");
        }
    }
    out
}

/// The first counterexample to a safety property in `model`, with its
/// name, as a trace of states and actions (the checker stops at the first).
fn counterexample(model: Protocol) -> Option<(&'static str, String)> {
    let checker = model
        .checker()
        .finish_when(stateright::HasDiscoveries::AnyFailures)
        .spawn_bfs()
        .join();
    let (name, path) = SAFETY
        .iter()
        .find_map(|&name| Some((name, checker.discovery(name)?)))?;
    Some((name, trace(path)))
}

/// Checks every state of `model` reachable in `depth` actions (a bounded
/// check, sized to CI; `TANDEM_MODEL_DEPTH` raises it): the safety
/// properties hold, and a switch and a contract are reached (the model is
/// not vacuous).
fn holds(model: Protocol, depth: usize) {
    let depth = std::env::var("TANDEM_MODEL_DEPTH")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(depth);
    let checker = model.checker().target_max_depth(depth).spawn_bfs().join();
    eprintln!(
        "{} states (depth {}) checked",
        checker.unique_state_count(),
        checker.max_depth()
    );
    for name in SAFETY {
        if let Some(path) = checker.discovery(name) {
            panic!("the protocol as coded breaks {name:?}:\n{}", trace(path));
        }
    }
    assert!(
        checker.discovery("a switch commits").is_some(),
        "no switch is reachable"
    );
    assert!(
        checker.discovery("a contract commits").is_some(),
        "no contract is reachable"
    );
}

/// Two instances of binaries serving 1..=2 (instance 1 joins when it will)
/// and the upgrader on instance 0.
fn fleet(faults: bool, fixes: Fixes) -> Protocol {
    Protocol {
        serves: [2, 2, 0],
        max_version: 2,
        max_epoch: 7,
        upgraders: 1,
        upgrader_crashes: faults,
        crashes: faults,
        polls: true,
        units: true,
        expanded: false,
        grouped: false,
        fixes,
    }
}

/// Crashes of instances and of the upgrader, server restarts, joins at
/// any point, over three ticks (no lease expires).
#[test]
fn with_crashes_restarts_and_joins_every_invariant_holds() {
    holds(fleet(true, CODE), 14);
}

/// Leases that expire: instances frozen (taking no step) past their lease
/// while the switch goes on without them, over six ticks.
#[test]
fn with_leases_that_expire_every_invariant_holds() {
    holds(
        Protocol {
            polls: false,
            ..fleet(false, CODE)
        },
        18,
    );
}

/// An old binary (serving 1 only) that can join at any time: no switch
/// while it lives.
#[test]
fn with_an_old_binary_every_invariant_holds() {
    holds(
        Protocol {
            serves: [2, 2, 1],
            ..fleet(false, CODE)
        },
        12,
    );
}

/// One poller per process (`fleet::group`, PostgreSQL): instances 0 and 1
/// are handles of one process, renewed and read by one poller in one
/// transaction, adopting and acknowledging each on its own; that process
/// crashes whole, its poller's connection is lost on its own; the upgrader
/// (instance 0) still ticks alone too. Crashes, restarts and joins, as in
/// the first check.
#[test]
fn with_one_poller_per_process_every_invariant_holds() {
    holds(
        Protocol {
            grouped: true,
            ..fleet(true, CODE)
        },
        14,
    );
}

/// Two upgraders, one in each instance's process, each of which may
/// freeze past the upgrade lease (take no step while time passes) and
/// crash: the lease excludes, and a frozen holder's writes after another
/// took the lease are refused.
#[test]
fn with_two_upgraders_every_invariant_holds() {
    holds(
        Protocol {
            upgraders: 2,
            polls: false,
            ..fleet(true, CODE)
        },
        13,
    );
}

/// Each fix switched off: the checker finds the counterexample the
/// fleet tests guard against.
fn bites(model: Protocol, what: &str) {
    match counterexample(model) {
        Some((property, trace)) => eprintln!("{what}: counterexample to {property:?}:\n{trace}"),
        None => panic!("{what}: no counterexample found"),
    }
}

#[test]
fn a_resuming_upgrader_that_does_not_drain_its_own_instance_is_caught() {
    let fixes = Fixes {
        resume_drains_own: false,
        ..CODE
    };
    bites(fleet(true, fixes), "resume without draining");
}

#[test]
fn a_stale_tick_adopted_after_a_switch_is_caught() {
    let fixes = Fixes {
        epoch_guard: false,
        ..CODE
    };
    let alone = Protocol {
        serves: [2, 0, 0],
        ..fleet(false, fixes)
    };
    bites(alone, "no epoch guard");
}

#[test]
fn a_registration_racing_a_switch_is_caught() {
    let fixes = Fixes {
        register_under_lock: false,
        ..CODE
    };
    bites(fleet(false, fixes), "registration without the shared lock");
}

#[test]
fn leases_on_hosts_clocks_are_caught() {
    let fixes = Fixes {
        db_clock: false,
        ..CODE
    };
    bites(fleet(false, fixes), "leases on a skewed host clock");
}

#[test]
fn a_unit_of_work_that_trusts_its_cached_version_after_its_turn_is_caught() {
    let fixes = Fixes {
        unit_rechecks: false,
        ..CODE
    };
    bites(
        fleet(false, fixes),
        "no look at the steady path after the turn",
    );
}

#[test]
fn an_upgrader_writing_after_its_lease_was_taken_over_is_caught() {
    let fixes = Fixes {
        lease_fences: false,
        ..CODE
    };
    let two = Protocol {
        upgraders: 2,
        expanded: true,
        max_epoch: 5,
        polls: false,
        units: false,
        ..fleet(false, fixes)
    };
    bites(two, "upgrader writes without the lease's fence");
}

#[test]
fn a_shared_poller_acknowledging_a_member_before_its_drain_is_caught() {
    let fixes = Fixes {
        acks_own_drain: false,
        ..CODE
    };
    let grouped = Protocol {
        grouped: true,
        ..fleet(false, fixes)
    };
    bites(grouped, "members acknowledged with the first drain");
}
