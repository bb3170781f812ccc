//! Errors. Every variant names what went wrong, the versions and names
//! involved, and what to do next.

use std::time::Duration;

use crate::version::{Phase, Version};

mod area;
pub use area::Area;

/// Shorthand for `Result<T, tandem::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything tandem can report.
///
/// Errors are split like diesel's: [`CatalogError`] while reading
/// `schema_versions/`, the other variants while serving or upgrading.
/// One flat enum, so that the common cases match in one step
/// (`Err(Error::Upgrading { .. })` in a request handler); [`Error::area`]
/// groups them ([`Area`]: configuration, catalog, serving, metadata,
/// upgrade, fleet, database) and [`Error::is_retryable`] says which may
/// simply be tried again. No variant ever contains a database password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The metadata table prefix is not a plain SQL identifier.
    #[error(
        "invalid metadata table prefix {prefix:?}: {reason}; use a plain identifier of lowercase \
         letters, digits and underscores that does not start with a digit (at most 40 characters), \
         such as the default `tandem_`"
    )]
    InvalidPrefix {
        /// The prefix as given.
        prefix: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The catalog in `schema_versions/` is malformed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),

    /// A version number given to the API was 0 or out of range.
    #[error(
        "{context}: {value} is not a schema version; versions are positive integers starting at 1"
    )]
    InvalidVersion {
        /// The number given.
        value: i64,
        /// Where it was given.
        context: &'static str,
    },

    /// A builder setting is outside the range tandem accepts.
    #[error(
        "{setting}({value:?}) is out of range: it must be at most {max:?} ({why}); pass a smaller value"
    )]
    InvalidSetting {
        /// The builder method.
        setting: &'static str,
        /// The value given.
        value: Duration,
        /// The largest value accepted.
        max: Duration,
        /// Why there is a limit.
        why: &'static str,
    },

    /// A repository's bindings skip a version.
    #[error(
        "repository `{repository}` has bindings for versions {before} and {after} but none for the \
         versions between; register a binding for each version (the same binding may serve several \
         through `bindings(range, ..)`)"
    )]
    BindingGap {
        /// The repository's name.
        repository: String,
        /// The last version before the gap.
        before: Version,
        /// The first version after the gap.
        after: Version,
    },

    /// Two bindings were registered for one version of a repository.
    #[error("repository `{repository}` has two bindings for version {version}; keep one")]
    DuplicateBinding {
        /// The repository's name.
        repository: String,
        /// The version registered twice.
        version: Version,
    },

    /// A repository was built without any binding.
    #[error("repository `{repository}` has no bindings; register at least one with `binding(version, ..)`")]
    NoBindings {
        /// The repository's name.
        repository: String,
    },

    /// The database is behind this binary: its live schema version is older
    /// than the oldest version the binary serves. Calls fail with this,
    /// before any query runs, until an upgrade (for example
    /// [`Upgrader::upgrade_to`](crate::Upgrader::upgrade_to), which walks
    /// every hop) makes the live version servable; then they work again at
    /// once. Transient during a rollout ([`Area::Serving`]): a service maps
    /// it to `503 Service Unavailable` with `Retry-After`. Not
    /// [`is_retryable`](Error::is_retryable), which means "succeeds later
    /// with nobody acting": this one needs the upgrade to run.
    #[error(
        "the database is at schema version {live}, older than the versions this binary serves \
         ({first}..={last}): an upgrade to {first} is needed; retry once it has run (`upgrade_to({first})` \
         or later walks every version in between)"
    )]
    Upgrading {
        /// The live version read from the metadata table.
        live: Version,
        /// The oldest version this binary serves.
        first: Version,
        /// The newest version this binary serves.
        last: Version,
    },

    /// The database is ahead of this binary: its live schema version is newer
    /// than any version the binary serves. Calls fail with this, before any
    /// query runs. Retrying does not help; deploy a binary that serves the
    /// live version (the data tier only rolls forward).
    #[error(
        "the live schema version is {live}, newer than the versions this binary serves \
         ({first}..={last}); deploy a binary with bindings for version {live} (a database is never \
         moved back past a contract)"
    )]
    VersionNotServed {
        /// The live version read from the metadata table.
        live: Version,
        /// The oldest version this binary serves.
        first: Version,
        /// The newest version this binary serves.
        last: Version,
    },

    /// A repository has no binding for the live version although the binary
    /// declares that it serves it.
    #[error(
        "repository `{repository}` has no binding for the live schema version {live} (its bindings \
         cover {first}..={last}); register a binding for version {live}"
    )]
    NoBinding {
        /// The repository's name.
        repository: String,
        /// The live version.
        live: Version,
        /// The repository's oldest binding.
        first: Version,
        /// The repository's newest binding.
        last: Version,
    },

    /// The binary declares versions its catalog does not contain.
    #[error(
        "this binary declares it serves versions {first}..={last}, but its catalog stops at version \
         {latest}; add the missing versions to schema_versions/ or narrow `serves(..)`"
    )]
    ServedBeyondCatalog {
        /// The oldest served version.
        first: Version,
        /// The newest served version.
        last: Version,
        /// The newest version in the catalog.
        latest: Version,
    },

    /// `serves(first..=last)` with `first` after `last`: no version at all.
    #[error(
        "serves({first}..={last}) is an empty range: the oldest version this binary has bindings \
         for comes first, e.g. serves({last}..={first})"
    )]
    EmptyServedRange {
        /// The range's start.
        first: Version,
        /// The range's end.
        last: Version,
    },

    /// A backfill is registered for a version the catalog does not have:
    /// the registration is wrong, not the database.
    #[error(
        "backfill `{step}` is registered for version {version}, but this binary's catalog ends at \
         version {latest}; register it for the version whose expand it completes (one in \
         schema_versions/), or add version {version} to the catalog"
    )]
    BackfillBeyondCatalog {
        /// The backfill's name.
        step: String,
        /// The version it was registered for.
        version: Version,
        /// The newest version in the catalog.
        latest: Version,
    },

    /// A version of the catalog is written for other backends only (its
    /// `change.toml` lists `backends`).
    #[error(
        "version {version} of the catalog is written for {supported} only (the `backends` of its \
         change.toml), not for {backend}; open the database with one of those, or add {backend} to \
         `backends` and make its operations work there"
    )]
    BackendNotSupported {
        /// The version.
        version: Version,
        /// This handle's backend.
        backend: &'static str,
        /// The backends the version is written for, comma-separated.
        supported: String,
    },

    /// A [`Builder::backfill_sql`](crate::Builder::backfill_sql) statement
    /// that cannot run as a batch.
    #[error(
        "backfill `{step}` of version {version} is not one statement to run until it changes no \
         row: {problem}; write one UPDATE, INSERT or DELETE that changes a batch (`… LIMIT 500`), \
         or register a Rust step with `backfill`"
    )]
    BadBackfill {
        /// The backfill's name.
        step: String,
        /// The version it was registered for.
        version: Version,
        /// What is wrong with the statement.
        problem: String,
    },

    /// The database has tables but no tandem metadata. tandem never guesses
    /// the version of an existing schema.
    #[error(
        "the database has {tables} table(s) but no tandem metadata ({prefix}state is missing); if \
         its schema matches version K of the catalog, open it once with `baseline(K)` to adopt it"
    )]
    NotAdopted {
        /// The metadata table prefix.
        prefix: String,
        /// How many tables the database holds.
        tables: i64,
    },

    /// A baseline was requested for a database whose metadata says otherwise.
    #[error(
        "baseline({requested}) was requested, but the database is already managed by tandem at \
         version {live}; remove `baseline(..)` from the builder"
    )]
    BaselineMismatch {
        /// The baseline version requested.
        requested: Version,
        /// The version the metadata records.
        live: Version,
    },

    /// A table under the metadata prefix exists but is not one of tandem's
    /// (an application table such as `app_history` beside the prefix
    /// `app_`). tandem neither adopts nor changes it.
    #[error(
        "table {table} is in the way of tandem's metadata: {detail}; choose another metadata \
         prefix with `Builder::prefix` (e.g. `tandem_`), or rename that table"
    )]
    PrefixTaken {
        /// The table.
        table: String,
        /// What is wrong with it.
        detail: String,
    },

    /// A metadata table is missing, incomplete or holds values tandem never writes.
    #[error(
        "tandem metadata is damaged: {table}: {detail}; restore the metadata tables from a backup, \
         or repair the row by hand; tandem will not guess"
    )]
    MetadataCorrupt {
        /// The table involved.
        table: String,
        /// What is wrong with it.
        detail: String,
    },

    /// A version is not in this binary's catalog (the database is ahead of
    /// the binary, or an upgrade target does not exist).
    #[error(
        "schema version {version} is not in this binary's catalog (latest: {latest}); {}",
        if version > latest { "deploy a binary built with the newer catalog" } else { "pick a version from the catalog" }
    )]
    UnknownVersion {
        /// The version asked for or found.
        version: Version,
        /// The newest version in the catalog.
        latest: Version,
    },

    /// A phase's SQL differs from the text recorded when it was applied.
    #[error(
        "checksum drift in version {version} {phase}: applied with sha256 {recorded}, the catalog now \
         has {current}; applied SQL must not change: restore the original file and put the change in \
         a new version"
    )]
    ChecksumDrift {
        /// The version whose file changed.
        version: Version,
        /// The phase whose file changed.
        phase: Phase,
        /// The checksum recorded in the history table.
        recorded: String,
        /// The checksum of the catalog's text.
        current: String,
    },

    /// A phase was requested in a state where it cannot run (contract before
    /// switch, switch before expand, expand while another version is open).
    #[error("cannot run {attempted} of version {version}: the database is at version {live} ({state}); {hint}")]
    PhaseOutOfOrder {
        /// The phase requested.
        attempted: Phase,
        /// The version it was requested for.
        version: Version,
        /// The live version.
        live: Version,
        /// The state phase (`stable`, `expanded`, `switched`).
        state: &'static str,
        /// What to run instead.
        hint: &'static str,
    },

    /// An upgrade target lies behind the live version.
    #[error(
        "cannot upgrade to version {target}: the database is at version {live} and the data tier only \
         rolls forward; to undo a switch before contract, use `switch_back()`"
    )]
    NotRollForward {
        /// The live version.
        live: Version,
        /// The requested target.
        target: Version,
    },

    /// Switching back needs `switch_back.sql` because the switch ran statements.
    #[error(
        "version {version} has a switch.sql but no switch_back.sql, so its switch cannot be undone; \
         add schema_versions/…/switch_back.sql reversing it, or roll forward"
    )]
    NoSwitchBack {
        /// The version whose switch cannot be undone.
        version: Version,
    },

    /// Another upgrader holds the upgrade lease.
    #[error(
        "another upgrader ({holder}) is running; its lease expires in {expires_in_ms} ms unless it \
         renews it; wait for it to finish (or use `wait_for_lease`), and rerun"
    )]
    UpgraderBusy {
        /// The holder's instance id (host:pid:nonce).
        holder: String,
        /// Milliseconds until the holder's lease expires.
        expires_in_ms: i64,
    },

    /// No fleet row has this instance id.
    #[error(
        "no instance {id} in the fleet table; `Tandem::instances()` lists the live ones (an expired \
         row is removed by itself)"
    )]
    UnknownInstance {
        /// The id given.
        id: String,
    },

    /// The schema writer lock could not be taken within the retry budget. The
    /// database is unchanged (still at the previous version).
    #[error(
        "the switch to version {version} gave up after {attempts} attempt(s) over {waited:?} without \
         the schema writer lock; the database is still at version {live}; rerun when load is lower \
         or raise the retry budget"
    )]
    LockTimeout {
        /// The version the switch was for.
        version: Version,
        /// The live version, unchanged.
        live: Version,
        /// Attempts made.
        attempts: u32,
        /// Total time spent trying.
        waited: Duration,
    },

    /// The switch would leave a live instance unable to serve the new version.
    #[error(
        "the switch to version {version} is refused: these instances cannot serve it: {}; deploy \
         binaries with bindings for version {version} to them (or stop them) first; a row whose \
         instance is gone for good can be removed with `Upgrader::evict(id)`",
        instances.join(", ")
    )]
    SwitchRefused {
        /// The version the switch was for.
        version: Version,
        /// The instances that lack it (id, label, served versions).
        instances: Vec<String>,
    },

    /// Live instances run binaries whose SQL for the versions of the switch
    /// differs from what the database applied or will apply (two builds
    /// with different `schema_versions/` under the same version numbers).
    /// Switching would leave their bindings on structures they do not know.
    #[error(
        "the switch from version {from} to {to} is refused: these live instances' catalogs have \
         other SQL for version {from} or {to} than this binary's (which the database applied): {}; \
         build every binary from the same schema_versions/ (a released version's SQL never \
         changes; put changes in a new version), deploy that, then rerun",
        instances.join(", ")
    )]
    CatalogDisagrees {
        /// The live version.
        from: Version,
        /// The version switched to.
        to: Version,
        /// The instances whose catalogs differ (label, host, pid, id).
        instances: Vec<String>,
    },

    /// Live instances did not acknowledge a state change in time, so the
    /// phase did not run (the database is unchanged).
    #[error(
        "{phase} of version {version} did not run: these live instances have not acknowledged state \
         epoch {epoch} within {waited:?}: {}; they may still be using the previous version; wait for \
         them (a stuck call, a paused process) or stop them, then rerun; a row whose instance is \
         gone for good can be removed with `Upgrader::evict(id)`",
        instances.join(", ")
    )]
    FleetNotAcknowledged {
        /// The phase that did not run.
        phase: Phase,
        /// Its version.
        version: Version,
        /// The epoch they had to acknowledge.
        epoch: i64,
        /// How long the upgrader waited.
        waited: Duration,
        /// The instances behind (label, host, pid, served versions).
        instances: Vec<String>,
    },

    /// A phase's SQL failed; its transaction rolled back and the state row is
    /// unchanged.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    #[error(
        "{phase} of version {version} failed and was rolled back (the database is unchanged): \
         {source}; fix the SQL in schema_versions/ or the data it trips on, then rerun"
    )]
    PhaseFailed {
        /// The version.
        version: Version,
        /// The phase.
        phase: Phase,
        /// The database error.
        #[source]
        source: diesel::result::Error,
    },

    /// A phase kept meeting lock conflicts with application traffic and gave
    /// up after its retry budget; it rolled back each time, the database is
    /// unchanged.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    #[error(
        "{phase} of version {version} gave up after {attempts} attempt(s) that each waited too long \
         for a table lock ({source}); the database is unchanged; rerun when load is lower, raise \
         `lock_timeout` or `WriterPolicy::attempts`, or make the phase lock tables in the order \
         the application's writers do"
    )]
    PhaseContended {
        /// The version.
        version: Version,
        /// The phase.
        phase: Phase,
        /// Attempts made.
        attempts: u32,
        /// The last lock error.
        #[source]
        source: diesel::result::Error,
    },

    /// A Rust step (for example a batched backfill) failed. Batches already
    /// committed stay; rerunning resumes.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    #[error(
        "step `{step}` of version {version} expand failed after {batches} committed batch(es): \
         {source}; fix the cause and rerun: the step resumes where it stopped"
    )]
    StepFailed {
        /// The version.
        version: Version,
        /// The step's name.
        step: String,
        /// Batches committed before the failure.
        batches: u64,
        /// The database error.
        #[source]
        source: diesel::result::Error,
    },

    /// A generated backfill walked its table again and again, and rows
    /// still needed it: something changes rows' keys (the walk follows the
    /// key) or undoes what it wrote as fast as it walks. Batches committed
    /// stay; rerunning resumes.
    #[error(
        "backfill `{step}` of version {version} walked its table {walks} times and rows still \
         need it: something keeps changing their keys (the walk follows the key) or undoing what \
         it wrote; stop that (a job renumbering keys, a trigger) and rerun expand: it resumes"
    )]
    BackfillUnsettled {
        /// The version.
        version: Version,
        /// The backfill's name (`table.column`).
        step: String,
        /// Walks made.
        walks: u32,
    },

    /// A database error outside an upgrade phase.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),

    /// No connection could be had from the pool in time.
    #[error(
        "no database connection within the pool timeout: {message}; raise `pool_size` or \
         `connection_timeout`, or check that the database is reachable"
    )]
    Pool {
        /// What the pool reported, with any password removed.
        message: String,
    },

    /// The database could not be reached or opened.
    #[error(
        "cannot open database {target}: {message}; check the URL, the server and the credentials"
    )]
    Connect {
        /// The database URL with its password removed.
        target: String,
        /// The driver's message, with any password removed.
        message: String,
    },

    /// Raised by the fault injection of [`testing::faults`](crate::testing::faults)
    /// (the `testing` feature): the upgrader stopped at step boundary
    /// `step`, leaving its lease held as a crashed process would.
    #[cfg(feature = "testing")]
    #[error("injected crash at step {step} ({at}): a test's fault injection, never in production")]
    InjectedCrash {
        /// Step index.
        step: usize,
        /// Step name.
        at: String,
    },
}

pub use tandem_catalog::CatalogError;
