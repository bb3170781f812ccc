//! [`Operation::ChangeType`](super::Operation::ChangeType): a new column
//! kept in sync one way before the switch and the other way after it.

use std::ops::ControlFlow;

use sqlparser::ast::{visit_expressions_mut, Expr, Ident};

use super::backfill::Backfill;
use super::ops::Parts;
use super::sql::{Op, BODY_QUOTE};
use super::{Column, Operation};
use crate::error::CatalogError;

/// One direction of the sync: `source`'s writes copied into `target`.
pub(super) struct Sync<'a> {
    /// `tandem_up_…` or `tandem_down_…`.
    pub(super) trigger: String,
    pub(super) target: &'a str,
    /// The expression, `column` meaning `source`.
    pub(super) expr: &'a Expr,
    pub(super) source: &'a str,
}

impl Op<'_> {
    /// [`Operation::ChangeType`]'s statements.
    pub(super) fn change_type(&self, op: &Operation, p: &mut Parts) -> Result<(), CatalogError> {
        let Operation::ChangeType {
            table,
            column: c,
            ty,
            up,
            down,
            nullable,
            default,
            key,
        } = op
        else {
            return Ok(());
        };
        let t = self.name("table", table)?;
        self.name("column", c)?;
        let new = format!("_tandem_new_{c}");
        let old = format!("_tandem_old_{c}");
        self.name("column", &new)?;
        self.name("column", &old)?;
        let up = self.parse_expression("up", c, up.text(self.backend()))?;
        let down = self.parse_expression("down", c, down.text(self.backend()))?;
        let forward = Sync {
            trigger: format!("tandem_up_{table}_{c}"),
            target: &new,
            expr: &up,
            source: c,
        };
        let reverse = Sync {
            trigger: format!("tandem_down_{table}_{c}"),
            target: &old,
            expr: &down,
            source: c,
        };
        let added = Column {
            name: new.clone(),
            ty: ty.clone(),
            nullable: *nullable,
            default: default.clone(),
            primary_key: false,
        };
        p.expand.push(format!(
            "ALTER TABLE {t} ADD COLUMN {};",
            self.column(&added, false)?
        ));
        p.expand.extend(self.sync(&t, &forward, c)?);
        p.backfills
            .push(self.backfill(&t, table, c, key, (&forward, &added))?);
        let renames = |from: &str, to: &str| -> Result<String, CatalogError> {
            Ok(format!(
                "ALTER TABLE {t} RENAME COLUMN {} TO {};",
                self.name("column", from)?,
                self.name("column", to)?
            ))
        };
        // Switch: the forward sync goes, the names swap, the reverse comes.
        p.switch.extend(self.unsync(&t, &forward.trigger, true)?);
        p.switch.push(renames(c, &old)?);
        p.switch.push(renames(&new, c)?);
        p.switch.extend(self.sync(&t, &reverse, c)?);
        // Switch back: the same, the other way.
        p.switch_back
            .extend(self.unsync(&t, &reverse.trigger, false)?);
        p.switch_back.push(renames(c, &new)?);
        p.switch_back.push(renames(&old, c)?);
        p.switch_back.extend(self.sync(&t, &forward, c)?);
        // Contract: nothing reads the old column any more.
        p.contract.extend(self.unsync(&t, &reverse.trigger, false)?);
        p.contract.push(format!(
            "ALTER TABLE {t} DROP COLUMN {};",
            self.name("column", &old)?
        ));
        Ok(())
    }

    /// The keyset walk that fills `sync.target` (a column of type `ty`) in
    /// the rows already there.
    pub(super) fn backfill(
        &self,
        t: &str,
        table: &str,
        column: &str,
        key: &str,
        (sync, ty): (&Sync<'_>, &Column),
    ) -> Result<Backfill, CatalogError> {
        self.backfill_all(t, table, column, key, &[(sync, ty)])
    }

    /// The keyset walk that fills every sync's target (a column as
    /// defined) in the rows already there (one walk; a row is pending while
    /// any target differs from its value as the column stores it: on
    /// PostgreSQL the value cast to the column's type, so that a lossy
    /// conversion, such as double to real, is not pending forever; SQLite
    /// applies the column's affinity to the value it is compared with).
    pub(super) fn backfill_all(
        &self,
        t: &str,
        table: &str,
        column: &str,
        key: &str,
        syncs: &[(&Sync<'_>, &Column)],
    ) -> Result<Backfill, CatalogError> {
        let key = if self.postgres {
            self.name("key", key)?
        } else {
            "rowid".to_owned()
        };
        let distinct = self.distinct();
        let mut sets = Vec::new();
        let mut pending = Vec::new();
        for (sync, defined) in syncs {
            let (value, _) = self.rewritten(sync.expr, column, sync.source, None)?;
            let target = self.name("column", sync.target)?;
            sets.push(format!("{target} = ({value})"));
            pending.push(match (self.postgres, self.ty(defined)?) {
                // `json` has no equality operator: compared as text.
                (true, "JSON") => {
                    format!("{target}::text {distinct} CAST(({value}) AS JSON)::text")
                }
                (true, ty) => format!("{target} {distinct} CAST(({value}) AS {ty})"),
                (false, _) => format!("{target} {distinct} ({value})"),
            });
        }
        let pending = match pending.as_slice() {
            [one] => one.clone(),
            many => format!("({})", many.join(" OR ")),
        };
        Ok(Backfill {
            name: format!("{table}.{column}"),
            key,
            set: sets.join(", "),
            insert: None,
            insert_lock: String::new(),
            pending,
            estimate_sql: if self.postgres {
                // `t` is a validated name: no quote inside.
                format!("SELECT CAST(reltuples AS BIGINT) AS n FROM pg_class WHERE oid = '{t}'::regclass")
            } else {
                format!("SELECT count(*) AS n FROM {t}")
            },
            table: t.to_owned(),
        })
    }

    /// The trigger(s) copying every write of a row into `sync.target`
    /// (`column` in the expression meaning `sync.source`).
    pub(super) fn sync(
        &self,
        t: &str,
        sync: &Sync<'_>,
        column: &str,
    ) -> Result<Vec<String>, CatalogError> {
        let target = self.name("column", sync.target)?;
        let name = |suffix: &str| self.trigger(&format!("{}{suffix}", sync.trigger));
        let (value, read) = self.rewritten(sync.expr, column, sync.source, Some("NEW"))?;
        let value = format!("({value})");
        // The update trigger fires only for writes naming the columns the
        // expression reads, so the backfill's own writes do not fire it.
        let mut read: Vec<String> = read.iter().map(|c| format!("\"{c}\"")).collect();
        read.dedup();
        let update = if read.is_empty() {
            "UPDATE".to_owned()
        } else {
            format!("UPDATE OF {}", read.join(", "))
        };
        if self.postgres {
            let f = name("")?;
            return Ok(vec![
                format!(
                    "CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS {BODY_QUOTE}\n\
                     BEGIN\n    NEW.{target} := {value};\n    RETURN NEW;\nEND\n{BODY_QUOTE};"
                ),
                format!(
                    "CREATE TRIGGER {f} BEFORE INSERT OR {update} ON {t}\n    \
                     FOR EACH ROW EXECUTE FUNCTION {f}();"
                ),
            ]);
        }
        // SQLite's triggers cannot change NEW: each updates the row it
        // follows, only where the value differs (which also ends the
        // recursion, were recursive triggers on).
        ["INSERT".to_owned(), update]
            .into_iter()
            .zip(["insert", "update"])
            .map(|(event, suffix)| {
                Ok(format!(
                    "CREATE TRIGGER {} AFTER {event} ON {t} BEGIN\n    \
                     UPDATE {t} SET {target} = {value} WHERE rowid = NEW.rowid AND {target} IS NOT {value};\nEND;",
                    name(&format!("_{suffix}"))?,
                ))
            })
            .collect()
    }

    /// The statements dropping [`sync`](Op::sync)'s trigger(s); `at_switch`
    /// says why that is no loss, for the lint.
    pub(super) fn unsync(
        &self,
        t: &str,
        trigger: &str,
        at_switch: bool,
    ) -> Result<Vec<String>, CatalogError> {
        let allow = if at_switch {
            "-- tandem:allow(switch-drop) a sync trigger, which the switch back creates again\n"
        } else {
            ""
        };
        if self.postgres {
            let f = self.trigger(trigger)?;
            return Ok(vec![
                format!("{allow}DROP TRIGGER {f} ON {t};"),
                format!("{allow}DROP FUNCTION {f}();"),
            ]);
        }
        ["insert", "update"]
            .into_iter()
            .map(|event| {
                Ok(format!(
                    "{allow}DROP TRIGGER {};",
                    self.trigger(&format!("{trigger}_{event}"))?
                ))
            })
            .collect()
    }

    /// `expr` with its column names quoted (and prefixed by `row`):
    /// `column` becomes `source`, every other name stays the row's column
    /// of that name; with the columns it reads, sorted.
    pub(super) fn rewritten(
        &self,
        expr: &Expr,
        column: &str,
        source: &str,
        row: Option<&str>,
    ) -> Result<(String, Vec<String>), CatalogError> {
        let mut expr = expr.clone();
        let mut bad = None;
        let mut read = Vec::new();
        let _ = visit_expressions_mut(&mut expr, |e| {
            if let Expr::Identifier(ident) = e {
                let name = if ident.quote_style.is_none() {
                    ident.value.to_ascii_lowercase()
                } else {
                    ident.value.clone()
                };
                let name = if name == column {
                    source.to_owned()
                } else {
                    name
                };
                if let Err(err) = self.name("column", &name) {
                    bad = Some(err);
                    return ControlFlow::Break(());
                }
                read.push(name.clone());
                let quoted = Ident::with_quote('"', name);
                *e = match row {
                    Some(row) => Expr::CompoundIdentifier(vec![Ident::new(row), quoted]),
                    None => Expr::Identifier(quoted),
                };
            }
            ControlFlow::Continue(())
        });
        read.sort();
        match bad {
            Some(err) => Err(err),
            None => Ok((expr.to_string(), read)),
        }
    }
}
