//! One poller per process: the handles of a process on one PostgreSQL
//! database (same URL and session settings, prefix, poll interval and
//! lease) share one poller thread with a connection of its own, outside
//! their pools.
//!
//! Each of its ticks does for all of them what each handle's own poller
//! would (see `tick`), in as few statements as one handle's tick: one read
//! of the state row, or, when any member's renewal is due, one renewal
//! transaction for all (`BEGIN`, the shared schema lock, the state read,
//! one `UPDATE … WHERE id IN (…)`, `COMMIT`), each member's steady path
//! closed before it commits if the row read is not the one it adopted;
//! then each member's adoption (here, one after another, for the members
//! with no steady call in flight; the others drain at the same time, each
//! on a thread of the tick's own, so one member's long call does not hold
//! up the others); then one
//! acknowledgement for all the members that adopted a new epoch together.
//! Renewing early is always safe, so when one member's renewal is due all
//! renew, and they keep renewing together.
//!
//! Each member's tick lock (`adopted_epoch`) is held across its part of
//! the tick, taken (without waiting) in the order of the members' ids; a
//! member whose lock another holder has (`refresh`, an upgrader's own
//! tick, leaving the fleet: each takes only its own) is ticking already
//! and is left out of this tick, so a `refresh` waiting for a busy pool
//! holds up no other member. The reserved connection means a handle with a
//! one-connection pool, or one whose calls hold all its connections, still
//! renews and acknowledges; it is dropped after a failed tick and opened
//! again at the next (a restart, a terminated backend). A tick that
//! panicked counts as failed, and the thread goes on. A member the tests
//! stall (`stall_writes`) ticks alone on its own pool, on this thread.
//!
//! SQLite keeps one poller per handle: its handles queue their writes per
//! handle (`Shared::write_gate`), and an embedded database seldom has many
//! handles in one process.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::mpsc;

use once_cell::sync::Lazy;
use parking_lot::{Mutex, MutexGuard};

use super::adopt_if_free;
use super::threads::{held_back, poll_alone, poll_failed, wants_tick};
use super::tick::{adopt_read, renewal_due};
use super::*;
use crate::store::restated;

/// The shared poller's own connection, outside every pool and never lent:
/// dropped after a failed tick and opened again at the next. (A pool would
/// hand a dead connection back: diesel counts a PostgreSQL connection as
/// broken only inside a failed transaction, and the handle's pools test a
/// connection at checkout only if asked.)
pub(crate) struct Reserved<B: Backend> {
    connect: Box<dyn Fn() -> Result<B::Connection> + Send>,
    conn: Option<B::Connection>,
}

impl<B: Backend> Reserved<B> {
    /// `first`, and `connect` for each one after it.
    pub(crate) fn new(
        connect: Box<dyn Fn() -> Result<B::Connection> + Send>,
        first: B::Connection,
    ) -> Self {
        Reserved {
            connect,
            conn: Some(first),
        }
    }

    /// The connection, opened again if the last one was dropped.
    fn get(&mut self) -> Result<&mut B::Connection> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => (self.connect)()?,
        };
        Ok(self.conn.insert(conn))
    }

    /// Drops the connection after a failed tick (it may be dead).
    fn discard(&mut self) {
        self.conn = None;
    }
}

/// Every shared poller of this process, by backend, URL, fleet table and
/// timing; each value an `Arc<Group<B>>`.
static GROUPS: Lazy<Mutex<HashMap<String, Box<dyn Any + Send>>>> = Lazy::new(Default::default);

/// A shared poller: its members and its thread.
pub(crate) struct Group<B: Backend> {
    members: Mutex<Vec<Weak<Shared<B>>>>,
    thread: thread::Thread,
}

/// The key of the poller `shared` can share: the same database (URL) and
/// session settings, tables and lock (prefix), poll interval and lease.
fn key<B: Backend>(shared: &Shared<B>, url: &str, statement_cache: bool) -> String {
    format!(
        "{}\u{0}{url}\u{0}{statement_cache}\u{0}{}\u{0}{}\u{0}{:?}\u{0}{:?}",
        B::NAME,
        shared.store.channel(),
        shared.lock_key,
        shared.poll_interval,
        shared.lease
    )
}

