//! Declarative changes: a version folder's `change.toml` lists operations,
//! and tandem writes each phase's SQL for each backend from them.
//!
//! ```toml
//! # schema_versions/0002_orders/change.toml
//! [[operations]]
//! rename_column = { table = "orders", from = "customer", to = "customer_name" }
//!
//! [[operations]]
//! add_column = { table = "orders", column = { name = "note", type = "text", default = "''", nullable = false } }
//! ```
//!
//! | operation       | expand                         | switch / switch back     | contract       |
//! |-----------------|--------------------------------|--------------------------|----------------|
//! | `create_table`  | `CREATE TABLE`                 |                          |                |
//! | `add_column`    | `ADD COLUMN` (nullable, or with a default) |              |                |
//! | `create_index`  | `CREATE INDEX IF NOT EXISTS`; PostgreSQL: `CONCURRENTLY`, after the transaction, resumable | |   |
//! | `rename_table`  |                                | `RENAME TO`, and back    |                |
//! | `rename_table` with `view` |                     | `RENAME TO` and a view of the old name, and back | drop the view |
//! | `rename_column` |                                | `RENAME COLUMN`, and back|                |
//! | `rename_column` with `copy` | new column, sync trigger both ways, keyset backfill | | drop the trigger and the old column |
//! | `drop_column`   |                                |                          | `DROP COLUMN`  |
//! | `drop_index`    |                                |                          | `DROP INDEX`   |
//! | `drop_table`    |                                |                          | `DROP TABLE`   |
//! | `set_not_null`  | fill trigger, fill, `CHECK … NOT VALID` (PostgreSQL) |    | `VALIDATE`, `SET NOT NULL` |
//! | `drop_not_null` | `DROP NOT NULL` (PostgreSQL)   |                          |                |
//! | `set_default`   | `SET DEFAULT` (PostgreSQL)     |                          |                |
//! | `add_check`     |                                | `CHECK … NOT VALID`, and dropped back | `VALIDATE` |
//! | `add_unique`    | `CREATE UNIQUE INDEX IF NOT EXISTS`; PostgreSQL: `CONCURRENTLY`, as `create_index` | |      |
//! | `add_foreign_key` |                              | `FOREIGN KEY … NOT VALID`, and dropped back (PostgreSQL) | `VALIDATE` |
//! | `change_type`   | new column, sync trigger, keyset backfill | swap names and triggers, and back | drop the old column |
//! | `move_column`   | sync triggers to the other table, keyset backfill inserting its rows | swap the triggers for ones writing back, and back | drop the column |
//! | `split_column`  | new columns, a sync trigger each, one keyset backfill | swap the triggers for one computing the old column, and back | drop the old column |
//! | `sql`           | as written, per phase (and per backend if asked) |        |                |
//!
//! SQLite cannot change a constraint or default of an existing column, nor
//! add a foreign key to an existing table, without rebuilding the table; it
//! refuses those operations with a typed error naming what to write
//! instead.
//!
//! **Renames cost nothing.** tandem's switch is atomic across the fleet:
//! every call of version N-1 has drained before it and every call after it
//! runs version N's binding. So a rename runs in switch, as the metadata
//! change it is, and back in switch back: no new column, trigger or
//! backfill. (Clients that use the database without tandem would see the
//! name change at the switch; for them, `rename_column` has the
//! copy-and-sync form, [`CopySync`]: a new column in expand, a trigger both
//! ways, a backfill, the old column dropped in contract; and `rename_table`
//! keeps the old name as a view from the switch to contract, `view = true`.)
//!
//! Expand runs before the switch's renames and contract after them: an
//! expand operation names tables and columns as version N-1 has them, a
//! contract operation as version N has them, and each rename as the
//! renames before it left them.
//!
//! Column types are portable names (`integer`, `bigint`, `smallint`,
//! `text`, `boolean`, `real`, `double`, `blob`, `date`, `timestamp`,
//! `timestamptz`, `json`, `uuid`, `jsonb`), written as each backend names
//! them; one a backend lacks is refused for it (`uuid` and `jsonb` on
//! SQLite: use `text`). An integer primary key is generated (SQLite's
//! `INTEGER PRIMARY KEY`, PostgreSQL's identity). Names are lowercase
//! letters, digits and `_` (at most 63), always quoted in the SQL (a
//! trigger name tandem builds from them that would pass 63 is shortened
//! with a hash); a default is one SQL expression, parsed before it is
//! written. The `up` and `down` expressions of `change_type` and
//! `split_column` may be one per backend where their functions differ
//! ([`Expression`]: `up = { sqlite = "instr(name, ' ')", postgres =
//! "strpos(name, ' ')" }`).
//!
//! The generated SQL is what runs and what is checksummed; the files
//! beside `change.toml` (`expand.sql`, …) still count, and run after the
//! generated statements of their phase. It passes the
//! [lint](crate::lint) by construction: an operation whose SQL would not
//! (an `sql` statement that drops in expand) is refused with the rule's
//! advice. The SQL generated for a change file is frozen by snapshot
//! tests: a release of tandem that changed it would make an applied
//! phase's checksum differ ([`Catalog`](crate::Catalog) keeps accepting
//! the checksum an earlier release recorded, the way it does for line
//! endings, should that ever be needed).

