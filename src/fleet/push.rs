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
//! at most a renewal interval. A session that broke (the server
//! restarted) is seen at once: the handles poll every interval again
//! until it is back. Behind a pooler no session is kept (below).
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
    let mut hearers = HEARERS.lock();
    let hearer = match hearers.get(&key) {
        Some(Hearing::Heard(hearer)) => Arc::clone(hearer),
        Some(Hearing::Unheard) => return None,
        None => {
            let listener = match B::listen(url, &channel) {
                Ok(listener) => listener?,
                Err(e) => {
                    tracing::warn!(database = %shared.target, error = %shared.secrets.redact(&e.to_string()),
                        "cannot listen for state changes; polling only");
                    return None;
                }
            };
            let Some(listener) = probe(shared, &channel, listener) else {
                tracing::info!(database = %shared.target, channel = %channel,
                    "a probe notice sent from a pooled connection did not arrive within {PROBE_WAIT:?} \
                     (a transaction-mode pooler between?): polling only; set `push(false)` to skip the probe");
                hearers.insert(key, Hearing::Unheard);
                return None;
            };
            let hearer = Arc::new(Hearer::default());
            hearer.listening.store(true, Ordering::Release);
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
            hearer
        }
    };
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let noticed = Arc::new(AtomicBool::new(false));
    hearer.pollers.lock().push(Poller {
        id,
        thread: poller,
        noticed: Arc::clone(&noticed),
    });
    Some(Subscription {
        hearer,
        id,
        noticed,
    })
}

/// Sends a notice from a pooled connection (another session) and waits up
/// to [`PROBE_WAIT`] for `listener` to hear it.
fn probe<B: Backend>(
    shared: &Shared<B>,
    channel: &str,
    mut listener: B::Listener,
) -> Option<B::Listener> {
    let sql = B::notify_sql()?;
    let mut conn = shared.pool.get_timeout(PROBE_WAIT).ok()?;
    B::execute(&mut conn, sql, &[Bind::Text(channel), Bind::Text("probe")]).ok()?;
    drop(conn);
    let deadline = Instant::now() + PROBE_WAIT;
    loop {
        match listener.heard() {
            Ok(true) => return Some(listener),
            Ok(false) if Instant::now() < deadline => thread::sleep(Duration::from_millis(1)),
            _ => return None,
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
    mut listener: B::Listener,
    key: String,
    url: String,
    channel: String,
    secrets: crate::redact::Secrets,
    target: String,
) -> std::io::Result<()> {
    let hearer = Arc::clone(hearer);
    thread::Builder::new()
        .name("tandem-hearer".to_owned())
        .spawn(move || loop {
            thread::sleep(HEAR_EVERY);
            if gone(&hearer, &key) {
                return;
            }
            match listener.heard() {
                Ok(false) => {}
                Ok(true) => wake(&hearer),
                Err(e) => {
                    hearer.listening.store(false, Ordering::Release);
                    tracing::warn!(database = %target, error = %secrets.redact(&e.to_string()),
                        "the session listening for state changes failed; polling until it is back");
                    let mut backoff =
                        Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
                    listener = loop {
                        backoff.wait();
                        if gone(&hearer, &key) {
                            return;
                        }
                        if let Ok(Some(again)) = B::listen(&url, &channel) {
                            break again;
                        }
                    };
                    hearer.listening.store(true, Ordering::Release);
                    wake(&hearer);
                }
            }
        })?;
    Ok(())
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
