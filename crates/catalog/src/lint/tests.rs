use super::*;

const INIT: &str = "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, qty INTEGER);";

/// Lints a two-version catalog whose version 2 has `files` (name, SQL).
fn lint(backend: &str, files: &[(&str, &str)]) -> LintReport {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("0001_init")).unwrap();
    std::fs::write(dir.path().join("0001_init/expand.sql"), INIT).unwrap();
    std::fs::create_dir(dir.path().join("0002_change")).unwrap();
    for (name, sql) in files {
        std::fs::write(dir.path().join("0002_change").join(name), sql).unwrap();
    }
    Catalog::from_dir(dir.path())
        .unwrap()
        .lint(backend)
        .unwrap()
}

/// The rules one statement breaks in `phase` on `backend`.
fn rules(backend: &str, phase: &str, sql: &str) -> Vec<&'static str> {
    let mut files = vec![("expand.sql", "CREATE TABLE unrelated (id INTEGER);")];
    if phase == "expand" {
        files[0].1 = sql;
    } else {
        files.push((phase, sql));
    }
    let report = lint(backend, &files);
    assert!(report.unchecked.is_empty(), "{sql}: {report}");
    report.findings.iter().map(|f| f.rule.name()).collect()
}

#[test]
fn expand_must_be_additive_on_both_backends() {
    for backend in ["sqlite", "postgres"] {
        for (sql, want) in [
            ("DROP TABLE orders;", vec!["expand-drop"]),
            ("DROP INDEX orders_by_customer;", vec!["expand-drop"]),
            ("DROP TRIGGER orders_sync;", vec!["expand-drop"]),
            (
                "ALTER TABLE orders DROP COLUMN customer;",
                vec!["expand-drop"],
            ),
            (
                "ALTER TABLE orders RENAME COLUMN customer TO customer_name;",
                vec!["expand-rename"],
            ),
            (
                "ALTER TABLE orders RENAME TO purchases;",
                vec!["expand-rename"],
            ),
            (
                "ALTER TABLE orders ADD COLUMN note TEXT NOT NULL;",
                vec!["expand-required-column"],
            ),
            ("UPDATE orders SET qty = 0;", vec!["unbatched-write"]),
            // A doubled quote is read as written, not re-printed unreadable.
            (
                "UPDATE orders SET customer = 'O''Brien';",
                vec!["unbatched-write"],
            ),
            ("DELETE FROM orders;", vec!["unbatched-write"]),
            ("TRUNCATE orders;", vec!["unbatched-write"]),
            (
                "ALTER TABLE orders ALTER COLUMN qty DROP DEFAULT;",
                vec!["expand-drop"],
            ),
            // Additive: no finding.
            ("ALTER TABLE orders ADD COLUMN note TEXT;", vec![]),
            (
                "ALTER TABLE orders ADD COLUMN note TEXT NOT NULL DEFAULT '';",
                vec![],
            ),
            (
                "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL);",
                vec![],
            ),
            (
                "CREATE VIEW big_orders AS SELECT * FROM orders WHERE qty > 10;",
                vec![],
            ),
            ("UPDATE orders SET qty = 0 WHERE qty IS NULL;", vec![]),
            ("INSERT INTO orders (customer, qty) SELECT 'x', 1;", vec![]),
        ] {
            assert_eq!(rules(backend, "expand", sql), want, "{backend}: {sql}");
        }
    }
}

