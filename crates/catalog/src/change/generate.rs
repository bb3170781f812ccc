//! Each operation's SQL, per backend and phase.

use std::fmt::Write as _;
use std::path::Path;

use sqlparser::ast::Expr;
use sqlparser::dialect::{Dialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use super::{Change, Column, Operation};
use crate::error::CatalogError;
use crate::version::{Phase, Version};

/// The SQL a change file generates for one backend, per phase (empty where
/// it has nothing to do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Generated {
    /// Expand's statements.
    pub expand: String,
    /// Switch's statements.
    pub switch: String,
    /// Switch back's statements: the switch's undone, in reverse order.
    pub switch_back: String,
    /// Contract's statements.
    pub contract: String,
}

impl Generated {
    /// The statements of `phase`.
    pub fn phase(&self, phase: Phase) -> &str {
        match phase {
            Phase::Expand => &self.expand,
            Phase::Switch => &self.switch,
            Phase::SwitchBack => &self.switch_back,
            Phase::Contract => &self.contract,
        }
    }

    fn phase_mut(&mut self, phase: Phase) -> &mut String {
        match phase {
            Phase::Expand => &mut self.expand,
            Phase::Switch => &mut self.switch,
            Phase::SwitchBack => &mut self.switch_back,
            Phase::Contract => &mut self.contract,
        }
    }
}

/// One operation's statements, per phase.
#[derive(Default)]
struct Parts {
    expand: Vec<String>,
    switch: Vec<String>,
    switch_back: Vec<String>,
    contract: Vec<String>,
}

/// The dollar quote around the bodies of the trigger functions tandem writes.
const BODY_QUOTE: &str = "$tandem$";

/// Where an operation stands, for its errors.
struct Op<'a> {
    path: &'a Path,
    number: usize,
    postgres: bool,
}

