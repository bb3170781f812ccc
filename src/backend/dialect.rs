//! The SQL text a backend speaks: no connection, no I/O.

use std::borrow::Cow;
use std::time::Duration;

/// The SQL text of one database: placeholders, types, clock and catalog
/// queries. Pure text; implemented by [`Sqlite`](crate::Sqlite) and
/// [`Postgres`](crate::Postgres); sealed.
///
/// tandem's metadata SQL (the store's) is written once, in the subset every
/// dialect shares: `?` placeholders, one per bind and in order (no numbered
/// or reused ones), no `RETURNING`, and the types `BIGINT` and `TEXT`
/// (with [`key_text`](Dialect::key_text) where a text column is a key).
/// What differs per database comes from here.
pub trait Dialect: super::sealed::Sealed {
    /// Turns the `?` placeholders of tandem's metadata SQL into this
    /// database's form (PostgreSQL: `$1`, `$2`, …). SQLite and MySQL take
    /// `?` as it is.
    #[doc(hidden)]
    fn placeholders(sql: &str) -> Cow<'_, str> {
        Cow::Borrowed(sql)
    }

    /// Column type of a text primary key (`TEXT`; MySQL would need a
    /// bounded `VARCHAR`).
    #[doc(hidden)]
    fn key_text() -> &'static str {
        "TEXT"
    }

    /// Column type of an auto-increment primary key.
    #[doc(hidden)]
    fn serial_primary_key() -> &'static str;

    /// The SQL function that returns the larger of two values (`MAX` with
    /// two arguments on SQLite, `GREATEST` on PostgreSQL).
    #[doc(hidden)]
    fn greatest_sql() -> &'static str;

    /// An SQL expression for the database's clock, in milliseconds since
    /// the Unix epoch (`BIGINT`). Every lease, expiry and cutoff that
    /// crosses processes is computed with it, never with a host's clock.
    #[doc(hidden)]
    fn now_ms_sql() -> &'static str;

    /// SQL returning one row with a `BIGINT` column `n`: whether the table
    /// named by the one bind exists (1) or not (0).
    #[doc(hidden)]
    fn table_exists_sql() -> &'static str;

    /// SQL returning one row with a `BIGINT` column `n`: how many
    /// application tables the database holds.
    #[doc(hidden)]
    fn user_tables_sql() -> &'static str;

    /// SQL returning one row with a `TEXT` column `name` per column of the
    /// table named by the one bind (none if the table does not exist).
    #[doc(hidden)]
    fn column_names_sql() -> &'static str;

    /// Statements run once when the metadata tables are created, after them
    /// (PostgreSQL: the function that takes the shared schema lock and reads
    /// the version in one round trip).
    #[doc(hidden)]
    fn metadata_extras(prefix: &str, state_table: &str) -> Vec<String>;

    /// SQL that tells listening sessions, at commit, that the state row
    /// changed: two binds, the channel and a payload (PostgreSQL
    /// `pg_notify`); `None` where the backend has no notices.
    #[doc(hidden)]
    fn notify_sql() -> Option<&'static str> {
        None
    }

    /// Whether an `UPDATE … FROM` may return the other table's columns
    /// (PostgreSQL; SQLite's `RETURNING` sees only the updated table): a
    /// lease renewal then reads the state row in the same statement.
    #[doc(hidden)]
    const RENEW_RETURNS_STATE: bool = false;

    /// Whether a process's handles on one database share one poller with
    /// a connection of its own (`fleet::group`; PostgreSQL) instead of
    /// polling each on its own pool (SQLite, whose writes queue per handle).
    #[doc(hidden)]
    const SHARED_POLLER: bool = false;

    /// Whether a `WITH` may hold an `UPDATE` (PostgreSQL): a generated
    /// backfill's batch then finds its end and writes in one statement
    /// ([`Backfill::step_sql`](crate::change::Backfill::step_sql)).
    #[doc(hidden)]
    const WRITING_WITH: bool = false;

    /// What a `SELECT` inside a write transaction appends so that no other
    /// transaction can change the rows it read until this one ends
    /// (PostgreSQL: ` FOR SHARE`; SQLite's write transaction already
    /// excludes every other writer).
    #[doc(hidden)]
    const HOLD_ROWS: &'static str = "";

    /// The fleet lease when `Builder::lease` is not set, from the poll
    /// interval: ten polls (renewed about every quarter lease, so every
    /// second poll). Before `MAX_LEASE` and the two-poll floor.
    #[doc(hidden)]
    fn default_lease(poll_interval: Duration) -> Duration {
        poll_interval.saturating_mul(10)
    }

    /// SQL that bounds, for the rest of the current transaction, how long a
    /// statement waits for a lock; `None` where waits are bounded otherwise
    /// (SQLite's `busy_timeout`).
    #[doc(hidden)]
    fn lock_timeout_sql(timeout: Duration) -> Option<String>;
}

