//! Checks on a phase file's SQL before anything runs it, read with a real
//! SQL tokenizer (`sqlparser`): strings, quoted identifiers, comments and
//! dollar quotes are tokens of their own, so a keyword inside them is never
//! mistaken for a statement.
//!
//! tandem runs each phase in one transaction of its own: that is what makes
//! a phase wholly applied or not at all, and resumable. A statement that
//! ends, starts or splits that transaction (`COMMIT`, `BEGIN`, `ROLLBACK`,
//! `END`, `ABORT`, `START TRANSACTION`, `SAVEPOINT`, `RELEASE`) would commit
//! half a phase behind the journal's back, so the catalog refuses it when it
//! loads.

use sqlparser::dialect::{Dialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::tokenizer::Tokenizer;

/// A statement that controls the transaction, found in a phase file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    /// 1-based line of the statement's first word.
    pub(crate) line: u64,
    /// The statement's first word(s), as written (`COMMIT`, `START TRANSACTION`).
    pub(crate) statement: String,
}

/// What reading the file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Check {
    /// No transaction control.
    Clean,
    /// A statement that controls the transaction.
    TransactionControl(Found),
    /// No dialect could tokenize the file (an unterminated string or
    /// comment): the database would refuse it too.
    Unreadable {
        /// The tokenizer's message, with its line and column.
        message: String,
    },
}

/// Looks for transaction control at the top level of `sql`. `backend` is
/// the file's backend (`Some("postgres")` for `expand.postgres.sql`), or
/// `None` for a generic file, which must read as either dialect.
pub(crate) fn transaction_control(sql: &str, backend: Option<&str>) -> Check {
    let dialects: Vec<Box<dyn Dialect>> = match backend {
        Some("sqlite") => vec![Box::new(SQLiteDialect {})],
        Some("postgres") => vec![Box::new(PostgreSqlDialect {})],
        // A generic file runs on either backend, and the two read some
        // text differently (PostgreSQL nests `/* */` comments, SQLite does
        // not): it must be clean read as each. Dollar quotes are
        // PostgreSQL's alone; a file with them is not SQLite's to read.
        _ if sql.contains('$') => vec![Box::new(PostgreSqlDialect {})],
        _ => vec![Box::new(PostgreSqlDialect {}), Box::new(SQLiteDialect {})],
    };
    // Clean as every dialect that reads it, readable as at least one.
    let mut last_error = None;
    let mut read = false;
    for dialect in &dialects {
        match Tokenizer::new(dialect.as_ref(), sql).tokenize_with_location() {
            Ok(tokens) => {
                read = true;
                if let found @ Check::TransactionControl(_) = scan(sql, &tokens) {
                    return found;
                }
            }
            Err(e) => last_error = Some(e.to_string()),
        }
    }
    match (read, last_error) {
        (true, _) => Check::Clean,
        (false, message) => Check::Unreadable {
            message: message.unwrap_or_default(),
        },
    }
}

/// Words that end, start or split a transaction when they begin a statement.
const CONTROL: &[&str] = &[
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "END",
    "ABORT",
    "SAVEPOINT",
    "RELEASE",
];

fn scan(sql: &str, tokens: &[sqlparser::tokenizer::TokenWithSpan]) -> Check {
    for statement in crate::statements::split(sql, tokens) {
        let Some(first) = statement.words.first() else {
            continue;
        };
        if CONTROL.contains(&first.as_str()) {
            return Check::TransactionControl(Found {
                line: statement.line,
                statement: first.clone(),
            });
        }
        if statement.starts_with(&["START", "TRANSACTION"]) {
            return Check::TransactionControl(Found {
                line: statement.line,
                statement: "START TRANSACTION".to_owned(),
            });
        }
    }
    Check::Clean
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(sql: &str) -> Option<(u64, String)> {
        match transaction_control(sql, None) {
            Check::TransactionControl(f) => Some((f.line, f.statement)),
            Check::Clean => None,
            Check::Unreadable { message } => panic!("{sql}: {message}"),
        }
    }

    #[test]
    fn finds_statements_that_control_the_transaction() {
        for (sql, line, word) in [
            ("ALTER TABLE a ADD COLUMN b INT;\nCOMMIT;", 2, "COMMIT"),
            ("begin;\nCREATE TABLE a (x INT);", 1, "BEGIN"),
            ("DROP TABLE a; COMMIT; DROP TABLE missing;", 1, "COMMIT"),
            ("CREATE TABLE a (x INT);\n\n  rollback", 3, "ROLLBACK"),
            ("CREATE TABLE a (x INT); END;", 1, "END"),
            (
                "SAVEPOINT s; CREATE TABLE a (x INT); RELEASE s;",
                1,
                "SAVEPOINT",
            ),
            (
                "CREATE TABLE a (x INT);\nRELEASE SAVEPOINT s;",
                2,
                "RELEASE",
            ),
            ("-- a comment\nSTART TRANSACTION;", 2, "START TRANSACTION"),
            ("/* x */ ABORT;", 1, "ABORT"),
            // A column named `begin` opens no block.
            ("ALTER TABLE t ADD COLUMN begin TEXT; COMMIT;", 1, "COMMIT"),
            (
                "UPDATE a SET x = CASE WHEN y THEN 1 END, z = 2; COMMIT;",
                1,
                "COMMIT",
            ),
            // Columns named `trigger` and `begin` open no block.
            (
                "CREATE TABLE audit (trigger TEXT, begin TEXT);\nCOMMIT;",
                2,
                "COMMIT",
            ),
            // SQLite ends the comment at the first `*/`, PostgreSQL nests.
            ("/* /* */ COMMIT; */ CREATE TABLE x (a INT);", 1, "COMMIT"),
        ] {
            assert_eq!(found(sql), Some((line, word.to_owned())), "{sql}");
        }
    }

    #[test]
    fn ignores_strings_comments_quotes_and_blocks() {
        for sql in [
            "INSERT INTO log VALUES ('COMMIT;'); -- COMMIT;\n/* BEGIN; */",
            "CREATE TABLE \"commit\" (\"end\" INT, begin_at INT);",
            // SQLite trigger bodies: inner statements and END are not control.
            "CREATE TRIGGER t AFTER INSERT ON a BEGIN\n  INSERT INTO b VALUES (1);\n  UPDATE c SET x = 1;\nEND;\nCREATE TABLE d (x INT);",
            // PostgreSQL function bodies in dollar quotes.
            "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN COMMIT; END $$;",
            "CREATE FUNCTION g() RETURNS trigger LANGUAGE plpgsql AS $body$ BEGIN RETURN NEW; END; $body$;",
            // SQL-standard bodies and CASE … END.
            "CREATE FUNCTION h() RETURNS INT LANGUAGE sql BEGIN ATOMIC SELECT 1; END;",
            "UPDATE a SET x = CASE WHEN y THEN 1 ELSE 2 END; UPDATE a SET z = 1;",
            "CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE s SET x = CASE WHEN 1 THEN 2 END, y = 1; END; CREATE TABLE z (a INT);",
            "SELECT 1 AS start, 2 AS transaction;",
            // A column named `end` inside a trigger body.
            "CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE s SET end = 0; END;",
        ] {
            assert_eq!(found(sql), None, "{sql}");
        }
    }

    #[test]
    fn an_unterminated_string_is_unreadable() {
        assert!(matches!(
            transaction_control("INSERT INTO a VALUES ('oops);", None),
            Check::Unreadable { .. }
        ));
    }
}
