//! The lint's rules: what each phase may do, per statement.

use std::collections::BTreeSet;

use sqlparser::ast::{
    AlterColumnOperation, AlterTableOperation, ColumnDef, ColumnOption, Expr, ObjectName,
    Statement as Sql, TableConstraint,
};

use crate::statements::Statement;
use crate::version::Phase;

/// A rule of the phase-aware lint (see [`Catalog::lint`](crate::Catalog::lint)).
/// Each has a [`name`](Rule::name) (used in opt-out comments), the
/// [`problem`](Rule::problem) and what to write [`instead`](Rule::instead).
/// Where a rule has a counterpart among squawk's PostgreSQL rules, its
/// documentation names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// `expand-drop`: a drop in expand (a table, column, constraint, index,
    /// view, trigger or function, or a column's default). squawk: `ban-drop-table`,
    /// `ban-drop-column`.
    ExpandDrop,
    /// `expand-rename`: a table or column renamed in expand. squawk:
    /// `renaming-table`, `renaming-column`.
    ExpandRename,
    /// `expand-type-change`: a column's type changed in expand. squawk:
    /// `changing-column-type`.
    ExpandTypeChange,
    /// `expand-set-not-null`: `SET NOT NULL` in expand. squawk:
    /// `adding-not-nullable-field`.
    ExpandSetNotNull,
    /// `expand-required-column`: a `NOT NULL` column without a default
    /// added in expand. squawk: `adding-required-field`.
    ExpandRequiredColumn,
    /// `index-not-concurrent` (PostgreSQL): an index built on an existing
    /// table in expand. squawk: `require-concurrent-index-creation`.
    IndexNotConcurrent,
    /// `constraint-not-valid` (PostgreSQL): a `CHECK` or `FOREIGN KEY` added
    /// to an existing table without `NOT VALID`. squawk:
    /// `constraint-missing-not-valid`, `adding-foreign-key-constraint`.
    ConstraintNotValid,
    /// `unique-constraint` (PostgreSQL): a `UNIQUE` or `PRIMARY KEY`
    /// constraint added to an existing table (it builds its index under the
    /// table's exclusive lock). squawk: `disallowed-unique-constraint`.
    UniqueConstraint,
    /// `table-rewrite` (PostgreSQL): a column added with a volatile
    /// default, a serial or identity type, or as a stored generated column:
    /// the whole table is rewritten under its exclusive lock. squawk:
    /// `adding-field-with-default`, `adding-serial-primary-key-field`.
    TableRewrite,
    /// `unbatched-write`: an `UPDATE` or `DELETE` without `WHERE`, or a
    /// `TRUNCATE` outside contract, in one transaction (every row stays
    /// locked until the phase commits).
    UnbatchedWrite,
    /// `switch-drop`: a drop in switch.
    SwitchDrop,
    /// `switch-index-build`: an index built in switch.
    SwitchIndexBuild,
    /// `switch-table-scan`: a statement that reads or rewrites a whole table
    /// in switch (a type change, `SET NOT NULL`, a constraint checked at
    /// once, `VALIDATE CONSTRAINT`).
    SwitchTableScan,
    /// `contract-only-removes`: contract adds, renames or changes something.
    ContractOnlyRemoves,
    /// `opt-out-reason`: a `tandem:allow(…)` comment without a reason.
    OptOutWithoutReason,
    /// `opt-out-rule`: a `tandem:allow(…)` comment naming no rule that can
    /// be opted out of.
    OptOutUnknownRule,
}

