//! [`Operation::MoveColumn`](super::Operation::MoveColumn): a column's
//! values copied into a row each of another table, kept in step from the
//! old table before the switch and back to it after.

use super::backfill::Backfill;
use super::ops::Parts;
use super::sql::{Op, BODY_QUOTE};
use super::Operation;
use crate::error::CatalogError;

/// The names of one move, quoted (and the empty value, parenthesized).
struct Move {
    /// The table the column leaves.
    t: String,
    /// Its key, which the other table's `k` holds.
    f: String,
    /// The column, in both tables.
    c: String,
    /// The table the column goes to.
    u: String,
    /// Its column holding the old table's key (unique, or unique among
    /// the rows `p` marks).
    k: String,
    /// 1:N: the boolean column of `u` marking the row that holds the old
    /// table's value.
    p: Option<String>,
    /// The old table's value meaning "no row there" (`(NULL)` unless set).
    empty: String,
    /// Trigger names' stem: `tandem_move_<table>_<column>`.
    stem: String,
}

impl Move {
    /// The test picking the row of `u` that mirrors key `key` of `t`
    /// (1:N: the one `p` marks).
    fn row(&self, key: &str) -> String {
        match &self.p {
            Some(p) => format!("{} = {key} AND {p}", self.k),
            None => format!("{} = {key}", self.k),
        }
    }

    /// The columns an insert into `u` names, and their values from the
    /// old table's row `row` (`NEW.` or empty for the table itself).
    fn insert(&self, row: &str) -> (String, String) {
        let Move { f, c, k, .. } = self;
        match &self.p {
            Some(p) => (
                format!("{k}, {c}, {p}"),
                format!("{row}{f}, {row}{c}, TRUE"),
            ),
            None => (format!("{k}, {c}"), format!("{row}{f}, {row}{c}")),
        }
    }

    /// An upsert's conflict target: `k`'s unique index (1:N: the partial
    /// one over the rows `p` marks).
    fn target(&self) -> String {
        match &self.p {
            Some(p) => format!("({}) WHERE {p}", self.k),
            None => format!("({})", self.k),
        }
    }
}

