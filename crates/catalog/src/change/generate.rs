//! Each operation's SQL, per backend and phase.

use std::path::Path;

use super::sql::Op;
use super::{Change, Operation};
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
    /// The backfills that run after expand's statements, in order (each
    /// also described in a comment at the end of its operation's expand
    /// statements, which the checksum covers).
    pub backfills: Vec<super::Backfill>,
    /// The indexes built after expand's transaction, before the backfills
    /// (PostgreSQL; each also described in a comment at the end of its
    /// operation's expand statements).
    pub indexes: Vec<super::ConcurrentIndex>,
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
        let mut created = std::collections::BTreeSet::new();
        let mut names = std::collections::BTreeMap::new();
        let renames_tables = self
            .operations
            .iter()
            .any(|o| matches!(o, Operation::RenameTable { .. }));
        for (i, operation) in self.operations.iter().enumerate() {
            // Operations running from expand to contract, whose triggers
            // and contract name the table as expand found it.
            let copied = matches!(
                operation,
                Operation::RenameColumn { copy: Some(_), .. }
                    | Operation::ChangeType { .. }
                    | Operation::SplitColumn { .. }
                    | Operation::MoveColumn { .. }
            );
            if copied && renames_tables {
                return Err(CatalogError::BadChange {
                    path: path.to_owned(),
                    operation: Some(i + 1),
                    problem: format!(
                        "{} runs from expand to contract, around the switch at which this file \
                         renames a table: no one name of the table holds in both (its triggers \
                         name the table)",
                        operation.name()
                    ),
                    instead: "rename the table in a version of its own, before or after this one"
                        .to_owned(),
                });
            }
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
                created: &created,
            };
            let parts = op.parts(operation)?;
            let header = format!(
                "-- change.toml, operation {}: {}\n",
                i + 1,
                operation.name()
            );
            for phase in Phase::ALL {
                let statements = parts.phase(phase);
                let after_expand = phase == Phase::Expand && !parts.indexes.is_empty();
                if statements.is_empty() && !after_expand {
                    continue;
                }
                let mut block = header.clone();
                for statement in statements {
                    block.push_str(statement);
                    block.push('\n');
                }
                if phase == Phase::Expand {
                    // In the order they run.
                    let indexes = parts.indexes.iter().map(super::ConcurrentIndex::comment);
                    let backfills = parts.backfills.iter().map(super::Backfill::comment);
                    for comment in indexes.chain(backfills) {
                        block.push_str(&comment);
                        block.push('\n');
                    }
                }
                op.lint(version, phase, &block)?;
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
            // A backfill's name keys its resume point (`table.column`): two
            // of one name would share it.
            if let Some(twice) = parts
                .backfills
                .iter()
                .find(|b| generated.backfills.iter().any(|g| g.name == b.name))
            {
                return Err(op.bad(
                    format!(
                        "it fills `{}` again, which an earlier operation of this change already fills",
                        twice.name
                    ),
                    "change the column in one operation per version (the next change in a version of its own)",
                ));
            }
            // Generated names join table and column names with `_`, so two
            // operations can build one name (`a_b`.`c`, `a`.`b_c`).
            for statement in parts.expand.iter().chain(&parts.switch) {
                let Some(created) = created_name(statement) else {
                    continue;
                };
                match names.get(&created) {
                    Some(&first) if first != i + 1 => {
                        return Err(op.bad(
                            format!(
                                "it creates {} {}, which operation {first} creates too \
                                 (the names tandem generates join a table's name and a \
                                 column's with `_`)",
                                created.0.to_ascii_lowercase(),
                                created.1
                            ),
                            "move one of the two operations to a version of its own",
                        ));
                    }
                    _ => {
                        names.insert(created, i + 1);
                    }
                }
            }
            generated.backfills.extend(parts.backfills);
            generated.indexes.extend(parts.indexes);
            if let Operation::CreateTable { table, .. } = operation {
                created.insert(table.clone());
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

/// The kind (`TRIGGER`, `FUNCTION`) and quoted name of what a generated
/// statement creates, if it creates one.
fn created_name(statement: &str) -> Option<(&'static str, String)> {
    ["TRIGGER", "FUNCTION"].into_iter().find_map(|kind| {
        let rest = statement.strip_prefix("CREATE ")?.strip_prefix(kind)?;
        let name = rest.trim_start().split(['(', ' ']).next()?;
        Some((kind, name.to_owned()))
    })
}

impl Op<'_> {
    /// Refuses an operation's `block` of `phase` that breaks the lint.
    fn lint(&self, version: Version, phase: Phase, block: &str) -> Result<(), CatalogError> {
        let report = crate::lint::lint_text(
            version,
            phase,
            self.path,
            self.postgres,
            block,
            self.created,
        );
        match report.findings.first() {
            Some(finding) => Err(self.bad(
                format!(
                    "its {phase} SQL breaks the lint's `{}` rule: {}",
                    finding.rule.name(),
                    finding.rule.problem()
                ),
                finding.rule.instead(),
            )),
            None => Ok(()),
        }
    }
}
