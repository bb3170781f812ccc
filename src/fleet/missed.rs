//! The run-time check of the two-version rule.

use super::*;
use crate::shared::MissedSwitch;

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