impl Rule {
    /// Every rule.
    pub const ALL: &'static [Rule] = &[
        Rule::ExpandDrop,
        Rule::ExpandRename,
        Rule::ExpandTypeChange,
        Rule::ExpandSetNotNull,
        Rule::ExpandRequiredColumn,
        Rule::IndexNotConcurrent,
        Rule::ConstraintNotValid,
        Rule::UniqueConstraint,
        Rule::TableRewrite,
        Rule::UnbatchedWrite,
        Rule::SwitchDrop,
        Rule::SwitchIndexBuild,
        Rule::SwitchTableScan,
        Rule::ContractOnlyRemoves,
        Rule::OptOutWithoutReason,
        Rule::OptOutUnknownRule,
    ];

    /// The rule's name, as opt-out comments write it (`expand-drop`).
    pub fn name(self) -> &'static str {
        match self {
            Rule::ExpandDrop => "expand-drop",
            Rule::ExpandRename => "expand-rename",
            Rule::ExpandTypeChange => "expand-type-change",
            Rule::ExpandSetNotNull => "expand-set-not-null",
            Rule::ExpandRequiredColumn => "expand-required-column",
            Rule::IndexNotConcurrent => "index-not-concurrent",
            Rule::ConstraintNotValid => "constraint-not-valid",
            Rule::UniqueConstraint => "unique-constraint",
            Rule::TableRewrite => "table-rewrite",
            Rule::UnbatchedWrite => "unbatched-write",
            Rule::SwitchDrop => "switch-drop",
            Rule::SwitchIndexBuild => "switch-index-build",
            Rule::SwitchTableScan => "switch-table-scan",
            Rule::ContractOnlyRemoves => "contract-only-removes",
            Rule::OptOutWithoutReason => "opt-out-reason",
            Rule::OptOutUnknownRule => "opt-out-rule",
        }
    }

    /// The rule named `name`.
    pub fn from_name(name: &str) -> Option<Rule> {
        Rule::ALL.iter().copied().find(|r| r.name() == name)
    }

    /// Whether a statement can opt out of it (not of the opt-out rules).
    pub fn can_opt_out(self) -> bool {
        !matches!(self, Rule::OptOutWithoutReason | Rule::OptOutUnknownRule)
    }

    /// What goes wrong.
    pub fn problem(self) -> &'static str {
        match self {
            Rule::ExpandDrop => "version N-1 binaries still run on an expanded database and may use what this drops",
            Rule::ExpandRename => "version N-1 binaries still use the old name until the switch",
            Rule::ExpandTypeChange => "version N-1 binaries still read and write the column with its old type (and on PostgreSQL the change rewrites the table under an exclusive lock)",
            Rule::ExpandSetNotNull => "version N-1 binaries may still write NULL there (and the check scans the table under an exclusive lock)",
            Rule::ExpandRequiredColumn => "version N-1 binaries insert rows without the new column, and each insert fails",
            Rule::IndexNotConcurrent => "building an index blocks every write to the table until it is built",
            Rule::ConstraintNotValid => "checking the existing rows holds a lock that blocks writes for the whole scan",
            Rule::UniqueConstraint => "the constraint builds its index under a lock that blocks reads and writes",
            Rule::TableRewrite => "the column's values are computed row by row: the whole table is rewritten under an exclusive lock",
            Rule::UnbatchedWrite => "it changes every row in one transaction, and every row it changed stays locked until the phase commits",
            Rule::SwitchDrop => "binaries can roll back until contract, and a switch back cannot bring it back",
            Rule::SwitchIndexBuild => "the switch holds the exclusive schema lock while every call waits; an index build makes that wait as long as the build",
            Rule::SwitchTableScan => "the switch holds the exclusive schema lock while every call waits; this reads or rewrites the whole table meanwhile",
            Rule::ContractOnlyRemoves => "contract runs while version N serves and may run long after the switch (or not yet, on installations in the field): version N cannot depend on what it adds or changes, and what it renames breaks version N",
            Rule::OptOutWithoutReason => "an opt-out needs a reason, for the next reader",
            Rule::OptOutUnknownRule => "the opt-out names no rule that can be opted out of",
        }
    }

    /// What to write instead.
    pub fn instead(self) -> &'static str {
        match self {
            Rule::ExpandDrop => "move the drop to contract.sql, which runs once no instance of version N-1 is left",
            Rule::ExpandRename => "rename in switch.sql (and back in switch_back.sql): tandem runs it once no version N-1 call is in flight and before any version N call starts; or add the new column here, keep both in sync with triggers and a backfill, and drop the old one in contract",
            Rule::ExpandTypeChange => "add a column of the new type here, keep both in sync with triggers and a backfill, read the new one from version N, and drop the old one in contract",
            Rule::ExpandSetNotNull => "on PostgreSQL add `CHECK (col IS NOT NULL) NOT VALID` here and `VALIDATE CONSTRAINT` it, then `SET NOT NULL` in contract (PostgreSQL 12+ then skips the scan); on SQLite enforce it in version N's code",
            Rule::ExpandRequiredColumn => "add it nullable or with a constant DEFAULT, backfill it, and make it NOT NULL in contract",
            Rule::IndexNotConcurrent => "build it beforehand with `CREATE INDEX CONCURRENTLY` (which cannot run inside a phase's transaction) and write `CREATE INDEX IF NOT EXISTS` here, which then finds it built",
            Rule::ConstraintNotValid => "add it `NOT VALID` here (new rows are checked at once) and `VALIDATE CONSTRAINT` it in contract or a later expand (that lock lets reads and writes go on)",
            Rule::UniqueConstraint => "build a unique index beforehand with `CREATE UNIQUE INDEX CONCURRENTLY`, then add the constraint with `USING INDEX`",
            Rule::TableRewrite => "add the column nullable or with a constant default, and fill it with a backfill step",
            Rule::UnbatchedWrite => "register a backfill step (`Builder::backfill`) that changes a batch of rows per transaction until none is left",
            Rule::SwitchDrop => "move the drop to contract.sql",
            Rule::SwitchIndexBuild => "build the index in expand",
            Rule::SwitchTableScan => "do the work in expand (a new column with a backfill, a constraint `NOT VALID` validated there), and keep the switch to renames and small updates",
            Rule::ContractOnlyRemoves => "put it in the next version's expand",
            Rule::OptOutWithoutReason => "write why after it: `-- tandem:allow(rule) the table holds ten rows`",
            Rule::OptOutUnknownRule => "name one of the rules (`Rule::ALL`), comma-separated for several",
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a statement runs.
pub(super) struct Context<'a> {
    pub(super) phase: Phase,
    pub(super) postgres: bool,
    /// Tables created earlier in the same file (lowercase names).
    pub(super) created: &'a BTreeSet<String>,
}

