//! The copy-and-sync form of [`Operation::RenameColumn`](super::Operation::RenameColumn)
//! ([`CopySync`]): both names kept in step from expand to contract.

use super::ops::Parts;
use super::retype::Sync;
use super::sql::{Op, BODY_QUOTE};
use super::{Column, CopySync};
use crate::error::CatalogError;

impl Op<'_> {
    /// The new column `to` beside `from` on `table`, a trigger copying
    /// each write of either into the other, a backfill of the rows there,
    /// and in contract the trigger and `from` dropped.
    pub(super) fn copied_rename(
        &self,
        table: &str,
        from: &str,
        to: &str,
        copy: &CopySync,
        p: &mut Parts,
    ) -> Result<(), CatalogError> {
        let t = self.name("table", table)?;
        let (old, new) = (self.name("column", from)?, self.name("column", to)?);
        let added = Column {
            name: to.to_owned(),
            ty: copy.ty.clone(),
            nullable: true,
            default: None,
            primary_key: false,
        };
        p.expand.push(format!(
            "ALTER TABLE {t} ADD COLUMN {};",
            self.column(&added, false)?
        ));
        let trigger = format!("tandem_copy_{table}_{from}");
        p.expand.extend(self.both_ways(&t, &trigger, &old, &new)?);
        // The rows already there: `to` set from `from` (the expression
        // names `to`, which stands for the source column `from`).
        let expr = self.parse_expression("copy", to, to)?;
        let fill = Sync {
            trigger: trigger.clone(),
            target: to,
            expr: &expr,
            source: from,
        };
        p.backfills
            .push(self.backfill(&t, table, to, &copy.key, (&fill, &added))?);
        if self.postgres {
            let f = self.trigger(&trigger)?;
            p.contract.push(format!("DROP TRIGGER {f} ON {t};"));
            p.contract.push(format!("DROP FUNCTION {f}();"));
        } else {
            for suffix in ["insert", "new", "old"] {
                let name = self.trigger(&format!("{trigger}_{suffix}"))?;
                p.contract.push(format!("DROP TRIGGER {name};"));
            }
        }
        p.contract
            .push(format!("ALTER TABLE {t} DROP COLUMN {old};"));
        Ok(())
    }

    /// The trigger(s) keeping `old` and `new` (quoted) equal on every
    /// write: on an insert a non-NULL `new` wins, on an update a change of
    /// `new` wins over one of `old`. PostgreSQL sets `NEW` before the row
    /// is written (no second write, no recursion); SQLite's `AFTER`
    /// triggers update the row only where the columns differ, which also
    /// ends any recursion.
    fn both_ways(
        &self,
        t: &str,
        trigger: &str,
        old: &str,
        new: &str,
    ) -> Result<Vec<String>, CatalogError> {
        if self.postgres {
            let f = self.trigger(trigger)?;
            return Ok(vec![
                format!(
                    "CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS {BODY_QUOTE}\n\
                     BEGIN\n    \
                     IF TG_OP = 'INSERT' THEN\n        \
                     IF NEW.{new} IS NULL THEN\n            NEW.{new} := NEW.{old};\n        \
                     ELSE\n            NEW.{old} := NEW.{new};\n        END IF;\n    \
                     ELSIF NEW.{new} IS DISTINCT FROM OLD.{new} THEN\n        NEW.{old} := NEW.{new};\n    \
                     ELSIF NEW.{old} IS DISTINCT FROM OLD.{old} THEN\n        NEW.{new} := NEW.{old};\n    \
                     END IF;\n    RETURN NEW;\nEND\n{BODY_QUOTE};"
                ),
                format!(
                    "CREATE TRIGGER {f} BEFORE INSERT OR UPDATE ON {t}\n    \
                     FOR EACH ROW EXECUTE FUNCTION {f}();"
                ),
            ]);
        }
        let name = |suffix: &str| self.trigger(&format!("{trigger}_{suffix}"));
        let row = "WHERE rowid = NEW.rowid";
        Ok(vec![
            format!(
                "CREATE TRIGGER {} AFTER INSERT ON {t} BEGIN\n    \
                 UPDATE {t} SET {old} = NEW.{new} {row} AND NEW.{new} IS NOT NULL AND {old} IS NOT NEW.{new};\n    \
                 UPDATE {t} SET {new} = NEW.{old} {row} AND NEW.{new} IS NULL AND {new} IS NOT NEW.{old};\nEND;",
                name("insert")?
            ),
            format!(
                "CREATE TRIGGER {} AFTER UPDATE OF {new} ON {t} BEGIN\n    \
                 UPDATE {t} SET {old} = NEW.{new} {row} AND {old} IS NOT NEW.{new};\nEND;",
                name("new")?
            ),
            format!(
                "CREATE TRIGGER {} AFTER UPDATE OF {old} ON {t} BEGIN\n    \
                 UPDATE {t} SET {new} = NEW.{old} {row} AND NEW.{new} IS OLD.{new} AND {new} IS NOT NEW.{old};\nEND;",
                name("old")?
            ),
        ])
    }
}