use serde::Deserialize;

use crate::error::CatalogError;
use crate::version::Phase;

mod backfill;
mod generate;
mod index;
mod moved;
mod ops;
mod rename;
mod retype;
mod split;
mod sql;

pub use backfill::Backfill;
pub use generate::Generated;
pub use index::ConcurrentIndex;

/// A parsed `change.toml`: its operations, in order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// The backends the change is written for (`backends = ["postgres"]`
    /// at the top of the file); every backend if unset. On another
    /// backend the catalog refuses to open
    /// ([`CatalogVersion::supports`](crate::CatalogVersion::supports)).
    #[serde(default)]
    pub backends: Option<Vec<String>>,
    /// The operations, in order (`[[operations]]`).
    #[serde(default)]
    pub operations: Vec<Operation>,
}

/// One operation of a change file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Operation {
    /// A new table (expand).
    CreateTable {
        /// Its name.
        table: String,
        /// Its columns.
        columns: Vec<Column>,
    },
    /// A new column (expand): nullable, or `NOT NULL` with a default, so
    /// that version N-1's inserts keep working.
    AddColumn {
        /// The table.
        table: String,
        /// The column.
        column: Column,
    },
    /// A new index (expand). On PostgreSQL, on a table that exists before
    /// this change, it is built with `CREATE INDEX CONCURRENTLY` after
    /// expand's transaction has committed, so the table keeps taking
    /// writes while it builds; an invalid index an interrupted build left
    /// is dropped and built again ([`ConcurrentIndex`]). Otherwise (SQLite,
    /// a table the file creates) `IF NOT EXISTS` in expand's transaction:
    /// on SQLite the build holds the write lock for its length.
    CreateIndex {
        /// The table.
        table: String,
        /// The index's name.
        name: String,
        /// The indexed columns, in order.
        columns: Vec<String>,
        /// Whether the index is unique.
        #[serde(default)]
        unique: bool,
        /// A partial index's condition, one SQL expression over the
        /// table's columns (`is_primary`): only rows it holds for are in it
        /// (unique among them, if `unique`).
        #[serde(default, rename = "where")]
        only: Option<String>,
    },
    /// A table renamed at the switch (and back at a switch back); with
    /// `view = true`, for a database that clients outside tandem also use,
    /// the switch also leaves a view of the old name over the renamed
    /// table (`CREATE VIEW from AS SELECT * FROM to`), dropped at a switch
    /// back and in contract: such a client keeps reading the old name from
    /// the switch to contract, and on PostgreSQL keeps writing it too (a
    /// view of one table is updatable there, the table's defaults apply).
    /// A SQLite view is read-only. Nothing is copied: the view costs one
    /// catalog row.
    RenameTable {
        /// The old name.
        from: String,
        /// The new name.
        to: String,
        /// Whether the old name stays, as a view, until contract.
        #[serde(default)]
        view: bool,
    },
    /// A column renamed at the switch (and back at a switch back); with
    /// `copy`, the copy-and-sync form instead, for a database that clients
    /// outside tandem also use: the new column is added in expand, kept
    /// equal to the old one both ways by a trigger until contract (each
    /// writer, of either name, is seen by readers of both), filled by a
    /// keyset backfill, and the old column dropped in contract.
    RenameColumn {
        /// The table, as the operations before this one leave it (after
        /// a `rename_table` earlier in the file, its new name; the copy
        /// form refuses a file that renames tables).
        table: String,
        /// The old name.
        from: String,
        /// The new name.
        to: String,
        /// The copy-and-sync form (see [`CopySync`]).
        #[serde(default)]
        copy: Option<CopySync>,
    },
    /// A column dropped in contract.
    DropColumn {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// An index dropped in contract.
    DropIndex {
        /// The index.
        name: String,
    },
    /// A table dropped in contract.
    DropTable {
        /// The table.
        table: String,
    },
    /// A nullable column made `NOT NULL` (PostgreSQL; SQLite cannot alter
    /// a column and refuses it): in expand, a trigger fills `fill` into
    /// rows written without a value (version N-1's inserts keep working),
    /// existing NULLs are filled, and a `CHECK … NOT VALID` guards new rows;
    /// in contract, the check is validated (no exclusive lock for the
    /// scan), `SET NOT NULL` uses it, and the check and trigger go.
    SetNotNull {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// A constant SQL expression for rows without a value (`''`, `0`).
        fill: String,
    },
    /// `NOT NULL` dropped from a column, in expand (PostgreSQL; SQLite
    /// refuses it).
    DropNotNull {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// A column's default changed, in expand (PostgreSQL; SQLite refuses
    /// it).
    SetDefault {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The new default, one SQL expression.
        default: String,
    },
    /// A `CHECK` constraint (PostgreSQL; SQLite refuses it): added
    /// `NOT VALID` at the switch, once no version N-1 call can write a row
    /// that breaks it (dropped again at a switch back), and validated in
    /// contract, which fails (and changes nothing) while a row breaks it.
    AddCheck {
        /// The table.
        table: String,
        /// The constraint's name.
        name: String,
        /// The condition, one SQL expression.
        check: String,
    },
    /// A unique index over `columns`, in expand, built as
    /// [`CreateIndex`](Operation::CreateIndex) builds one (on PostgreSQL
    /// concurrently): from then on a duplicate written by either version
    /// fails, and the expand fails while the table holds one (on
    /// PostgreSQL leaving an invalid index, which the next expand drops
    /// and builds again).
    AddUnique {
        /// The table.
        table: String,
        /// The index's name.
        name: String,
        /// The columns that are unique together.
        columns: Vec<String>,
    },
    /// A foreign key (PostgreSQL; SQLite refuses it): added `NOT VALID` at
    /// the switch, once no version N-1 call can write a row that breaks it
    /// (dropped again at a switch back), and validated in contract, which
    /// fails (and changes nothing) while a row breaks it.
    AddForeignKey {
        /// The table.
        table: String,
        /// The constraint's name.
        name: String,
        /// The referencing columns.
        columns: Vec<String>,
        /// The referenced table.
        references: String,
        /// The referenced columns, in the same order.
        referenced_columns: Vec<String>,
    },
    /// A column's type changed, copied and kept in sync (both backends).
    /// Expand adds `_tandem_new_<column>` of the new type, a trigger that
    /// writes `up` into it whenever version N-1 writes a row, and a
    /// [keyset backfill](Backfill) that fills the rows already there. The
    /// switch drops that trigger, renames the old column to
    /// `_tandem_old_<column>` and the new one to `<column>`, and creates the
    /// reverse trigger, which writes `down` into the old column whenever
    /// version N writes, so that a switch back (which swaps the names and
    /// triggers back) finds version N's rows readable by version N-1.
    /// Contract drops the reverse trigger and the old column.
    ///
    /// One direction is synced at a time, so no trigger ever fires the
    /// other: tandem's switch is atomic across the fleet (every call of
    /// version N-1 drains before it, every later call runs version N).
    ///
    /// Indexes and constraints on the column stay with the old one: build
    /// the ones the new column needs on `_tandem_new_<column>` in expand.
    /// PostgreSQL drops the old ones with the old column in contract;
    /// SQLite refuses to drop an indexed column, so list a `drop_index` of
    /// each before the `change_type` (contract runs them in order). On
    /// SQLite the old column must be
    /// nullable or have a default: SQLite checks `NOT NULL` before a
    /// trigger can fill it, so version N's inserts, which leave the old
    /// column out, would fail after the switch.
    ChangeType {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// Its new portable type.
        #[serde(rename = "type")]
        ty: String,
        /// The new value from the old row, one SQL expression in which the
        /// column's name means the old column (`qty`; other names are the
        /// row's other columns).
        up: Expression,
        /// The old value from the new row, one SQL expression in which the
        /// column's name means the new column: what version N-1 reads after
        /// a switch back (`CASE WHEN qty > 2147483647 THEN 2147483647 ELSE
        /// qty END` for a bigint read as an int).
        down: Expression,
        /// Whether the new column may hold NULL (the default: `true`).
        #[serde(default = "yes")]
        nullable: bool,
        /// The new column's default, one constant SQL expression (needed
        /// when it is not nullable).
        #[serde(default)]
        default: Option<String>,
        /// The integer key the backfill walks in order on PostgreSQL (the
        /// default: `id`); SQLite walks the `rowid`.
        #[serde(default = "id")]
        key: String,
    },
    /// One column into several: `split_column = { table = "prices", column
    /// = "cents", into = [{ name = "units", type = "bigint", up = "cents /
    /// 100" }, { name = "hundredths", type = "bigint", up = "cents % 100" }],
    /// down = "units * 100 + hundredths" }`.
    ///
    /// Expand adds each new column and a trigger per new column that
    /// computes it by its `up` from every write of version N-1, and a
    /// [keyset backfill](Backfill) (one walk for all of them) that fills the
    /// rows already there. The switch drops those triggers and creates the
    /// reverse one, which computes the old column by `down` from every
    /// write of version N, so that a switch back (which swaps the triggers
    /// back) finds version N's rows readable by version N-1. Contract drops
    /// the reverse trigger and the old column. No name changes: version N's
    /// bindings name the new columns, version N-1's the old one.
    ///
    /// Each `up` reads the old column (and the row's other columns), never
    /// another new one; `down` reads the new columns (and others), never the
    /// old one. On SQLite the old column must be nullable or have a default
    /// (version N's inserts leave it out, and SQLite checks `NOT NULL` before
    /// a trigger can fill it), and so must each new column that is not
    /// nullable, for version N-1's inserts; indexes on the old column go
    /// with a `drop_index` before the `split_column`, as for `change_type`.
    SplitColumn {
        /// The table.
        table: String,
        /// The column split.
        column: String,
        /// The new columns, two or more.
        into: Vec<SplitInto>,
        /// The old value from the new columns, one SQL expression: what
        /// version N-1 reads after a switch back.
        down: Expression,
        /// The integer key the backfill walks in order on PostgreSQL (the
        /// default: `id`); SQLite walks the `rowid`.
        #[serde(default = "id")]
        key: String,
    },
    /// A column moved to another table, one row there for each row here
    /// that has a value (1:1): `move_column = { table = "accounts", column =
    /// "email", to = "account_emails", key = "account_id", empty = "''" }`;
    /// or one row among many there (1:N), the one a boolean column marks:
    /// `…, primary = "is_primary" }`.
    ///
    /// The other table, with a column of the same name and `key` (unique,
    /// holding this table's `from_key`; 1:N: unique among the rows
    /// `primary` marks, a partial unique index `ON to (key) WHERE
    /// primary`), comes first: a `create_table` earlier in the file (a
    /// `create_index` with `unique` and `where`), or an earlier version.
    /// Expand checks that index (the upserts name it), creates sync
    /// triggers on this table (a write with a value upserts the row there,
    /// one with the `empty` value deletes it, a changed key takes the row
    /// along, and a deleted row takes its rows there first, which a
    /// foreign key to this table needs) and a [keyset backfill](Backfill)
    /// inserting the rows already here that it lacks. The switch swaps them
    /// for triggers on the other table, which write its values back (1:N:
    /// the marked row's; the `empty` value once no row holds the key, or
    /// none is marked), so that a switch back finds version N's writes
    /// readable by version N-1. Contract drops those and the column here.
    /// Version N-1's binding names the column here; version N's names the
    /// other table.
    ///
    /// Other columns of the other table need defaults (the triggers and
    /// the backfill insert `key`, the column and `primary` only). Version N
    /// inserts rows here without the column: it needs a default equal to
    /// `empty` (with `empty` unset, NULL: nullable). With `empty` set, NULL
    /// here is a value, which a NOT NULL column there refuses. 1:N: version
    /// N moves the mark from one row to another by unmarking first (the
    /// unique index refuses two marked rows). `empty` is a constant, the
    /// file may not rename a table, and on SQLite an indexed column needs
    /// a `drop_index` before the `move_column` (contract drops the column).
    MoveColumn {
        /// The table the column leaves.
        table: String,
        /// The column, named the same in both tables.
        column: String,
        /// The table it goes to.
        to: String,
        /// The column of `to` holding this table's key (its primary key, or
        /// unique).
        key: String,
        /// This table's key, which `key` holds and the backfill walks on
        /// PostgreSQL (SQLite walks the `rowid`): `id` unless set.
        #[serde(default = "id")]
        from_key: String,
        /// The value here that means "no row there", one SQL expression
        /// (`''`); NULL unless set.
        #[serde(default)]
        empty: Option<String>,
        /// 1:N: the boolean column of `to` that is true on the one row of
        /// each `key` holding this table's value (`is_primary`); the other
        /// rows are version N's alone. Unset: 1:1.
        #[serde(default)]
        primary: Option<String>,
    },
    /// SQL as written, for each phase it names (linted like a file).
    Sql(RawSql),
}

/// An SQL expression of a change file: one text for both backends
/// (`qty`), or one for each where their functions differ (`{ sqlite =
/// "instr(name, ' ')", postgres = "strpos(name, ' ')" }`). A table with
/// another key, or without one of the two, is refused naming the key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expression {
    /// The same text on both backends.
    Both(String),
    /// A text for each backend.
    PerBackend {
        /// SQLite's.
        sqlite: String,
        /// PostgreSQL's.
        postgres: String,
    },
}

