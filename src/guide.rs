//! # Writing a versioned change
//!
//! A change from schema version N-1 to N is a folder in the catalog
//! (`schema_versions/NNNN_name/`: `expand.sql`, optionally `switch.sql`,
//! `switch_back.sql`, `contract.sql`, and `*.postgres.sql` variants), one new
//! diesel `table!` module, and one new binding per repository whose tables
//! changed. This guide says what goes in each, with the example in
//! `examples/accounts_service` (two changes: one email becomes many; a name
//! splits in two and NOT NULL columns arrive) and its tests in
//! `tests/two_versions.rs`.
//!
//! ## Where each binding must work
//!
//! During a rolling deploy, binaries serving N-1..=N run beside binaries
//! serving only N-1, and until contract a binary can be rolled back. So:
//!
//! | database state | N-1 binding | N binding |
//! |----------------|:-----------:|:---------:|
//! | N-1 stable     | must work   |           |
//! | N expanded     | must work   |           |
//! | N switched     | must work (rollback, [`switch_back`](crate::Upgrader::switch_back)) | must work |
//! | N contracted   |             | must work |
//!
//! And data must cross the switch both ways: what N-1 wrote before the
//! switch, N reads after it (and after contract); what N wrote after the
//! switch, N-1 reads until contract. [`crate::testing`] checks exactly this
//! table and both directions on fresh databases.
//!
//! ## Expand: additive only
//!
//! Expand runs while every instance may still be N-1 code. It may:
//!
//! * create tables and indexes;
//! * add columns that are **nullable or have a default** (old code does not
//!   write them). A column that must end NOT NULL arrives nullable and gets
//!   its constraint in contract;
//! * add **sync triggers** that keep old and new structures equal, in both
//!   directions (old code writes the old column, new code the new one). Guard
//!   each direction (`IS DISTINCT FROM` on PostgreSQL, `IS NOT` on SQLite) so
//!   the two stop after one bounce;
//! * register a **batched backfill** with [`Builder::backfill`](crate::Builder::backfill)
//!   for rows written before the triggers existed: small batches (hundreds of
//!   rows), idempotent, returning 0 when nothing is left. Where a trigger can
//!   compute the new value from the row, the backfill can just touch rows
//!   (`UPDATE t SET c = c WHERE id IN (… LIMIT 500)`) and let the trigger do
//!   it, so the mapping is written once.
//!
//! It must not drop, rename or retype anything old code reads or writes, nor
//! add a constraint old code's writes would break. On PostgreSQL it must
//! also not hold a busy table's lock for a build or a scan: an index on an
//! existing table is built with `CREATE INDEX CONCURRENTLY`, which cannot
//! run inside a phase's transaction: a change file's `create_index` does
//! that after expand's transaction (resumable; see
//! [`ConcurrentIndex`](crate::change::ConcurrentIndex)); in hand-written
//! SQL, build it beforehand and write it here as `CREATE INDEX IF NOT
//! EXISTS`; a `CHECK` or foreign key arrives
//! `NOT VALID` and is validated later.
//!
//! The [lint](crate::lint) reads every phase file this way, and the kit runs
//! it before anything else: an expand that drops a column fails the
//! application's tests with `expand-drop`, its file and line, and "move the
//! drop to contract.sql". A statement that is safe where a rule says
//! otherwise says why, in a comment before it
//! (`-- tandem:allow(expand-drop) <reason>`). Behind the lint, the kit
//! still runs the bindings: an N-1 binding that fails "on a database at
//! version N expanded" shows the database error.
//!
//! Lessons that cost us a failing test each:
//!
//! * **A backfill beside triggers needs `ON CONFLICT DO NOTHING`.** On
//!   PostgreSQL, a row that a trigger inserts after the backfill statement's
//!   snapshot makes a plain `INSERT … SELECT … WHERE NOT EXISTS` fail with a
//!   unique violation.
//! * **SQLite triggers must not use `INSERT OR REPLACE`** (or any `OR`
//!   conflict clause): the conflict clause of the statement that fired the
//!   trigger overrides the one inside it, so an application's upsert turns
//!   the trigger's REPLACE into an ABORT. Update, then insert what is missing
//!   (`INSERT … SELECT … WHERE NOT EXISTS`).
//! * **PostgreSQL writers must lock tables in one order.** With triggers both
//!   ways, an N-1 writer locks `accounts` then (in its trigger)
//!   `account_emails`, and an N writer the reverse, unless N's code locks
//!   the parent row first (`SELECT … FOR UPDATE`); otherwise they deadlock
//!   under load. Contract's `DROP TRIGGER`s take their table locks in the
//!   same order.
//! * **Give every NOT NULL column a default from the start.** SQLite cannot
//!   drop a NOT NULL constraint without rebuilding the table, so a later
//!   version whose code stops writing the column could not insert.
//! * **Run multi-statement writes in a write transaction.** On SQLite
//!   `BEGIN IMMEDIATE` (a deferred transaction that later writes can fail
//!   with `SQLITE_BUSY`); inside [`Tandem::unit_of_work`](crate::Tandem::unit_of_work)
//!   that transaction is already open and diesel's `immediate_transaction`
//!   does not nest: use a savepoint (`transaction`) there.
//!
//! ## Switch: a few fast statements
//!
//! The switch runs under the writer side of the schema lock, with calls
//! waiting (PostgreSQL, in deploying mode: on the database's shared lock),
//! so it must be metadata only: `switch.sql` is optional, and when present
//! holds a handful of statements that take milliseconds (a view redefined, a
//! default changed). No data movement, no index build, no table scan. The
//! version bump commits with it. A `switch_back.sql` undoes it, for
//! [`Upgrader::switch_back`](crate::Upgrader::switch_back).
//!
//! ## Contract: remove what N-1 used
//!
//! Contract runs once every live instance has acknowledged the switch (the
//! upgrader waits, [`Error::FleetNotAcknowledged`](crate::Error::FleetNotAcknowledged)
//! otherwise). Drop the sync triggers first, then the old columns and
//! tables, then add the constraints the new columns could not have during
//! expand: on PostgreSQL `ALTER COLUMN … SET NOT NULL` (it checks every row
//! under the phase's `lock_timeout`); on SQLite, which cannot alter a
//! column, `BEFORE INSERT`/`BEFORE UPDATE` triggers that
//! `RAISE(ABORT, 'NOT NULL constraint failed: …')` (an addition the lint's
//! `contract-only-removes` rule lets through only with an opt-out saying
//! so, as the example's `schema_versions_sql/0003_names_and_plans/contract.sql` does). After contract the data
//! tier cannot go back; binaries older than N no longer start
//! ([`Error::VersionNotServed`](crate::Error::VersionNotServed)).
//!
//! ## Bindings and version gates
//!
//! Each version has its own `table!` module with only the columns that
//! version's code may touch (version 2's `accounts` has no `email`, even
//! while the column still exists), so the compiler checks each binding
//! against its own schema. A repository whose tables did not change reuses
//! its binding for the new version
//! ([`RepositoryBuilder::bindings`](crate::RepositoryBuilder::bindings)).
//!
//! A feature that needs version N is gated on the call's version,
//! [`Session::at_least`](crate::Session::at_least): decided once, from the
//! version the call runs with, so a switch cannot change the answer halfway.
//! A repository that only exists from N on has bindings from N on and is
//! reached only behind the gate:
//!
//! ```
//! # #[cfg(feature = "sqlite")] {
//! use std::sync::Arc;
//! use tandem::{Repository, Sqlite, Tandem};
//!
//! trait Referrals: Send + Sync { fn count(&self) -> u32; }
//! struct ReferralsV2;
//! impl Referrals for ReferralsV2 { fn count(&self) -> u32 { 0 } }
//!
//! # fn main() -> Result<(), tandem::Error> {
//! let db = Tandem::<Sqlite>::builder(":memory:", tandem::testing::demo::catalog()?)
//!     .backfill(2, "copy emails", tandem::testing::demo::backfill_emails)
//!     .open()?;
//! let referrals = Repository::<dyn Referrals>::builder("referrals")
//!     .binding(2, Arc::new(ReferralsV2))
//!     .build()?;
//! let shown = |db: &Tandem<Sqlite>| {
//!     db.unit_of_work(|s| match s.at_least(2) {
//!         true => Ok::<_, tandem::Error>(Some(s.repo(&referrals)?.count())),
//!         false => Ok(None), // the feature is off while version 1 is live
//!     })
//! };
//! assert_eq!(shown(&db)?, None);
//! db.upgrader().upgrade_to(2)?;
//! assert_eq!(shown(&db)?, Some(0));
//! # Ok(()) }
//! # main().unwrap();
//! # }
//! ```
//!
//! ## Releases, and installations many versions behind
//!
//! A release serves N-1..=N ([`Builder::serves`](crate::Builder::serves)),
//! so it runs before and after the switch. A release may drop the code of
//! older versions; opened on a database that is further behind, it still
//! opens, its calls fail with [`Error::Upgrading`](crate::Error::Upgrading)
//! before any statement runs (map it to `503 Service Unavailable` with
//! `Retry-After`), and [`Upgrader::upgrade_to`](crate::Upgrader::upgrade_to)
//! walks every version in between, each through expand, switch and
//! contract, using the catalog (which keeps every version's SQL) and the
//! backfills the release registers for every version. As soon as the live
//! version is one it serves, its calls work. `examples/accounts_service`
//! shows it: a release with bindings for 2 and 3 only, on a version 1
//! database.
//!
//! ## Testing a change
//!
//! With the kit ([`crate::testing`], feature `testing`), per repository:
//!
//! * [`Transition::check`](crate::testing::Transition::check) runs a test
//!   closure with each binding in each state of the table above, on a fresh
//!   database per state;
//! * [`Transition::forward`](crate::testing::Transition::forward) and
//!   [`backward`](crate::testing::Transition::backward) write through one
//!   binding and read through the other across the switch (and a
//!   switch back).
//!
//! A failure names the binding's version, the state ("version 2 expanded")
//! and the database error, and says what to fix. Compare what both versions
//! can express: version 2 of the example keeps one name, so a two-word first
//! name written by version 3 reads back split differently; the test compares
//! the whole name for that direction.
//!
//! Run the same tests on SQLite and PostgreSQL: their trigger languages,
//! conflict rules and locks differ (every lesson above came from one
//! backend passing and the other failing).
//!
//! ## Writing a change with operations
//!
//! A version folder's `change.toml` lists operations instead of SQL (see
//! [`crate::change`] for each one and the SQL it becomes on each backend):
//!
//! ```toml
//! [[operations]]
//! add_column = { table = "orders", column = { name = "note", type = "text", nullable = false, default = "''" } }
//! [[operations]]
//! rename_column = { table = "orders", from = "customer", to = "customer_name" }
//! ```
//!
//! Write the bindings as for hand-written SQL: version N-1's `table!`
//! module names `customer`, version N's `customer_name` and `note`. The
//! add runs in expand; the rename runs at the switch, where no call of
//! either version is in flight, and back at a switch back; drops run in
//! contract. Test it with the kit like any change: it checks the N-1
//! binding after a switch back, since no N-1 call ever runs on the renamed
//! schema.
//!
//! A type change is `change_type`, with an `up` expression (the new value
//! from the old column) and a `down` one (what version N-1 reads after a
//! switch back, such as a bigint clamped to an int). Version N-1's binding
//! keeps its old `table!` type, version N's names the new one under the
//! same column name; rows already there are filled by a keyset backfill
//! after expand's SQL, in batches of
//! [`Upgrader::backfill_batches`](crate::Upgrader::backfill_batches), and a
//! crash in the middle resumes after the last batch that committed (each
//! batch records its last key in the running expand's history row). The
//! key should not change: a row whose key moved behind the walk (while it
//! ran, or while the expand was down) is found by one read of the table
//! when the walk ends, and the walk goes again from the first such row, up
//! to four walks ([`Error::BackfillUnsettled`](crate::Error::BackfillUnsettled)
//! after that).
//!
//! One column into several is `split_column`: each new column in `into`
//! has an `up` expression of the old one, and `down` computes the old
//! column from the new ones (`cents` into `units` and `hundredths`, `down
//! = "units * 100 + hundredths"`). Version N-1's binding names the old
//! column, version N's the new ones; one backfill walk fills them all, and
//! after the switch a trigger keeps the old column computed from version
//! N's writes until contract drops it (`tests/changes.rs`, `split`).
//!
//! An index on a table that is already there (`create_index`,
//! `add_unique`) is built on PostgreSQL with `CREATE INDEX CONCURRENTLY`
//! after expand's transaction, so the table keeps taking writes while it
//! builds; expand's transaction first checks the table and the columns,
//! so a typo rolls it back. A build that fails (a duplicate for a unique
//! index) leaves the expand to resume: fix the data and run the upgrade
//! again, and the invalid index is dropped and built anew.
//!
//! A rename is free at the switch only for tandem's own calls: a client
//! that uses the database without tandem (a report, another service) sees
//! the column's name change under it. For such a database write the
//! copy-and-sync form, `copy = { type = "text" }` (the column's type):
//!
//! ```toml
//! [[operations]]
//! rename_column = { table = "orders", from = "customer", to = "customer_name", copy = { type = "text" } }
//! ```
//!
//! Both names then exist from expand to contract and a trigger keeps them
//! equal whichever one a writer names; nothing happens at the switch, and
//! contract drops the old column (tell the other clients to move first).
//! Version N's binding declares the new column nullable (`Nullable<Text>`):
//! it is added without a constraint.
//!
//! A renamed table keeps its old name for such clients with `view = true`:
//! the switch renames the table and leaves a view of the old name over it,
//! which a switch back and contract drop. Nothing is copied; the other
//! clients keep reading the old name until contract (and, on PostgreSQL,
//! writing it: a view of one table is updatable there; a SQLite view is
//! read-only).
//!
//! ```toml
//! [[operations]]
//! rename_table = { from = "orders", to = "purchases", view = true }
//! ```
//!
//! What the operations do not cover goes in an `sql` operation or a
//! hand-written file beside `change.toml`, with the sync triggers and
//! backfill this guide describes, and the lint reads it.
//!
//! ## Rolling a binary back
//!
//! Until contract, a release can be rolled back:
//! [`Upgrader::switch_back`](crate::Upgrader::switch_back) makes N-1 live
//! again (refused while an instance that cannot serve N-1 is live), and
//! everything written through N is there for N-1, because the sync triggers
//! still run (the kit's backward check proves it). Then deploy the older
//! binary. The expand stays; a later release switches again. After
//! contract there is no way back for the data tier: roll forward with a
//! fix instead.