#[test]
fn postgres_expand_must_not_lock_a_busy_table() {
    for (sql, want) in [
        (
            "ALTER TABLE orders ALTER COLUMN qty TYPE BIGINT;",
            vec!["expand-type-change"],
        ),
        (
            "ALTER TABLE orders ALTER COLUMN customer SET NOT NULL;",
            vec!["expand-set-not-null"],
        ),
        (
            "CREATE INDEX orders_by_customer ON orders (customer);",
            vec!["index-not-concurrent"],
        ),
        (
            "CREATE UNIQUE INDEX orders_by_customer ON orders (customer);",
            vec!["index-not-concurrent"],
        ),
        (
            "ALTER TABLE orders ADD CONSTRAINT qty_positive CHECK (qty > 0);",
            vec!["constraint-not-valid"],
        ),
        (
            "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (qty) REFERENCES unrelated (id);",
            vec!["constraint-not-valid"],
        ),
        (
            "ALTER TABLE orders ADD CONSTRAINT one UNIQUE (customer);",
            vec!["unique-constraint"],
        ),
        (
            "ALTER TABLE orders ADD COLUMN code TEXT UNIQUE;",
            vec!["unique-constraint"],
        ),
        (
            "CREATE INDEX o ON orders (customer) WHERE customer = 'won''t';",
            vec!["index-not-concurrent"],
        ),
        (
            "ALTER TABLE orders ADD COLUMN token UUID DEFAULT gen_random_uuid();",
            vec!["table-rewrite"],
        ),
        (
            "ALTER TABLE orders ADD COLUMN n BIGSERIAL;",
            vec!["table-rewrite"],
        ),
        (
            "ALTER TABLE orders ADD COLUMN total INT GENERATED ALWAYS AS (qty * 2) STORED;",
            vec!["table-rewrite"],
        ),
        // Two operations, two findings.
        (
            "ALTER TABLE orders DROP COLUMN customer, ALTER COLUMN qty TYPE BIGINT;",
            vec!["expand-drop", "expand-type-change"],
        ),
        // The safe forms.
        (
            "CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (customer);",
            vec![],
        ),
        (
            "ALTER TABLE orders ADD CONSTRAINT qty_positive CHECK (qty > 0) NOT VALID;",
            vec![],
        ),
        (
            "ALTER TABLE orders VALIDATE CONSTRAINT qty_positive;",
            vec![],
        ),
        (
            "ALTER TABLE orders ADD COLUMN created_at TIMESTAMPTZ DEFAULT now();",
            vec![],
        ),
        (
            "ALTER TABLE orders ALTER COLUMN customer DROP NOT NULL;",
            vec![],
        ),
        // On a table the same file creates, nothing is locked that anyone uses.
        (
            "CREATE TABLE lines (id BIGINT PRIMARY KEY, order_id BIGINT);\n\
             CREATE INDEX lines_by_order ON lines (order_id);\n\
             ALTER TABLE lines ADD CONSTRAINT fk FOREIGN KEY (order_id) REFERENCES orders (id);\n\
             ALTER TABLE lines ADD COLUMN note TEXT NOT NULL;",
            vec![],
        ),
    ] {
        assert_eq!(rules("postgres", "expand", sql), want, "{sql}");
    }
    // SQLite builds an index under its one write lock anyway, and has no
    // NOT VALID: those rules are PostgreSQL's.
    assert_eq!(
        rules("sqlite", "expand", "CREATE INDEX o ON orders (customer);"),
        Vec::<&str>::new()
    );
}

