//! A phase-aware lint of a catalog's hand-written SQL: what each phase may
//! do while old and new binaries run side by side.
//!
//! - **expand** runs while binaries of version N-1 serve: it must be
//!   additive (no drop, rename, type change, `SET NOT NULL`, or `NOT NULL`
//!   column without a default) and, on PostgreSQL, must not lock a busy
//!   table for a scan or a build (an index without `CONCURRENTLY`, a
//!   constraint without `NOT VALID`, a `UNIQUE` constraint, a rewrite);
//! - **switch** (and switch back) runs under the exclusive schema lock while
//!   every call waits: a few fast statements (renames are fine; no unbounded
//!   `UPDATE`/`DELETE`, index build, table scan, or drop: binaries roll back
//!   until contract);
//! - **contract** runs while version N serves and may run long after the
//!   switch: it only removes.
//!
//! Version 1 (the initial schema, on an empty database) is not linted.
//! Statements are read with `sqlparser`; one it cannot parse whose kind
//! matters (`ALTER`, `UPDATE`, `DELETE`) is reported as
//! [`Unchecked`], not guessed at.
//!
//! A statement that is safe where a rule says otherwise (a small table, an
//! index built concurrently by hand beforehand) opts out with a comment
//! right before it, on its line or inside it, naming the rule and why:
//!
//! ```sql
//! -- tandem:allow(expand-drop) the view was never read by version 1
//! DROP VIEW report_v2_draft;
//! ```
//!
//! ```
//! let dir = tempfile::tempdir()?;
//! for (folder, file, sql) in [
//!     ("0001_init", "expand.sql", "CREATE TABLE t (id INTEGER PRIMARY KEY, old TEXT);"),
//!     ("0002_rename", "expand.sql", "ALTER TABLE t RENAME COLUMN old TO new;"),
//! ] {
//!     std::fs::create_dir_all(dir.path().join(folder))?;
//!     std::fs::write(dir.path().join(folder).join(file), sql)?;
//! }
//! let catalog = tandem_catalog::Catalog::from_dir(dir.path())?;
//! let report = catalog.lint("sqlite")?;
//! assert_eq!(report.findings[0].rule, tandem_catalog::Rule::ExpandRename);
//! assert_eq!(report.findings[0].rule.name(), "expand-rename");
//! assert!(report.to_string().contains("0002_rename/expand.sql:1"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeSet;
use std::fmt;

use sqlparser::dialect::{Dialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Tokenizer;

use crate::catalog::{Catalog, CatalogVersion, BACKEND_NAMES};
use crate::error::CatalogError;
use crate::statements::{split, Statement};
use crate::version::{Phase, Version};

mod rules;

pub use rules::Rule;

/// A statement a rule of its phase refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Finding {
    /// The rule.
    pub rule: Rule,
    /// The version whose folder holds the file.
    pub version: Version,
    /// The phase the file is for.
    pub phase: Phase,
    /// The file, relative to the catalog folder (`0002_orders/expand.sql`).
    pub file: String,
    /// The statement's first line (1-based).
    pub line: u64,
    /// The statement, on one line (shortened past 120 characters).
    pub statement: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {} ({} of version {}): {}: `{}`; {}",
            self.file,
            self.line,
            self.rule.name(),
            self.phase,
            self.version,
            self.rule.problem(),
            self.statement,
            self.rule.instead(),
        )?;
        if self.rule.can_opt_out() {
            write!(
                f,
                "; if it is safe here, say why in a comment before it: `-- tandem:allow({}) <reason>`",
                self.rule.name()
            )?;
        }
        Ok(())
    }
}

/// A statement the lint could not read, of a kind that may break a rule
/// (`ALTER`, `UPDATE`, `DELETE`): review it by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unchecked {
    /// The version whose folder holds the file.
    pub version: Version,
    /// The phase the file is for.
    pub phase: Phase,
    /// The file, relative to the catalog folder.
    pub file: String,
    /// The statement's first line (1-based).
    pub line: u64,
    /// The statement, on one line (shortened).
    pub statement: String,
    /// What `sqlparser` said.
    pub message: String,
}

impl fmt::Display for Unchecked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: not checked (the lint cannot parse it: {}): `{}`; review it against the rules of {}",
            self.file, self.line, self.message, self.statement, self.phase
        )
    }
}

