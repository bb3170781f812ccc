//! Each operation's statements, per phase.

use super::sql::{Op, BODY_QUOTE};
use super::Operation;
use crate::error::CatalogError;
use crate::version::Phase;

/// One operation's statements, per phase.
#[derive(Default)]
pub(super) struct Parts {
    pub(super) expand: Vec<String>,
    pub(super) switch: Vec<String>,
    pub(super) switch_back: Vec<String>,
    pub(super) contract: Vec<String>,
    /// The backfills expand runs after its statements.
    pub(super) backfills: Vec<super::Backfill>,
    /// The index builds expand runs after its transaction (PostgreSQL).
    pub(super) indexes: Vec<super::ConcurrentIndex>,
}

impl Op<'_> {
    /// The statements `operation` runs in each phase.
    pub(super) fn parts(&self, operation: &Operation) -> Result<Parts, CatalogError> {
        let mut p = Parts::default();
        match operation {
            Operation::CreateTable { table, columns } => {
                self.create_table(table, columns, &mut p)?
            }
            Operation::AddColumn { table, column } => p.expand.push(format!(
                "ALTER TABLE {} ADD COLUMN {};",
                self.name("table", table)?,
                self.column(column, false)?
            )),
            Operation::CreateIndex {
                table,
                name,
                columns,
                unique,
                only,
            } => self.create_index(table, name, columns, (*unique, only.as_deref()), &mut p)?,
            Operation::AddUnique {
                table,
                name,
                columns,
            } => self.create_index(table, name, columns, (true, None), &mut p)?,
            Operation::RenameTable { from, to, view } => {
                let (from, to) = (self.name("table", from)?, self.name("table", to)?);
                p.switch.push(format!("ALTER TABLE {from} RENAME TO {to};"));
                if *view {
                    p.switch
                        .push(format!("CREATE VIEW {from} AS SELECT * FROM {to};"));
                    p.switch_back.push(format!("DROP VIEW {from};"));
                    p.contract.push(format!("DROP VIEW {from};"));
                }
                p.switch_back
                    .push(format!("ALTER TABLE {to} RENAME TO {from};"));
            }
            Operation::RenameColumn {
                table,
                from,
                to,
                copy: Some(copy),
            } => self.copied_rename(table, from, to, copy, &mut p)?,
            Operation::RenameColumn {
                table,
                from,
                to,
                copy: None,
            } => {
                let table = self.name("table", table)?;
                let (from, to) = (self.name("column", from)?, self.name("column", to)?);
                p.switch
                    .push(format!("ALTER TABLE {table} RENAME COLUMN {from} TO {to};"));
                p.switch_back
                    .push(format!("ALTER TABLE {table} RENAME COLUMN {to} TO {from};"));
            }
            Operation::DropColumn { table, column } => p.contract.push(format!(
                "ALTER TABLE {} DROP COLUMN {};",
                self.name("table", table)?,
                self.name("column", column)?
            )),
            Operation::DropIndex { name } => {
                p.contract
                    .push(format!("DROP INDEX {};", self.name("index", name)?));
            }
            Operation::DropTable { table } => {
                p.contract
                    .push(format!("DROP TABLE {};", self.name("table", table)?));
            }
            Operation::Sql(raw) => self.raw(raw, &mut p)?,
            retype @ Operation::ChangeType { .. } => self.change_type(retype, &mut p)?,
            split @ Operation::SplitColumn { .. } => self.split_column(split, &mut p)?,
            moved @ Operation::MoveColumn { .. } => self.move_column(moved, &mut p)?,
            constraint => self.constraint(constraint, &mut p)?,
        }
        Ok(p)
    }

    /// The statements of the operations that add or change constraints and
    /// defaults (see [`parts`](Op::parts) for the others).
    fn constraint(&self, operation: &Operation, p: &mut Parts) -> Result<(), CatalogError> {
        match operation {
            Operation::AddForeignKey {
                table,
                name,
                columns,
                references,
                referenced_columns,
            } => self.add_foreign_key(table, name, columns, references, referenced_columns, p)?,
            Operation::SetNotNull {
                table,
                column,
                fill,
            } => self.set_not_null(table, column, fill, p)?,
            Operation::DropNotNull { table, column } => {
                self.postgres_only(
                    "drop NOT NULL from an existing column",
                    "give the column a default (at create_table or add_column) so that version N can \
                     leave it out",
                )?;
                p.expand.push(format!(
                    "ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL;",
                    self.name("table", table)?,
                    self.name("column", column)?
                ));
            }
            Operation::SetDefault {
                table,
                column,
                default,
            } => {
                self.postgres_only(
                    "change an existing column's default",
                    "write the value in version N's inserts",
                )?;
                p.expand.push(format!(
                    "ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {};",
                    self.name("table", table)?,
                    self.name("column", column)?,
                    self.expression("default", column, default)?
                ));
            }
            Operation::AddCheck { table, name, check } => {
                self.postgres_only(
                    "add a CHECK constraint to an existing table",
                    "check it in version N's code, or enforce it with BEFORE INSERT and BEFORE UPDATE \
                     triggers in an `sql` operation's switch (and drop them in its switch_back)",
                )?;
                let (t, n) = (self.name("table", table)?, self.name("constraint", name)?);
                let check = self.expression("check", name, check)?;
                p.switch.push(format!(
                    "ALTER TABLE {t} ADD CONSTRAINT {n} CHECK ({check}) NOT VALID;"
                ));
                p.switch_back
                    .push(format!("ALTER TABLE {t} DROP CONSTRAINT {n};"));
                p.contract
                    .push(format!("ALTER TABLE {t} VALIDATE CONSTRAINT {n};"));
            }
            // `parts`' own (listed, so that a new operation is handled somewhere).
            Operation::CreateTable { .. }
            | Operation::AddColumn { .. }
            | Operation::CreateIndex { .. }
            | Operation::AddUnique { .. }
            | Operation::RenameTable { .. }
            | Operation::RenameColumn { .. }
            | Operation::DropColumn { .. }
            | Operation::DropIndex { .. }
            | Operation::DropTable { .. }
            | Operation::ChangeType { .. }
            | Operation::SplitColumn { .. }
            | Operation::MoveColumn { .. }
            | Operation::Sql(_) => {}
        }
        Ok(())
    }

    /// [`Operation::AddForeignKey`]'s statements.
    fn add_foreign_key(
        &self,
        table: &str,
        name: &str,
        columns: &[String],
        references: &str,
        referenced_columns: &[String],
        p: &mut Parts,
    ) -> Result<(), CatalogError> {
        self.postgres_only(
            "add a foreign key to an existing table",
            "check it in version N's code, or create the table with it (an `sql` operation's \
             CREATE TABLE … REFERENCES)",
        )?;
        if columns.len() != referenced_columns.len() {
            return Err(self.bad(
                format!(
                    "foreign key `{name}` has {} column(s) and {} referenced one(s)",
                    columns.len(),
                    referenced_columns.len()
                ),
                "name as many referenced columns as columns, in the same order",
            ));
        }
        let (t, n) = (self.name("table", table)?, self.name("constraint", name)?);
        let (cols, rcols) = (
            self.columns(name, columns)?,
            self.columns(name, referenced_columns)?,
        );
        let rt = self.name("table", references)?;
        p.switch.push(format!(
            "ALTER TABLE {t} ADD CONSTRAINT {n} FOREIGN KEY ({cols}) REFERENCES {rt} ({rcols}) NOT VALID;"
        ));
        p.switch_back
            .push(format!("ALTER TABLE {t} DROP CONSTRAINT {n};"));
        p.contract
            .push(format!("ALTER TABLE {t} VALIDATE CONSTRAINT {n};"));
        Ok(())
    }

    /// [`Operation::SetNotNull`]'s statements.
    fn set_not_null(
        &self,
        table: &str,
        column: &str,
        fill: &str,
        p: &mut Parts,
    ) -> Result<(), CatalogError> {
        self.postgres_only(
            "add NOT NULL to an existing column",
            "enforce it with BEFORE INSERT and BEFORE UPDATE triggers that `RAISE(ABORT, …)` \
             in an `sql` operation's contract (as the example's 0003_names_and_plans does), or in \
             version N's code",
        )?;
        let (t, c) = (self.name("table", table)?, self.name("column", column)?);
        let check = self.name("constraint", &format!("{table}_{column}_not_null"))?;
        let trigger = self.trigger(&format!("tandem_fill_{table}_{column}"))?;
        let fill = self.expression("fill", column, fill)?;
        p.expand.push(format!(
            "CREATE FUNCTION {trigger}() RETURNS trigger LANGUAGE plpgsql AS {BODY_QUOTE}\n\
             BEGIN\n    IF NEW.{c} IS NULL THEN\n        NEW.{c} := {fill};\n    END IF;\n    \
             RETURN NEW;\nEND\n{BODY_QUOTE};"
        ));
        p.expand.push(format!(
            "CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE ON {t}\n    \
             FOR EACH ROW EXECUTE FUNCTION {trigger}();"
        ));
        p.expand
            .push(format!("UPDATE {t} SET {c} = {fill} WHERE {c} IS NULL;"));
        p.expand.push(format!(
            "ALTER TABLE {t} ADD CONSTRAINT {check} CHECK ({c} IS NOT NULL) NOT VALID;"
        ));
        p.contract
            .push(format!("ALTER TABLE {t} VALIDATE CONSTRAINT {check};"));
        p.contract
            .push(format!("ALTER TABLE {t} ALTER COLUMN {c} SET NOT NULL;"));
        p.contract
            .push(format!("ALTER TABLE {t} DROP CONSTRAINT {check};"));
        p.contract.push(format!("DROP TRIGGER {trigger} ON {t};"));
        p.contract.push(format!("DROP FUNCTION {trigger}();"));
        Ok(())
    }

    /// [`Operation::CreateTable`]'s statement.
    /// An index: on PostgreSQL, on a table that is already there, built
    /// concurrently after expand's transaction ([`ConcurrentIndex`]
    /// (super::ConcurrentIndex)); otherwise in expand, `IF NOT EXISTS`.
    fn create_index(
        &self,
        table: &str,
        name: &str,
        columns: &[String],
        (unique, only): (bool, Option<&str>),
        p: &mut Parts,
    ) -> Result<(), CatalogError> {
        let cols = self.columns(name, columns)?;
        let only = match only {
            Some(text) => format!(" WHERE {}", self.parse_expression("condition", name, text)?),
            None => String::new(),
        };
        let head = if unique {
            "CREATE UNIQUE INDEX"
        } else {
            "CREATE INDEX"
        };
        let index = self.name("index", name)?;
        let t = self.name("table", table)?;
        let rest = format!("ON {t} ({cols}){only}");
        if self.postgres && !self.created.contains(table) {
            // Checked in expand's transaction: a mistake rolls it back
            // (the build itself runs after it committed).
            p.expand.push(format!(
                "DO {BODY_QUOTE} BEGIN\n    \
                 IF (SELECT relkind FROM pg_class WHERE oid = '{t}'::regclass) = 'p' THEN\n        \
                 RAISE EXCEPTION 'tandem: table {table} is partitioned: CREATE INDEX CONCURRENTLY cannot \
                 build index {name} on it; build it per partition in an `sql` operation';\n    \
                 END IF;\n    PERFORM {cols} FROM {t} LIMIT 0;\nEND {BODY_QUOTE};"
            ));
            p.indexes
                .push(super::ConcurrentIndex::new(name, &index, &t, head, &rest));
        } else {
            p.expand
                .push(format!("{head} IF NOT EXISTS {index} {rest};"));
        }
        Ok(())
    }

    fn create_table(
        &self,
        table: &str,
        columns: &[super::Column],
        p: &mut Parts,
    ) -> Result<(), CatalogError> {
        if columns.is_empty() {
            return Err(self.bad(
                format!("table `{table}` has no columns"),
                "list its columns",
            ));
        }
        let cols = columns
            .iter()
            .map(|c| self.column(c, true).map(|c| format!("    {c}")))
            .collect::<Result<Vec<_>, _>>()?;
        p.expand.push(format!(
            "CREATE TABLE {} (\n{}\n);",
            self.name("table", table)?,
            cols.join(",\n")
        ));
        Ok(())
    }

    /// An `sql` operation's statements, if it is for this backend.
    fn raw(&self, raw: &super::RawSql, p: &mut Parts) -> Result<(), CatalogError> {
        if let Some(only) = &raw.backend {
            if !crate::BACKEND_NAMES.contains(&only.as_str()) {
                return Err(self.bad(
                    format!("`backend = \"{only}\"` names no backend"),
                    format!("use one of {}", crate::BACKEND_NAMES.join(", ")),
                ));
            }
            if only != self.backend() {
                return Ok(());
            }
        }
        for phase in Phase::ALL {
            if let Some(sql) = raw.phase(phase).filter(|s| !s.trim().is_empty()) {
                p.phase_mut(phase).push(sql.trim().to_owned());
            }
        }
        Ok(())
    }
}

impl Parts {
    /// The statements of `phase`.
    pub(super) fn phase(&self, phase: Phase) -> &[String] {
        match phase {
            Phase::Expand => &self.expand,
            Phase::Switch => &self.switch,
            Phase::SwitchBack => &self.switch_back,
            Phase::Contract => &self.contract,
        }
    }

    fn phase_mut(&mut self, phase: Phase) -> &mut Vec<String> {
        match phase {
            Phase::Expand => &mut self.expand,
            Phase::Switch => &mut self.switch,
            Phase::SwitchBack => &mut self.switch_back,
            Phase::Contract => &mut self.contract,
        }
    }
}
