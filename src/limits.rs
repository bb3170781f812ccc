//! The bounds of every duration setting, and the millisecond conversion the
//! metadata tables use. The bottom layer: imports nothing of tandem's but
//! the error type.

use std::time::Duration;

use crate::error::{Error, Result};

/// The cap of every wait a setting can ask for: `Duration::MAX` means "as
/// long as it takes", and 100 years is that long without overflowing an
/// `Instant`.
pub(crate) const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The largest `poll_interval`, `connection_timeout` and `lock_timeout`, and
/// the largest `WriterPolicy` durations: an hour.
pub(crate) const MAX_SETTING: Duration = Duration::from_secs(3600);

/// The longest fleet lease: two of the longest poll intervals. It also
/// bounds how long a fleet row whose instance is gone can hold a switch
/// back: a row claiming a longer lease is read as this long.
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(2 * 3600);

/// How long past its lease (and its grace) a fleet row still gets notice
/// from a switch, and how far past its last renewal an instance's
/// confirmation reads may keep it on the steady path: long writes up to
/// about this long do not stall its calls (see [`crate::protocol`], 12).
pub(crate) const RENEWAL_GRACE: Duration = Duration::from_secs(30);

/// Refuses a duration setting above [`MAX_SETTING`].
pub(crate) fn bounded(
    setting: &'static str,
    value: Duration,
    why: &'static str,
) -> Result<Duration> {
    bounded_by(setting, value, MAX_SETTING, why)
}

/// Refuses a duration setting above `max`.
pub(crate) fn bounded_by(
    setting: &'static str,
    value: Duration,
    max: Duration,
    why: &'static str,
) -> Result<Duration> {
    if value > max {
        return Err(Error::InvalidSetting {
            setting,
            value,
            max,
            why,
        });
    }
    Ok(value)
}

/// A duration in whole milliseconds for the metadata tables, saturating far
/// below `i64::MAX` so that sums of two stay in range.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}
