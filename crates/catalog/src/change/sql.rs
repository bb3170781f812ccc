//! Names, types and expressions as tandem writes them into SQL, per backend.

use std::fmt::Write as _;
use std::path::Path;

use sqlparser::ast::Expr;
use sqlparser::dialect::{Dialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use super::Column;
use crate::error::CatalogError;

/// The dollar quote around the bodies of the trigger functions tandem writes.
pub(super) const BODY_QUOTE: &str = "$tandem$";

/// Where an operation stands, for its errors.
pub(super) struct Op<'a> {
    pub(super) path: &'a Path,
    pub(super) number: usize,
    pub(super) postgres: bool,
    /// The tables earlier operations of the file create: nobody uses them
    /// yet, so an index on one is built in expand's transaction, and the
    /// lint counts them as new.
    pub(super) created: &'a std::collections::BTreeSet<String>,
}

impl Op<'_> {
    pub(super) fn bad(
        &self,
        problem: impl Into<String>,
        instead: impl Into<String>,
    ) -> CatalogError {
        CatalogError::BadChange {
            path: self.path.to_owned(),
            operation: Some(self.number),
            problem: problem.into(),
            instead: instead.into(),
        }
    }

    pub(super) fn backend(&self) -> &'static str {
        if self.postgres {
            "postgres"
        } else {
            "sqlite"
        }
    }

    pub(super) fn dialect(&self) -> Box<dyn Dialect> {
        if self.postgres {
            Box::new(PostgreSqlDialect {})
        } else {
            Box::new(SQLiteDialect {})
        }
    }

    /// A validated name, quoted.
    pub(super) fn name(&self, what: &str, name: &str) -> Result<String, CatalogError> {
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

    /// The name of a trigger (or trigger function) tandem generates, from
    /// names already checked, quoted: as built while it fits PostgreSQL's
    /// 63 bytes, else its first 54 bytes, `_` and 8 hex digits of its
    /// SHA-256 (long table and column names would otherwise be refused as
    /// if the user had written a bad name).
    pub(super) fn trigger(&self, name: &str) -> Result<String, CatalogError> {
        const LIMIT: usize = 63;
        match name.get(..LIMIT - 9) {
            Some(head) if name.len() > LIMIT => {
                let hash = crate::catalog::sha256_hex(name);
                let short = format!("{head}_{}", hash.get(..8).unwrap_or_default());
                self.name("trigger", &short)
            }
            _ => self.name("trigger", name),
        }
    }

    /// The backend's "differs, NULL being a value" operator.
    pub(super) fn distinct(&self) -> &'static str {
        if self.postgres {
            "IS DISTINCT FROM"
        } else {
            "IS NOT"
        }
    }

    /// The backend's name for a portable type.
    pub(super) fn ty(&self, column: &Column) -> Result<&'static str, CatalogError> {
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
    pub(super) fn postgres_only(&self, what: &str, instead: &str) -> Result<(), CatalogError> {
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
    pub(super) fn expression(
        &self,
        what: &str,
        of: &str,
        expr: &str,
    ) -> Result<String, CatalogError> {
        self.parse_expression(what, of, expr).map(|e| e.to_string())
    }

    /// As [`expression`](Op::expression), the parse itself.
    pub(super) fn parse_expression(
        &self,
        what: &str,
        of: &str,
        expr: &str,
    ) -> Result<Expr, CatalogError> {
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
    pub(super) fn columns(&self, of: &str, columns: &[String]) -> Result<String, CatalogError> {
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
    pub(super) fn column(&self, column: &Column, in_create: bool) -> Result<String, CatalogError> {
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
}