/// What [`Catalog::lint`] found for one backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LintReport {
    /// Statements a rule refuses, in catalog order.
    pub findings: Vec<Finding>,
    /// Statements it could not read (not failures).
    pub unchecked: Vec<Unchecked>,
}

impl LintReport {
    /// Whether no rule refused a statement (unchecked ones do not count).
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

impl fmt::Display for LintReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.findings.is_empty() && self.unchecked.is_empty() {
            return f.write_str("no findings");
        }
        let mut first = true;
        for line in self
            .findings
            .iter()
            .map(ToString::to_string)
            .chain(self.unchecked.iter().map(ToString::to_string))
        {
            if !first {
                f.write_str("\n")?;
            }
            first = false;
            f.write_str(&line)?;
        }
        Ok(())
    }
}

impl Catalog {
    /// Lints every version after the first, as `backend` (`"sqlite"` or
    /// `"postgres"`) runs it: each phase's file for that backend (its own,
    /// else the generic one). See the [module](crate::lint) for the rules
    /// and how a statement opts out.
    ///
    /// # Errors
    ///
    /// [`CatalogError::UnknownBackend`] for a backend name tandem does not
    /// know.
    pub fn lint(&self, backend: &str) -> Result<LintReport, CatalogError> {
        let mut report = LintReport::default();
        for version in self.versions().skip(1) {
            report.merge(version.lint(backend)?);
        }
        Ok(report)
    }
}

impl CatalogVersion {
    /// Lints this version's phases as `backend` runs them (see
    /// [`Catalog::lint`]). Version 1, the initial schema, has no findings.
    ///
    /// # Errors
    ///
    /// [`CatalogError::UnknownBackend`] for a backend name tandem does not
    /// know.
    pub fn lint(&self, backend: &str) -> Result<LintReport, CatalogError> {
        let Some(&backend) = BACKEND_NAMES.iter().find(|b| **b == backend) else {
            return Err(CatalogError::UnknownBackend {
                backend: backend.to_owned(),
            });
        };
        let mut report = LintReport::default();
        if self.version() == Version::FIRST || !self.supports(backend) {
            return Ok(report);
        }
        for phase in [
            Phase::Expand,
            Phase::Switch,
            Phase::SwitchBack,
            Phase::Contract,
        ] {
            if let Some(sql) = self.phase(phase, backend) {
                let file = File {
                    version: self.version(),
                    phase,
                    path: sql.file,
                    postgres: backend == "postgres",
                };
                report.merge(file.lint(sql.text, &BTreeSet::new()));
            }
        }
        Ok(report)
    }
}

impl LintReport {
    fn merge(&mut self, other: LintReport) {
        self.findings.extend(other.findings);
        self.unchecked.extend(other.unchecked);
    }
}

/// The file being linted.
struct File<'a> {
    version: Version,
    phase: Phase,
    path: &'a str,
    postgres: bool,
}

impl File<'_> {
    fn dialect(&self) -> Box<dyn Dialect> {
        if self.postgres {
            Box::new(PostgreSqlDialect {})
        } else {
            Box::new(SQLiteDialect {})
        }
    }

    /// `created`: tables created before this text (by earlier operations
    /// of a change file).
    fn lint(&self, sql: &str, created: &BTreeSet<String>) -> LintReport {
        let dialect = self.dialect();
        let mut report = LintReport::default();
        // (The catalog refused a file no dialect can read when it loaded.)
        let Ok(tokens) = Tokenizer::new(dialect.as_ref(), sql).tokenize_with_location() else {
            return report;
        };
        // Tables this file creates: an index or a constraint on one locks
        // nothing anyone uses yet.
        let mut created = created.clone();
        for statement in split(sql, &tokens) {
            let parsed = Parser::parse_sql(dialect.as_ref(), &statement.text);
            let parsed = match parsed {
                Ok(mut list) if list.len() == 1 => list.pop(),
                Ok(_) => None,
                Err(e) => {
                    if rules::matters_unparsed(&statement) {
                        report.unchecked.push(Unchecked {
                            version: self.version,
                            phase: self.phase,
                            file: self.path.to_owned(),
                            line: statement.line,
                            statement: one_line(&statement.text),
                            message: e.to_string(),
                        });
                    }
                    None
                }
            };
            let context = rules::Context {
                phase: self.phase,
                postgres: self.postgres,
                created: &created,
            };
            let broken = rules::check(&context, &statement, parsed.as_ref());
            let allowed = opt_outs(&statement);
            for rule in broken
                .into_iter()
                .filter(|r| !allowed.rules.contains(r))
                .chain(allowed.errors)
            {
                self.found(&mut report, rule, &statement);
            }
            if let Some(name) = rules::created_table(parsed.as_ref()) {
                created.insert(name);
            }
        }
        report
    }

    fn found(&self, report: &mut LintReport, rule: Rule, statement: &Statement) {
        let finding = Finding {
            rule,
            version: self.version,
            phase: self.phase,
            file: self.path.to_owned(),
            line: statement.line,
            statement: one_line(&statement.text),
        };
        if !report.findings.contains(&finding) {
            report.findings.push(finding);
        }
    }
}