/// Makes `shared` a member of this process's shared poller for its
/// database, starting one (with `reserved`, its connection) if there is
/// none. Returns the poller's thread, to unpark for a notice.
pub(crate) fn join<B: Backend>(
    shared: &Arc<Shared<B>>,
    url: &str,
    statement_cache: bool,
    reserved: impl FnOnce() -> Result<Reserved<B>>,
) -> Result<thread::Thread> {
    let key = key(shared, url, statement_cache);
    if let Some(thread) = join_known(&key, shared) {
        return Ok(thread);
    }
    // Connected without the registry's lock: other handles' opens do not
    // wait behind this connect.
    let reserved = reserved()?;
    let mut groups = GROUPS.lock();
    if let Some(group) = known::<B>(&groups, &key) {
        group.members.lock().push(Arc::downgrade(shared));
        return Ok(group.thread.clone());
    }
    let poll = shared.poll_interval;
    let members = Mutex::new(vec![Arc::downgrade(shared)]);
    let thread_key = key.clone();
    let handle = thread::Builder::new()
        .name("tandem-fleet".to_owned())
        .spawn(move || run::<B>(&thread_key, reserved, poll))
        .map_err(|e| Error::Connect {
            target: shared.target.clone(),
            message: format!("cannot start the fleet poller thread: {e}"),
        })?;
    let group = Arc::new(Group {
        members,
        thread: handle.thread().clone(),
    });
    let thread = group.thread.clone();
    // Registered before the thread's first tick can look for it: it takes
    // this lock first.
    groups.insert(key, Box::new(group));
    Ok(thread)
}

/// Joins the group of `key` if there is one.
fn join_known<B: Backend>(key: &str, shared: &Arc<Shared<B>>) -> Option<thread::Thread> {
    let groups = GROUPS.lock();
    let group = known::<B>(&groups, key)?;
    group.members.lock().push(Arc::downgrade(shared));
    Some(group.thread.clone())
}

fn known<'g, B: Backend>(
    groups: &'g HashMap<String, Box<dyn Any + Send>>,
    key: &str,
) -> Option<&'g Arc<Group<B>>> {
    groups.get(key)?.downcast_ref::<Arc<Group<B>>>()
}

/// The shared poller's thread: every poll interval (or when a notice or a
/// member's leaving unparks it), one tick for its live members; it ends,
/// and leaves the registry, when it has none. A tick that panicked is
/// logged and counts as failed: the other members keep their poller.
fn run<B: Backend>(key: &str, mut reserved: Reserved<B>, poll: Duration) {
    loop {
        thread::park_timeout(poll);
        let members: Vec<Arc<Shared<B>>> = {
            let mut groups = GROUPS.lock();
            let Some(group) = known::<B>(&groups, key) else {
                return;
            };
            let mut list = group.members.lock();
            list.retain(|w| {
                w.upgrade()
                    .is_some_and(|s| !s.shutdown.load(Ordering::Acquire))
            });
            if list.is_empty() {
                drop(list);
                groups.remove(key);
                return;
            }
            list.iter().filter_map(Weak::upgrade).collect()
        };
        let ticked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tick(&mut reserved, &members);
        }));
        if ticked.is_err() {
            tracing::error!(
                instances = members.len(),
                "a fleet tick panicked; polling again"
            );
            reserved.discard();
            for m in &members {
                poll_failed(m);
            }
        }
    }
}

/// One tick of the shared poller (see the module's docs).
fn tick<B: Backend>(reserved: &mut Reserved<B>, members: &[Arc<Shared<B>>]) {
    // First: after a pause, stop trusting a stale lease before anything else.
    for m in members {
        check_lease(m);
    }
    // Every member's notice taken (no short cut): when one member wants a
    // tick, all tick, quiet or not, so that their renewals stay together
    // in one transaction (renewing early is safe; a quiet member's read
    // finds nothing new).
    let wanted = members.iter().filter(|m| wants_tick(m)).count();
    if wanted == 0 {
        return;
    }
    let mut batch: Vec<&Shared<B>> = Vec::new();
    for m in members {
        if held_back(m) {
            continue;
        }
        if m.write_stall.lock().is_some() {
            poll_alone(m);
        } else {
            batch.push(m);
        }
    }
    batch.sort_by(|a, b| a.me.id.cmp(&b.me.id));
    if let Err(e) = tick_batch(reserved, &batch) {
        tracing::warn!(error = %e, instances = batch.len(), "fleet poll failed");
        reserved.discard();
        for m in &batch {
            poll_failed(m);
        }
    }
    for m in members {
        check_lease(m);
    }
}