#[test]
fn switch_holds_few_fast_statements_and_keeps_rollback_possible() {
    for (phase, sql, want) in [
        (
            "switch.sql",
            "ALTER TABLE orders RENAME COLUMN customer TO customer_name;",
            vec![],
        ),
        (
            "switch.sql",
            "UPDATE orders SET qty = 1 WHERE id = 7;",
            vec![],
        ),
        (
            "switch.sql",
            "UPDATE orders SET qty = 1;",
            vec!["unbatched-write"],
        ),
        (
            "switch.sql",
            "CREATE INDEX o ON orders (customer);",
            vec!["switch-index-build"],
        ),
        ("switch.sql", "DROP TABLE unrelated;", vec!["switch-drop"]),
        (
            "switch.sql",
            "ALTER TABLE orders DROP COLUMN qty;",
            vec!["switch-drop"],
        ),
        (
            "switch.sql",
            "ALTER TABLE orders ALTER COLUMN qty TYPE BIGINT;",
            vec!["switch-table-scan"],
        ),
        (
            "switch.sql",
            "ALTER TABLE orders ALTER COLUMN qty SET NOT NULL;",
            vec!["switch-table-scan"],
        ),
        (
            "switch.sql",
            "ALTER TABLE orders VALIDATE CONSTRAINT c;",
            vec!["switch-table-scan"],
        ),
        (
            "switch.sql",
            "ALTER TABLE orders ADD CONSTRAINT c CHECK (qty > 0);",
            vec!["switch-table-scan"],
        ),
        // Switching back renames back; it may drop what the switch created.
        (
            "switch_back.sql",
            "ALTER TABLE orders RENAME COLUMN customer_name TO customer;",
            vec![],
        ),
        ("switch_back.sql", "DROP VIEW orders_v2;", vec![]),
        (
            "switch_back.sql",
            "DELETE FROM orders;",
            vec!["unbatched-write"],
        ),
    ] {
        let mut files = vec![
            ("expand.sql", "CREATE TABLE unrelated (id INTEGER);"),
            (phase, sql),
        ];
        if phase == "switch_back.sql" {
            files.push(("switch.sql", "SELECT 1;"));
        }
        let report = lint("postgres", &files);
        let got: Vec<_> = report.findings.iter().map(|f| f.rule.name()).collect();
        assert_eq!(got, want, "{phase}: {sql}");
    }
}

#[test]
fn contract_only_removes() {
    for (sql, want) in [
        ("DROP TRIGGER orders_sync ON orders;", vec![]),
        ("DROP FUNCTION orders_sync();", vec![]),
        ("ALTER TABLE orders DROP COLUMN customer;", vec![]),
        (
            "ALTER TABLE orders ALTER COLUMN customer SET NOT NULL;",
            vec![],
        ),
        (
            "ALTER TABLE orders ALTER COLUMN customer DROP DEFAULT;",
            vec![],
        ),
        ("ALTER TABLE orders VALIDATE CONSTRAINT c;", vec![]),
        ("DELETE FROM orders WHERE qty = 0;", vec![]),
        (
            "CREATE TABLE later (id INTEGER);",
            vec!["contract-only-removes"],
        ),
        (
            "CREATE INDEX o ON orders (customer);",
            vec!["contract-only-removes"],
        ),
        (
            "ALTER TABLE orders ADD COLUMN note TEXT;",
            vec!["contract-only-removes"],
        ),
        (
            "ALTER TABLE orders RENAME COLUMN qty TO quantity;",
            vec!["contract-only-removes"],
        ),
        (
            "INSERT INTO orders (qty) VALUES (1);",
            vec!["contract-only-removes"],
        ),
        (
            "UPDATE orders SET qty = 1 WHERE qty IS NULL;",
            vec!["contract-only-removes"],
        ),
    ] {
        assert_eq!(rules("postgres", "contract.sql", sql), want, "{sql}");
    }
}

#[test]
fn a_finding_names_the_file_line_statement_rule_and_what_to_write() {
    let report = lint(
        "postgres",
        &[(
            "expand.sql",
            "-- the new column\nALTER TABLE orders ADD COLUMN note TEXT;\n\nALTER TABLE orders\n    RENAME COLUMN customer TO customer_name;",
        )],
    );
    assert_eq!(report.findings.len(), 1, "{report}");
    let f = &report.findings[0];
    assert_eq!(
        (f.rule, f.version.get(), f.phase, f.file.as_str(), f.line),
        (
            Rule::ExpandRename,
            2,
            Phase::Expand,
            "0002_change/expand.sql",
            4
        )
    );
    assert_eq!(
        f.statement,
        "ALTER TABLE orders RENAME COLUMN customer TO customer_name"
    );
    let text = f.to_string();
    for part in [
        "0002_change/expand.sql:4: expand-rename (expand of version 2)",
        "still use the old name",
        "rename in switch.sql",
        "`-- tandem:allow(expand-rename) <reason>`",
    ] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
    assert!(!report.is_clean());
}

