//! Push: the state row's change notices wake the pollers at once.
//!
//! Each switch step that changes the state row (`Store::set_mode`,
//! `Store::transition`) also sends a notice in its transaction
//! (PostgreSQL `pg_notify`, delivered at commit). One *hearer* per process
//! and database holds a session of its own, outside every pool, that ran
//! `LISTEN`; every [`HEAR_EVERY`] it reads what its socket already holds
//! (no round trip, nothing sent to the server) and unparks the poller of
//! every handle subscribed, which then ticks at once instead of at its
//! next poll. So a fleet acknowledges deploying mode within a round trip
//! plus its drain, whatever the poll interval.
//!
//! Notices are only a hint: a tick reads the state row as it always does,
//! and the protocol never waits for one. While its session listens, a
//! handle on the steady path skips the read-only ticks between renewals
//! (a notice wakes it instead); every renewal, about every quarter lease,
//! still reads the state row and adopts it, so a notice lost on a session
//! that looks alive (a half-open connection) delays an acknowledgement by
//! at most a renewal interval; the session asks libpq for TCP keepalives,
//! so a peer gone silently fails it within about 11 s. A session that broke
//! (the server restarted) is seen at once: the handles poll every interval
//! again until it is back. Behind a pooler no session is kept (below).
//!
//! Behind a transaction-mode pooler (PgBouncer's `pool_mode =
//! transaction`) `LISTEN` is lost with the server connection it ran on. So
//! a hearer is kept only if it hears a probe notice sent from another
//! session (a pooled connection) within [`PROBE_WAIT`]; otherwise the
//! process polls only, and says so once. The outcome is remembered for the
//! process's life, per database and prefix. `Builder::push(false)` skips
//! all of it.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

use once_cell::sync::Lazy;
use parking_lot::Mutex;

use super::*;
use crate::backend::{Bind, Listener};
use crate::backoff::Backoff;

/// How often a hearer reads its socket: the most a notice waits in it.
pub(crate) const HEAR_EVERY: Duration = Duration::from_millis(5);

/// How long a new hearer waits for its probe notice before the process
/// falls back to polling.
pub(crate) const PROBE_WAIT: Duration = Duration::from_secs(1);

/// Every hearer of this process, by backend, target and channel.
static HEARERS: Lazy<Mutex<HashMap<String, Hearing>>> = Lazy::new(Default::default);

/// Per key of [`HEARERS`]: held by the handle that opens and probes the
/// session for it, so that a second handle of that database waits for the
/// outcome instead of opening another (one small entry per database the
/// process ever listened to).
static STARTING: Lazy<Mutex<HashMap<String, Arc<Mutex<()>>>>> = Lazy::new(Default::default);

/// What the process knows of one database's notices.
#[derive(Clone)]
enum Hearing {
    /// A hearer thread listens, for these subscribers.
    Heard(Arc<Hearer>),
    /// The probe notice never arrived (a pooler between): poll only.
    Unheard,
}

/// The subscribers of one hearer: the pollers to unpark.
#[derive(Default)]
pub(crate) struct Hearer {
    pollers: Mutex<Vec<Poller>>,
    /// Whether its session is listening now (not reconnecting).
    listening: AtomicBool,
}

/// A subscribed poller: its thread, and whether a notice came since its
/// last tick.
struct Poller {
    id: u64,
    thread: thread::Thread,
    noticed: Arc<AtomicBool>,
}

/// One handle's subscription; dropping it unsubscribes.
pub(crate) struct Subscription {
    hearer: Arc<Hearer>,
    id: u64,
    noticed: Arc<AtomicBool>,
}

impl Subscription {
    /// Whether the hearer's session is listening now.
    pub(crate) fn listening(&self) -> bool {
        self.hearer.listening.load(Ordering::Acquire)
    }

    /// Whether a notice came since the last call (or the session was
    /// opened again, when one may have been lost).
    pub(crate) fn take_notice(&self) -> bool {
        self.noticed.swap(false, Ordering::AcqRel)
    }

