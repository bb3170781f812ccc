use std::path::Path;

use super::*;
use crate::{Catalog, Version};

/// Every operation, once: the snapshot of what each backend runs.
const EVERY_OPERATION: &str = r#"
[[operations]]
create_table = { table = "customers", columns = [
    { name = "id", type = "bigint", primary_key = true },
    { name = "name", type = "text", nullable = false },
    { name = "created_at", type = "timestamptz", default = "CURRENT_TIMESTAMP" },
] }

[[operations]]
add_column = { table = "orders", column = { name = "note", type = "text", nullable = false, default = "''" } }

[[operations]]
add_column = { table = "orders", column = { name = "customer_id", type = "bigint" } }

[[operations]]
create_index = { table = "orders", name = "orders_by_customer", columns = ["customer_id", "id"] }

[[operations]]
rename_column = { table = "orders", from = "customer", to = "customer_name" }

[[operations]]
rename_table = { from = "order_lines", to = "lines" }

[[operations]]
drop_column = { table = "orders", column = "legacy_flag" }

[[operations]]
drop_index = { name = "orders_by_legacy_flag" }

[[operations]]
drop_table = { table = "old_reports" }

[[operations]]
[operations.sql]
backend = "postgres"
expand = "COMMENT ON TABLE orders IS 'version 2';"
"#;

fn generate(text: &str, backend: &str) -> Result<Generated, CatalogError> {
    let path = Path::new("0002_orders/change.toml");
    Change::parse(text, path)?.generate(backend, path, Version::new(2).unwrap())
}

fn all_phases(g: &Generated) -> String {
    let mut out = String::new();
    for phase in Phase::ALL {
        out.push_str(&format!("== {phase}\n{}\n", g.phase(phase)));
    }
    out
}

#[test]
fn every_operation_generates_its_sql_for_each_backend() {
    for backend in ["sqlite", "postgres"] {
        let generated = generate(EVERY_OPERATION, backend).unwrap();
        insta::assert_snapshot!(format!("every_operation_{backend}"), all_phases(&generated));
    }
}

#[test]
fn renames_run_in_switch_and_back_in_reverse_order() {
    let text = r#"
[[operations]]
rename_table = { from = "orders", to = "purchases" }
[[operations]]
rename_column = { table = "purchases", from = "customer", to = "customer_name" }
"#;
    let g = generate(text, "sqlite").unwrap();
    assert!(g.expand.is_empty() && g.contract.is_empty(), "{g:?}");
    let switch: Vec<_> = g
        .switch
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("--"))
        .collect();
    let back: Vec<_> = g
        .switch_back
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("--"))
        .collect();
    assert_eq!(
        switch,
        [
            r#"ALTER TABLE "orders" RENAME TO "purchases";"#,
            r#"ALTER TABLE "purchases" RENAME COLUMN "customer" TO "customer_name";"#
        ]
    );
    assert_eq!(
        back,
        [
            r#"ALTER TABLE "purchases" RENAME COLUMN "customer_name" TO "customer";"#,
            r#"ALTER TABLE "purchases" RENAME TO "orders";"#
        ]
    );
}

