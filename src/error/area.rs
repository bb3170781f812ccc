//! Errors by area: which part of a deployment each one is about, and
//! whether the same call or command can simply be tried again.

use super::Error;

/// The area an [`Error`] belongs to: what a handler of it looks at first.
/// An HTTP facade maps [`Serving`](Area::Serving) to 503 and the rest to
/// 500; an operator tool maps each area to an exit code.
///
/// ```
/// use tandem::{Area, Error, Version};
/// let e = Error::Upgrading { live: Version::FIRST, first: Version::new(2).unwrap(), last: Version::new(2).unwrap() };
/// assert_eq!(e.area(), Area::Serving);
/// assert!(!e.is_retryable());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Area {
    /// The application's own setup, refused before the database is
    /// touched: settings, the prefix, bindings, the served range, backfills.
    Configuration,
    /// The `schema_versions/` catalog: unreadable, invalid, or drifted from
    /// what the database applied.
    Catalog,
    /// A call that this binary cannot run against the live version (behind
    /// or ahead of it, or no binding): nothing ran.
    Serving,
    /// tandem's own tables: missing on an existing schema, damaged, a
    /// baseline that contradicts them, a prefix that names other tables.
    Metadata,
    /// An upgrade command refused (out of order, not roll-forward) or
    /// failed (its SQL, a step, the lease, the lock); the state row says
    /// where the database stands.
    Upgrade,
    /// The other instances: one lacks a version, runs another catalog, or
    /// did not acknowledge in time.
    Fleet,
    /// Reaching the database: connecting, the pool, a statement.
    Database,
}

impl Error {
    /// The area this error belongs to.
    pub fn area(&self) -> Area {
        match self {
            Error::InvalidPrefix { .. }
            | Error::InvalidVersion { .. }
            | Error::InvalidSetting { .. }
            | Error::BindingGap { .. }
            | Error::DuplicateBinding { .. }
            | Error::NoBindings { .. }
            | Error::ServedBeyondCatalog { .. }
            | Error::EmptyServedRange { .. }
            | Error::BackfillBeyondCatalog { .. }
            | Error::BadBackfill { .. }
            | Error::BackendNotSupported { .. } => Area::Configuration,
            Error::Catalog(_) | Error::ChecksumDrift { .. } => Area::Catalog,
            Error::Upgrading { .. } | Error::VersionNotServed { .. } | Error::NoBinding { .. } => {
                Area::Serving
            }
            Error::NotAdopted { .. }
            | Error::BaselineMismatch { .. }
            | Error::PrefixTaken { .. }
            | Error::MetadataCorrupt { .. } => Area::Metadata,
            Error::UnknownVersion { .. }
            | Error::PhaseOutOfOrder { .. }
            | Error::NotRollForward { .. }
            | Error::NoSwitchBack { .. }
            | Error::UpgraderBusy { .. }
            | Error::LockTimeout { .. }
            | Error::BackfillUnsettled { .. } => Area::Upgrade,
            #[cfg(any(feature = "sqlite", feature = "postgres"))]
            Error::PhaseFailed { .. } | Error::PhaseContended { .. } | Error::StepFailed { .. } => {
                Area::Upgrade
            }
            #[cfg(feature = "testing")]
            Error::InjectedCrash { .. } => Area::Upgrade,
            Error::UnknownInstance { .. }
            | Error::SwitchRefused { .. }
            | Error::CatalogDisagrees { .. }
            | Error::FleetNotAcknowledged { .. } => Area::Fleet,
            #[cfg(any(feature = "sqlite", feature = "postgres"))]
            Error::Query(_) => Area::Database,
            Error::Pool { .. } | Error::Connect { .. } => Area::Database,
        }
    }

