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

use crate::backend::{Backend, Bind};
use crate::error::{Error, Result};
use crate::version::{Phase, Version};

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
    /// `expand`, `switch`, `switch_back`, `contract`, `baseline`, or
    /// `evict` (an instance removed from the fleet table by an operator).
    pub phase: String,
    /// SHA-256 of the phase's SQL (of the empty text when the version has no
    /// file for the phase; `-` for a baseline).
    pub checksum: String,
    /// Milliseconds since the Unix epoch.
    pub started_at_ms: i64,
    /// Milliseconds since the Unix epoch, when finished.
    pub finished_at_ms: Option<i64>,
    /// `applied`, `running` (SQL applied, Rust steps pending), or `failed`.
    pub outcome: String,
    /// The instance that ran it (host:pid:nonce).
    pub by: String,
    /// The error, for a failed phase.
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
        let prefix = format!("{version}=");
        self.catalog
            .as_deref()?
            .split(',')
            .find_map(|entry| entry.strip_prefix(prefix.as_str()))
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
pub(crate) struct CountRow {
    #[diesel(sql_type = BigInt)]
    pub(crate) n: i64,
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
pub(crate) struct Meta {
    prefix: String,
    state: String,
    history: String,
    fleet: String,
}

impl Meta {
    pub(crate) fn new(prefix: &Prefix) -> Meta {
        Meta {
            prefix: prefix.as_str().to_owned(),
            state: format!("{prefix}state"),
            history: format!("{prefix}history"),
            fleet: format!("{prefix}fleet"),
        }
    }