/// With `view`, the old name stays as a view from the switch to contract:
/// created after the rename, dropped before the rename back, and in
/// contract; on both backends, each phase passing the lint.
#[test]
fn a_table_renamed_with_a_view_keeps_its_old_name_until_contract() {
    let text = r#"
[[operations]]
rename_table = { from = "orders", to = "purchases", view = true }
"#;
    for backend in ["sqlite", "postgres"] {
        let g = generate(text, backend).unwrap();
        let statements = |sql: &str| -> Vec<String> {
            sql.lines()
                .filter(|l| !l.is_empty() && !l.starts_with("--"))
                .map(str::to_owned)
                .collect()
        };
        assert!(g.expand.is_empty(), "{backend}: {g:?}");
        assert_eq!(
            statements(&g.switch),
            [
                r#"ALTER TABLE "orders" RENAME TO "purchases";"#,
                r#"CREATE VIEW "orders" AS SELECT * FROM "purchases";"#
            ],
            "{backend}"
        );
        assert_eq!(
            statements(&g.switch_back),
            [
                r#"DROP VIEW "orders";"#,
                r#"ALTER TABLE "purchases" RENAME TO "orders";"#
            ],
            "{backend}"
        );
        assert_eq!(
            statements(&g.contract),
            [r#"DROP VIEW "orders";"#],
            "{backend}"
        );
    }
}

/// Bad input: a typed error naming the file, the operation and what to
/// write instead, before anything runs.
#[test]
fn bad_change_files_name_the_file_the_operation_and_what_to_write() {
    for (backend, text, operation, parts) in [
        (
            "sqlite",
            "[[operations]]\nfrobnicate = { table = \"orders\" }",
            None,
            &["unknown variant `frobnicate`", "line 2", "rename_column"][..],
        ),
        (
            "sqlite",
            "[[operations]]\nadd_column = { table = \"orders\" }",
            None,
            &["missing field `column`"][..],
        ),
        (
            "sqlite",
            "[[operations]]\nadd_column = { table = \"orders\", column = { name = \"n\", type = \"money\" } }",
            Some(1),
            &["type `money`", "use one of integer, bigint"][..],
        ),
        (
            "sqlite",
            "[[operations]]\ndrop_table = { table = \"x\" }\n[[operations]]\nadd_column = { table = \"orders\", column = { name = \"token\", type = \"uuid\" } }",
            Some(2),
            &["SQLite has no `uuid` type", "use `text`"][..],
        ),
        (
            "postgres",
            "[[operations]]\nadd_column = { table = \"orders\", column = { name = \"qty\", type = \"integer\", nullable = false } }",
            Some(1),
            &["NOT NULL without a default", "version N-1's inserts", "give it a default"][..],
        ),
        (
            "postgres",
            "[[operations]]\ndrop_column = { table = \"Orders; DROP TABLE x\", column = \"a\" }",
            Some(1),
            &["is not a name tandem writes into SQL", "lowercase letters"][..],
        ),
        (
            "postgres",
            "[[operations]]\nadd_column = { table = \"orders\", column = { name = \"n\", type = \"text\", default = \"'a'; DROP TABLE orders\" } }",
            Some(1),
            &["not one SQL expression", "write one expression"][..],
        ),
        (
            "postgres",
            "[[operations]]\nadd_column = { table = \"orders\", column = { name = \"t\", type = \"uuid\", default = \"gen_random_uuid()\" } }",
            Some(1),
            &["`table-rewrite` rule", "fill it with a backfill step"][..],
        ),
        (
            "sqlite",
            "[[operations]]\n[operations.sql]\nexpand = \"DROP TABLE orders;\"",
            Some(1),
            &["`expand-drop` rule", "move the drop to contract.sql"][..],
        ),
        (
            "sqlite",
            "[[operations]]\n[operations.sql]\nbackend = \"mysql\"\nexpand = \"SELECT 1;\"",
            Some(1),
            &["names no backend", "sqlite, postgres"][..],
        ),
        (
            "sqlite",
            "[[operations]]\nadd_column = { table = \"orders\", column = { name = \"id2\", type = \"bigint\", primary_key = true } }",
            Some(1),
            &["primary key added to an existing table"][..],
        ),
    ] {
        let err = generate(text, backend).unwrap_err();
        let CatalogError::BadChange { path, operation: at, .. } = &err else {
            panic!("{text}: {err:?}");
        };
        assert_eq!((path.as_path(), *at), (Path::new("0002_orders/change.toml"), operation), "{text}");
        let message = err.to_string();
        assert!(message.starts_with("0002_orders/change.toml"), "{message}");
        for part in parts {
            assert!(message.contains(part), "{part:?} in {message}");
        }
    }
}

fn write(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

#[test]
fn a_catalog_runs_the_generated_sql_then_the_files_beside_it() {
    let dir = write(&[
        ("0001_init/expand.sql", "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT);"),
        (
            "0002_orders/change.toml",
            "[[operations]]\nrename_column = { table = \"orders\", from = \"customer\", to = \"customer_name\" }\n\
             [[operations]]\nadd_column = { table = \"orders\", column = { name = \"note\", type = \"text\" } }",
        ),
        ("0002_orders/expand.postgres.sql", "COMMENT ON TABLE orders IS 'x';"),
    ]);
    let catalog = Catalog::from_dir(dir.path()).unwrap();
    let v2 = Version::new(2).unwrap();
    let sqlite = catalog.phase(v2, Phase::Expand, "sqlite").unwrap();
    assert_eq!(sqlite.file, "0002_orders/change.toml");
    assert!(
        sqlite.text.contains(r#"ADD COLUMN "note" TEXT"#),
        "{}",
        sqlite.text
    );
    assert_eq!(sqlite.checksum, crate::sha256_hex(sqlite.text));
    let pg = catalog.phase(v2, Phase::Expand, "postgres").unwrap();
    assert_eq!(
        pg.file,
        "0002_orders/change.toml + 0002_orders/expand.postgres.sql"
    );
    let (generated, written) = (
        pg.text.find("ADD COLUMN").unwrap(),
        pg.text.find("COMMENT ON TABLE").unwrap(),
    );
    assert!(generated < written, "{}", pg.text);
    assert!(catalog
        .phase(v2, Phase::Switch, "sqlite")
        .unwrap()
        .text
        .contains("RENAME COLUMN"));
    assert!(catalog.phase(v2, Phase::Contract, "sqlite").is_none());
    // What runs is what the lint reads: clean.
    for backend in ["sqlite", "postgres"] {
        let report = catalog.lint(backend).unwrap();
        assert!(report.is_clean() && report.unchecked.is_empty(), "{report}");
    }
}

#[test]
fn a_rename_only_change_needs_no_expand_and_bad_files_fail_the_load() {
    let dir = write(&[
        ("0001_init/expand.sql", "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT);"),
        (
            "0002_rename/change.toml",
            "[[operations]]\nrename_column = { table = \"orders\", from = \"customer\", to = \"c\" }",
        ),
    ]);
    let catalog = Catalog::from_dir(dir.path()).unwrap();
    assert!(catalog
        .phase(Version::new(2).unwrap(), Phase::Expand, "sqlite")
        .is_none());
    let dir = write(&[
        (
            "0001_init/expand.sql",
            "CREATE TABLE orders (id INTEGER PRIMARY KEY);",
        ),
        (
            "0002_bad/change.toml",
            "[[operations]]\nadd_column = { table = \"orders\" }",
        ),
    ]);
    let err = Catalog::from_dir(dir.path()).unwrap_err();
    assert!(
        matches!(&err, CatalogError::BadChange { path, .. } if path.ends_with("0002_bad/change.toml")),
        "{err}"
    );
    // Version 1 may create its tables with one; nothing else.
    let dir = write(&[(
        "0001_init/change.toml",
        "[[operations]]\ncreate_table = { table = \"t\", columns = [{ name = \"id\", type = \"integer\", primary_key = true }] }\n\
         [[operations]]\ndrop_table = { table = \"t\" }",
    )]);
    let err = Catalog::from_dir(dir.path()).unwrap_err();
    assert!(
        matches!(err, CatalogError::FirstVersionPhase { .. }),
        "{err}"
    );
}

const CONSTRAINTS: &str = r#"
[[operations]]
set_not_null = { table = "orders", column = "customer", fill = "'unknown'" }

[[operations]]
drop_not_null = { table = "orders", column = "note" }

[[operations]]
set_default = { table = "orders", column = "qty", default = "1" }

[[operations]]
add_check = { table = "orders", name = "qty_non_negative", check = "qty >= 0" }
"#;

#[test]
fn constraints_and_defaults_generate_their_postgres_sql() {
    let generated = generate(CONSTRAINTS, "postgres").unwrap();
    insta::assert_snapshot!("constraints_postgres", all_phases(&generated));
}

#[test]
fn sqlite_refuses_what_it_cannot_do_in_place_and_names_the_alternative() {
    for (i, says) in [
        (1, "BEFORE INSERT and BEFORE UPDATE triggers"),
        (2, "give the column a default"),
        (3, "write the value in version N's inserts"),
        (4, "check it in version N's code"),
    ] {
        let one = CONSTRAINTS.split("[[operations]]").nth(i).unwrap();
        let err = generate(&format!("[[operations]]{one}"), "sqlite").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("operation 1: SQLite cannot")
                && text.contains("without rebuilding the table"),
            "{text}"
        );
        assert!(text.contains(says), "{says:?} in {text}");
    }
}

#[test]
fn expressions_are_written_back_from_their_parse() {
    // A comment in a default cannot swallow the rest of the statement, and
    // a fill cannot close the trigger body's dollar quote.
    let g = generate(
        "[[operations]]\nadd_column = { table = \"t\", column = { name = \"n\", type = \"text\", default = \"'' -- sneaky\" } }",
        "postgres",
    )
    .unwrap();
    assert!(
        g.expand.contains(r#"ADD COLUMN "n" TEXT DEFAULT '';"#),
        "{}",
        g.expand
    );
    let err = generate(
        "[[operations]]\nset_not_null = { table = \"t\", column = \"c\", fill = \"$tandem$x$tandem$\" }",
        "postgres",
    )
    .unwrap_err();
    assert!(err.to_string().contains("contains `$tandem$`"), "{err}");
}

#[test]
fn a_change_for_one_backend_says_so() {
    let dir = write(&[
        ("0001_init/expand.sql", "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT);"),
        (
            "0002_pg/change.toml",
            "backends = [\"postgres\"]\n[[operations]]\nset_not_null = { table = \"orders\", column = \"customer\", fill = \"''\" }",
        ),
    ]);
    let catalog = Catalog::from_dir(dir.path()).unwrap();
    let v2 = catalog.get(Version::new(2).unwrap()).unwrap();
    assert!(v2.supports("postgres") && !v2.supports("sqlite"));
    assert!(catalog.get(Version::FIRST).unwrap().supports("sqlite"));
    assert!(catalog.lint("sqlite").unwrap().is_clean());
    let dir = write(&[
        (
            "0001_init/expand.sql",
            "CREATE TABLE orders (id INTEGER PRIMARY KEY);",
        ),
        ("0002_x/change.toml", "backends = [\"oracle\"]"),
    ]);
    let err = Catalog::from_dir(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("`backends` names `oracle`"),
        "{err}"
    );
}

/// A switch back undoes the switch in reverse, hand-written part included,
/// and a switch with no undo beside a change file's is refused.
#[test]
fn a_switch_back_undoes_hand_written_switch_sql_first() {
    let rename = "[[operations]]\nrename_column = { table = \"orders\", from = \"customer\", to = \"customer_name\" }\n";
    let dir = write(&[
        (
            "0001_init/expand.sql",
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT);",
        ),
        ("0002_x/change.toml", rename),
        (
            "0002_x/switch.sql",
            "CREATE VIEW v AS SELECT customer_name FROM orders;",
        ),
        ("0002_x/switch_back.sql", "DROP VIEW v;"),
    ]);
    let catalog = Catalog::from_dir(dir.path()).unwrap();
    let v2 = Version::new(2).unwrap();
    let switch = catalog.phase(v2, Phase::Switch, "sqlite").unwrap().text;
    assert!(
        switch.find("RENAME COLUMN").unwrap() < switch.find("CREATE VIEW").unwrap(),
        "{switch}"
    );
    let back = catalog.phase(v2, Phase::SwitchBack, "sqlite").unwrap();
    assert!(
        back.text.find("DROP VIEW").unwrap() < back.text.find("RENAME COLUMN").unwrap(),
        "{}",
        back.text
    );
    assert_eq!(back.file, "0002_x/switch_back.sql + 0002_x/change.toml");
    let dir = write(&[
        (
            "0001_init/expand.sql",
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT);",
        ),
        ("0002_x/change.toml", rename),
        (
            "0002_x/switch.sql",
            "CREATE VIEW v AS SELECT customer_name FROM orders;",
        ),
    ]);
    let err = Catalog::from_dir(dir.path()).unwrap_err();
    assert!(err.to_string().contains("has no switch_back.sql"), "{err}");
    let err = generate(
        &format!(
            "{rename}[[operations]]\n[operations.sql]\nswitch = \"CREATE VIEW v AS SELECT 1;\""
        ),
        "sqlite",
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            CatalogError::BadChange {
                operation: Some(2),
                ..
            }
        ) && err.to_string().contains("no `switch_back`"),
        "{err}"
    );
}