    /// Makes the next tick run as if a notice came: after a failed tick,
    /// whatever the notice it consumed was for is still to be read.
    pub(crate) fn notice_again(&self) {
        self.noticed.store(true, Ordering::Release);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hearer.pollers.lock().retain(|p| p.id != self.id);
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Subscribes `poller` (this handle's poller thread) to the notices of its
/// database, starting this process's hearer for it if there is none.
/// `None`: this backend has no notices, or they do not arrive here (the
/// handle polls, as it would anyway). Never fails the open: a hearer that
/// cannot start is logged and left to the poll.
pub(crate) fn subscribe<B: Backend>(
    shared: &Shared<B>,
    url: &str,
    poller: thread::Thread,
) -> Option<Subscription> {
    B::notify_sql()?;
    let channel = shared.store.channel().to_owned();
    let key = format!("{}\u{0}{url}\u{0}{channel}", B::NAME);
    if let Some(known) = join_known(&key, &poller) {
        return known;
    }
    // The first handle of this database in the process: it opens the
    // session and probes it, alone for this key (a second one waits here
    // and then joins what the first found), and without the registry's
    // lock, so that opens of other databases do not wait behind this one's
    // connect and probe (up to a second behind a pooler).
    let starting = Arc::clone(STARTING.lock().entry(key.clone()).or_default());
    let _alone = starting.lock();
    if let Some(known) = join_known(&key, &poller) {
        return known;
    }
    let listener = match B::listen(url, &channel) {
        Ok(listener) => listener?,
        Err(e) => {
            tracing::warn!(database = %shared.target, error = %shared.secrets.redact(&e.to_string()),
                "cannot listen for state changes; polling only");
            return None;
        }
    };
    let listener = match probe(shared, &channel, listener) {
        Probe::Heard(listener) => listener,
        Probe::Unheard => {
            tracing::info!(database = %shared.target, channel = %channel,
                "a probe notice sent from a pooled connection did not arrive within {PROBE_WAIT:?} \
                 (a transaction-mode pooler between?): polling only; set `push(false)` to skip the probe");
            HEARERS.lock().insert(key, Hearing::Unheard);
            return None;
        }
        Probe::Failed(e) => {
            // Not remembered: the next handle opened tries again.
            tracing::warn!(database = %shared.target, error = %shared.secrets.redact(&e),
                "could not probe the notices of this database; this handle polls only");
            return None;
        }
    };
    let hearer = Arc::new(Hearer::default());
    hearer.listening.store(true, Ordering::Release);
    // Started, registered and subscribed to under the registry's lock: the
    // thread's first check for subscribers (`gone`) waits for it, so it
    // never ends before its first subscriber is in.
    let mut hearers = HEARERS.lock();
    if let Err(e) = spawn_hearer::<B>(
        &hearer,
        listener,
        key.clone(),
        url.to_owned(),
        channel.clone(),
        shared.secrets.clone(),
        shared.target.clone(),
    ) {
        tracing::warn!(database = %shared.target, error = %e, "cannot start the hearer; polling only");
        return None;
    }
    hearers.insert(key, Hearing::Heard(Arc::clone(&hearer)));
    Some(join(hearer, poller))
}

/// Under the registry's lock: `Some` when the process already knows this
/// database's notices (subscribed to its hearer, or `None` inside: they do
/// not arrive here); `None` when no hearer runs for it.
fn join_known(key: &str, poller: &thread::Thread) -> Option<Option<Subscription>> {
    let hearers = HEARERS.lock();
    match hearers.get(key)? {
        Hearing::Heard(hearer) => Some(Some(join(Arc::clone(hearer), poller.clone()))),
        Hearing::Unheard => Some(None),
    }
}

/// Adds `poller` to `hearer`'s subscribers (the caller holds the
/// registry's lock, so the hearer cannot end meanwhile).
fn join(hearer: Arc<Hearer>, poller: thread::Thread) -> Subscription {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    // Noticed from the start: a change committed after the open's last
    // read and before this subscription sent its notice to no one here
    // (or the probe ate it), so the first tick reads whatever it is.
    let noticed = Arc::new(AtomicBool::new(true));
    hearer.pollers.lock().push(Poller {
        id,
        thread: poller,
        noticed: Arc::clone(&noticed),
    });
    Subscription {
        hearer,
        id,
        noticed,
    }
}

/// What a probe found.
enum Probe<L> {
    /// The notice arrived: keep this session.
    Heard(L),
    /// It was sent and did not arrive in time: notices do not reach this
    /// process (remembered).
    Unheard,
    /// It could not be sent or the session failed meanwhile (a busy pool,
    /// a database error): nothing learnt (not remembered).
    Failed(String),
}

/// Sends a notice from a pooled connection (another session) and waits up
/// to [`PROBE_WAIT`] for `listener` to hear it.
fn probe<B: Backend>(
    shared: &Shared<B>,
    channel: &str,
    mut listener: B::Listener,
) -> Probe<B::Listener> {
    let Some(sql) = B::notify_sql() else {
        return Probe::Unheard;
    };
    let sent = shared
        .pool
        .get_timeout(PROBE_WAIT)
        .map_err(|e| e.to_string())
        .and_then(|mut conn| {
            B::execute(&mut conn, sql, &[Bind::Text(channel), Bind::Text("probe")])
                .map_err(|e| e.to_string())
        });
    if let Err(e) = sent {
        return Probe::Failed(e);
    }
    let deadline = Instant::now() + PROBE_WAIT;
    loop {
        match listener.heard() {
            Ok(true) => return Probe::Heard(listener),
            Ok(false) if Instant::now() < deadline => thread::sleep(Duration::from_millis(1)),
            Ok(false) => return Probe::Unheard,
            Err(e) => return Probe::Failed(e.to_string()),
        }
    }
}

/// Starts the hearer thread: it reads `listener` every [`HEAR_EVERY`] and
/// unparks every subscriber when it heard anything; it opens another
/// session when this one fails (unparking every subscriber once it
/// listens again: a notice may have been lost), and ends, with its
/// session, when the last subscriber is gone.
fn spawn_hearer<B: Backend>(
    hearer: &Arc<Hearer>,
    listener: B::Listener,
    key: String,
    url: String,
    channel: String,
    secrets: crate::redact::Secrets,
    target: String,
) -> std::io::Result<()> {
    let hearer = Arc::clone(hearer);
    thread::Builder::new()
        .name("tandem-hearer".to_owned())
        .spawn(move || {
            let _ending = Ending {
                hearer: Arc::clone(&hearer),
                key: key.clone(),
            };
            hearer_loop::<B>(&hearer, listener, &key, &url, &channel, &secrets, &target);
        })?;
    Ok(())
}

/// Ends a hearer however its thread ends (a panic in a log subscriber
/// included): its handles stop trusting it and poll every interval, and the
/// registry forgets it, so that the next handle opened starts another.
struct Ending {
    hearer: Arc<Hearer>,
    key: String,
}

impl Drop for Ending {
    fn drop(&mut self) {
        self.hearer.listening.store(false, Ordering::Release);
        let mut hearers = HEARERS.lock();
        if matches!(hearers.get(&self.key), Some(Hearing::Heard(h)) if Arc::ptr_eq(h, &self.hearer))
        {
            hearers.remove(&self.key);
        }
    }
}

/// The hearer thread's work (see [`spawn_hearer`]); returns when the last
/// subscriber is gone.
fn hearer_loop<B: Backend>(
    hearer: &Arc<Hearer>,
    mut listener: B::Listener,
    key: &str,
    url: &str,
    channel: &str,
    secrets: &crate::redact::Secrets,
    target: &str,
) {
    loop {
        thread::sleep(HEAR_EVERY);
        if gone(hearer, key) {
            return;
        }
        match listener.heard() {
            Ok(false) => {}
            Ok(true) => wake(hearer),
            Err(e) => {
                hearer.listening.store(false, Ordering::Release);
                tracing::warn!(database = %target, error = %secrets.redact(&e.to_string()),
                        "the session listening for state changes failed; polling until it is back");
                let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
                let mut tries = 0u32;
                listener = loop {
                    backoff.wait();
                    if gone(hearer, key) {
                        return;
                    }
                    match B::listen(url, channel) {
                        Ok(Some(again)) => break again,
                        Ok(None) => {}
                        // Said on the first failure and then every
                        // hundredth (about every 8 minutes at the 5 s
                        // backoff cap): a lasting refusal (a rotated
                        // password, pg_hba) is not silent.
                        Err(e) => {
                            if tries % 100 == 0 {
                                tracing::warn!(database = %target, error = %secrets.redact(&e.to_string()),
                                        tries = tries.saturating_add(1),
                                        "cannot listen for state changes again yet; polling meanwhile");
                            }
                            tries = tries.saturating_add(1);
                        }
                    }
                };
                tracing::info!(database = %target, "listening for state changes again");
                hearer.listening.store(true, Ordering::Release);
                wake(hearer);
            }
        }
    }
}

/// Unparks every subscriber's poller.
fn wake(hearer: &Hearer) {
    for poller in hearer.pollers.lock().iter() {
        poller.noticed.store(true, Ordering::Release);
        poller.thread.unpark();
    }
}

/// Whether the hearer has no subscriber left; if so it is removed from the
/// registry (under its lock, so that no subscriber joins it meanwhile).
fn gone(hearer: &Arc<Hearer>, key: &str) -> bool {
    if !hearer.pollers.lock().is_empty() {
        return false;
    }
    let mut hearers = HEARERS.lock();
    if !hearer.pollers.lock().is_empty() {
        return false;
    }
    if matches!(hearers.get(key), Some(Hearing::Heard(h)) if Arc::ptr_eq(h, hearer)) {
        hearers.remove(key);
    }
    true
}
