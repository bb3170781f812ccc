//! Each operation's SQL, per backend and phase.

use std::fmt::Write as _;
use std::path::Path;

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

    /// A default: one SQL expression, parsed as the backend reads it.
    fn default(&self, column: &Column, expr: &str) -> Result<String, CatalogError> {
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
            Ok(_) => Ok(expr.trim().to_owned()),
            Err(e) => Err(self.bad(
                format!(
                    "the default of column `{}` is not one SQL expression ({e})",
                    column.name
                ),
                "write one expression, such as `''`, `0` or `CURRENT_TIMESTAMP`",
            )),
        }
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
        if let Some(expr) = &column.default {
            let _ = write!(sql, " DEFAULT {}", self.default(column, expr)?);
        }
        if !in_create && !column.nullable && column.default.is_none() {
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
                if columns.is_empty() {
                    return Err(
                        self.bad(format!("index `{name}` has no columns"), "list its columns")
                    );
                }
                let cols = columns
                    .iter()
                    .map(|c| self.name("column", c))
                    .collect::<Result<Vec<_>, _>>()?;
                p.expand.push(format!(
                    "CREATE {}INDEX IF NOT EXISTS {} ON {} ({});",
                    if *unique { "UNIQUE " } else { "" },
                    self.name("index", name)?,
                    self.name("table", table)?,
                    cols.join(", ")
                ));
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
        for (i, operation) in self.operations.iter().enumerate() {
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
        Ok(generated)
    }
}