/// `?` placeholders as `$1`, `$2`, … in order, outside quoted strings and
/// identifiers, dollar-quoted bodies (`$$ … $$`, `$tag$ … $tag$`) and
/// comments (tandem's metadata SQL has no `?` operator). Borrowed when there
/// is none.
#[cfg_attr(not(any(feature = "postgres", test)), allow(dead_code))]
pub(crate) fn numbered(sql: &str) -> Cow<'_, str> {
    if !sql.contains('?') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0u32;
    let mut rest = sql;
    while let Some(ch) = rest.chars().next() {
        // The text that stands as it is: a quoted string or identifier, a
        // dollar-quoted body, a comment; else one character.
        let skip = match ch {
            '\'' | '"' => rest[1..].find(ch).map_or(rest.len(), |end| end + 2),
            '-' if rest.starts_with("--") => rest.find('\n').unwrap_or(rest.len()),
            '/' if rest.starts_with("/*") => rest.find("*/").map_or(rest.len(), |end| end + 2),
            '$' => dollar_quoted(rest).unwrap_or(1),
            '?' => {
                n = n.saturating_add(1);
                out.push('$');
                out.push_str(&n.to_string());
                rest = &rest[1..];
                continue;
            }
            _ => ch.len_utf8(),
        };
        out.push_str(&rest[..skip]);
        rest = &rest[skip..];
    }
    Cow::Owned(out)
}

/// The length of the dollar-quoted body (`$tag$ … $tag$`) `text` starts
/// with, if it starts with one.
fn dollar_quoted(text: &str) -> Option<usize> {
    let tag_end = text[1..].find('$')? + 2;
    let tag = &text[..tag_end];
    if !tag[1..tag_end - 1]
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
        || tag[1..].starts_with(|c: char| c.is_ascii_digit())
    {
        return None;
    }
    let close = text[tag_end..].find(tag)?;
    Some(tag_end + close + tag.len())
}

#[cfg(test)]
mod tests {
    use super::numbered;

    #[test]
    fn placeholders_are_numbered_in_order_outside_quotes() {
        assert_eq!(
            numbered("UPDATE t SET a = ?, b = 'x?' WHERE \"c?\" = ? AND d = ?"),
            "UPDATE t SET a = $1, b = 'x?' WHERE \"c?\" = $2 AND d = $3"
        );
        // An escaped quote ('') closes and reopens: still inside.
        assert_eq!(numbered("SELECT 'it''s ?', ?"), "SELECT 'it''s ?', $1");
        assert!(matches!(
            numbered("SELECT 1"),
            std::borrow::Cow::Borrowed("SELECT 1")
        ));
        // Comments and dollar-quoted bodies stand as they are; `$1` is no
        // dollar quote.
        assert_eq!(
            numbered("SELECT ? -- what?\n, $$ a ? $$, $f$ b ? $f$, /* c? */ ?, $1"),
            "SELECT $1 -- what?\n, $$ a ? $$, $f$ b ? $f$, /* c? */ $2, $1"
        );
        assert_eq!(numbered("SELECT 'open ?"), "SELECT 'open ?");
    }
}