impl Op<'_> {
    /// [`Operation::MoveColumn`]'s statements.
    pub(super) fn move_column(&self, op: &Operation, p: &mut Parts) -> Result<(), CatalogError> {
        let Operation::MoveColumn {
            table,
            column,
            to,
            key,
            from_key,
            empty,
            primary,
        } = op
        else {
            return Ok(());
        };
        if to == table {
            return Err(self.bad(
                format!("move_column of `{table}.{column}` moves it to its own table"),
                "name another table in `to` (to rename the column, use rename_column)",
            ));
        }
        if let Some(primary) = primary {
            if primary == key || primary == column {
                return Err(self.bad(
                    format!(
                        "move_column of `{table}.{column}` marks its row in `{to}` by `{primary}`, \
                         which is the {} column",
                        if primary == key { "key" } else { "moved" }
                    ),
                    format!(
                        "name the boolean column of `{to}` that is true on the one row of each \
                         `{key}` holding `{column}` (`is_primary`)"
                    ),
                ));
            }
        }
        let empty = match empty {
            Some(text) => {
                let expr = self.parse_expression("empty", column, text)?;
                let literal = match &expr {
                    sqlparser::ast::Expr::Value(_) => true,
                    sqlparser::ast::Expr::UnaryOp { expr, .. } => {
                        matches!(**expr, sqlparser::ast::Expr::Value(_))
                    }
                    _ => false,
                };
                if !literal {
                    return Err(self.bad(
                        format!(
                            "the empty value of `{table}.{column}` is `{expr}`, not a constant"
                        ),
                        "write a constant (`''`, `0`), or leave it out for NULL",
                    ));
                }
                format!("({expr})")
            }
            None => "(NULL)".to_owned(),
        };
        let m = Move {
            t: self.name("table", table)?,
            f: self.name("column", from_key)?,
            c: self.name("column", column)?,
            u: self.name("table", to)?,
            k: self.name("column", key)?,
            p: primary
                .as_deref()
                .map(|p| self.name("column", p))
                .transpose()?,
            empty,
            stem: format!("tandem_move_{table}_{column}"),
        };
        let back = format!("tandem_back_{table}_{column}");
        // Planned now, not at the first write of version N-1 after expand
        // (PostgreSQL plans a trigger's body when it first runs): both
        // tables and columns, and the unique index the upserts need.
        let (columns, values) = m.insert("");
        p.expand.push(format!(
            "INSERT INTO {u} ({columns}) SELECT {values} FROM {t} WHERE FALSE ON CONFLICT {target} DO NOTHING;",
            u = m.u,
            t = m.t,
            target = m.target(),
        ));
        p.expand.extend(self.move_forward(&m)?);
        p.backfills.push(self.move_backfill(&m, table, column)?);
        p.switch.extend(self.move_unsync(&m.stem, &m.t, true)?);
        p.switch.extend(self.move_back(&m, &back)?);
        p.switch_back.extend(self.move_unsync(&back, &m.u, false)?);
        p.switch_back.extend(self.move_forward(&m)?);
        p.contract.extend(self.move_unsync(&back, &m.u, false)?);
        p.contract
            .push(format!("ALTER TABLE {} DROP COLUMN {};", m.t, m.c));
        Ok(())
    }

    /// The "has a value" test of the old table's row `row` (`NEW`, `OLD`,
    /// or the table itself).
    fn has_value(&self, m: &Move, row: &str) -> String {
        format!("{row}.{} {} {}", m.c, self.distinct(), m.empty)
    }

    /// Before the switch: every write of the old table's column reaches
    /// the other table (a row with a value there, none without), a key
    /// changed here takes its row there along, and a deleted row takes its
    /// rows there with it (first: a foreign key to the old table would
    /// refuse the delete).
    fn move_forward(&self, m: &Move) -> Result<Vec<String>, CatalogError> {
        let Move { t, f, c, u, k, .. } = m;
        let has = self.has_value(m, "NEW");
        let distinct = self.distinct();
        let (columns, values) = m.insert("NEW.");
        let (row_new, row_old) = (m.row(&format!("NEW.{f}")), m.row(&format!("OLD.{f}")));
        if self.postgres {
            let sync = self.trigger(&m.stem)?;
            let delete = self.trigger(&format!("{}_delete", m.stem))?;
            let target = m.target();
            return Ok(vec![
                format!(
                    "CREATE FUNCTION {sync}() RETURNS trigger LANGUAGE plpgsql AS {BODY_QUOTE}\n\
                     BEGIN\n    IF TG_OP = 'UPDATE' THEN\n        IF OLD.{f} {distinct} NEW.{f} THEN\n            \
                     DELETE FROM {u} WHERE {row_old};\n        END IF;\n    END IF;\n    \
                     IF {has} THEN\n        \
                     INSERT INTO {u} ({columns}) VALUES ({values})\n        \
                     ON CONFLICT {target} DO UPDATE SET {c} = EXCLUDED.{c} WHERE {u}.{c} IS DISTINCT FROM EXCLUDED.{c};\n    \
                     ELSE\n        DELETE FROM {u} WHERE {row_new};\n    END IF;\n    RETURN NULL;\nEND\n{BODY_QUOTE};"
                ),
                format!(
                    "CREATE TRIGGER {sync} AFTER INSERT OR UPDATE OF {c}, {f} ON {t}\n    \
                     FOR EACH ROW EXECUTE FUNCTION {sync}();"
                ),
                format!(
                    "CREATE FUNCTION {delete}() RETURNS trigger LANGUAGE plpgsql AS {BODY_QUOTE}\n\
                     BEGIN\n    DELETE FROM {u} WHERE {k} = OLD.{f};\n    RETURN OLD;\nEND\n{BODY_QUOTE};"
                ),
                format!(
                    "CREATE TRIGGER {delete} BEFORE DELETE ON {t}\n    \
                     FOR EACH ROW EXECUTE FUNCTION {delete}();"
                ),
            ]);
        }
        // Update, then insert what is missing (not `INSERT OR REPLACE`: the
        // conflict clause of the statement that fired a SQLite trigger
        // overrides the one inside it).
        let upsert = format!(
            "UPDATE {u} SET {c} = NEW.{c} WHERE {row_new} AND {has} AND {c} IS NOT NEW.{c};\n    \
             INSERT INTO {u} ({columns}) SELECT {values} WHERE {has} AND NOT EXISTS (SELECT 1 FROM {u} WHERE {row_new});"
        );
        let name = |event: &str| self.trigger(&format!("{}_{event}", m.stem));
        Ok(vec![
            format!(
                "CREATE TRIGGER {} AFTER INSERT ON {t} BEGIN\n    {upsert}\nEND;",
                name("insert")?
            ),
            format!(
                "CREATE TRIGGER {} AFTER UPDATE OF {c}, {f} ON {t} BEGIN\n    \
                 DELETE FROM {u} WHERE {row_old} AND (OLD.{f} IS NOT NEW.{f} OR NOT ({has}));\n    {upsert}\nEND;",
                name("update")?
            ),
            format!(
                "CREATE TRIGGER {} BEFORE DELETE ON {t} BEGIN\n    DELETE FROM {u} WHERE {k} = OLD.{f};\nEND;",
                name("delete")?
            ),
        ])
    }

    /// After the switch: every write of the other table's column (1:N: of
    /// the row `p` marks) reaches the old table's row, and a row deleted
    /// there, moved to another key or (1:N) no longer marked leaves the
    /// empty value where no row holds the key any more.
    fn move_back(&self, m: &Move, back: &str) -> Result<Vec<String>, CatalogError> {
        let Move {
            t,
            f,
            c,
            u,
            k,
            empty,
            ..
        } = m;
        let distinct = self.distinct();
        let marked =
            m.p.as_ref()
                .map_or_else(String::new, |p| format!(" AND NEW.{p}"));
        let copy = format!(
            "UPDATE {t} SET {c} = NEW.{c} WHERE {f} = NEW.{k}{marked} AND {c} {distinct} NEW.{c};"
        );
        let clear = format!(
            "UPDATE {t} SET {c} = {empty} WHERE {f} = OLD.{k} AND {c} {distinct} {empty} \
             AND NOT EXISTS (SELECT 1 FROM {u} WHERE {});",
            m.row(&format!("OLD.{k}"))
        );
        let watched = match &m.p {
            Some(p) => format!("{c}, {k}, {p}"),
            None => format!("{c}, {k}"),
        };
        if self.postgres {
            let sync = self.trigger(back)?;
            let delete = self.trigger(&format!("{back}_delete"))?;
            return Ok(vec![
                format!(
                    "CREATE FUNCTION {sync}() RETURNS trigger LANGUAGE plpgsql AS {BODY_QUOTE}\n\
                     BEGIN\n    IF TG_OP = 'UPDATE' THEN\n        {clear}\n    END IF;\n    {copy}\n    RETURN NULL;\nEND\n{BODY_QUOTE};"
                ),
                format!(
                    "CREATE TRIGGER {sync} AFTER INSERT OR UPDATE OF {watched} ON {u}\n    \
                     FOR EACH ROW EXECUTE FUNCTION {sync}();"
                ),
                format!(
                    "CREATE FUNCTION {delete}() RETURNS trigger LANGUAGE plpgsql AS {BODY_QUOTE}\n\
                     BEGIN\n    {clear}\n    RETURN NULL;\nEND\n{BODY_QUOTE};"
                ),
                format!(
                    "CREATE TRIGGER {delete} AFTER DELETE ON {u}\n    \
                     FOR EACH ROW EXECUTE FUNCTION {delete}();"
                ),
            ]);
        }
        let name = |event: &str| self.trigger(&format!("{back}_{event}"));
        Ok(vec![
            format!(
                "CREATE TRIGGER {} AFTER INSERT ON {u} BEGIN\n    {copy}\nEND;",
                name("insert")?
            ),
            format!(
                "CREATE TRIGGER {} AFTER UPDATE OF {watched} ON {u} BEGIN\n    {clear}\n    {copy}\nEND;",
                name("update")?
            ),
            format!(
                "CREATE TRIGGER {} AFTER DELETE ON {u} BEGIN\n    {clear}\nEND;",
                name("delete")?
            ),
        ])
    }

    /// The statements dropping the triggers of `stem` on `on`.
    fn move_unsync(
        &self,
        stem: &str,
        on: &str,
        at_switch: bool,
    ) -> Result<Vec<String>, CatalogError> {
        let allow = if at_switch {
            "-- tandem:allow(switch-drop) a sync trigger, which the switch back creates again\n"
        } else {
            ""
        };
        if self.postgres {
            let mut out = Vec::new();
            for name in [stem.to_owned(), format!("{stem}_delete")] {
                let n = self.trigger(&name)?;
                out.push(format!("{allow}DROP TRIGGER {n} ON {on};"));
                out.push(format!("{allow}DROP FUNCTION {n}();"));
            }
            return Ok(out);
        }
        ["insert", "update", "delete"]
            .into_iter()
            .map(|event| {
                Ok(format!(
                    "{allow}DROP TRIGGER {};",
                    self.trigger(&format!("{stem}_{event}"))?
                ))
            })
            .collect()
    }

    /// The keyset walk of the old table inserting the rows the other table
    /// lacks.
    fn move_backfill(&self, m: &Move, table: &str, column: &str) -> Result<Backfill, CatalogError> {
        let Move { t, f, u, .. } = m;
        let key = if self.postgres {
            f.clone()
        } else {
            "rowid".to_owned()
        };
        let (columns, values) = m.insert("");
        Ok(Backfill {
            name: format!("{table}.{column}"),
            key,
            set: String::new(),
            insert: Some(format!(
                "INSERT INTO {u} ({columns}) SELECT {values} FROM {t}"
            )),
            // PostgreSQL: the rows read are locked, so a row an N-1 call
            // clears or deletes meanwhile is read again as it is now (the
            // trigger's delete cannot see the batch's uncommitted row), not
            // inserted as it was.
            insert_lock: if self.postgres {
                format!(" FOR SHARE OF {t}")
            } else {
                String::new()
            },
            pending: format!(
                "{} AND NOT EXISTS (SELECT 1 FROM {u} WHERE {u}.{})",
                self.has_value(m, t),
                m.row(&format!("{t}.{f}"))
            ),
            estimate_sql: if self.postgres {
                format!("SELECT CAST(reltuples AS BIGINT) AS n FROM pg_class WHERE oid = '{t}'::regclass")
            } else {
                format!("SELECT count(*) AS n FROM {t}")
            },
            table: t.clone(),
        })
    }
}