    pub(crate) fn state_table(&self) -> &str {
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
    fn next_epoch_base<B: Backend>(&self) -> String {
        format!(
            "{}(epoch, COALESCE((SELECT MAX(observed_epoch) FROM {} WHERE observed_epoch <= {}), 0))",
            B::greatest_sql(),
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

    pub(crate) fn count<B: Backend>(
        conn: &mut B::Connection,
        sql: &str,
        binds: &[Bind<'_>],
    ) -> Result<i64> {
        let rows: Vec<CountRow> = B::load(conn, sql, binds)?;
        Ok(rows.first().map_or(0, |r| r.n))
    }

    pub(crate) fn table_exists<B: Backend>(conn: &mut B::Connection, table: &str) -> Result<bool> {
        Ok(Meta::count::<B>(conn, B::table_exists_sql(), &[Bind::Text(table)])? > 0)
    }

    /// Checks that the tables under this prefix are tandem's: with the state
    /// table present, all three exist with tandem's columns; without it,
    /// neither of the other two exists (they would belong to the
    /// application, and `CREATE TABLE IF NOT EXISTS` would adopt them).
    pub(crate) fn check_tables<B: Backend>(
        &self,
        conn: &mut B::Connection,
        state_exists: bool,
    ) -> Result<()> {
        const STATE: &[&str] = &[
            "id",
            "version",
            "phase",
            "mode",
            "epoch",
            "owner",
            "owner_until",
            "updated_at",
        ];
        const HISTORY: &[&str] = &[
            "id",
            "version",
            "phase",
            "checksum",
            "started_at",
            "finished_at",
            "outcome",
            "by_instance",
            "detail",
        ];
        const FLEET: &[&str] = &[
            "id",
            "host",
            "pid",
            "label",
            "min_version",
            "max_version",
            "observed_epoch",
            "lease_until",
            "started_at",
        ];
        for (table, expected) in [
            (&self.state, STATE),
            (&self.history, HISTORY),
            (&self.fleet, FLEET),
        ] {
            let rows: Vec<NameRow> = B::load(conn, B::column_names_sql(), &[Bind::Text(table)])?;
            let present: Vec<String> = rows.into_iter().map(|r| r.name.to_lowercase()).collect();
            if !state_exists {
                if !present.is_empty() {
                    return Err(Error::PrefixTaken {
                        table: table.clone(),
                        detail: format!(
                            "it exists although {} does not, so it is not tandem's (or its state \
                             table was dropped: then restore {} from a backup)",
                            self.state, self.state
                        ),
                    });
                }
                continue;
            }
            if present.is_empty() {
                return Err(
                    self.corrupt(table, format!("the table is missing beside {}", self.state))
                );
            }
            if table == &self.fleet && !present.iter().any(|p| p == "catalog") {
                // Metadata of a release before fleet rows carried their
                // catalog: add the column (nullable; such rows are unknown).
                B::execute(
                    conn,
                    &format!("ALTER TABLE {} ADD COLUMN catalog TEXT", self.fleet),
                    &[],
                )?;
                tracing::info!(table = %self.fleet, "added the catalog column to the fleet table");
            }
            let missing: Vec<&str> = expected
                .iter()
                .copied()
                .filter(|c| !present.iter().any(|p| p == c))
                .collect();
            if !missing.is_empty() {
                return Err(Error::PrefixTaken {
                    table: table.clone(),
                    detail: format!(
                        "it lacks tandem's columns {}, so it is not one of tandem's tables",
                        missing.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }

    /// Creates the three tables and the state row. Runs inside the caller's
    /// write transaction.
    pub(crate) fn create<B: Backend>(
        &self,
        conn: &mut B::Connection,
        version: Version,
    ) -> Result<()> {
        let statements = [
            format!(
                "CREATE TABLE {} (id BIGINT PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL, \
                 phase TEXT NOT NULL, mode TEXT NOT NULL, epoch BIGINT NOT NULL, owner TEXT, \
                 owner_until BIGINT, updated_at BIGINT NOT NULL)",
                self.state
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (id {}, version BIGINT NOT NULL, phase TEXT NOT NULL, \
                 checksum TEXT NOT NULL, started_at BIGINT NOT NULL, finished_at BIGINT, \
                 outcome TEXT NOT NULL, by_instance TEXT NOT NULL, detail TEXT)",
                self.history,
                B::serial_primary_key()
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (id TEXT PRIMARY KEY, host TEXT NOT NULL, pid BIGINT NOT NULL, \
                 label TEXT NOT NULL, min_version BIGINT NOT NULL, max_version BIGINT NOT NULL, \
                 observed_epoch BIGINT NOT NULL, lease_until BIGINT NOT NULL, started_at BIGINT NOT NULL, \
                 catalog TEXT)",
                self.fleet
            ),
        ];
        for sql in statements
            .iter()
            .chain(&B::metadata_extras(&self.prefix, &self.state))
        {
            B::execute(conn, sql, &[])?;
        }
        B::execute(
            conn,
            &format!(
                "INSERT INTO {} (id, version, phase, mode, epoch, updated_at) VALUES (1, $1, 'stable', 'steady', 1, {})",
                self.state,
                B::now_ms_sql()
            ),
            &[Bind::I64(version.as_i64())],
        )?;
        Ok(())
    }

    /// Reads the state row. The database's clock decides whether the
    /// upgrader lease has expired.
    pub(crate) fn read_state<B: Backend>(&self, conn: &mut B::Connection) -> Result<State> {
        let rows: Vec<StateRow> = B::load(
            conn,
            &format!(
                "SELECT version, phase, mode, epoch, owner, owner_until - {} AS owner_left FROM {} WHERE id = 1",
                B::now_ms_sql(),
                self.state
            ),
            &[],
        )?;
        let row = rows
            .into_iter()
            .next()
            .ok_or_else(|| self.state_row_missing())?;
        let version = Version::from_i64(row.version).ok_or_else(|| {
            self.corrupt(
                &self.state,
                format!("version {} is not a positive version number", row.version),
            )
        })?;
        let phase = StatePhase::parse(&row.phase).ok_or_else(|| {
            self.corrupt(
                &self.state,
                format!("phase {:?} is not stable, expanded or switched", row.phase),
            )
        })?;
        let mode = Mode::parse(&row.mode).ok_or_else(|| {
            self.corrupt(
                &self.state,
                format!("mode {:?} is not steady or deploying", row.mode),
            )
        })?;
        // Epochs start at 1 and grow by a few per upgrade: one beyond half
        // the range was written by hand, and its next increment could
        // overflow (SQLite would turn it into a REAL).
        if row.epoch < 1 || row.epoch > i64::MAX / 2 {
            return Err(self.corrupt(
                &self.state,
                format!(
                    "epoch {} is outside any tandem writes (1 to 2^62); set it back to the \
                     epoch of a backup of this row, or to 1 with every instance stopped",
                    row.epoch
                ),
            ));
        }
        let upgrader = match (row.owner, row.owner_left) {
            (Some(owner), Some(left)) if left > 0 => Some(owner),
            _ => None,
        };
        Ok(State {
            version,
            phase,
            mode,
            epoch: row.epoch,
            upgrader,
        })
    }

    /// Compare-and-set of the state row's version and phase; requires that
    /// `owner` holds the upgrade lease. Returns the row's new epoch, or
    /// `None` if it was not at `from` under `owner`'s lease.
    pub(crate) fn transition<B: Backend>(
        &self,
        conn: &mut B::Connection,
        from: (Version, StatePhase),
        to: (Version, StatePhase),
        owner: &str,
    ) -> Result<Option<i64>> {
        let rows: Vec<CountRow> = B::load(
            conn,
            &format!(
                "UPDATE {} SET version = $1, phase = $2, epoch = {} + 1, updated_at = {} \
                 WHERE id = 1 AND version = $3 AND phase = $4 AND owner = $5 RETURNING epoch AS n",
                self.state,
                self.next_epoch_base::<B>(),
                B::now_ms_sql()
            ),
            &[
                Bind::I64(to.0.as_i64()),
                Bind::Text(to.1.as_str()),
                Bind::I64(from.0.as_i64()),
                Bind::Text(from.1.as_str()),
                Bind::Text(owner),
            ],
        )?;
        Ok(rows.first().map(|r| r.n))
    }

    /// Takes or renews the upgrade lease for `owner`, for `lease_ms` of the
    /// database's clock, unless another holder's lease is still valid by
    /// that clock. Returns the other holder and the milliseconds its lease
    /// has left otherwise.
    pub(crate) fn try_lease<B: Backend>(
        &self,
        conn: &mut B::Connection,
        owner: &str,
        lease_ms: i64,
    ) -> Result<Option<(String, i64)>> {
        let now = B::now_ms_sql();
        // (PostgreSQL, read committed: the holder seen by the update may have
        // released the lease before the select looks; then try again.)
        for _ in 0..3 {
            let changed = B::execute(
                conn,
                &format!(
                    "UPDATE {} SET owner = $1, owner_until = {now} + $2 \
                     WHERE id = 1 AND (owner IS NULL OR owner = $1 OR owner_until IS NULL \
                     OR owner_until <= {now})",
                    self.state
                ),
                &[Bind::Text(owner), Bind::I64(lease_ms)],
            )?;
            if changed == 1 {
                return Ok(None);
            }
            let rows: Vec<OwnerRow> = B::load(
                conn,
                &format!(
                    "SELECT owner, owner_until - {now} AS owner_left FROM {} WHERE id = 1",
                    self.state
                ),
                &[],
            )?;
            match rows.into_iter().next() {
                Some(OwnerRow {
                    owner: Some(holder),
                    owner_left: Some(left),
                }) if left > 0 => return Ok(Some((holder, left))),
                Some(_) => continue,
                None => {
                    return Err(self.corrupt(
                        &self.state,
                        "the row vanished while taking the upgrade lease",
                    ))
                }
            }
        }
        Ok(Some((
            "another upgrader (the lease changed hands while we asked)".to_owned(),
            0,
        )))
    }

    /// Gives the upgrade lease up if `owner` still holds it.
    pub(crate) fn release_lease<B: Backend>(
        &self,
        conn: &mut B::Connection,
        owner: &str,
    ) -> Result<()> {
        B::execute(
            conn,
            &format!(
                "UPDATE {} SET owner = NULL, owner_until = NULL WHERE id = 1 AND owner = $1",
                self.state
            ),
            &[Bind::Text(owner)],
        )?;
        Ok(())
    }

    /// Takes the upgrade lease over from `orphan`, an upgrader of this
    /// process whose command has returned without releasing it; whether it
    /// did (`orphan` may have lost it meanwhile).
    pub(crate) fn take_over_lease<B: Backend>(
        &self,
        conn: &mut B::Connection,
        owner: &str,
        orphan: &str,
        lease_ms: i64,
    ) -> Result<bool> {
        let now = B::now_ms_sql();
        let changed = B::execute(
            conn,
            &format!(
                "UPDATE {} SET owner = $1, owner_until = {now} + $2 WHERE id = 1 AND owner = $3",
                self.state
            ),
            &[Bind::Text(owner), Bind::I64(lease_ms), Bind::Text(orphan)],
        )?;
        Ok(changed == 1)
    }

    /// Appends a history row.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record<B: Backend>(
        &self,
        conn: &mut B::Connection,
        version: Version,
        phase: &str,
        checksum: &str,
        started: i64,
        finished: Option<i64>,
        outcome: &str,
        by: &str,
        detail: Option<&str>,
    ) -> Result<()> {
        B::execute(
            conn,
            &format!(
                "INSERT INTO {} (version, phase, checksum, started_at, finished_at, outcome, by_instance, detail) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                self.history
            ),
            &[
                Bind::I64(version.as_i64()),
                Bind::Text(phase),
                Bind::Text(checksum),
                Bind::I64(started),
                Bind::OptI64(finished),
                Bind::Text(outcome),
                Bind::Text(by),
                Bind::OptText(detail),
            ],
        )?;
        Ok(())
    }

    /// Marks the `running` row of (version, phase) applied.
    pub(crate) fn finish_running<B: Backend>(
        &self,
        conn: &mut B::Connection,
        version: Version,
        phase: Phase,
        now: i64,
    ) -> Result<()> {
        B::execute(
            conn,
            &format!(
                "UPDATE {} SET outcome = $1, finished_at = $2 WHERE version = $3 AND phase = $4 AND outcome = $5",
                self.history
            ),
            &[
                Bind::Text(APPLIED),
                Bind::I64(now),
                Bind::I64(version.as_i64()),
                Bind::Text(phase.as_str()),
                Bind::Text(RUNNING),
            ],
        )?;
        Ok(())
    }

    /// Every history row, oldest first.
    pub(crate) fn history<B: Backend>(
        &self,
        conn: &mut B::Connection,
    ) -> Result<Vec<HistoryEntry>> {
        let rows: Vec<HistoryRow> = B::load(
            conn,
            &format!(
                "SELECT version, phase, checksum, started_at, finished_at, outcome, by_instance, detail \
                 FROM {} ORDER BY id",
                self.history
            ),
            &[],
        )?;
        rows.into_iter()
            .map(|r| {
                let version = Version::from_i64(r.version).ok_or_else(|| {
                    self.corrupt(
                        &self.history,
                        format!("version {} is not a positive version number", r.version),
                    )
                })?;
                Ok(HistoryEntry {
                    version,
                    phase: r.phase,
                    checksum: r.checksum,
                    started_at_ms: r.started_at,
                    finished_at_ms: r.finished_at,
                    outcome: r.outcome,
                    by: r.by_instance,
                    detail: r.detail,
                })
            })
            .collect()
    }

    /// Inserts or replaces this instance's fleet row, its lease running
    /// `lease_ms` from the database's clock (`me.lease_until_ms` is ignored).
    pub(crate) fn register<B: Backend>(
        &self,
        conn: &mut B::Connection,
        me: &Instance,
        lease_ms: i64,
    ) -> Result<()> {
        B::execute(
            conn,
            &format!("DELETE FROM {} WHERE id = $1", self.fleet),
            &[Bind::Text(&me.id)],
        )?;
        B::execute(
            conn,
            &format!(
                "INSERT INTO {} (id, host, pid, label, min_version, max_version, observed_epoch, lease_until, started_at, catalog) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, {now} + $8, {now}, $9)",
                self.fleet,
                now = B::now_ms_sql()
            ),
            &[
                Bind::Text(&me.id),
                Bind::Text(&me.host),
                Bind::I64(me.pid),
                Bind::Text(&me.label),
                Bind::I64(me.first.as_i64()),
                Bind::I64(me.last.as_i64()),
                Bind::I64(me.observed_epoch),
                Bind::I64(lease_ms),
                Bind::OptText(me.catalog.as_deref()),
            ],
        )?;
        Ok(())
    }

    /// Renews this instance's lease for `lease_ms` of the database's clock.
    /// Returns false if the row is gone (expired and removed).
    pub(crate) fn renew<B: Backend>(
        &self,
        conn: &mut B::Connection,
        id: &str,
        lease_ms: i64,
    ) -> Result<bool> {
        let n = B::execute(
            conn,
            &format!(
                "UPDATE {} SET lease_until = {} + $1 WHERE id = $2",
                self.fleet,
                B::now_ms_sql()
            ),
            &[Bind::I64(lease_ms), Bind::Text(id)],
        )?;
        Ok(n == 1)
    }

    /// Acknowledges the state epoch this instance has acted on. Ticks are
    /// serialized, so acknowledgements only go back when the state row's
    /// epoch did (a restore): then the lower one is the truth.
    pub(crate) fn acknowledge<B: Backend>(
        &self,
        conn: &mut B::Connection,
        id: &str,
        epoch: i64,
    ) -> Result<()> {
        B::execute(
            conn,
            &format!(
                "UPDATE {} SET observed_epoch = $1 WHERE id = $2 AND observed_epoch <> $1",
                self.fleet
            ),
            &[Bind::I64(epoch), Bind::Text(id)],
        )?;
        Ok(())
    }

    /// Removes this instance's fleet row (clean shutdown).
    pub(crate) fn deregister<B: Backend>(&self, conn: &mut B::Connection, id: &str) -> Result<()> {
        B::execute(
            conn,
            &format!("DELETE FROM {} WHERE id = $1", self.fleet),
            &[Bind::Text(id)],
        )?;
        Ok(())
    }

    /// Instances whose lease had not expired `grace` ms before `now`. Rows
    /// expired before that are removed on the way: a dead instance leaves
    /// with its lease. Callers pass one lease as the grace: an instance left
    /// the steady path by itself at three quarters of its lease, and the rest
    /// gives calls it had in flight (which may be waiting on the database)
    /// time to finish. All instances of a fleet should use the same lease. A lease that reaches further than the longest any
    /// instance can take (`MAX_LEASE` from `now`: a row no live instance
    /// wrote, a ghost) is cut to that first, so it expires in time.
    pub(crate) fn live_instances<B: Backend>(
        &self,
        conn: &mut B::Connection,
        grace: i64,
    ) -> Result<Vec<Instance>> {
        let now = B::now_ms_sql();
        let capped = B::execute(
            conn,
            &format!(
                "UPDATE {} SET lease_until = {now} + $1 WHERE lease_until > {now} + $1",
                self.fleet
            ),
            &[Bind::I64(crate::fleet::millis(crate::handle::MAX_LEASE))],
        )?;
        if capped > 0 {
            tracing::warn!(
                rows = capped,
                "fleet rows with leases longer than any instance takes: cut to two hours"
            );
        }
        // Rows stay for the renewal grace past that: an instance whose
        // renewals a long write holds back may still be alive (see
        // `noticed_instances`).
        B::execute(
            conn,
            &format!("DELETE FROM {} WHERE lease_until <= {now} - $1", self.fleet),
            &[Bind::I64(grace.saturating_add(crate::fleet::millis(
                crate::fleet::RENEWAL_GRACE,
            )))],
        )?;
        let rows: Vec<FleetRow> = B::load(
            conn,
            &format!(
                "SELECT id, host, pid, label, min_version, max_version, observed_epoch, lease_until, catalog \
                 FROM {} WHERE lease_until > {now} - $1 ORDER BY id",
                self.fleet
            ),
            &[Bind::I64(grace)],
        )?;
        rows.into_iter().map(|r| self.to_instance(r)).collect()
    }

    /// Instances past `grace` but within the renewal grace after it: dead,
    /// or alive with their renewals held back by a long write (SQLite's
    /// write lock during a phase). Such an instance may still be on the
    /// steady path by confirmation reads, so a switch gives it notice
    /// (deploying mode, then `Tandem::notice`) before it goes on without it.
    pub(crate) fn noticed_instances<B: Backend>(
        &self,
        conn: &mut B::Connection,
        grace: i64,
    ) -> Result<Vec<Instance>> {
        let now = B::now_ms_sql();
        let rows: Vec<FleetRow> = B::load(
            conn,
            &format!(
                "SELECT id, host, pid, label, min_version, max_version, observed_epoch, lease_until, catalog \
                 FROM {} WHERE lease_until <= {now} - $1 AND lease_until > {now} - $2 ORDER BY id",
                self.fleet
            ),
            &[
                Bind::I64(grace),
                Bind::I64(grace.saturating_add(crate::fleet::millis(crate::fleet::RENEWAL_GRACE))),
            ],
        )?;
        rows.into_iter().map(|r| self.to_instance(r)).collect()
    }

    /// One statement, one snapshot, no write: the state row's epoch and
    /// mode, and whether `id`'s fleet row is there. `None` without a state row.
    pub(crate) fn confirm<B: Backend>(
        &self,
        conn: &mut B::Connection,
        id: &str,
    ) -> Result<Option<ConfirmRow>> {
        let rows: Vec<ConfirmRow> = B::load(
            conn,
            &format!(
                "SELECT s.epoch AS epoch, s.mode AS mode, \
                 (SELECT count(*) FROM {} f WHERE f.id = $1) AS mine \
                 FROM {} s WHERE s.id = 1",
                self.fleet, self.state
            ),
            &[Bind::Text(id)],
        )?;
        Ok(rows.into_iter().next())
    }

    fn to_instance(&self, r: FleetRow) -> Result<Instance> {
        let bad = |v: i64| {
            self.corrupt(
                &self.fleet,
                format!(
                    "instance {}: version {v} is not a positive version number",
                    r.id
                ),
            )
        };
        let first = Version::from_i64(r.min_version).ok_or_else(|| bad(r.min_version))?;
        let last = Version::from_i64(r.max_version).ok_or_else(|| bad(r.max_version))?;
        Ok(Instance {
            id: r.id,
            host: r.host,
            pid: r.pid,
            label: r.label,
            first,
            last,
            observed_epoch: r.observed_epoch,
            lease_until_ms: r.lease_until,
            catalog: r.catalog,
        })
    }

    /// Removes instance `id`'s fleet row, whatever its lease says, and
    /// returns what it said (`None` if there is no such row). A row with
    /// impossible versions is exactly what one evicts: it is described as
    /// stored, not refused.
    pub(crate) fn evict<B: Backend>(
        &self,
        conn: &mut B::Connection,
        id: &str,
    ) -> Result<Option<String>> {
        let rows: Vec<FleetRow> = B::load(
            conn,
            &format!(
                "SELECT id, host, pid, label, min_version, max_version, observed_epoch, lease_until, catalog \
                 FROM {} WHERE id = $1",
                self.fleet
            ),
            &[Bind::Text(id)],
        )?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let described = format!(
            "{} ({}, pid {}, serves {}..={}, id {}, acknowledged epoch {}, lease until {} ms)",
            row.label,
            row.host,
            row.pid,
            row.min_version,
            row.max_version,
            row.id,
            row.observed_epoch,
            row.lease_until
        );
        self.deregister::<B>(conn, id)?;
        Ok(Some(described))
    }

    /// Sets the mode (bumping the epoch); requires the upgrade lease.
    /// Returns the new epoch.
    pub(crate) fn set_mode<B: Backend>(
        &self,
        conn: &mut B::Connection,
        mode: Mode,
        owner: &str,
    ) -> Result<i64> {
        let n = B::execute(
            conn,
            &format!(
                "UPDATE {} SET mode = $1, epoch = {} + 1, updated_at = {} WHERE id = 1 AND owner = $2",
                self.state,
                self.next_epoch_base::<B>(),
                B::now_ms_sql()
            ),
            &[Bind::Text(mode.as_str()), Bind::Text(owner)],
        )?;
        if n != 1 {
            return Err(Error::UpgraderBusy {
                holder: "another upgrader (our lease expired)".to_owned(),
                expires_in_ms: 0,
            });
        }
        Ok(self.read_state::<B>(conn)?.epoch)
    }
}

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
}
