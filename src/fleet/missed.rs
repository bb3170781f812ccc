//! The run-time check of the two-version rule.

use super::*;

/// The run-time check of the two-version rule (CockroachDB's assertion;
/// invariant 2 of [`crate::protocol`]): a state row more than one version
/// away from the version this instance has been serving means it missed a
/// whole switch (a freeze longer than the lease, a restore). Whatever made
/// that possible, the cached version is not served a moment longer: calls
/// leave the steady path at once (before the drain that adoption does
/// next), and the instance reports it, naming both versions
/// ([`MissedSwitch`], `Tandem::missed_switch`, and an error in the log).
pub(super) fn check_two_versions<B: Backend>(shared: &Shared<B>, state: &State) {
    let served = shared.live_version();
    if state.version.get().abs_diff(served.get()) <= 1 {
        return;
    }
    // As the lease watchdog does: the poller drains before it acknowledges.
    let steady = shared.path.replace(CallPath::Steady, CallPath::Undrained);
    let missed = MissedSwitch {
        served,
        found: state.version,
        epoch: state.epoch,
        steady,
    };
    let mut last = shared.missed_switch.lock();
    // Once per state row (a drain that times out retries every tick).
    if last.is_some_and(|l| (l.served, l.found, l.epoch) == (served, state.version, state.epoch)) {
        return;
    }
    if steady {
        tracing::error!(instance = %shared.me.id, served = %served, found = %state.version, epoch = state.epoch, "{missed}");
    } else {
        tracing::warn!(instance = %shared.me.id, served = %served, found = %state.version, epoch = state.epoch, "{missed}");
    }
    *last = Some(missed);
}

/// What the two-version check found: this instance served `served` while
/// the state row says `found`, more than one version away. The instance
/// took the locking path at once (each call then reads the live version
/// under the database's shared lock) and adopted `found`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MissedSwitch {
    /// The version this instance had been serving.
    pub served: Version,
    /// The live version the state row showed.
    pub found: Version,
    /// That state row's epoch.
    pub epoch: i64,
    /// Whether calls were still on the steady path when it was noticed
    /// (the lease should have kept them off it: a protocol breach), or
    /// already on the locking path (the lease did its job: a long freeze or
    /// partition, noticed as the instance came back).
    pub steady: bool,
}

impl std::fmt::Display for MissedSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this instance served version {} but the database is at version {} (epoch {}): it missed \
             a whole switch (frozen or cut off longer than its lease, or the state row was restored); ",
            self.served, self.found, self.epoch
        )?;
        if self.steady {
            write!(
                f,
                "its calls were still on the steady path and left it at once, and now run on version {}; \
                 find out why its lease did not keep it off the steady path",
                self.found
            )
        } else {
            write!(
                f,
                "its calls were already on the locking path (its lease had gone stale) and now run on \
                 version {}",
                self.found
            )
        }
    }
}
