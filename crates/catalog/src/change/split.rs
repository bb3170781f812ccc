//! [`Operation::SplitColumn`](super::Operation::SplitColumn): new columns
//! computed from the old one before the switch, the old one computed from
//! them after it.

use super::ops::Parts;
use super::retype::Sync;
use super::sql::Op;
use super::{Column, Operation};
use crate::error::CatalogError;

impl Op<'_> {
    /// [`Operation::SplitColumn`]'s statements.
    pub(super) fn split_column(&self, op: &Operation, p: &mut Parts) -> Result<(), CatalogError> {
        let Operation::SplitColumn {
            table,
            column: c,
            into,
            down,
            key,
        } = op
        else {
            return Ok(());
        };
        let t = self.name("table", table)?;
        self.name("column", c)?;
        self.check_split(c, into)?;
        let ups = into
            .iter()
            .map(|part| self.parse_expression("up", &part.name, part.up.text(self.backend())))
            .collect::<Result<Vec<_>, _>>()?;
        let down = self.parse_expression("down", c, down.text(self.backend()))?;
        let new: Vec<&str> = into.iter().map(|part| part.name.as_str()).collect();
        for (part, up) in into.iter().zip(&ups) {
            let read = self.reads(up, c)?;
            if let Some(other) = read.iter().find(|r| new.contains(&r.as_str())) {
                return Err(self.bad(
                    format!(
                        "the up of `{}` reads `{other}`, another column the split adds",
                        part.name
                    ),
                    "compute each new column from the old one and the row's existing columns",
                ));
            }
        }
        if self.reads(&down, c)?.iter().any(|r| r == c) {
            return Err(self.bad(
                format!("the down of `{c}` reads `{c}` itself"),
                "compute the old column from the new ones",
            ));
        }
        let forward: Vec<Sync<'_>> = into
            .iter()
            .zip(&ups)
            .map(|(part, up)| Sync {
                trigger: format!("tandem_up_{table}_{}", part.name),
                target: &part.name,
                expr: up,
                source: c,
            })
            .collect();
        let reverse = Sync {
            trigger: format!("tandem_down_{table}_{c}"),
            target: c,
            expr: &down,
            source: c,
        };
        let added: Vec<Column> = into
            .iter()
            .map(|part| Column {
                name: part.name.clone(),
                ty: part.ty.clone(),
                nullable: part.nullable,
                default: part.default.clone(),
                primary_key: false,
            })
            .collect();
        for column in &added {
            p.expand.push(format!(
                "ALTER TABLE {t} ADD COLUMN {};",
                self.column(column, false)?
            ));
        }
        for sync in &forward {
            p.expand.extend(self.sync(&t, sync, c)?);
        }
        let syncs: Vec<(&Sync<'_>, &Column)> = forward.iter().zip(&added).collect();
        p.backfills
            .push(self.backfill_all(&t, table, c, key, &syncs)?);
        // Switch: the new columns' syncs go, the old column's comes.
        for sync in &forward {
            p.switch.extend(self.unsync(&t, &sync.trigger, true)?);
        }
        p.switch.extend(self.sync(&t, &reverse, c)?);
        // Switch back: the same, the other way.
        p.switch_back
            .extend(self.unsync(&t, &reverse.trigger, false)?);
        for sync in &forward {
            p.switch_back.extend(self.sync(&t, sync, c)?);
        }
        // Contract: nothing reads the old column any more.
        p.contract.extend(self.unsync(&t, &reverse.trigger, false)?);
        p.contract.push(format!(
            "ALTER TABLE {t} DROP COLUMN {};",
            self.name("column", c)?
        ));
        Ok(())
    }

    /// At least two new columns, named apart from each other and the old.
    fn check_split(&self, c: &str, into: &[super::SplitInto]) -> Result<(), CatalogError> {
        if into.len() < 2 {
            return Err(self.bad(
                format!("split_column of `{c}` names {} new column(s)", into.len()),
                "name two or more in `into` (for one, use change_type or rename_column)",
            ));
        }
        for (i, part) in into.iter().enumerate() {
            self.name("column", &part.name)?;
            if part.name == c || into[..i].iter().any(|p| p.name == part.name) {
                return Err(self.bad(
                    format!(
                        "split_column of `{c}` adds `{}` twice, or as itself",
                        part.name
                    ),
                    "give every new column a name of its own",
                ));
            }
        }
        Ok(())
    }

    /// The columns `expr` reads (`column` meaning itself).
    fn reads(
        &self,
        expr: &sqlparser::ast::Expr,
        column: &str,
    ) -> Result<Vec<String>, CatalogError> {
        Ok(self.rewritten(expr, column, column, None)?.1)
    }
}