#[test]
fn a_statement_opts_out_with_a_named_rule_and_a_reason() {
    let allowed = "-- tandem:allow(expand-drop) the view was never read by version 1\n\
                   DROP VIEW drafts;\n\
                   DROP TABLE scratch; -- tandem:allow(expand-drop): created and filled by hand, never by code\n\
                   ALTER TABLE orders /* tandem:allow(expand-rename, expand-drop) both unused */\n\
                       RENAME COLUMN customer TO c;";
    assert!(lint("sqlite", &[("expand.sql", allowed)]).is_clean());
    // The opt-out covers only the statement it is attached to, and only its rule.
    let report = lint(
        "sqlite",
        &[(
            "expand.sql",
            "-- tandem:allow(expand-drop) unused\nDROP VIEW a;\nDROP VIEW b;\n\
             -- tandem:allow(expand-rename) wrong rule\nDROP VIEW c;",
        )],
    );
    let lines: Vec<_> = report
        .findings
        .iter()
        .map(|f| (f.rule.name(), f.line))
        .collect();
    assert_eq!(lines, vec![("expand-drop", 3), ("expand-drop", 5)]);
    // Without a reason, or naming no rule: findings of their own, which no
    // comment silences.
    let report = lint(
        "sqlite",
        &[(
            "expand.sql",
            "-- tandem:allow(expand-drop)\nDROP VIEW a;\n-- tandem:allow(no-such-rule) why\nCREATE TABLE x (id INT);\n\
             -- tandem:allow(opt-out-reason) sneaky\nCREATE TABLE y (id INT);",
        )],
    );
    let lines: Vec<_> = report
        .findings
        .iter()
        .map(|f| (f.rule.name(), f.line))
        .collect();
    assert_eq!(
        lines,
        vec![
            ("opt-out-reason", 2),
            ("opt-out-rule", 4),
            ("opt-out-rule", 6)
        ]
    );
    assert!(!report.findings[0]
        .to_string()
        .contains("tandem:allow(opt-out-reason)"));
}

#[test]
fn triggers_functions_and_strings_are_not_misread() {
    // SQLite trigger bodies and PostgreSQL function bodies hold UPDATEs
    // without WHERE and DROPs in strings: none is a statement of the phase.
    let sqlite = "CREATE TRIGGER t AFTER INSERT ON orders BEGIN\n  UPDATE unrelated SET id = 1;\n  DELETE FROM unrelated;\nEND;\n\
                  INSERT INTO unrelated VALUES ('DROP TABLE orders;');";
    assert!(lint("sqlite", &[("expand.sql", sqlite)]).is_clean());
    let pg = "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n  UPDATE unrelated SET id = 1;\n  DROP TABLE x;\n  RETURN NEW;\nEND\n$$;\n\
              CREATE TRIGGER t AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION f();";
    assert!(lint("postgres", &[("expand.sql", pg)]).is_clean());
}

#[test]
fn a_statement_the_parser_cannot_read_is_reported_unchecked_not_guessed() {
    let report = lint(
        "sqlite",
        &[(
            "expand.sql",
            "ALTER TABLE orders FROBNICATE customer;\nCREATE TABLE x (id INT);",
        )],
    );
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.unchecked.len(), 1, "{report}");
    assert_eq!(
        (report.unchecked[0].line, report.unchecked[0].file.as_str()),
        (1, "0002_change/expand.sql")
    );
    assert!(report.to_string().contains("not checked"), "{report}");
}

