//! Schema versions and upgrade phases.

use std::fmt;
use std::num::NonZeroU32;

/// A schema version: a positive integer, the number in `schema_versions/NNNN_name/`.
///
/// Version 1 is the initial schema. Versions only move forward on the data
/// tier; a binary serves a contiguous range of them (usually N-1 and N).
///
/// ```
/// use tandem_catalog::Version;
/// let v = Version::new(2).ok_or("zero is not a version")?;
/// assert_eq!(v.get(), 2);
/// assert_eq!(v.previous(), Version::new(1));
/// assert_eq!(Version::new(0), None);
/// # Ok::<(), &'static str>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(NonZeroU32);

impl Version {
    /// The first version, the initial schema.
    pub const FIRST: Version = Version(NonZeroU32::MIN);

    /// The version `n`, or `None` for 0 (versions start at 1).
    pub const fn new(n: u32) -> Option<Version> {
        match NonZeroU32::new(n) {
            Some(v) => Some(Version(v)),
            None => None,
        }
    }

    /// The version as a plain number.
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// The version before this one, or `None` for version 1.
    pub const fn previous(self) -> Option<Version> {
        Version::new(self.0.get() - 1)
    }

    /// The version after this one, or `None` at `u32::MAX`.
    pub fn next(self) -> Option<Version> {
        self.0.checked_add(1).map(Version)
    }

    /// Reads a version stored as a database integer; `None` if it is not a
    /// positive 32-bit number (a corrupted metadata row).
    pub fn from_i64(n: i64) -> Option<Version> {
        u32::try_from(n).ok().and_then(Version::new)
    }

    /// The version as a database integer.
    pub fn as_i64(self) -> i64 {
        i64::from(self.get())
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One phase of an upgrade to a version, as journaled in the history table.
///
/// ## Phases
///
/// * [`Expand`](Phase::Expand): additive SQL (`expand.sql`) and Rust steps
///   such as a batched backfill. Code for the previous version keeps working.
/// * [`Switch`](Phase::Switch): a few fast statements (`switch.sql`) and the
///   version bump, in one transaction under the schema writer lock.
/// * [`SwitchBack`](Phase::SwitchBack): the reverse of the switch
///   (`switch_back.sql`), allowed until contract.
/// * [`Contract`](Phase::Contract): removes the old structures
///   (`contract.sql`) once nothing can use the previous version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Additive changes; the previous version's code keeps working.
    Expand,
    /// The atomic version bump, under the schema writer lock.
    Switch,
    /// The reverse of [`Phase::Switch`], possible until contract.
    SwitchBack,
    /// Removal of the old structures.
    Contract,
}

impl Phase {
    /// Every phase, in catalog file order.
    pub const ALL: [Phase; 4] = [
        Phase::Expand,
        Phase::Switch,
        Phase::SwitchBack,
        Phase::Contract,
    ];

    /// The name used in file names (`switch_back.sql`) and in the history table.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Expand => "expand",
            Phase::Switch => "switch",
            Phase::SwitchBack => "switch_back",
            Phase::Contract => "contract",
        }
    }

    /// The phase named `s` (`"expand"`, `"switch"`, `"switch_back"`,
    /// `"contract"`), as the history table stores it.
    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_positive_and_ordered() {
        assert!(Version::new(0).is_none());
        let one = Version::FIRST;
        let two = one.next().unwrap();
        assert!(one < two);
        assert_eq!(two.previous(), Some(one));
        assert_eq!(one.previous(), None);
        assert_eq!(Version::from_i64(-1), None);
        assert_eq!(Version::from_i64(i64::from(u32::MAX) + 1), None);
        assert_eq!(Version::from_i64(7).map(Version::get), Some(7));
    }

    #[test]
    fn phase_names_round_trip() {
        for p in Phase::ALL {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
        }
        assert_eq!(Phase::parse("explode"), None);
    }
}
