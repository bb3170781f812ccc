//! Errors while reading a catalog (`schema_versions/`).

use std::path::PathBuf;

/// A malformed catalog (`schema_versions/`). Each variant names the file or
/// folder at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The folder or a file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The catalog holds no versions.
    #[error("{path} holds no version folders; add 0001_<name>/expand.sql with the initial schema")]
    NoVersions {
        /// The catalog folder.
        path: PathBuf,
    },
    /// A folder name is not `NNNN_name`.
    #[error(
        "{path}: a version folder must be named NNNN_name (digits, an underscore, then letters, digits, \
         `_` or `-`), e.g. 0002_account_emails"
    )]
    BadFolderName {
        /// The folder.
        path: PathBuf,
    },
    /// A file tandem does not know.
    #[error(
        "{path}: unknown file; a version folder holds expand.sql, switch.sql, switch_back.sql and \
         contract.sql, each optionally as NAME.sqlite.sql or NAME.postgres.sql, a change.toml, \
         and *.md notes"
    )]
    UnknownFile {
        /// The file.
        path: PathBuf,
    },
    /// A file is not UTF-8.
    #[error("{path} is not valid UTF-8; save it as UTF-8")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
    },
    /// A file is empty or blank.
    #[error("{path} is empty; delete it if the phase has nothing to do, or write its SQL")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A version lacks `expand.sql`.
    #[error(
        "{path} has no expand.sql (or both expand.sqlite.sql and expand.postgres.sql); every version \
         needs one (version 1's is the initial schema)"
    )]
    MissingExpand {
        /// The version folder.
        path: PathBuf,
    },
    /// Two folders claim the same version.
    #[error("{first} and {second} both claim version {version}; renumber one")]
    Duplicate {
        /// The version.
        version: u32,
        /// One folder.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// Versions are not numbered 1, 2, 3, … without gaps.
    #[error("{path} is version {found}, but version {expected} is missing; versions run 1, 2, 3, … without gaps")]
    Gap {
        /// The version expected next.
        expected: u32,
        /// The version found.
        found: u32,
        /// The folder found.
        path: PathBuf,
    },
    /// A phase file controls the transaction (`BEGIN`, `COMMIT`, `ROLLBACK`,
    /// `END`, `ABORT`, `START TRANSACTION`, `SAVEPOINT`, `RELEASE`). tandem
    /// runs each phase in one transaction of its own, which is what makes it
    /// all or nothing and resumable; such a statement would commit half a
    /// phase behind the journal's back.
    #[error(
        "{path}:{line}: `{statement}` controls the transaction, but tandem runs each phase in one \
         transaction of its own (that is what makes it all or nothing, and resumable); remove it, \
         and put work that must commit on its own in a later version or a backfill step"
    )]
    TransactionControl {
        /// The file.
        path: PathBuf,
        /// The statement's line (1-based).
        line: u64,
        /// The statement's first word(s).
        statement: String,
    },
    /// A phase file cannot be read as SQL (an unterminated string, quoted
    /// identifier or comment).
    #[error(
        "{path} cannot be read as SQL: {message}; close the string, quote or comment it names"
    )]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The tokenizer's message, with line and column.
        message: String,
    },
    /// A change file (`change.toml`) that cannot be read, or an operation
    /// in it that tandem cannot make safe.
    #[error("{path}{}: {problem}; {instead}", operation.map(|n| format!(", operation {n}")).unwrap_or_default())]
    BadChange {
        /// The change file.
        path: PathBuf,
        /// The operation at fault (1-based), if one is.
        operation: Option<usize>,
        /// What is wrong.
        problem: String,
        /// What to write instead.
        instead: String,
    },
    /// A backend name tandem does not know (asked of [`Catalog::lint`](crate::Catalog::lint)).
    #[error("unknown backend `{backend}`; tandem's backends are {}", crate::BACKEND_NAMES.join(", "))]
    UnknownBackend {
        /// The name asked for.
        backend: String,
    },
    /// Version 1 (the initial schema) has a file only later versions may have.
    #[error("{path}: version 1 is the initial schema and has no previous version to switch from or contract; keep only expand.sql")]
    FirstVersionPhase {
        /// The file.
        path: PathBuf,
    },
}
