//! The catalog: loading a folder, embedding, checksums, and every kind of
//! malformed folder named in its error.

mod common;

use common::{write_catalog, write_files};
use tandem::{Catalog, CatalogError, Phase, Version};

fn v(n: u32) -> Version {
    Version::new(n).unwrap()
}

#[test]
fn embedded_catalog_equals_the_folder() {
    let embedded = tandem::testing::demo::catalog().unwrap();
    let loaded =
        Catalog::from_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/schema_versions")).unwrap();
    assert_eq!(embedded.latest(), v(2));
    assert_eq!(loaded.latest(), embedded.latest());
    for version in loaded.versions() {
        for phase in Phase::ALL {
            for backend in ["sqlite", "postgres"] {
                assert_eq!(
                    embedded.phase(version.version(), phase, backend),
                    version.phase(phase, backend),
                    "{} {phase} {backend}",
                    version.version()
                );
            }
        }
    }
    assert_eq!(embedded.get(v(2)).unwrap().name(), "account_emails");
}

#[test]
fn per_backend_files_win_over_generic_ones() {
    let dir = write_catalog(&[
        ("0001_a/expand.sql", "CREATE TABLE a (id INTEGER);"),
        ("0002_b/expand.sql", "generic"),
        ("0002_b/expand.postgres.sql", "postgres only"),
        ("0002_b/contract.sqlite.sql", "sqlite only"),
    ]);
    let c = Catalog::from_dir(dir.path()).unwrap();
    assert_eq!(
        c.phase(v(2), Phase::Expand, "sqlite").unwrap().text,
        "generic"
    );
    assert_eq!(
        c.phase(v(2), Phase::Expand, "postgres").unwrap().text,
        "postgres only"
    );
    assert_eq!(
        c.phase(v(2), Phase::Contract, "sqlite").unwrap().text,
        "sqlite only"
    );
    assert!(c.phase(v(2), Phase::Contract, "postgres").is_none());
    // SHA-256 of the text, stable across loads.
    let again = Catalog::from_dir(dir.path()).unwrap();
    assert_eq!(
        c.phase(v(2), Phase::Expand, "sqlite").unwrap().checksum,
        again.phase(v(2), Phase::Expand, "sqlite").unwrap().checksum
    );
}

/// Each malformed folder gives its own error, naming the file or folder.
#[test]
fn malformed_catalogs_are_typed_errors_naming_the_file() {
    let base = ("0001_init/expand.sql", "CREATE TABLE a (id INTEGER);");
    type Check = fn(&CatalogError) -> bool;
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, Check);
    let cases: Vec<Case<'_>> = vec![
        (
            "gap",
            vec![base, ("0003_c/expand.sql", "x")],
            "0003_c",
            |e| {
                matches!(
                    e,
                    CatalogError::Gap {
                        expected: 2,
                        found: 3,
                        ..
                    }
                )
            },
        ),
        (
            "duplicate",
            vec![base, ("0001_again/expand.sql", "x")],
            "0001_",
            |e| matches!(e, CatalogError::Duplicate { version: 1, .. }),
        ),
        (
            "missing expand",
            vec![base, ("0002_b/contract.sql", "x")],
            "0002_b",
            |e| matches!(e, CatalogError::MissingExpand { .. }),
        ),
        (
            "empty file",
            vec![base, ("0002_b/expand.sql", "\n  \n")],
            "0002_b/expand.sql",
            |e| matches!(e, CatalogError::Empty { .. }),
        ),
        (
            "unknown file",
            vec![base, ("0001_init/expand.txt", "x")],
            "expand.txt",
            |e| matches!(e, CatalogError::UnknownFile { .. }),
        ),
        (
            "bad folder",
            vec![base, ("two_b/expand.sql", "x")],
            "two_b",
            |e| matches!(e, CatalogError::BadFolderName { .. }),
        ),
        (
            "stray file",
            vec![base, ("notes.sql", "x")],
            "notes.sql",
            |e| matches!(e, CatalogError::UnknownFile { .. }),
        ),
        (
            "version 1 contract",
            vec![base, ("0001_init/contract.sql", "x")],
            "contract.sql",
            |e| matches!(e, CatalogError::FirstVersionPhase { .. }),
        ),
        (
            "starts at 2",
            vec![("0002_b/expand.sql", "x")],
            "0002_b",
            |e| matches!(e, CatalogError::Gap { expected: 1, .. }),
        ),
        ("nothing", vec![("README.md", "x")], "", |e| {
            matches!(e, CatalogError::NoVersions { .. })
        }),
    ];
    for (name, files, must_name, check) in cases {
        let dir = write_catalog(&files);
        let err = Catalog::from_dir(dir.path()).expect_err(name);
        assert!(check(&err), "{name}: unexpected {err:?}");
        assert!(
            err.to_string().contains(must_name),
            "{name}: {err} does not name {must_name}"
        );
    }

    // Not UTF-8.
    let dir = write_catalog(&[base]);
    std::fs::create_dir(dir.path().join("0002_b")).unwrap();
    std::fs::write(dir.path().join("0002_b/expand.sql"), [0xC3, 0x28]).unwrap();
    let err = Catalog::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, CatalogError::NotUtf8 { .. }), "{err:?}");
    assert!(err.to_string().contains("0002_b/expand.sql"));

    // A folder that does not exist.
    let err = Catalog::from_dir("/nonexistent/schema_versions").unwrap_err();
    assert!(matches!(err, CatalogError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/schema_versions"));
}

#[test]
fn catalog_phase_lookup_of_unknown_versions_is_none() {
    let dir = write_catalog(&[("0001_a/expand.sql", "CREATE TABLE a (id INTEGER);")]);
    write_files(dir.path(), &[("0001_a/notes.md", "ignored")]);
    let c = Catalog::from_dir(dir.path()).unwrap();
    assert!(c.phase(v(2), Phase::Expand, "sqlite").is_none());
    assert!(c.get(v(5)).is_none());
    assert_eq!(c.versions().count(), 1);
}

/// Every catalog this repository ships passes the phase-aware lint on both
/// backends, and reads without a statement left unchecked: the demo, the
/// example service and the test fixture.
#[test]
fn the_shipped_catalogs_pass_the_lint() {
    for folder in [
        "schema_versions",
        "examples/accounts_service/schema_versions",
        "examples/accounts_service/schema_versions_sql",
        "tests/fixtures/app/schema_versions",
    ] {
        let catalog =
            Catalog::from_dir(format!("{}/{folder}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert!(catalog.latest() >= v(2), "{folder}");
        for backend in ["sqlite", "postgres"] {
            let report = catalog.lint(backend).unwrap();
            assert!(
                report.findings.is_empty() && report.unchecked.is_empty(),
                "{folder} on {backend}:\n{report}"
            );
        }
    }
}