impl Op<'_> {
    fn bad(&self, problem: impl Into<String>, instead: impl Into<String>) -> CatalogError {
        CatalogError::BadChange {
            path: self.path.to_owned(),
            operation: Some(self.number),
            problem: problem.into(),
            instead: instead.into(),
        }
    }

    fn backend(&self) -> &'static str {
        if self.postgres {
            "postgres"
        } else {
            "sqlite"
        }
    }

    fn dialect(&self) -> Box<dyn Dialect> {
        if self.postgres {
            Box::new(PostgreSqlDialect {})
        } else {
            Box::new(SQLiteDialect {})
        }
    }

    /// A validated name, quoted.
    fn name(&self, what: &str, name: &str) -> Result<String, CatalogError> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(format!("\"{name}\""))
        } else {
            Err(self.bad(
                format!("{what} `{name}` is not a name tandem writes into SQL"),
                "use lowercase letters, digits and `_`, starting with a letter or `_`, at most 63",
            ))
        }
    }

    /// The backend's name for a portable type.
    fn ty(&self, column: &Column) -> Result<&'static str, CatalogError> {
        let ty = column.ty.to_ascii_lowercase();
        let (sqlite, postgres) = match ty.as_str() {
            "integer" | "int" => ("INTEGER", "INTEGER"),
            "bigint" => ("INTEGER", "BIGINT"),
            "smallint" => ("INTEGER", "SMALLINT"),
            "text" => ("TEXT", "TEXT"),
            "boolean" | "bool" => ("BOOLEAN", "BOOLEAN"),
            "real" => ("REAL", "REAL"),
            "double" => ("REAL", "DOUBLE PRECISION"),
            "blob" | "bytes" => ("BLOB", "BYTEA"),
            "date" => ("TEXT", "DATE"),
            "timestamp" => ("TEXT", "TIMESTAMP"),
            "timestamptz" => ("TEXT", "TIMESTAMPTZ"),
            "json" => ("TEXT", "JSON"),
            "uuid" => ("", "UUID"),
            "jsonb" => ("", "JSONB"),
            _ => {
                return Err(self.bad(
                    format!("column `{}` has type `{}`, which tandem does not know", column.name, column.ty),
                    "use one of integer, bigint, smallint, text, boolean, real, double, blob, date, \
                     timestamp, timestamptz, json, uuid, jsonb, or write the column in an `sql` operation",
                ))
            }
        };
        match (self.postgres, sqlite) {
            (true, _) => Ok(postgres),
            (false, "") => Err(self.bad(
                format!("SQLite has no `{}` type (column `{}`)", column.ty, column.name),
                "use `text` (SQLite's JSON functions and UUIDs read text), or an `sql` operation with \
                 `backend = \"postgres\"` beside one for SQLite",
            )),
            (false, sqlite) => Ok(sqlite),
        }
    }

    /// Refuses an operation SQLite cannot do in place.
    fn postgres_only(&self, what: &str, instead: &str) -> Result<(), CatalogError> {
        if self.postgres {
            Ok(())
        } else {
            Err(self.bad(
                format!("SQLite cannot {what} without rebuilding the table"),
                instead,
            ))
        }
    }

    /// `what` of `of` (a default, a fill, a check): one SQL expression,
    /// parsed as the backend reads it and written back from the parse (so
    /// no comment or second statement rides along), never containing the
    /// dollar quote of tandem's trigger bodies.
    fn expression(&self, what: &str, of: &str, expr: &str) -> Result<String, CatalogError> {
        self.parse_expression(what, of, expr).map(|e| e.to_string())
    }

    /// As [`expression`](Op::expression), the parse itself.
    fn parse_expression(&self, what: &str, of: &str, expr: &str) -> Result<Expr, CatalogError> {
        let dialect = self.dialect();
        let parsed = Parser::new(dialect.as_ref())
            .try_with_sql(expr)
            .and_then(|mut p| {
                let e = p.parse_expr()?;
                match p.next_token().token {
                    Token::EOF => Ok(e),
                    other => Err(sqlparser::parser::ParserError::ParserError(format!(
                        "unexpected `{other}` after the expression"
                    ))),
                }
            });
        match parsed {
            Ok(e) if !e.to_string().contains(BODY_QUOTE) => Ok(e),
            Ok(_) => Err(self.bad(
                format!("the {what} of `{of}` contains `{BODY_QUOTE}`"),
                "write it without that dollar quote",
            )),
            Err(e) => Err(self.bad(
                format!("the {what} of `{of}` is not one SQL expression ({e})"),
                "write one expression, such as `''` or `0`",
            )),
        }
    }

    /// `columns` of index or constraint `of`, validated and quoted, comma-separated.
    fn columns(&self, of: &str, columns: &[String]) -> Result<String, CatalogError> {
        if columns.is_empty() {
            return Err(self.bad(format!("`{of}` names no columns"), "list its columns"));
        }
        let quoted = columns
            .iter()
            .map(|c| self.name("column", c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(quoted.join(", "))
    }

    /// A column definition.
    fn column(&self, column: &Column, in_create: bool) -> Result<String, CatalogError> {
        let mut sql = format!(
            "{} {}",
            self.name("column", &column.name)?,
            self.ty(column)?
        );
        let integer = matches!(
            column.ty.to_ascii_lowercase().as_str(),
            "integer" | "int" | "bigint" | "smallint"
        );
        if column.primary_key {
            if !in_create {
                return Err(self.bad(
                    format!(
                        "column `{}` is a primary key added to an existing table",
                        column.name
                    ),
                    "create the table with it (create_table), or add a unique index",
                ));
            }
            if integer && self.postgres {
                sql.push_str(" GENERATED BY DEFAULT AS IDENTITY");
            }
            sql.push_str(" PRIMARY KEY");
        } else if !column.nullable {
            sql.push_str(" NOT NULL");
        }
        let default = match &column.default {
            Some(text) => Some(self.parse_expression("default", &column.name, text)?),
            None => None,
        };
        // `DEFAULT NULL` is no default.
        let default = default.filter(|e| !e.to_string().eq_ignore_ascii_case("NULL"));
        if let Some(expr) = &default {
            let literal = match expr {
                Expr::Value(_) => true,
                Expr::UnaryOp { expr, .. } => matches!(**expr, Expr::Value(_)),
                _ => false,
            };
            if self.postgres || literal {
                let _ = write!(sql, " DEFAULT {expr}");
            } else if in_create {
                // SQLite's DEFAULT takes an expression only in parentheses.
                let _ = write!(sql, " DEFAULT ({expr})");
            } else {
                return Err(self.bad(
                    format!(
                        "SQLite adds a column only with a constant default, not `{expr}` (column `{}`)",
                        column.name
                    ),
                    "give it a constant default (`''`, `0`), or add it nullable and fill it with a \
                     backfill (`Builder::backfill_sql`)",
                ));
            }
        }
        if !in_create && !column.nullable && default.is_none() {
            return Err(self.bad(
                format!(
                    "column `{}` is NOT NULL without a default: version N-1's inserts, which do not \
                     name it, would fail",
                    column.name
                ),
                "give it a default, or add it nullable (fill it with a backfill) and make it NOT NULL \
                 in a later version's contract",
            ));
        }
        Ok(sql)
    }

    fn parts(&self, operation: &Operation) -> Result<Parts, CatalogError> {
        let mut p = Parts::default();
        match operation {
            Operation::CreateTable { table, columns } => {
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
            } => {
                let cols = self.columns(name, columns)?;
                p.expand.push(format!(
                    "CREATE {}INDEX IF NOT EXISTS {} ON {} ({cols});",
                    if *unique { "UNIQUE " } else { "" },
                    self.name("index", name)?,
                    self.name("table", table)?,
                ));
            }
            Operation::AddUnique {
                table,
                name,
                columns,
            } => {
                let cols = self.columns(name, columns)?;
                p.expand.push(format!(
                    "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ({cols});",
                    self.name("index", name)?,
                    self.name("table", table)?
                ));
            }
            Operation::AddForeignKey {
                table,
                name,
                columns,
                references,
                referenced_columns,
            } => {
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
            }
            Operation::RenameTable { from, to } => {
                let (from, to) = (self.name("table", from)?, self.name("table", to)?);
                p.switch.push(format!("ALTER TABLE {from} RENAME TO {to};"));
                p.switch_back
                    .push(format!("ALTER TABLE {to} RENAME TO {from};"));
            }
            Operation::RenameColumn { table, from, to } => {
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
            Operation::SetNotNull {
                table,
                column,
                fill,
            } => {
                self.postgres_only(
                    "add NOT NULL to an existing column",
                    "enforce it with BEFORE INSERT and BEFORE UPDATE triggers that `RAISE(ABORT, …)` \
                     in an `sql` operation's contract (as the example's 0003_names_and_plans does), or in \
                     version N's code",
                )?;
                let (t, c) = (self.name("table", table)?, self.name("column", column)?);
                let check = self.name("constraint", &format!("{table}_{column}_not_null"))?;
                let trigger = self.name("trigger", &format!("tandem_fill_{table}_{column}"))?;
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
            }
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
            Operation::Sql(raw) => {
                if let Some(only) = &raw.backend {
                    if !crate::BACKEND_NAMES.contains(&only.as_str()) {
                        return Err(self.bad(
                            format!("`backend = \"{only}\"` names no backend"),
                            format!("use one of {}", crate::BACKEND_NAMES.join(", ")),
                        ));
                    }
                    if only != self.backend() {
                        return Ok(p);
                    }
                }
                for phase in Phase::ALL {
                    if let Some(sql) = raw.phase(phase).filter(|s| !s.trim().is_empty()) {
                        p.phase_mut(phase).push(sql.trim().to_owned());
                    }
                }
            }
        }
        Ok(p)
    }
}

impl Parts {
    fn phase_mut(&mut self, phase: Phase) -> &mut Vec<String> {
        match phase {
            Phase::Expand => &mut self.expand,
            Phase::Switch => &mut self.switch,
            Phase::SwitchBack => &mut self.switch_back,
            Phase::Contract => &mut self.contract,
        }
    }
}

impl Change {
    /// The SQL this change generates for `backend` (`"sqlite"` or
    /// `"postgres"`), each operation's statements under a comment naming
    /// it; `path` names the file in errors, `version` in lint findings.
    ///
    /// # Errors
    ///
    /// [`CatalogError::BadChange`] naming the operation (1-based) and what
    /// to write instead: a name tandem does not write into SQL, a type the
    /// backend lacks, a default that is not one expression, a column that
    /// would break version N-1's inserts, or SQL the [lint](crate::lint)
    /// refuses in its phase. [`CatalogError::UnknownBackend`].
    pub fn generate(
        &self,
        backend: &str,
        path: &Path,
        version: Version,
    ) -> Result<Generated, CatalogError> {
        if !crate::BACKEND_NAMES.contains(&backend) {
            return Err(CatalogError::UnknownBackend {
                backend: backend.to_owned(),
            });
        }
        let mut generated = Generated::default();
        let mut undo: Vec<String> = Vec::new();
        // An `sql` operation whose switch has no switch back.
        let mut undone_by_nothing = None;
        for (i, operation) in self.operations.iter().enumerate() {
            if let Operation::Sql(raw) = operation {
                let applies = raw.backend.as_deref().is_none_or(|b| b == backend);
                if applies && raw.switch.is_some() && raw.switch_back.is_none() {
                    undone_by_nothing = undone_by_nothing.or(Some(i + 1));
                }
            }
            let op = Op {
                path,
                number: i + 1,
                postgres: backend == "postgres",
            };
            let parts = op.parts(operation)?;
            let header = format!(
                "-- change.toml, operation {}: {}\n",
                i + 1,
                operation.name()
            );
            for phase in [
                Phase::Expand,
                Phase::Switch,
                Phase::SwitchBack,
                Phase::Contract,
            ] {
                let statements = match phase {
                    Phase::Expand => &parts.expand,
                    Phase::Switch => &parts.switch,
                    Phase::SwitchBack => &parts.switch_back,
                    Phase::Contract => &parts.contract,
                };
                if statements.is_empty() {
                    continue;
                }
                let block = format!("{header}{}\n", statements.join("\n"));
                let report = crate::lint::lint_text(version, phase, path, op.postgres, &block);
                if let Some(finding) = report.findings.first() {
                    return Err(op.bad(
                        format!(
                            "its {phase} SQL breaks the lint's `{}` rule: {}",
                            finding.rule.name(),
                            finding.rule.problem()
                        ),
                        finding.rule.instead(),
                    ));
                }
                if phase == Phase::SwitchBack {
                    undo.push(block);
                } else {
                    let text = generated.phase_mut(phase);
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&block);
                }
            }
        }
        // Undone in reverse: a later operation may build on an earlier one.
        generated.switch_back = undo.into_iter().rev().collect::<Vec<_>>().join("\n");
        if let Some(n) = undone_by_nothing.filter(|_| !generated.switch_back.is_empty()) {
            return Err(CatalogError::BadChange {
                path: path.to_owned(),
                operation: Some(n),
                problem:
                    "its `switch` has no `switch_back`, so a switch back would undo the other \
                          operations' switch and leave its own in place"
                        .to_owned(),
                instead: "write its `switch_back`".to_owned(),
            });
        }
        Ok(generated)
    }
}