impl Context<'_> {
    fn expand(&self) -> bool {
        self.phase == Phase::Expand
    }
    fn switch(&self) -> bool {
        matches!(self.phase, Phase::Switch | Phase::SwitchBack)
    }
    fn contract(&self) -> bool {
        self.phase == Phase::Contract
    }
    fn existing(&self, table: &ObjectName) -> bool {
        !self.created.contains(&table_key(table))
    }
}

/// A table's name as the file refers to it (its last part, lowercase).
fn table_key(name: &ObjectName) -> String {
    name.0
        .last()
        .map(|p| p.to_string().trim_matches('"').to_lowercase())
        .unwrap_or_default()
}

/// The table a `CREATE TABLE` creates.
pub(super) fn created_table(parsed: Option<&Sql>) -> Option<String> {
    match parsed {
        Some(Sql::CreateTable(t)) => Some(table_key(&t.name)),
        _ => None,
    }
}

/// Whether `text` parses as an `UPDATE` or `DELETE` without `WHERE`.
pub(super) fn unbounded_write(text: &str, dialect: &dyn sqlparser::dialect::Dialect) -> bool {
    match sqlparser::parser::Parser::parse_sql(dialect, text).as_deref() {
        Ok([Sql::Update(u)]) => u.selection.is_none(),
        Ok([Sql::Delete(d)]) => d.selection.is_none(),
        _ => false,
    }
}

/// Whether a statement the lint cannot parse is of a kind a rule looks at
/// beyond its first words.
pub(super) fn matters_unparsed(statement: &Statement) -> bool {
    matches!(
        statement.words.first().map(String::as_str),
        Some("ALTER" | "UPDATE" | "DELETE" | "WITH")
    )
}