/// For tandem's `Builder::backfill_sql`: whether `sql` is one statement
/// that does not control the transaction, as `backend` reads it; the
/// problem otherwise.
///
/// # Errors
///
/// What is wrong with it, in words.
#[doc(hidden)]
pub fn one_statement(sql: &str, backend: &str) -> Result<(), String> {
    let dialect: Box<dyn Dialect> = if backend == "postgres" {
        Box::new(PostgreSqlDialect {})
    } else {
        Box::new(SQLiteDialect {})
    };
    let tokens = Tokenizer::new(dialect.as_ref(), sql)
        .tokenize_with_location()
        .map_err(|e| format!("it cannot be read as SQL ({e})"))?;
    let statements = split(sql, &tokens);
    match statements.as_slice() {
        [] => Err("it holds no statement".to_owned()),
        [one] => match crate::sql_check::transaction_control(sql, Some(backend)) {
            crate::sql_check::Check::TransactionControl(found) => Err(format!(
                "`{}` controls the transaction, but each batch runs in a transaction of its own",
                found.statement
            )),
            _ if one.words.is_empty() => Err("it holds no statement".to_owned()),
            _ if rules::unbounded_write(&one.text, dialect.as_ref()) => Err(
                "it has no WHERE, so every batch would change every row again and never end"
                    .to_owned(),
            ),
            _ => Ok(()),
        },
        more => Err(format!(
            "it holds {} statements; a batch is one statement, run until it changes no row",
            more.len()
        )),
    }
}

/// Lints one phase's `text` (a change file's generated SQL), as if it
/// were the file at `path`, the tables in `created` (made by the file's
/// earlier operations) counting as new; version 1 has no findings.
pub(crate) fn lint_text(
    version: Version,
    phase: Phase,
    path: &std::path::Path,
    postgres: bool,
    text: &str,
    created: &BTreeSet<String>,
) -> LintReport {
    if version == Version::FIRST {
        return LintReport::default();
    }
    let path = path.display().to_string();
    let file = File {
        version,
        phase,
        path: &path,
        postgres,
    };
    file.lint(text, created)
}

/// The opt-outs a statement's comments carry.
struct OptOuts {
    rules: Vec<Rule>,
    /// [`Rule::OptOutWithoutReason`], [`Rule::OptOutUnknownRule`].
    errors: Vec<Rule>,
}

const MARK: &str = "tandem:allow(";

/// Reads `tandem:allow(rule, …) reason` from a statement's comments.
fn opt_outs(statement: &Statement) -> OptOuts {
    let mut found = OptOuts {
        rules: Vec::new(),
        errors: Vec::new(),
    };
    for comment in &statement.comments {
        let mut rest = comment.text.as_str();
        while let Some(at) = rest.find(MARK) {
            let after = &rest[at + MARK.len()..];
            let Some(close) = after.find(')') else {
                found.errors.push(Rule::OptOutUnknownRule);
                break;
            };
            let reason = after[close + 1..]
                .trim_start_matches([':', '-', ' ', '\t'])
                .trim_end_matches("*/")
                .trim();
            for name in after[..close].split(',').map(str::trim) {
                match Rule::from_name(name).filter(|r| r.can_opt_out()) {
                    Some(rule) => found.rules.push(rule),
                    None => found.errors.push(Rule::OptOutUnknownRule),
                }
            }
            if !reason.chars().any(char::is_alphanumeric) {
                found.errors.push(Rule::OptOutWithoutReason);
            }
            rest = &after[close + 1..];
        }
    }
    found
}

/// `text` on one line, whitespace runs as one space, at most 120 characters.
fn one_line(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(117) {
        Some((at, _)) => format!("{}...", &flat[..at]),
        None => flat,
    }
}

#[cfg(test)]
mod tests;