/// [`Expression::PerBackend`] as written, each key checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PerBackend {
    sqlite: String,
    postgres: String,
}

impl<'de> Deserialize<'de> for Expression {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Expression;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "an SQL expression: one text for both backends, or \
                     { sqlite = \"...\", postgres = \"...\" }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Expression, E> {
                Ok(Expression::Both(text.to_owned()))
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                map: M,
            ) -> Result<Expression, M::Error> {
                let PerBackend { sqlite, postgres } =
                    PerBackend::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Expression::PerBackend { sqlite, postgres })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Expression {
    /// The text for `backend` (`sqlite` or `postgres`).
    pub fn text(&self, backend: &str) -> &str {
        match self {
            Expression::Both(text) => text,
            Expression::PerBackend { sqlite, postgres } => {
                if backend == "postgres" {
                    postgres
                } else {
                    sqlite
                }
            }
        }
    }
}

/// A new column of [`Operation::SplitColumn`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitInto {
    /// Its name.
    pub name: String,
    /// Its portable type.
    #[serde(rename = "type")]
    pub ty: String,
    /// Its value from the old row, one SQL expression in which the split
    /// column's name means the old column (`cents / 100`).
    pub up: Expression,
    /// Whether it may hold NULL (the default: `true`).
    #[serde(default = "yes")]
    pub nullable: bool,
    /// Its default, one constant SQL expression (needed when it is not
    /// nullable).
    #[serde(default)]
    pub default: Option<String>,
}

