//! Metadata tables: `{prefix}state` (one row: live version, phase, mode,
//! epoch, upgrader lease), `{prefix}history` (one row per applied phase) and
//! `{prefix}fleet` (one row per live instance).
//!
//! Table names are built from a prefix validated as a plain identifier
//! ([`Prefix`]); values always travel as bind parameters.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::QueryableByName;

use crate::backend::{Backend, Bind, CountRow, Dialect};
use crate::error::{Error, Result};
use crate::version::{Phase, Version};

mod entry;
pub use entry::{HistoryPhase, Outcome};
pub(crate) use fleet::restated;

/// A validated metadata table prefix (default `tandem_`).
///
/// ```
/// assert!(tandem::Prefix::new("app_tandem_").is_ok());
/// assert!(tandem::Prefix::new("x; DROP TABLE y").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix(String);

impl Prefix {
    /// Validates `prefix`: lowercase ASCII letters, digits and underscores,
    /// not starting with a digit, 1 to 40 characters.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPrefix`] saying which rule it breaks.
    pub fn new(prefix: &str) -> Result<Prefix> {
        let reason = if prefix.is_empty() {
            Some("it is empty")
        } else if prefix.len() > 40 {
            Some("it is longer than 40 characters")
        } else if prefix.starts_with(|c: char| c.is_ascii_digit()) {
            Some("it starts with a digit")
        } else if prefix.starts_with("sqlite_") {
            Some("SQLite reserves names that start with sqlite_")
        } else if !prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            Some("it contains characters other than lowercase letters, digits and underscores")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidPrefix {
                prefix: prefix.to_owned(),
                reason,
            }),
            None => Ok(Prefix(prefix.to_owned())),
        }
    }

    /// The prefix text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Prefix {
    fn default() -> Self {
        Prefix("tandem_".to_owned())
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the live version stands in its upgrade cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StatePhase {
    /// Nothing pending: the next version may be expanded.
    Stable,
    /// The next version's expand is applied; the live version is unchanged.
    Expanded,
    /// The live version was switched to; its contract is pending (and
    /// switching back is possible).
    Switched,
}

impl StatePhase {
    /// The text stored in the state row.
    pub const fn as_str(self) -> &'static str {
        match self {
            StatePhase::Stable => "stable",
            StatePhase::Expanded => "expanded",
            StatePhase::Switched => "switched",
        }
    }

    fn parse(s: &str) -> Option<StatePhase> {
        [
            StatePhase::Stable,
            StatePhase::Expanded,
            StatePhase::Switched,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// Whether calls take the fast steady path or the locking path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mode {
    /// No switch is being prepared: calls cost an atomic load and an
    /// in-process read lock.
    Steady,
    /// A switch is being prepared across the fleet.
    Deploying,
}

impl Mode {
    /// The text stored in the state row.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Steady => "steady",
            Mode::Deploying => "deploying",
        }
    }

    fn parse(s: &str) -> Option<Mode> {
        [Mode::Steady, Mode::Deploying]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// The state row: the live version and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct State {
    /// The live version: bindings for it serve calls.
    pub version: Version,
    /// Where the live version stands in its upgrade cycle.
    pub phase: StatePhase,
    /// Steady or deploying.
    pub mode: Mode,
    /// Bumped on every change of the row's version, phase or mode.
    pub epoch: i64,
    /// The upgrader holding the upgrade lease, if any and not expired.
    pub upgrader: Option<String>,
}

/// One row of the history table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryEntry {
    /// The version the phase belongs to.
    pub version: Version,
    /// What the row records: a phase, a baseline or an eviction.
    pub phase: HistoryPhase,
    /// SHA-256 of the phase's SQL (of the empty text when the version has no
    /// file for the phase; `-` for a baseline).
    pub checksum: String,
    /// Milliseconds since the Unix epoch.
    pub started_at_ms: i64,
    /// Milliseconds since the Unix epoch, when finished.
    pub finished_at_ms: Option<i64>,
    /// How it ended: applied, running (SQL applied, backfills pending), or
    /// failed.
    pub outcome: Outcome,
    /// The instance that ran it (host:pid:nonce).
    pub by: String,
    /// The error, for a failed phase; for a running expand, how far its
    /// generated backfills got (`backfilled through: orders.qty=2000`: the
    /// last key of the last batch committed), where a resumed expand goes on.
    pub detail: Option<String>,
}

/// One live instance, as its fleet row says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Instance {
    /// The instance id (host:pid:label:nonce).
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: i64,
    /// The label given with `Builder::label`.
    pub label: String,
    /// The oldest version its binary serves.
    pub first: Version,
    /// The newest version its binary serves.
    pub last: Version,
    /// The last state epoch it acknowledged.
    pub observed_epoch: i64,
    /// When its lease expires (ms since the Unix epoch, by the database's
    /// clock: leases never depend on hosts' clocks agreeing), unless renewed.
    pub lease_until_ms: i64,
    /// The digests of the versions its binary serves (`1=<sha256>,2=…`),
    /// each over that version's phase checksums; `None` for a row written
    /// by a release before fleet rows carried them.
    pub(crate) catalog: Option<String>,
}