/// The rules `statement` (parsed, if it could be) breaks where it runs.
pub(super) fn check(
    context: &Context<'_>,
    statement: &Statement,
    parsed: Option<&Sql>,
) -> Vec<Rule> {
    let mut broken = Vec::new();
    let first = statement.words.first().map(String::as_str);
    match (first, parsed) {
        (Some("DROP"), _) => {
            if context.expand() {
                broken.push(Rule::ExpandDrop);
            } else if context.phase == Phase::Switch {
                broken.push(Rule::SwitchDrop);
            }
        }
        (_, Some(Sql::CreateIndex(index))) => {
            if context.switch() {
                broken.push(Rule::SwitchIndexBuild);
            } else if context.contract() {
                broken.push(Rule::ContractOnlyRemoves);
            } else if context.postgres
                && !index.concurrently
                && !index.if_not_exists
                && context.existing(&index.table_name)
            {
                broken.push(Rule::IndexNotConcurrent);
            }
        }
        (Some("TRUNCATE"), _) if !context.contract() => broken.push(Rule::UnbatchedWrite),
        (Some("CREATE"), _) if context.contract() => broken.push(Rule::ContractOnlyRemoves),
        (Some("INSERT"), _) if context.contract() => broken.push(Rule::ContractOnlyRemoves),
        (_, Some(write @ (Sql::Update(_) | Sql::Delete(_)))) => {
            broken.extend(write_rule(context, write));
        }
        // `WITH … UPDATE …`, `WITH gone AS (DELETE … RETURNING …) SELECT …`.
        (_, Some(Sql::Query(query))) => {
            for write in writes_in(query) {
                broken.extend(write_rule(context, write));
            }
        }
        (_, Some(Sql::AlterTable(alter))) => {
            let existing = context.existing(&alter.name);
            for operation in &alter.operations {
                alter_table(context, existing, operation, &mut broken);
            }
        }
        _ => {}
    }
    broken
}

/// The rule an `UPDATE` or `DELETE` breaks: without `WHERE` anywhere but
/// in contract, which an `UPDATE` breaks whatever it writes.
fn write_rule(context: &Context<'_>, write: &Sql) -> Option<Rule> {
    match write {
        Sql::Update(u) if u.selection.is_none() => Some(Rule::UnbatchedWrite),
        Sql::Update(_) if context.contract() => Some(Rule::ContractOnlyRemoves),
        Sql::Delete(d) if d.selection.is_none() => Some(Rule::UnbatchedWrite),
        _ => None,
    }
}

/// The `UPDATE`s and `DELETE`s a query runs: its body's (`WITH … UPDATE`)
/// and its common table expressions', nested ones included.
fn writes_in(query: &sqlparser::ast::Query) -> Vec<&Sql> {
    use sqlparser::ast::SetExpr;
    let mut writes = Vec::new();
    let mut queries = vec![query];
    while let Some(q) = queries.pop() {
        if let Some(with) = &q.with {
            queries.extend(with.cte_tables.iter().map(|cte| cte.query.as_ref()));
        }
        match q.body.as_ref() {
            SetExpr::Update(write) | SetExpr::Delete(write) => writes.push(write),
            SetExpr::Query(inner) => queries.push(inner),
            _ => {}
        }
    }
    writes
}

/// The rules one `ALTER TABLE` operation breaks.
fn alter_table(
    context: &Context<'_>,
    existing: bool,
    op: &AlterTableOperation,
    broken: &mut Vec<Rule>,
) {
    use AlterTableOperation as Op;
    let pg = context.postgres;
    let rule = match op {
        Op::DropColumn { .. }
        | Op::DropConstraint { .. }
        | Op::DropPrimaryKey { .. }
        | Op::DropForeignKey { .. }
        | Op::DropIndex { .. } => match context.phase {
            Phase::Expand => Some(Rule::ExpandDrop),
            Phase::Switch => Some(Rule::SwitchDrop),
            _ => None,
        },
        Op::RenameColumn { .. } | Op::RenameTable { .. } | Op::RenameConstraint { .. } => {
            match context.phase {
                Phase::Expand => Some(Rule::ExpandRename),
                Phase::Contract => Some(Rule::ContractOnlyRemoves),
                _ => None,
            }
        }
        Op::AddColumn { column_def, .. } => {
            if context.contract() {
                Some(Rule::ContractOnlyRemoves)
            } else if pg && existing && rewrites(column_def) {
                Some(Rule::TableRewrite)
            } else if pg && existing && unique(column_def) {
                Some(Rule::UniqueConstraint)
            } else if pg && existing && checked(column_def) {
                // (The rows already there are checked as it is added.)
                if context.switch() {
                    Some(Rule::SwitchTableScan)
                } else {
                    Some(Rule::ConstraintNotValid)
                }
            } else if context.expand() && existing && required(column_def) {
                Some(Rule::ExpandRequiredColumn)
            } else {
                None
            }
        }
        Op::AlterColumn { op, .. } => match (op, context.phase) {
            (AlterColumnOperation::SetDataType { .. }, Phase::Expand) => {
                Some(Rule::ExpandTypeChange)
            }
            (AlterColumnOperation::SetNotNull, Phase::Expand) => Some(Rule::ExpandSetNotNull),
            // Version N-1's inserts may leave the column to its default.
            (AlterColumnOperation::DropDefault, Phase::Expand) => Some(Rule::ExpandDrop),
            (
                AlterColumnOperation::SetDataType { .. } | AlterColumnOperation::SetNotNull,
                Phase::Switch | Phase::SwitchBack,
            ) => Some(Rule::SwitchTableScan),
            (AlterColumnOperation::SetDataType { .. }, Phase::Contract) => {
                Some(Rule::ContractOnlyRemoves)
            }
            (AlterColumnOperation::SetDefault { .. }, Phase::Contract) => {
                Some(Rule::ContractOnlyRemoves)
            }
            _ => None,
        },
        Op::AddConstraint {
            constraint,
            not_valid,
        } => add_constraint(context, existing, constraint, *not_valid),
        Op::ValidateConstraint { .. } if context.switch() => Some(Rule::SwitchTableScan),
        _ => None,
    };
    broken.extend(rule);
}