impl Operation {
    /// The operation's name as the change file writes it (`add_column`).
    pub fn name(&self) -> &'static str {
        match self {
            Operation::CreateTable { .. } => "create_table",
            Operation::AddColumn { .. } => "add_column",
            Operation::CreateIndex { .. } => "create_index",
            Operation::RenameTable { .. } => "rename_table",
            Operation::RenameColumn { .. } => "rename_column",
            Operation::DropColumn { .. } => "drop_column",
            Operation::DropIndex { .. } => "drop_index",
            Operation::DropTable { .. } => "drop_table",
            Operation::SetNotNull { .. } => "set_not_null",
            Operation::DropNotNull { .. } => "drop_not_null",
            Operation::SetDefault { .. } => "set_default",
            Operation::AddCheck { .. } => "add_check",
            Operation::AddUnique { .. } => "add_unique",
            Operation::AddForeignKey { .. } => "add_foreign_key",
            Operation::ChangeType { .. } => "change_type",
            Operation::SplitColumn { .. } => "split_column",
            Operation::MoveColumn { .. } => "move_column",
            Operation::Sql(_) => "sql",
        }
    }
}

/// The copy-and-sync form of [`Operation::RenameColumn`]:
/// `copy = { type = "text" }`.
///
/// The new column has the old one's `type` and is nullable, without a
/// default (a write that names only one of the two columns is what the
/// trigger copies from). On an insert, a non-NULL value of the new name
/// wins; on an update, a change of the new name wins over one of the old.
/// On SQLite, version N's inserts leave the old column out, so it must be
/// nullable or have a default (SQLite checks `NOT NULL` before a trigger
/// can fill it); the new column stays nullable after contract on both
/// backends (add `set_not_null` in a later version on PostgreSQL).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopySync {
    /// The column's portable type.
    #[serde(rename = "type")]
    pub ty: String,
    /// The integer key the backfill walks on PostgreSQL (SQLite walks
    /// `rowid`); `id` unless set.
    #[serde(default = "id")]
    pub key: String,
}