/// Defaults as each backend takes them: `DEFAULT NULL` is none (a NOT NULL
/// column with it is refused), SQLite wraps an expression in parentheses in
/// CREATE TABLE and refuses a non-constant one in ADD COLUMN.
#[test]
fn defaults_are_written_as_each_backend_takes_them() {
    let add = |column: &str| {
        format!("[[operations]]\nadd_column = {{ table = \"t\", column = {column} }}")
    };
    let err = generate(
        &add(r#"{ name = "n", type = "text", nullable = false, default = "NULL" }"#),
        "postgres",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("NOT NULL without a default"),
        "{err}"
    );
    let err = generate(
        &add(r#"{ name = "at", type = "timestamp", default = "CURRENT_TIMESTAMP" }"#),
        "sqlite",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("SQLite adds a column only with a constant default"),
        "{err}"
    );
    let g = generate(
        &add(r#"{ name = "at", type = "timestamp", default = "CURRENT_TIMESTAMP" }"#),
        "postgres",
    )
    .unwrap();
    assert!(
        g.expand.contains("DEFAULT CURRENT_TIMESTAMP;"),
        "{}",
        g.expand
    );
    let g = generate(
        &add(r#"{ name = "n", type = "integer", default = "-1" }"#),
        "sqlite",
    )
    .unwrap();
    assert!(g.expand.contains("DEFAULT -1;"), "{}", g.expand);
    let g = generate(
        "[[operations]]\ncreate_table = { table = \"t\", columns = [{ name = \"at\", type = \"text\", default = \"datetime('now')\" }] }",
        "sqlite",
    )
    .unwrap();
    assert!(
        g.expand.contains("DEFAULT (datetime('now'))"),
        "{}",
        g.expand
    );
}

#[test]
fn unique_indexes_on_both_backends_and_foreign_keys_on_postgres() {
    let text = r#"
[[operations]]
add_unique = { table = "orders", name = "orders_one_per_customer", columns = ["customer", "day"] }
[[operations]]
add_foreign_key = { table = "orders", name = "orders_customer_fk", columns = ["customer_id"], references = "customers", referenced_columns = ["id"] }
"#;
    let pg = generate(text, "postgres").unwrap();
    insta::assert_snapshot!("keys_postgres", all_phases(&pg));
    let one = text.split("[[operations]]").nth(1).unwrap();
    let sqlite = generate(&format!("[[operations]]{one}"), "sqlite").unwrap();
    assert!(sqlite
        .expand
        .contains(r#"CREATE UNIQUE INDEX IF NOT EXISTS "orders_one_per_customer" ON "orders" ("customer", "day");"#));
    let err = generate(text, "sqlite").unwrap_err();
    assert!(
        matches!(
            err,
            CatalogError::BadChange {
                operation: Some(2),
                ..
            }
        ) && err.to_string().contains("SQLite cannot add a foreign key"),
        "{err}"
    );
    let err = generate(
        "[[operations]]\nadd_foreign_key = { table = \"a\", name = \"fk\", columns = [\"x\", \"y\"], references = \"b\", referenced_columns = [\"id\"] }",
        "postgres",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("2 column(s) and 1 referenced"),
        "{err}"
    );
}

/// `change_type`: a widened quantity clamped back for version N-1, on both
/// backends.
const RETYPE: &str = r#"
[[operations]]
change_type = { table = "orders", column = "qty", type = "bigint", nullable = false, default = "0", up = "qty", down = "CASE WHEN qty > 2147483647 THEN 2147483647 WHEN qty < -2147483648 THEN -2147483648 ELSE qty END" }
"#;

#[test]
fn a_type_change_copies_syncs_one_way_then_the_other_and_backfills_by_key() {
    for backend in ["sqlite", "postgres"] {
        let generated = generate(RETYPE, backend).unwrap();
        let mut shown = all_phases(&generated);
        for b in &generated.backfills {
            shown.push_str(&format!(
                "== backfill {}\n{}\n{}\n{}\n{}\n",
                b.name,
                b.batch_end_sql(None, 1000),
                b.batch_end_sql(Some(1000), 1000),
                b.batch_sql(Some(1000), 2000),
                b.estimate_sql
            ));
        }
        insta::assert_snapshot!(format!("change_type_{backend}"), shown);
        assert_eq!(generated.backfills.len(), 1);
    }
}

#[test]
fn a_type_change_names_only_columns_in_its_expressions() {
    // Other columns of the row are the row's, quoted.
    let g = generate(
        "[[operations]]\nchange_type = { table = \"t\", column = \"price\", type = \"bigint\", up = \"price * 100 + cents\", down = \"price / 100\" }",
        "postgres",
    )
    .unwrap();
    assert!(
        g.expand
            .contains(r#"NEW."_tandem_new_price" := (NEW."price" * 100 + NEW."cents");"#),
        "{}",
        g.expand
    );
    assert!(
        g.switch
            .contains(r#"NEW."_tandem_old_price" := (NEW."price" / 100);"#),
        "{}",
        g.switch
    );
    // The update trigger fires for writes of the columns `up` reads only
    // (not for the backfill's own writes of the new column).
    assert!(
        g.expand
            .contains(r#"BEFORE INSERT OR UPDATE OF "cents", "price" ON "t""#),
        "{}",
        g.expand
    );
    for (up, problem) in [
        ("\"Price\"", "column `Price` is not a name"),
        ("price; DROP TABLE t", "is not one SQL expression"),
        ("'$tandem$'", "contains `$tandem$`"),
    ] {
        let text = format!(
            "[[operations]]\nchange_type = {{ table = \"t\", column = \"price\", type = \"bigint\", up = {up:?}, down = \"price\" }}"
        );
        let err = generate(&text, "postgres").unwrap_err();
        assert!(err.to_string().contains(problem), "{up}: {err}");
    }
    // A NOT NULL new column needs a default (version N-1's rows get it
    // before the trigger or the backfill fills them).
    let err = generate(
        "[[operations]]\nchange_type = { table = \"t\", column = \"qty\", type = \"bigint\", nullable = false, up = \"qty\", down = \"qty\" }",
        "sqlite",
    )
    .unwrap_err();
    assert!(err.to_string().contains("without a default"), "{err}");
}

/// On PostgreSQL an index on a table that is already there is built
/// concurrently after expand's transaction (with the check for an invalid
/// one an interrupted build left, and its drop); on a table the same file
/// creates, and on SQLite, it is built in expand's transaction.
#[test]
fn indexes_on_existing_postgres_tables_are_built_concurrently() {
    let text = r#"
[[operations]]
create_table = { table = "tags", columns = [
    { name = "id", type = "bigint", primary_key = true },
    { name = "label", type = "text" },
] }

[[operations]]
create_index = { table = "tags", name = "tags_by_label", columns = ["label"] }

[[operations]]
add_unique = { table = "orders", name = "orders_one_per_day", columns = ["customer", "day"] }
"#;
    let pg = generate(text, "postgres").unwrap();
    assert!(
        pg.expand
            .contains(r#"CREATE INDEX IF NOT EXISTS "tags_by_label" ON "tags" ("label");"#),
        "a new table's index in the transaction:\n{}",
        pg.expand
    );
    assert_eq!(pg.indexes.len(), 1, "{:?}", pg.indexes);
    let index = &pg.indexes[0];
    assert_eq!(index.name, "orders_one_per_day");
    assert_eq!(
        index.create_sql,
        r#"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "orders_one_per_day" ON "orders" ("customer", "day")"#
    );
    assert_eq!(
        index.drop_sql,
        r#"DROP INDEX CONCURRENTLY IF EXISTS "orders_one_per_day""#
    );
    for sql in [&index.state_sql, &index.building_sql] {
        assert!(
            sql.contains("c.relname = 'orders_one_per_day'")
                && sql.contains(r#"oid = '"orders"'::regclass"#),
            "looked up in the table's schema: {sql}"
        );
    }
    assert!(
        pg.expand
            .contains(r#"PERFORM "customer", "day" FROM "orders" LIMIT 0;"#),
        "the table and columns checked in the transaction:\n{}",
        pg.expand
    );
    assert!(
        !pg.expand.contains("CREATE UNIQUE INDEX IF NOT EXISTS"),
        "not in the transaction:\n{}",
        pg.expand
    );
    // The build is in the text the checksum covers and a plan shows.
    assert!(pg.expand.contains(&index.create_sql), "{}", pg.expand);
    let sqlite = generate(text, "sqlite").unwrap();
    assert!(sqlite.indexes.is_empty());
    assert!(sqlite.expand.contains(
        r#"CREATE UNIQUE INDEX IF NOT EXISTS "orders_one_per_day" ON "orders" ("customer", "day");"#
    ));
}

/// The lint of an operation counts the tables earlier operations of the
/// file create as new: an `sql` index on such a table needs no concurrent
/// build (it was refused with `index-not-concurrent`), one on a table
/// that was there still does.
#[test]
fn the_lint_of_an_operation_knows_the_tables_earlier_ones_create() {
    let text = r#"
[[operations]]
create_table = { table = "tags", columns = [
    { name = "id", type = "bigint", primary_key = true },
    { name = "label", type = "text" },
] }

[[operations]]
[operations.sql]
expand = "CREATE INDEX tags_by_label ON tags (label);"
"#;
    let pg = generate(text, "postgres").unwrap();
    assert!(pg
        .expand
        .contains("CREATE INDEX tags_by_label ON tags (label);"));
    let existing = text.replace("ON tags", "ON orders");
    let err = generate(&existing, "postgres").unwrap_err();
    assert!(err.to_string().contains("index-not-concurrent"), "{err}");
}

/// `rename_column` with `copy`: the new column and the trigger both ways
/// in expand, a backfill, nothing at the switch, the old column dropped in
/// contract; refused beside a table rename.
#[test]
fn a_copied_rename_syncs_both_ways_until_contract() {
    let text = r#"
[[operations]]
rename_column = { table = "orders", from = "customer", to = "customer_name", copy = { type = "text" } }
"#;
    for backend in ["sqlite", "postgres"] {
        let generated = generate(text, backend).unwrap();
        insta::assert_snapshot!(format!("copied_rename_{backend}"), all_phases(&generated));
        assert!(generated.switch.is_empty() && generated.switch_back.is_empty());
        assert_eq!(generated.backfills.len(), 1);
        assert_eq!(generated.backfills[0].name, "orders.customer_name");
    }
    let renamed = format!(
        "{text}\n[[operations]]\nrename_table = {{ from = \"orders\", to = \"purchases\" }}\n"
    );
    let err = generate(&renamed, "sqlite").unwrap_err();
    assert!(err.to_string().contains("in a version of its own"), "{err}");
    let untyped = text.replace("{ type = \"text\" }", "{ }");
    assert!(
        generate(&untyped, "sqlite").is_err(),
        "the copy needs the column's type"
    );
}

/// Two operations filling one column (a backfill's name keys where a
/// resumed expand goes on): refused, naming the second.
#[test]
fn two_backfills_of_one_column_are_refused() {
    let op = r#"
[[operations]]
change_type = { table = "stock", column = "qty", type = "bigint", up = "qty", down = "qty" }
"#;
    for backend in ["sqlite", "postgres"] {
        let err = generate(&format!("{op}{op}"), backend).unwrap_err();
        assert!(
            matches!(
                err,
                CatalogError::BadChange {
                    operation: Some(2),
                    ..
                }
            ) && err.to_string().contains("fills `stock.qty` again"),
            "{backend}: {err}"
        );
        generate(op, backend).unwrap();
    }
}

/// `split_column`: cents into units and hundredths, computed back for
/// version N-1.
const SPLIT: &str = r#"
[[operations]]
[operations.split_column]
table = "prices"
column = "cents"
down = "units * 100 + hundredths"
[[operations.split_column.into]]
name = "units"
type = "bigint"
up = "cents / 100"
[[operations.split_column.into]]
name = "hundredths"
type = "bigint"
nullable = false
default = "0"
up = "cents % 100"
"#;

#[test]
fn a_split_computes_the_new_columns_then_the_old_one_and_backfills_them_in_one_walk() {
    for backend in ["sqlite", "postgres"] {
        let generated = generate(SPLIT, backend).unwrap();
        let mut shown = all_phases(&generated);
        for b in &generated.backfills {
            // Each backend's batch (PostgreSQL's is one statement).
            let batch = if backend == "postgres" {
                b.step_sql(Some(1000), 1000)
            } else {
                b.batch_sql(Some(1000), 2000)
            };
            shown.push_str(&format!("== backfill {}\n{batch}\n", b.name));
        }
        insta::assert_snapshot!(format!("split_column_{backend}"), shown);
        assert_eq!(generated.backfills.len(), 1, "one walk fills both");
    }
    // The forward triggers fire for writes of the old column; the reverse
    // one for writes of the new ones.
    let g = generate(SPLIT, "postgres").unwrap();
    assert!(
        g.expand
            .contains(r#"BEFORE INSERT OR UPDATE OF "cents" ON "prices""#),
        "{}",
        g.expand
    );
    assert!(
        g.switch
            .contains(r#"BEFORE INSERT OR UPDATE OF "hundredths", "units" ON "prices""#),
        "{}",
        g.switch
    );
    assert!(
        g.contract.contains(r#"DROP COLUMN "cents""#),
        "{}",
        g.contract
    );
}

#[test]
fn a_bad_split_names_what_to_write_instead() {
    let split = |into: &str, down: &str| {
        format!(
            "[[operations]]\nsplit_column = {{ table = \"t\", column = \"c\", into = [{into}], down = {down:?} }}"
        )
    };
    let part =
        |name: &str, up: &str| format!("{{ name = {name:?}, type = \"bigint\", up = {up:?} }}");
    for (text, problem) in [
        (split(&part("a", "c"), "a"), "names 1 new column(s)"),
        (
            split(&format!("{}, {}", part("a", "c"), part("a", "c")), "a"),
            "adds `a` twice",
        ),
        (
            split(&format!("{}, {}", part("a", "c"), part("c", "c")), "a"),
            "adds `c` twice, or as itself",
        ),
        (
            split(
                &format!("{}, {}", part("a", "c"), part("b", "a + c")),
                "a + b",
            ),
            "the up of `b` reads `a`",
        ),
        (
            split(&format!("{}, {}", part("a", "c"), part("b", "c")), "a + c"),
            "the down of `c` reads `c` itself",
        ),
    ] {
        let err = generate(&text, "sqlite").unwrap_err();
        assert!(err.to_string().contains(problem), "{text}: {err}");
    }
}

/// `move_column` 1:N: an account's email becomes the marked row among its
/// emails (the example application's `account_emails`).
const MOVE_MANY: &str = r#"
[[operations]]
create_table = { table = "account_emails", columns = [
    { name = "id", type = "bigint", primary_key = true },
    { name = "account_id", type = "bigint", nullable = false },
    { name = "email", type = "text", nullable = false },
    { name = "is_primary", type = "boolean", nullable = false, default = "FALSE" },
] }
[[operations]]
create_index = { table = "account_emails", name = "account_emails_one_primary", columns = ["account_id"], unique = true, where = "is_primary" }
[[operations]]
move_column = { table = "accounts", column = "email", to = "account_emails", key = "account_id", empty = "''", primary = "is_primary" }
"#;

#[test]
fn a_move_to_one_row_of_many_names_the_marked_row_everywhere() {
    for backend in ["sqlite", "postgres"] {
        let generated = generate(MOVE_MANY, backend).unwrap();
        let mut shown = all_phases(&generated);
        for b in &generated.backfills {
            shown.push_str(&format!(
                "== backfill {}\n{}\n",
                b.name,
                b.batch_sql(Some(1000), 2000)
            ));
        }
        insta::assert_snapshot!(format!("move_column_many_{backend}"), shown);
        assert!(
            shown.contains(r#"ON CONFLICT ("account_id") WHERE "is_primary" DO NOTHING"#),
            "{shown}"
        );
    }
    let err = generate(
        "[[operations]]\nmove_column = { table = \"t\", column = \"c\", to = \"u\", key = \"k\", primary = \"k\" }",
        "sqlite",
    )
    .unwrap_err();
    assert!(err.to_string().contains("which is the key column"), "{err}");
}

/// Regression (review of f9d426e): a move of a column with long names
/// generated trigger names past 63 bytes and was refused as if the user
/// had written a bad name; and two operations whose names join to the same
/// trigger name (`a_b`.`c`, `a`.`b_c`) failed only when expand ran.
#[test]
fn generated_names_are_shortened_and_never_shared() {
    let table = "a_table_with_a_long_descriptive_name";
    let column = "and_a_column_named_at_length";
    let text = format!(
        "[[operations]]\nmove_column = {{ table = \"{table}\", column = \"{column}\", to = \"u\", key = \"k\" }}"
    );
    for backend in ["sqlite", "postgres"] {
        let generated = generate(&text, backend).unwrap();
        for phase in [&generated.expand, &generated.switch, &generated.contract] {
            for word in phase.split(|c: char| c.is_whitespace() || c == '(') {
                if word.starts_with("\"tandem_") {
                    assert!(word.trim_matches(['"', ';']).len() <= 63, "{word}");
                }
            }
        }
    }
    let twice = "[[operations]]\nmove_column = { table = \"a_b\", column = \"c\", to = \"u\", key = \"k\" }\n\
                 [[operations]]\nmove_column = { table = \"a\", column = \"b_c\", to = \"u\", key = \"k\" }";
    let err = generate(twice, "postgres").unwrap_err();
    assert!(
        err.to_string().contains("which operation 1 creates too"),
        "{err}"
    );
}

/// `move_column`: accounts' emails into a table of their own, the example
/// application's change.
const MOVE: &str = r#"
[[operations]]
create_table = { table = "account_emails", columns = [
    { name = "account_id", type = "bigint", primary_key = true },
    { name = "email", type = "text", nullable = false },
] }
[[operations]]
move_column = { table = "accounts", column = "email", to = "account_emails", key = "account_id", empty = "''" }
"#;

#[test]
fn a_move_syncs_into_the_other_table_then_back_and_backfills_by_inserting() {
    for backend in ["sqlite", "postgres"] {
        let generated = generate(MOVE, backend).unwrap();
        let mut shown = all_phases(&generated);
        for b in &generated.backfills {
            let batch = if backend == "postgres" {
                b.step_sql(Some(1000), 1000)
            } else {
                b.batch_sql(Some(1000), 2000)
            };
            shown.push_str(&format!("== backfill {}\n{batch}\n", b.name));
        }
        insta::assert_snapshot!(format!("move_column_{backend}"), shown);
        assert_eq!(generated.backfills.len(), 1);
    }
    let err = generate(
        "[[operations]]\nmove_column = { table = \"t\", column = \"c\", to = \"t\", key = \"k\" }",
        "sqlite",
    )
    .unwrap_err();
    assert!(err.to_string().contains("to its own table"), "{err}");
    let err = generate(
        "[[operations]]\nmove_column = { table = \"t\", column = \"c\", to = \"u\", key = \"K\" }",
        "postgres",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("column `K` is not a name"),
        "{err}"
    );
    // `empty` is a constant: a name would mean a column in the triggers.
    let err = generate(
        "[[operations]]\nmove_column = { table = \"t\", column = \"c\", to = \"u\", key = \"k\", empty = \"none\" }",
        "sqlite",
    )
    .unwrap_err();
    assert!(err.to_string().contains("not a constant"), "{err}");
    // Its triggers name the table as expand found it: not beside a rename
    // of a table (nor are the other operations that sync to contract).
    for op in [
        "move_column = { table = \"t\", column = \"c\", to = \"u\", key = \"k\" }",
        "change_type = { table = \"t\", column = \"c\", type = \"bigint\", up = \"c\", down = \"c\" }",
    ] {
        let text = format!(
            "[[operations]]\n{op}\n[[operations]]\nrename_table = {{ from = \"t\", to = \"v\" }}"
        );
        let err = generate(&text, "postgres").unwrap_err();
        assert!(err.to_string().contains("renames a table"), "{op}: {err}");
    }
}

/// An expression may differ per backend (`{ sqlite = …, postgres = … }`),
/// as a split at the first space must (SQLite's `instr`, PostgreSQL's
/// `strpos`).
#[test]
fn an_expression_can_be_written_per_backend() {
    let text = r#"
[[operations]]
split_column = { table = "accounts", column = "name", into = [
    { name = "first_name", type = "text", up = { sqlite = "substr(name, 1, instr(name, ' '))", postgres = "split_part(name, ' ', 1)" } },
    { name = "rest", type = "text", up = "name" },
], down = "first_name || rest" }
"#;
    let sqlite = generate(text, "sqlite").unwrap();
    assert!(
        sqlite.expand.contains("instr(") && !sqlite.expand.contains("split_part"),
        "{}",
        sqlite.expand
    );
    let postgres = generate(text, "postgres").unwrap();
    assert!(
        postgres.expand.contains("split_part(") && !postgres.expand.contains("instr"),
        "{}",
        postgres.expand
    );
    // A mistyped or missing backend is named, with what to write.
    for (typo, says) in [
        (
            "postgre = ",
            &["unknown field `postgre`", "expected `sqlite` or `postgres`"][..],
        ),
        (
            "postgres = \"split_part(name, ' ', 1)\" ",
            &["missing field `postgres`"][..],
        ),
        (
            "postgres = \"split_part(name, ' ', 1)\" ",
            &["line 4", "change.toml"][..],
        ),
    ] {
        let typo = if typo.starts_with("postgre = ") {
            text.replace("postgres = ", typo)
        } else {
            text.replace(&format!(", {typo}"), " ")
        };
        let err = generate(&typo, "sqlite").unwrap_err().to_string();
        for said in says {
            assert!(err.contains(said), "{said:?} not in {err}");
        }
    }
    let err = generate(&text.replace("up = \"name\"", "up = 3"), "sqlite").unwrap_err();
    assert!(
        err.to_string()
            .contains("one text for both backends, or { sqlite"),
        "{err}"
    );
}
