//! The upgrader's plan, pure: from where the state row stands (its version
//! and phase) and the catalog's latest version, what a command does next.
//! No database and no clock, so every state and command is unit-tested
//! here; the phases (`expand.rs`, `switch.rs`, `contract.rs`) and
//! `upgrade_to` follow it, and the switch checks the fleet and the history
//! only where the plan says so.

use crate::error::{Error, Result};
use crate::store::StatePhase;
use crate::version::{Phase, Version};

/// Where the state row stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct At {
    pub(crate) version: Version,
    pub(crate) phase: StatePhase,
}

/// What a phase command does from [`At`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Already done (for `version`): nothing runs.
    Done(Version),
    /// Run the phase's files of version `files` and move the state row to `to`.
    Run {
        files: Version,
        to: (Version, StatePhase),
    },
    /// A switch back asked in the expanded state: done if the history shows
    /// that switch back of `version` applied, out of order (`refusal`) if not.
    DoneIfSwitchedBack { version: Version, refusal: Refusal },
}

/// Why a command cannot run from [`At`], as [`Error::PhaseOutOfOrder`]
/// (or [`Error::UnknownVersion`]: nothing left to expand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    OutOfOrder {
        attempted: Phase,
        version: Version,
        hint: &'static str,
    },
    NothingToExpand {
        version: Version,
    },
    /// A state no metadata row can hold (switched at version 1).
    Impossible,
}

impl Refusal {
    pub(crate) fn into_error(self, at: At, latest: Version, state_table: &str) -> Error {
        match self {
            Refusal::OutOfOrder {
                attempted,
                version,
                hint,
            } => Error::PhaseOutOfOrder {
                attempted,
                version,
                live: at.version,
                state: at.phase.as_str(),
                hint,
            },
            Refusal::NothingToExpand { version } => Error::UnknownVersion { version, latest },
            Refusal::Impossible => Error::MetadataCorrupt {
                table: state_table.to_owned(),
                detail: "version out of range".to_owned(),
            },
        }
    }
}

const CONTRACT_FIRST: &str = "contract the live version first: at most two versions may be in use";
const EXPAND_FIRST: &str = "run expand first";
const SWITCH_BACK_WINDOW: &str = "switch back is possible only between switch and contract";
const SWITCH_FIRST: &str = "switch first: contract removes what the live version still uses";

/// The version after `at`'s, or `at`'s own at the end of the range.
fn next_or_same(at: At) -> Version {
    at.version.next().unwrap_or(at.version)
}

/// What `phase` does from `at`, with `latest` the catalog's newest version.
pub(crate) fn next(at: At, phase: Phase, latest: Version) -> Result<Next, Refusal> {
    match (phase, at.phase) {
        (Phase::Expand, StatePhase::Switched) => Err(Refusal::OutOfOrder {
            attempted: phase,
            version: next_or_same(at),
            hint: CONTRACT_FIRST,
        }),
        (Phase::Expand, state) => match at.version.next().filter(|t| *t <= latest) {
            None => Err(Refusal::NothingToExpand {
                version: next_or_same(at),
            }),
            Some(target) if state == StatePhase::Expanded => Ok(Next::Done(target)),
            Some(target) => Ok(Next::Run {
                files: target,
                to: (at.version, StatePhase::Expanded),
            }),
        },
        (Phase::Switch, StatePhase::Switched) => Ok(Next::Done(at.version)),
        (Phase::Switch, StatePhase::Expanded) => match at.version.next() {
            Some(target) => Ok(Next::Run {
                files: target,
                to: (target, StatePhase::Switched),
            }),
            None => Err(Refusal::Impossible),
        },
        (Phase::Switch, StatePhase::Stable) => Err(Refusal::OutOfOrder {
            attempted: phase,
            version: next_or_same(at),
            hint: EXPAND_FIRST,
        }),
        (Phase::SwitchBack, StatePhase::Switched) => match at.version.previous() {
            Some(previous) => Ok(Next::Run {
                files: at.version,
                to: (previous, StatePhase::Expanded),
            }),
            None => Err(Refusal::Impossible),
        },
        (Phase::SwitchBack, StatePhase::Expanded) => {
            let version = next_or_same(at);
            Ok(Next::DoneIfSwitchedBack {
                version,
                refusal: Refusal::OutOfOrder {
                    attempted: phase,
                    version,
                    hint: SWITCH_BACK_WINDOW,
                },
            })
        }
        (Phase::SwitchBack, StatePhase::Stable) => Err(Refusal::OutOfOrder {
            attempted: phase,
            version: at.version,
            hint: SWITCH_BACK_WINDOW,
        }),
        (Phase::Contract, StatePhase::Switched) => Ok(Next::Run {
            files: at.version,
            to: (at.version, StatePhase::Stable),
        }),
        (Phase::Contract, StatePhase::Stable) => Ok(Next::Done(at.version)),
        (Phase::Contract, StatePhase::Expanded) => Err(Refusal::OutOfOrder {
            attempted: phase,
            version: next_or_same(at),
            hint: SWITCH_FIRST,
        }),
        // (`Phase` is non-exhaustive: a phase this release does not know.)
        (_, _) => Err(Refusal::Impossible),
    }
}