/// A column of [`Operation::CreateTable`] or [`Operation::AddColumn`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its portable type (see the [module](crate::change) docs).
    #[serde(rename = "type")]
    pub ty: String,
    /// Whether it may hold NULL (the default: `true`).
    #[serde(default = "yes")]
    pub nullable: bool,
    /// Its default, one SQL expression (`''`, `0`, `CURRENT_TIMESTAMP`).
    #[serde(default)]
    pub default: Option<String>,
    /// Whether it is the primary key (`create_table` only).
    #[serde(default)]
    pub primary_key: bool,
}

fn yes() -> bool {
    true
}

fn id() -> String {
    "id".to_owned()
}

/// [`Operation::Sql`]: statements per phase, for every backend or one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSql {
    /// Only for this backend (`"sqlite"` or `"postgres"`); every one if unset.
    #[serde(default)]
    pub backend: Option<String>,
    /// Expand's statements.
    #[serde(default)]
    pub expand: Option<String>,
    /// Switch's statements.
    #[serde(default)]
    pub switch: Option<String>,
    /// Switch back's statements.
    #[serde(default)]
    pub switch_back: Option<String>,
    /// Contract's statements.
    #[serde(default)]
    pub contract: Option<String>,
}

impl RawSql {
    pub(crate) fn phase(&self, phase: Phase) -> Option<&str> {
        match phase {
            Phase::Expand => self.expand.as_deref(),
            Phase::Switch => self.switch.as_deref(),
            Phase::SwitchBack => self.switch_back.as_deref(),
            Phase::Contract => self.contract.as_deref(),
        }
    }
}