/// A member in a tick: its shared state and its tick lock.
type Locked<'a, B> = (&'a Shared<B>, MutexGuard<'a, i64>);

/// The batched part of a tick, for members in the order of their ids.
fn tick_batch<B: Backend>(reserved: &mut Reserved<B>, batch: &[&Shared<B>]) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    // Ours alone: this waits only for a (re)connection.
    let conn = reserved.get()?;
    let members: Vec<Locked<'_, B>> = batch
        .iter()
        // A member whose tick lock is held is ticking already (`refresh`,
        // its upgrader's own tick, leaving the fleet), and may be waiting
        // for its pool: skip it rather than wait (and hold up the others).
        .filter_map(|m| Some((*m, m.adopted_epoch.try_lock()?)))
        .filter(|(m, _)| !m.shutdown.load(Ordering::Acquire))
        .collect();
    let Some(first) = members.first().map(|(m, _)| *m) else {
        return Ok(());
    };
    let tick = coarsetime::Instant::now();
    let states = if members.iter().any(|(m, _)| renewal_due(m)) {
        renew_all(first, conn, &members, tick)?
    } else {
        // Between renewals a tick only reads: one statement, no
        // transaction, nothing written.
        let state = first.store.read_state::<B>(conn)?;
        vec![state; members.len()]
    };
    adopt_and_acknowledge(first, conn, members, states)
}