fn add_constraint(
    context: &Context<'_>,
    existing: bool,
    constraint: &TableConstraint,
    not_valid: bool,
) -> Option<Rule> {
    let unique = matches!(
        constraint,
        TableConstraint::Unique(_) | TableConstraint::PrimaryKey(_)
    );
    let checked = matches!(
        constraint,
        TableConstraint::Check(_) | TableConstraint::ForeignKey(_)
    );
    if context.contract() {
        return Some(Rule::ContractOnlyRemoves);
    }
    if context.switch() && (unique || (checked && !not_valid)) {
        return Some(Rule::SwitchTableScan);
    }
    if !(context.postgres && existing) {
        return None;
    }
    if unique {
        Some(Rule::UniqueConstraint)
    } else if checked && !not_valid {
        Some(Rule::ConstraintNotValid)
    } else {
        None
    }
}

/// `NOT NULL` without a default (nor a generated value or a key); a
/// `DEFAULT NULL` is none.
fn required(column: &ColumnDef) -> bool {
    let has = |f: fn(&ColumnOption) -> bool| column.options.iter().any(|o| f(&o.option));
    has(|o| matches!(o, ColumnOption::NotNull))
        && !has(|o| match o {
            ColumnOption::Default(e) => !is_null(e),
            ColumnOption::Generated { .. } | ColumnOption::PrimaryKey(_) => true,
            _ => false,
        })
}

/// Whether `expr` is the literal `NULL`.
pub(crate) fn is_null(expr: &Expr) -> bool {
    expr.to_string().eq_ignore_ascii_case("NULL")
}

/// A `UNIQUE` or `PRIMARY KEY` column: its index is built as it is added.
fn unique(column: &ColumnDef) -> bool {
    column.options.iter().any(|o| {
        matches!(
            o.option,
            ColumnOption::Unique(_) | ColumnOption::PrimaryKey(_)
        )
    })
}

/// A column with a `REFERENCES` or `CHECK` of its own.
fn checked(column: &ColumnDef) -> bool {
    column.options.iter().any(|o| {
        matches!(
            o.option,
            ColumnOption::ForeignKey(_) | ColumnOption::Check(_)
        )
    })
}

/// Functions whose value differs per row: a default calling one is
/// computed for every existing row.
const VOLATILE: &[&str] = &[
    "random",
    "clock_timestamp",
    "timeofday",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v4",
    "uuidv4",
    "uuidv7",
    "nextval",
];

const SERIAL: &[&str] = &[
    "serial",
    "bigserial",
    "smallserial",
    "serial2",
    "serial4",
    "serial8",
];

/// Whether adding `column` to an existing PostgreSQL table rewrites it.
fn rewrites(column: &ColumnDef) -> bool {
    let ty = column.data_type.to_string().to_lowercase();
    SERIAL.contains(&ty.as_str())
        || column.options.iter().any(|o| match &o.option {
            ColumnOption::Generated { .. } => true,
            ColumnOption::Default(expr) => volatile(expr),
            _ => false,
        })
}

fn volatile(expr: &Expr) -> bool {
    let text = expr.to_string().to_lowercase();
    VOLATILE.iter().any(|f| text.contains(&format!("{f}(")))
}