impl Instance {
    /// The digest its binary's catalog has for `version`, if it told.
    pub(crate) fn digest(&self, version: Version) -> Option<&str> {
        digest_in(self.catalog.as_deref(), version)
    }

    /// Whether its binary has bindings for `version`.
    pub fn serves(&self, version: Version) -> bool {
        self.first <= version && version <= self.last
    }

    /// `label (host, pid 123, serves 1..=2, id host:123:label:1a2b3c4d)`,
    /// for error messages: the id is what [`Upgrader::evict`](crate::Upgrader::evict) takes.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}, pid {}, serves {}..={}, id {})",
            self.label, self.host, self.pid, self.first, self.last, self.id
        )
    }
}

/// The digest a fleet row's catalog column (`1=<sha256>,2=…`) has for
/// `version`, if it has one.
fn digest_in(catalog: Option<&str>, version: Version) -> Option<&str> {
    let prefix = format!("{version}=");
    catalog?
        .split(',')
        .find_map(|entry| entry.strip_prefix(prefix.as_str()))
}

/// Live instances alike in all a switch checks of them
/// ([`Store::live_groups`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LiveGroup {
    /// The oldest version their binaries serve.
    pub(crate) first: Version,
    /// The newest.
    pub(crate) last: Version,
    /// The epoch they acknowledged.
    pub(crate) observed_epoch: i64,
    /// Their catalog digests, as in [`Instance`].
    catalog: Option<String>,
    /// How many instances.
    pub(crate) instances: i64,
}

impl LiveGroup {
    /// As [`Instance::serves`].
    pub(crate) fn serves(&self, version: Version) -> bool {
        self.first <= version && version <= self.last
    }

    /// As [`Instance::digest`].
    pub(crate) fn digest(&self, version: Version) -> Option<&str> {
        digest_in(self.catalog.as_deref(), version)
    }
}

#[derive(QueryableByName)]
struct GroupRow {
    #[diesel(sql_type = BigInt)]
    min_version: i64,
    #[diesel(sql_type = BigInt)]
    max_version: i64,
    #[diesel(sql_type = BigInt)]
    observed_epoch: i64,
    #[diesel(sql_type = Nullable<Text>)]
    catalog: Option<String>,
    #[diesel(sql_type = BigInt)]
    instances: i64,
}

#[derive(QueryableByName)]
struct FleetRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    host: String,
    #[diesel(sql_type = BigInt)]
    pid: i64,
    #[diesel(sql_type = Text)]
    label: String,
    #[diesel(sql_type = BigInt)]
    min_version: i64,
    #[diesel(sql_type = BigInt)]
    max_version: i64,
    #[diesel(sql_type = BigInt)]
    observed_epoch: i64,
    #[diesel(sql_type = BigInt)]
    lease_until: i64,
    #[diesel(sql_type = Nullable<Text>)]
    catalog: Option<String>,
}

#[derive(QueryableByName)]
struct NameRow {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
pub(crate) struct StateRow {
    #[diesel(sql_type = BigInt)]
    version: i64,
    #[diesel(sql_type = Text)]
    phase: String,
    #[diesel(sql_type = Text)]
    mode: String,
    #[diesel(sql_type = BigInt)]
    epoch: i64,
    #[diesel(sql_type = Nullable<Text>)]
    owner: Option<String>,
    /// Milliseconds the upgrade lease has left, by the database's clock.
    #[diesel(sql_type = Nullable<BigInt>)]
    owner_left: Option<i64>,
}

#[derive(QueryableByName)]
pub(crate) struct HistoryRow {
    #[diesel(sql_type = BigInt)]
    version: i64,
    #[diesel(sql_type = Text)]
    phase: String,
    #[diesel(sql_type = Text)]
    checksum: String,
    #[diesel(sql_type = BigInt)]
    started_at: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    finished_at: Option<i64>,
    #[diesel(sql_type = Text)]
    outcome: String,
    #[diesel(sql_type = Text)]
    by_instance: String,
    #[diesel(sql_type = Nullable<Text>)]
    detail: Option<String>,
}

/// What a confirmation read sees (see `Tandem::confirm_steady`).
#[derive(QueryableByName)]
pub(crate) struct ConfirmRow {
    #[diesel(sql_type = BigInt)]
    pub(crate) epoch: i64,
    #[diesel(sql_type = Text)]
    pub(crate) mode: String,
    /// Whether this instance's fleet row is there (1) or not (0).
    #[diesel(sql_type = BigInt)]
    pub(crate) mine: i64,
}

#[derive(QueryableByName)]
struct OwnerRow {
    #[diesel(sql_type = Nullable<Text>)]
    owner: Option<String>,
    /// Milliseconds the lease has left, by the database's clock.
    #[diesel(sql_type = Nullable<BigInt>)]
    owner_left: Option<i64>,
}

/// Milliseconds since the Unix epoch, from this process's clock.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Outcome texts of history rows.
pub(crate) const APPLIED: &str = "applied";
pub(crate) const RUNNING: &str = "running";
pub(crate) const FAILED: &str = "failed";
pub(crate) const BASELINE: &str = "baseline";
/// The history phase of [`Upgrader::evict`](crate::Upgrader::evict).
pub(crate) const EVICT: &str = "evict";

/// The metadata tables of one prefix, and the SQL that reads and writes them.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    prefix: String,
    state: String,
    history: String,
    fleet: String,
}

