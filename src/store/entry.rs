//! The typed columns of a history row: what it records and how it ended.
//! Both keep a value they do not know (written by a newer release) as
//! `Other`, so that an older binary still reads the history.

use std::fmt;

use crate::version::Phase;

/// Declares a history column's enum: its known values, their text in the
/// table, `Other` for the rest, and comparison with that text.
macro_rules! history_column {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A value this release does not know (written by a newer one).
            Other(String),
        }

        impl $name {
            /// The value as the history table stores it.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)+
                    $name::Other(text) => text,
                }
            }

            /// Reads the table's text.
            pub(crate) fn parse(text: String) -> Self {
                match text.as_str() {
                    $($text => $name::$variant,)+
                    _ => $name::Other(text),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

history_column! {
    /// What a history row records: a phase of a version, a baseline, or an
    /// eviction from the fleet table.
    HistoryPhase {
        /// [`Phase::Expand`].
        Expand => "expand",
        /// [`Phase::Switch`].
        Switch => "switch",
        /// [`Phase::SwitchBack`].
        SwitchBack => "switch_back",
        /// [`Phase::Contract`].
        Contract => "contract",
        /// An existing database adopted at a version (`Builder::baseline`).
        Baseline => "baseline",
        /// An instance removed from the fleet table
        /// ([`Upgrader::evict`](crate::Upgrader::evict)).
        Evict => "evict",
    }
}

history_column! {
    /// How a history row's phase ended.
    Outcome {
        /// Done.
        Applied => "applied",
        /// Expand's SQL applied, its backfills not finished yet.
        Running => "running",
        /// Rolled back; the row's `detail` has the error.
        Failed => "failed",
    }
}

impl HistoryPhase {
    /// The upgrade phase the row records, if it records one.
    pub fn phase(&self) -> Option<Phase> {
        Phase::parse(self.as_str())
    }
}

impl From<Phase> for HistoryPhase {
    fn from(phase: Phase) -> Self {
        HistoryPhase::parse(phase.as_str().to_owned())
    }
}