/// The phase `upgrade_to(target)` runs next from `at` (`None`: there), or
/// `Err` if `target` lies behind the live version.
pub(crate) fn toward(at: At, target: Version) -> Result<Option<Phase>, Version> {
    if at.version > target {
        return Err(at.version);
    }
    Ok(match at.phase {
        StatePhase::Stable | StatePhase::Expanded if at.version == target => None,
        StatePhase::Stable => Some(Phase::Expand),
        StatePhase::Expanded => Some(Phase::Switch),
        StatePhase::Switched => Some(Phase::Contract),
    })
}

/// One phase [`Upgrader::upgrade_to`](crate::Upgrader::upgrade_to) would
/// run, with the SQL it runs on the backend: see
/// [`Upgrader::plan`](crate::Upgrader::plan).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlannedPhase {
    /// The version whose files run.
    pub version: Version,
    /// The phase.
    pub phase: Phase,
    /// The catalog file the SQL comes from, relative to the catalog folder
    /// (`None`: the phase has no SQL; a switch then only bumps the version).
    pub file: Option<String>,
    /// The SQL, exactly as it runs (the generated text of a `change.toml`).
    pub sql: Option<String>,
    /// The backfill steps that run after expand's SQL, by name: those the
    /// version's `change.toml` generates (named `table.column`; their SQL
    /// is in a comment at the end of [`sql`](PlannedPhase::sql)), then the
    /// builder's.
    pub backfills: Vec<String>,
    /// The indexes built before the backfills, outside any transaction
    /// (PostgreSQL's `CREATE INDEX CONCURRENTLY`), by name; their SQL is in
    /// a comment at the end of [`sql`](PlannedPhase::sql).
    pub indexes: Vec<String>,
}

impl std::fmt::Display for PlannedPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "-- version {} {}", self.version, self.phase)?;
        match (&self.file, &self.sql) {
            (Some(file), Some(sql)) => write!(f, " ({file})\n{}", sql.trim_end())?,
            _ => f.write_str(": no SQL")?,
        }
        for name in &self.indexes {
            write!(f, "\n-- then the index `{name}`, built concurrently")?;
        }
        for name in &self.backfills {
            write!(f, "\n-- then the backfill `{name}`, in batches")?;
        }
        Ok(())
    }
}

/// The phases `upgrade_to(target)` runs from `at`, in order, with their SQL
/// for `backend` and the backfills registered per version; `Err(live)` if
/// `target` lies behind the live version.
pub(crate) fn phases(
    catalog: &crate::catalog::Catalog,
    mut at: At,
    target: Version,
    backend: &str,
    backfills: &[(u32, &str)],
) -> Result<Vec<PlannedPhase>, Version> {
    let mut planned = Vec::new();
    // Each step moves the state forward: three per version at most.
    let bound = usize::try_from(target.get())
        .unwrap_or(usize::MAX)
        .saturating_mul(3)
        .saturating_add(3);
    while let Some(phase) = toward(at, target)? {
        let Ok(Next::Run { files, to }) = next(at, phase, catalog.latest()) else {
            break;
        };
        let sql = catalog.phase(files, phase, backend);
        planned.push(PlannedPhase {
            version: files,
            phase,
            file: sql.map(|s| s.file.to_owned()),
            sql: sql.map(|s| s.text.to_owned()),
            backfills: catalog
                .get(files)
                .into_iter()
                .flat_map(|v| v.backfills(backend).map(|b| b.name.clone()))
                .chain(
                    backfills
                        .iter()
                        .filter(|(v, _)| *v == files.get())
                        .map(|(_, name)| (*name).to_owned()),
                )
                .filter(|_| phase == Phase::Expand)
                .collect(),
            indexes: catalog
                .get(files)
                .into_iter()
                .flat_map(|v| v.indexes(backend).map(|i| i.name.clone()))
                .filter(|_| phase == Phase::Expand)
                .collect(),
        });
        at = At {
            version: to.0,
            phase: to.1,
        };
        if planned.len() >= bound {
            break;
        }
    }
    Ok(planned)
}

#[cfg(test)]
mod tests;
