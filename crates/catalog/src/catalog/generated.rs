//! The phase files a version's `change.toml` generates, merged with the
//! hand-written files beside it.

use std::path::Path;

use super::{sha256_hex, PhaseFile};
use crate::change::{Backfill, ConcurrentIndex};
use crate::error::CatalogError;
use crate::version::{Phase, Version};

/// A version folder's declarative change file (see [`crate::change`]).
pub(crate) const CHANGE_FILE: &str = "change.toml";

/// What a change file runs after expand's transaction, with the backend
/// each step is for: the index builds, then the backfills.
#[derive(Debug, Clone, Default)]
pub(super) struct AfterExpand {
    pub(super) backfills: Vec<(&'static str, Backfill)>,
    pub(super) indexes: Vec<(&'static str, ConcurrentIndex)>,
}

/// The steps of `list` for `backend`, in order.
pub(super) fn for_backend<'a, T>(
    list: &'a [(&'static str, T)],
    backend: &'a str,
) -> impl Iterator<Item = &'a T> + 'a {
    list.iter()
        .filter(move |(b, _)| *b == backend)
        .map(|(_, step)| step)
}

/// The phase files a change file generates, per backend: its statements
/// for the phase, then the hand-written file's (the backend's own, else
/// the generic one) if there is one; and what it runs after expand's
/// transaction.
pub(super) fn generated_files(
    folder: &str,
    version: Version,
    change: &crate::change::Change,
    path: &Path,
    written: &[PhaseFile],
    backends: &[&'static str],
) -> Result<(Vec<PhaseFile>, AfterExpand), CatalogError> {
    let mut files = Vec::new();
    let mut after = AfterExpand::default();
    for &backend in backends {
        let generated = change.generate(backend, path, version)?;
        let backfills = generated.backfills.iter().map(|b| (backend, b.clone()));
        after.backfills.extend(backfills);
        let indexes = generated.indexes.iter().map(|i| (backend, i.clone()));
        after.indexes.extend(indexes);
        for phase in Phase::ALL {
            let sql = generated.phase(phase);
            if sql.is_empty() {
                continue;
            }
            if version == Version::FIRST && phase != Phase::Expand {
                return Err(CatalogError::FirstVersionPhase {
                    path: path.to_owned(),
                });
            }
            let hand_for = |phase: Phase| {
                written
                    .iter()
                    .find(|f| f.phase == phase && f.backend == Some(backend))
                    .or_else(|| {
                        written
                            .iter()
                            .find(|f| f.phase == phase && f.backend.is_none())
                    })
            };
            let hand = hand_for(phase);
            if phase == Phase::SwitchBack && hand.is_none() && hand_for(Phase::Switch).is_some() {
                return Err(CatalogError::BadChange {
                    path: path.to_owned(),
                    operation: None,
                    problem: "the switch.sql beside it has no switch_back.sql, so a switch back \
                              would undo the change file's switch and leave switch.sql's in place"
                        .to_owned(),
                    instead: "write the switch_back.sql that undoes switch.sql".to_owned(),
                });
            }
            let (text, file) = merged(folder, phase, sql, hand);
            check_control(&text, backend, path)?;
            files.push(PhaseFile {
                phase,
                backend: Some(backend),
                checksum: sha256_hex(&text),
                legacy: Vec::new(),
                text,
                file,
            });
        }
    }
    Ok((files, after))
}

/// The generated `sql` of `phase` with the hand-written file beside it, and
/// the name of what they came from.
fn merged(folder: &str, phase: Phase, sql: &str, hand: Option<&PhaseFile>) -> (String, String) {
    match hand {
        // A switch back undoes the switch in reverse: the hand-written
        // switch ran after the generated one, so its undo runs first.
        Some(hand) if phase == Phase::SwitchBack => (
            format!("-- {}\n{}\n{sql}", hand.file, hand.text.trim_end()),
            format!("{} + {folder}/{CHANGE_FILE}", hand.file),
        ),
        Some(hand) => (
            format!("{sql}\n-- {}\n{}", hand.file, hand.text),
            format!("{folder}/{CHANGE_FILE} + {}", hand.file),
        ),
        None => (sql.to_owned(), format!("{folder}/{CHANGE_FILE}")),
    }
}

/// A generated phase's text controls no transaction and reads as SQL.
fn check_control(text: &str, backend: &str, path: &Path) -> Result<(), CatalogError> {
    match crate::sql_check::transaction_control(text, Some(backend)) {
        crate::sql_check::Check::TransactionControl(found) => {
            Err(CatalogError::TransactionControl {
                path: path.to_owned(),
                line: found.line,
                statement: found.statement,
            })
        }
        crate::sql_check::Check::Unreadable { message } => Err(CatalogError::Unreadable {
            path: path.to_owned(),
            message,
        }),
        crate::sql_check::Check::Clean => Ok(()),
    }
}