impl Change {
    /// The backends it is written for (see [`backends`](Change::backends)).
    ///
    /// # Errors
    ///
    /// [`CatalogError::BadChange`] for a name that is no backend.
    pub fn for_backends(&self, path: &std::path::Path) -> Result<Vec<&'static str>, CatalogError> {
        let Some(names) = &self.backends else {
            return Ok(crate::BACKEND_NAMES.to_vec());
        };
        names
            .iter()
            .map(|name| {
                crate::BACKEND_NAMES
                    .iter()
                    .copied()
                    .find(|b| b == name)
                    .ok_or_else(|| CatalogError::BadChange {
                        path: path.to_owned(),
                        operation: None,
                        problem: format!("`backends` names `{name}`, which is no backend"),
                        instead: format!("use {}", crate::BACKEND_NAMES.join(", ")),
                    })
            })
            .collect()
    }

    /// Parses a change file's text; `path` names it in errors.
    ///
    /// # Errors
    ///
    /// [`CatalogError::BadChange`] for text that is not a change file (an
    /// unknown operation or field, a missing one), naming the line.
    pub fn parse(text: &str, path: &std::path::Path) -> Result<Change, CatalogError> {
        toml::from_str(text).map_err(|e| CatalogError::BadChange {
            path: path.to_owned(),
            operation: None,
            problem: e.message().to_owned(),
            instead: format!(
                "{}write `[[operations]]` tables, each with one of {}",
                e.span()
                    .map(|s| format!("(line {}) ", line_of(text, s.start)))
                    .unwrap_or_default(),
                OPERATIONS.join(", ")
            ),
        })
    }
}

/// The operations a change file may name.
pub const OPERATIONS: &[&str] = &[
    "create_table",
    "add_column",
    "create_index",
    "rename_table",
    "rename_column",
    "drop_column",
    "drop_index",
    "drop_table",
    "set_not_null",
    "drop_not_null",
    "set_default",
    "add_check",
    "add_unique",
    "add_foreign_key",
    "change_type",
    "split_column",
    "move_column",
    "sql",
];

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |before| before.matches('\n').count() + 1)
}

#[cfg(test)]
mod tests;