    /// Whether the same call or command, unchanged, can succeed later
    /// without anyone fixing anything: another upgrader holds the lease
    /// ([`UpgraderBusy`](Error::UpgraderBusy)), the schema lock or the
    /// fleet did not come in time ([`LockTimeout`](Error::LockTimeout),
    /// [`PhaseContended`](Error::PhaseContended),
    /// [`FleetNotAcknowledged`](Error::FleetNotAcknowledged)), or no pooled
    /// connection was free ([`Pool`](Error::Pool)), or a statement met a
    /// passing lock conflict ([`Query`](Error::Query) with SQLite's
    /// "database is locked", a PostgreSQL lock timeout, deadlock or
    /// serialization failure: its transaction rolled back). Each of these
    /// left the database as it was. Everything else needs a change first (a
    /// deployment, an upgrade, a fix), which its message names; the
    /// [`Serving`](Area::Serving) errors need an upgrade or another instance.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::UpgraderBusy { .. }
                | Error::LockTimeout { .. }
                | Error::FleetNotAcknowledged { .. }
                | Error::Pool { .. }
        ) || self.contended()
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    fn contended(&self) -> bool {
        match self {
            Error::PhaseContended { .. } => true,
            Error::Query(e) => crate::backend::is_any_lock_conflict(e),
            _ => false,
        }
    }

    #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
    fn contended(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::version::{Phase, Version};

    #[test]
    fn each_area_and_what_can_be_retried_as_it_is() {
        let v = |n| Version::new(n).unwrap();
        let cases = [
            (
                Error::InvalidSetting {
                    setting: "lease",
                    value: Duration::MAX,
                    max: Duration::ZERO,
                    why: "x",
                },
                Area::Configuration,
                false,
            ),
            (
                Error::ChecksumDrift {
                    version: v(2),
                    phase: Phase::Expand,
                    recorded: "a".to_owned(),
                    current: "b".to_owned(),
                },
                Area::Catalog,
                false,
            ),
            (
                Error::Upgrading {
                    live: v(1),
                    first: v(2),
                    last: v(2),
                },
                Area::Serving,
                false,
            ),
            (
                Error::MetadataCorrupt {
                    table: "t".to_owned(),
                    detail: "d".to_owned(),
                },
                Area::Metadata,
                false,
            ),
            (
                Error::UpgraderBusy {
                    holder: "h".to_owned(),
                    expires_in_ms: 5,
                },
                Area::Upgrade,
                true,
            ),
            (
                Error::LockTimeout {
                    version: v(2),
                    live: v(1),
                    attempts: 1,
                    waited: Duration::ZERO,
                },
                Area::Upgrade,
                true,
            ),
            (
                Error::NotRollForward {
                    live: v(2),
                    target: v(1),
                },
                Area::Upgrade,
                false,
            ),
            (
                Error::SwitchRefused {
                    version: v(2),
                    instances: Vec::new(),
                },
                Area::Fleet,
                false,
            ),
            (
                Error::Pool {
                    message: "m".to_owned(),
                },
                Area::Database,
                true,
            ),
            (
                Error::Connect {
                    target: "t".to_owned(),
                    message: "m".to_owned(),
                },
                Area::Database,
                false,
            ),
        ];
        for (error, area, retry) in cases {
            assert_eq!(
                (error.area(), error.is_retryable()),
                (area, retry),
                "{error}"
            );
        }
    }

    /// A statement that met a passing lock conflict may run again; another
    /// database error may not.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    #[test]
    fn lock_conflicts_in_a_statement_are_retryable() {
        use diesel::result::{DatabaseErrorKind, Error as Db};
        let db = |kind, message: &str| {
            Error::Query(Db::DatabaseError(kind, Box::new(message.to_owned())))
        };
        let unknown = DatabaseErrorKind::Unknown;
        for (error, retry) in [
            (
                db(
                    DatabaseErrorKind::SerializationFailure,
                    "could not serialize access",
                ),
                true,
            ),
            #[cfg(feature = "sqlite")]
            (db(unknown, "database is locked"), true),
            #[cfg(feature = "postgres")]
            (db(unknown, "canceling statement due to lock timeout"), true),
            #[cfg(feature = "postgres")]
            (db(unknown, "deadlock detected"), true),
            (
                db(
                    DatabaseErrorKind::UniqueViolation,
                    "UNIQUE constraint failed",
                ),
                false,
            ),
            (db(unknown, "no such table: accounts"), false),
            (Error::Query(Db::NotFound), false),
        ] {
            assert_eq!(error.is_retryable(), retry, "{error}");
            assert_eq!(error.area(), Area::Database);
        }
    }
}