#[test]
fn version_one_backend_files_and_unknown_backends() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("0001_init")).unwrap();
    // The initial schema runs on an empty database: nothing to lint.
    std::fs::write(
        dir.path().join("0001_init/expand.sql"),
        "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT); CREATE INDEX ta ON t (a); DROP TABLE IF EXISTS legacy;",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("0002_x")).unwrap();
    // Each backend lints its own file.
    std::fs::write(
        dir.path().join("0002_x/expand.sql"),
        "CREATE INDEX tb ON t (a);",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("0002_x/expand.postgres.sql"),
        "ALTER TABLE t RENAME TO u;",
    )
    .unwrap();
    let catalog = Catalog::from_dir(dir.path()).unwrap();
    assert!(catalog.lint("sqlite").unwrap().is_clean());
    let pg = catalog.lint("postgres").unwrap();
    assert_eq!(
        pg.findings
            .iter()
            .map(|f| (f.rule, f.file.as_str()))
            .collect::<Vec<_>>(),
        vec![(Rule::ExpandRename, "0002_x/expand.postgres.sql")]
    );
    let err = catalog.lint("mysql").unwrap_err();
    assert!(matches!(&err, CatalogError::UnknownBackend { backend } if backend == "mysql"));
    assert!(err.to_string().contains("sqlite, postgres"), "{err}");
}

#[test]
fn every_rule_has_a_distinct_name_a_problem_and_an_alternative() {
    let mut names = BTreeSet::new();
    for rule in Rule::ALL {
        assert!(names.insert(rule.name()), "{rule:?}");
        assert_eq!(Rule::from_name(rule.name()), Some(*rule));
        assert!(
            !rule.problem().is_empty() && !rule.instead().is_empty(),
            "{rule:?}"
        );
    }
    assert_eq!(Rule::from_name("nope"), None);
}

#[test]
fn a_not_null_column_whose_default_is_null_is_required() {
    assert_eq!(
        rules(
            "sqlite",
            "expand",
            "ALTER TABLE orders ADD COLUMN n TEXT NOT NULL DEFAULT NULL;"
        ),
        ["expand-required-column"]
    );
}

/// A column added with a `REFERENCES` or `CHECK` of its own checks every
/// row already there as it is added (PostgreSQL); an `UPDATE` or `DELETE`
/// inside a `WITH` is read like one on its own.
#[test]
fn inline_column_constraints_and_writes_inside_with_are_read() {
    for (sql, want) in [
        (
            "ALTER TABLE orders ADD COLUMN customer_id BIGINT REFERENCES customers (id);",
            vec!["constraint-not-valid"],
        ),
        (
            "ALTER TABLE orders ADD COLUMN qty2 INTEGER CHECK (qty2 > 0);",
            vec!["constraint-not-valid"],
        ),
        (
            "WITH one AS (SELECT 1) UPDATE orders SET qty = 0;",
            vec!["unbatched-write"],
        ),
        (
            "WITH gone AS (DELETE FROM orders RETURNING id) SELECT count(*) FROM gone;",
            vec!["unbatched-write"],
        ),
        (
            "WITH one AS (SELECT 1) UPDATE orders SET qty = 0 WHERE id IN (SELECT id FROM orders LIMIT 100);",
            vec![],
        ),
    ] {
        assert_eq!(rules("postgres", "expand", sql), want, "{sql}");
    }
    // SQLite checks no existing row as the column is added.
    assert_eq!(
        rules(
            "sqlite",
            "expand",
            "ALTER TABLE orders ADD COLUMN customer_id INTEGER REFERENCES customers (id);"
        ),
        Vec::<&str>::new()
    );
    assert_eq!(
        rules(
            "postgres",
            "contract.sql",
            "WITH one AS (SELECT 1) UPDATE orders SET qty = 0 WHERE id = 1;"
        ),
        vec!["contract-only-removes"]
    );
    assert_eq!(
        rules(
            "postgres",
            "switch.sql",
            "ALTER TABLE orders ADD COLUMN customer_id BIGINT REFERENCES customers (id);"
        ),
        vec!["switch-table-scan"]
    );
}
