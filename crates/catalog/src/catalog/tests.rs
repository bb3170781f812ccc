//! Unit tests of catalog parsing.

use std::fs;

use super::*;

fn tree(files: &[(&str, &str)]) -> Tree {
    files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), Some(t.as_bytes().to_vec())))
        .collect()
}

fn parse(files: &[(&str, &str)]) -> Result<Catalog, CatalogError> {
    Catalog::parse(Path::new("schema_versions"), tree(files))
}

#[test]
fn parses_versions_phases_and_overrides() {
    let c = parse(&[
        ("README.md", "notes"),
        ("0001_init/expand.sql", "CREATE TABLE a (id INT);"),
        ("0002_more/expand.sql", "ALTER TABLE a ADD b INT;"),
        (
            "0002_more/expand.postgres.sql",
            "ALTER TABLE a ADD COLUMN b INT;",
        ),
        ("0002_more/contract.sql", "SELECT 1;"),
        ("0002_more/notes.md", "why"),
    ])
    .unwrap();
    assert_eq!(c.latest().get(), 2);
    let v2 = Version::new(2).unwrap();
    assert_eq!(
        c.phase(v2, Phase::Expand, "sqlite").unwrap().text,
        "ALTER TABLE a ADD b INT;"
    );
    assert_eq!(
        c.phase(v2, Phase::Expand, "postgres").unwrap().file,
        "0002_more/expand.postgres.sql"
    );
    assert!(c.phase(v2, Phase::Switch, "sqlite").is_none());
    assert_eq!(
        c.phase(v2, Phase::Contract, "sqlite").unwrap().checksum,
        sha256_hex("SELECT 1;")
    );
    assert_eq!(c.get(v2).unwrap().name(), "more");
}

#[test]
fn checksum_is_sha256() {
    assert_eq!(
        sha256_hex(""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn rejects_malformed_catalogs() {
    let e = parse(&[("0001_a/expand.sql", "x"), ("0003_c/expand.sql", "x")]).unwrap_err();
    assert!(
        matches!(
            e,
            CatalogError::Gap {
                expected: 2,
                found: 3,
                ..
            }
        ),
        "{e}"
    );
    let e = parse(&[("0002_a/expand.sql", "x")]).unwrap_err();
    assert!(
        matches!(
            e,
            CatalogError::Gap {
                expected: 1,
                found: 2,
                ..
            }
        ),
        "{e}"
    );
    let e = parse(&[("0001_a/expand.sql", "x"), ("0001_b/expand.sql", "x")]).unwrap_err();
    assert!(
        matches!(e, CatalogError::Duplicate { version: 1, .. }),
        "{e}"
    );
    let e = parse(&[("0001_a/expand.sql", "x"), ("0002_b/switch.sql", "x")]).unwrap_err();
    assert!(matches!(e, CatalogError::MissingExpand { .. }), "{e}");
    let e = parse(&[("0001_a/expand.sql", "  \n")]).unwrap_err();
    assert!(matches!(e, CatalogError::Empty { .. }), "{e}");
    let e = parse(&[("0001_a/expand.sql", "x"), ("0001_a/expnad.sql", "x")]).unwrap_err();
    assert!(matches!(e, CatalogError::UnknownFile { .. }), "{e}");
    let e = parse(&[("0001_a/expand.mysql.sql", "x")]).unwrap_err();
    assert!(matches!(e, CatalogError::UnknownFile { .. }), "{e}");
    let e = parse(&[("0001_a/expand.sql", "x"), ("0001_a/contract.sql", "x")]).unwrap_err();
    assert!(matches!(e, CatalogError::FirstVersionPhase { .. }), "{e}");
    let e = parse(&[("init/expand.sql", "x")]).unwrap_err();
    assert!(matches!(e, CatalogError::BadFolderName { .. }), "{e}");
    let e = parse(&[("stray.sql", "x")]).unwrap_err();
    assert!(matches!(e, CatalogError::UnknownFile { .. }), "{e}");
    let e = Catalog::parse(Path::new("s"), vec![(PathBuf::from("0001_a"), None)]).unwrap_err();
    assert!(matches!(e, CatalogError::MissingExpand { .. }), "{e}");
    let e = parse(&[]).unwrap_err();
    assert!(matches!(e, CatalogError::NoVersions { .. }), "{e}");
    let e = Catalog::parse(
        Path::new("s"),
        vec![(PathBuf::from("0001_a/expand.sql"), Some(vec![0xff, 0xfe]))],
    )
    .unwrap_err();
    assert!(matches!(e, CatalogError::NotUtf8 { .. }), "{e}");
    // Backend-specific expand files are enough only when every backend has one.
    let e = parse(&[("0001_a/expand.sqlite.sql", "x")]).unwrap_err();
    assert!(matches!(e, CatalogError::MissingExpand { .. }), "{e}");
    parse(&[
        ("0001_a/expand.sqlite.sql", "x"),
        ("0001_a/expand.postgres.sql", "y"),
    ])
    .unwrap();
}

#[test]
fn error_messages_name_the_file() {
    let e = parse(&[("0001_a/expand.sql", "x"), ("0002_b/oops.txt", "x")]).unwrap_err();
    assert!(
        e.to_string().contains("schema_versions/0002_b/oops.txt"),
        "{e}"
    );
}

#[test]
fn embeddable_files_refuses_malformed_folders_and_lists_the_files() {
    let bad = tempfile::tempdir().unwrap();
    for (path, text) in [("0001_a/expand.sql", ""), ("0003_c/expand.sql", "x")] {
        let path = bad.path().join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
    let err = embeddable_files(bad.path()).unwrap_err();
    assert!(
        matches!(err, CatalogError::Empty { .. } | CatalogError::Gap { .. }),
        "{err:?}"
    );

    let good = tempfile::tempdir().unwrap();
    fs::create_dir(good.path().join("0001_a")).unwrap();
    fs::write(
        good.path().join("0001_a/expand.sql"),
        "CREATE TABLE a (id INTEGER);",
    )
    .unwrap();
    fs::write(good.path().join("0001_a/.hidden"), "skipped").unwrap();
    fs::write(good.path().join("README.md"), "notes").unwrap();
    assert_eq!(
        embeddable_files(good.path()).unwrap(),
        ["0001_a/expand.sql", "README.md"]
    );
}