impl Store {
    pub(crate) fn new(prefix: &Prefix) -> Store {
        Store {
            prefix: prefix.as_str().to_owned(),
            state: format!("{prefix}state"),
            history: format!("{prefix}history"),
            fleet: format!("{prefix}fleet"),
        }
    }

    pub(crate) fn state_table(&self) -> &str {
        &self.state
    }

    /// The notice channel of this prefix's state row (its table's name:
    /// notices stay within one database; two schemas using one prefix in
    /// it wake each other's pollers for nothing, no worse).
    pub(crate) fn channel(&self) -> &str {
        &self.state
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// What a new epoch is one more than: the state row's epoch, or any
    /// epoch an instance acknowledged if that is higher. After the row's
    /// epoch went backwards (a restore), an acknowledgement left from before
    /// must never equal a new epoch and pass for an acknowledgement of it.
    /// (Acknowledgements beyond any epoch tandem writes, ghosts, are
    /// ignored here.)
    fn next_epoch_base<D: Dialect>(&self) -> String {
        format!(
            "{}(epoch, COALESCE((SELECT MAX(observed_epoch) FROM {} WHERE observed_epoch <= {}), 0))",
            D::greatest_sql(),
            self.fleet,
            i64::MAX / 2
        )
    }

    /// The advisory lock key of this prefix's schema lock. FNV-1a of a
    /// fixed text and the prefix, so two prefixes in one database never
    /// share a key.
    pub(crate) fn lock_key(&self) -> i64 {
        self.key("schema lock")
    }

    /// The advisory lock key that serializes first starts (creating the
    /// metadata and applying version 1) on this prefix.
    pub(crate) fn init_key(&self) -> i64 {
        self.key("initialization")
    }

    /// FNV-1a of `tandem {purpose} {prefix}`: one advisory key per purpose
    /// and prefix.
    fn key(&self, purpose: &str) -> i64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in format!("tandem {purpose} {}", self.prefix).bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        i64::from_ne_bytes(hash.to_ne_bytes())
    }

    /// The state table without its row (deleted by hand, a partial restore).
    pub(crate) fn state_row_missing(&self) -> Error {
        self.corrupt(
            &self.state,
            format!(
                "the table exists but has no row (id = 1); re-insert it with the live version \
                 and phase, which the last applied rows of {}history show",
                self.prefix
            ),
        )
    }

    fn corrupt(&self, table: &str, detail: impl Into<String>) -> Error {
        Error::MetadataCorrupt {
            table: table.to_owned(),
            detail: detail.into(),
        }
    }
}

mod fleet;
mod history;
mod schema;
mod state;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_validation() {
        for ok in ["tandem_", "a", "app1_meta_", "_x"] {
            assert!(Prefix::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1x",
            "x; DROP TABLE y",
            "Tandem_",
            "a-b",
            "a.b",
            "sqlite_meta_",
            "ä",
            &"x".repeat(41),
        ] {
            let err = Prefix::new(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidPrefix { .. }), "{bad}");
            assert!(err.to_string().contains("plain identifier"));
        }
    }

    #[test]
    fn state_texts_round_trip() {
        for p in [
            StatePhase::Stable,
            StatePhase::Expanded,
            StatePhase::Switched,
        ] {
            assert_eq!(StatePhase::parse(p.as_str()), Some(p));
        }
        for m in [Mode::Steady, Mode::Deploying] {
            assert_eq!(Mode::parse(m.as_str()), Some(m));
        }
    }

    /// The tables' DDL and the epoch expression come from the dialect: a
    /// backend with other types (the fake's MySQL-like key and serial)
    /// gets them without an edit here.
    #[test]
    fn the_ddl_and_expressions_come_from_the_dialect() {
        use crate::backend::fake::Fake;
        let store = Store::new(&Prefix::new("app_").unwrap());
        let ddl = store.create_statements::<Fake>();
        assert_eq!(ddl.len(), 3, "{ddl:?}");
        assert!(
            ddl[1].contains("id BIGINT AUTO_INCREMENT PRIMARY KEY"),
            "{}",
            ddl[1]
        );
        assert!(ddl[2].contains("id VARCHAR(191) PRIMARY KEY"), "{}", ddl[2]);
        for sql in &ddl {
            assert!(!sql.contains("RETURNING") && !sql.contains('$'), "{sql}");
        }
        assert!(store
            .next_epoch_base::<Fake>()
            .starts_with("GREATEST(epoch"));
    }
}
