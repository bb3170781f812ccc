//! What the fleet's two-version check reports (see `fleet::check_two_versions`):
//! part of the shared state, which records the last one.

use crate::version::Version;

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