/// Every member's renewal, in one transaction under the shared schema
/// lock, with the state row read in it; a member whose row was gone
/// registers again. Returns the state each member is to adopt.
fn renew_all<B: Backend>(
    first: &Shared<B>,
    conn: &mut B::Connection,
    members: &[Locked<'_, B>],
    tick: coarsetime::Instant,
) -> Result<Vec<State>> {
    let (state, renewed) = first.write_transaction(conn, |c| -> Result<_> {
        first.enter_shared(c)?;
        let state = first.store.read_state::<B>(c)?;
        let ids: Vec<(&str, Option<i64>)> = members
            .iter()
            .map(|(m, adopted)| (m.me.id.as_str(), restated(**adopted, &state)))
            .collect();
        let renewed: HashSet<String> = first
            .store
            .renew_many::<B>(c, &ids, millis(first.lease))?
            .into_iter()
            .collect();
        // Before the renewals commit.
        for (m, adopted) in members {
            close_if_unadopted(m, &state, **adopted);
        }
        Ok((state, renewed))
    })?;
    let mut states = Vec::with_capacity(members.len());
    for (m, adopted) in members {
        if renewed.contains(&m.me.id) {
            if let Some(epoch) = restated(**adopted, &state) {
                m.acknowledged.store(epoch, Ordering::Release);
            }
            states.push(state.clone());
        } else {
            // As a handle's own renewal (`poll_via`): join again,
            // acknowledging nothing yet, adopting the state read then.
            tracing::warn!(instance = %m.me.id, "fleet row was gone (lease expired); registering again");
            states.push(register(m, conn, false)?);
        }
        set_lease_deadline(m, tick);
    }
    Ok(states)
}

/// Each member's adoption of its state, then the acknowledgement of the
/// epochs adopted: the members whose adoption must wait for steady calls
/// in flight (a new epoch, or a path or version that is not the state's,
/// as after a stale lease, and a call on the steady path now) adopt at the
/// same time, each on a thread of its own, the others here;
/// the acknowledgements go out, one statement for all, as adoptions end
/// (those that ended together in one), and each member's tick lock is let
/// go once its acknowledgement is written: one member's long drain holds
/// up no other's acknowledgement, nor anyone waiting for another's lock.
/// (The next tick waits for it, as a handle's own poller waits for its
/// drain.)
fn adopt_and_acknowledge<B: Backend>(
    first: &Shared<B>,
    conn: &mut B::Connection,
    members: Vec<Locked<'_, B>>,
    states: Vec<State>,
) -> Result<()> {
    let shareds: Vec<&Shared<B>> = members.iter().map(|(m, _)| *m).collect();
    let last: Vec<i64> = members.iter().map(|(_, adopted)| **adopted).collect();
    let mut guards: Vec<Option<MutexGuard<'_, i64>>> =
        members.into_iter().map(|(_, g)| Some(g)).collect();
    let (sender, ended) = mpsc::channel::<(usize, Result<State>)>();
    thread::scope(|scope| -> Result<()> {
        let mut done = Vec::new();
        let mut running = Vec::new();
        for (i, (m, state)) in shareds.iter().copied().zip(states).enumerate() {
            let adopted = last.get(i).copied().unwrap_or(i64::MIN);
            // Most members have nothing to drain, or no steady call in
            // flight at this moment: adopted here at once, without a
            // thread. (Not a row whose epoch went backwards: that re-read
            // drains whatever is in flight.)
            let newest = adopted.max(*m.cached_epoch.lock());
            if state.epoch >= newest {
                if let Some(adopted) = adopt_if_free(m, &state) {
                    done.push((i, adopted.map(|()| state)));
                    continue;
                }
            }
            let sender = sender.clone();
            let adopt = move || {
                // (`Via::Poller`: a re-read after the epoch went backwards
                // waits at most a poll interval for the member's pool.)
                let adopted = adopt_read(m, adopted, state, &mut Via::Poller);
                // (The receiver outlives every sender in this scope.)
                let _ = sender.send((i, adopted));
            };
            match thread::Builder::new()
                .name("tandem-adopt".to_owned())
                .spawn_scoped(scope, adopt)
            {
                Ok(thread) => running.push(thread),
                Err(e) => done.push((
                    i,
                    Err(Error::Connect {
                        target: m.target.clone(),
                        message: format!("cannot start a thread to adopt the state row: {e}"),
                    }),
                )),
            }
        }
        drop(sender);
        let mut pending = running.len();
        loop {
            acknowledge_adopted(first, conn, &shareds, &mut guards, &mut done)?;
            if pending == 0 {
                break;
            }
            // The next adoption to end, and every other that ended meanwhile.
            let Ok(next) = ended.recv() else {
                break; // a thread ended without sending: it panicked
            };
            done.push(next);
            done.extend(ended.try_iter());
            pending = pending.saturating_sub(done.len());
        }
        for thread in running {
            if thread.join().is_err() {
                // Its member's tick lock goes with the others' below, its
                // epoch not recorded: it adopts again next tick.
                tracing::error!("a member's adoption panicked; it polls again");
            }
        }
        Ok(())
    })
}

/// For the members in `done` (index, state adopted): records the epoch
/// adopted under each one's tick lock, writes one acknowledgement
/// statement per epoch for those that have not acknowledged it, and lets
/// their tick locks go. A member whose adoption failed is logged and polls
/// again next tick.
fn acknowledge_adopted<B: Backend>(
    first: &Shared<B>,
    conn: &mut B::Connection,
    members: &[&Shared<B>],
    guards: &mut [Option<MutexGuard<'_, i64>>],
    done: &mut Vec<(usize, Result<State>)>,
) -> Result<()> {
    let mut acks: HashMap<i64, Vec<usize>> = HashMap::new();
    let mut finished = Vec::with_capacity(done.len());
    for (i, adopted) in done.drain(..) {
        let (Some(m), Some(Some(guard))) = (members.get(i).copied(), guards.get_mut(i)) else {
            continue;
        };
        finished.push(i);
        match adopted {
            Ok(state) => {
                set_adopted(m, guard, state.epoch);
                if m.acknowledged.load(Ordering::Acquire) != state.epoch {
                    acks.entry(state.epoch).or_default().push(i);
                }
            }
            Err(e) => {
                tracing::warn!(instance = %m.me.id, error = %e, "fleet poll failed");
                poll_failed(m);
            }
        }
    }
    for (epoch, acked) in acks {
        let ids: Vec<&str> = acked
            .iter()
            .filter_map(|&i| members.get(i))
            .map(|m| m.me.id.as_str())
            .collect();
        // One statement: on PostgreSQL no transaction block around it.
        first.write_statement(conn, |c| first.store.acknowledge_many::<B>(c, &ids, epoch))?;
        for m in acked.iter().filter_map(|&i| members.get(i)) {
            m.acknowledged.store(epoch, Ordering::Release);
        }
    }
    for i in finished {
        if let Some(guard) = guards.get_mut(i) {
            guard.take();
        }
    }
    Ok(())
}
