//! Code generation for embedded catalogs. Pure `std`, so tandem's own
//! `build.rs` can include this file with `#[path]`.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

/// The file `include_catalog!` includes from `OUT_DIR`.
pub const GENERATED_FILE: &str = "tandem_catalog.rs";

/// Rust source for an `&'static EmbeddedCatalog` holding every file below
/// `root` (one level of folders, dot-files skipped), each through
/// `include_bytes!` so that cargo rebuilds when one changes.
pub fn generate(label: &str, root: &Path) -> io::Result<String> {
    let root = root.canonicalize()?;
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(&root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if entry.path().is_dir() {
            for inner in std::fs::read_dir(entry.path())? {
                let inner = inner?;
                let file = inner.file_name().to_string_lossy().into_owned();
                if !file.starts_with('.') {
                    files.push((format!("{name}/{file}"), inner.path()));
                }
            }
        } else {
            files.push((name, entry.path()));
        }
    }
    files.sort();
    let mut out = String::from("&::tandem::EmbeddedCatalog {\n");
    let _ = writeln!(out, "    root: {label:?},\n    files: &[");
    for (rel, abs) in files {
        let _ = writeln!(
            out,
            "        ::tandem::EmbeddedFile {{ path: {rel:?}, contents: include_bytes!({:?}) }},",
            abs.to_string_lossy()
        );
    }
    out.push_str("    ],\n}\n");
    Ok(out)
}

/// Writes [`generate`]'s output to `$OUT_DIR/tandem_catalog.rs` and tells
/// cargo to rerun the build script when the folder changes.
pub fn write_to_out_dir(label: &str, root: &Path) -> io::Result<PathBuf> {
    let out_dir = std::env::var_os("OUT_DIR").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "OUT_DIR is not set: call this from a build script (build.rs)",
        )
    })?;
    let source = generate(label, root)?;
    let target = Path::new(&out_dir).join(GENERATED_FILE);
    std::fs::write(&target, source)?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(target)
}
