//! The catalog folder as files: read from disk for `Catalog::from_dir`,
//! listed for `embed_catalog!`.

use std::fs;
use std::path::{Path, PathBuf};

use super::Catalog;
use crate::error::CatalogError;

/// Files relative to the catalog folder; `None` marks an empty version folder.
pub(crate) type Tree = Vec<(PathBuf, Option<Vec<u8>>)>;

/// Every file below `root` (one level of folders), relative paths, skipping
/// dot-files. Shared by [`Catalog::from_dir`] and [`embeddable_files`].
pub(crate) fn read_tree(root: &Path) -> Result<Tree, CatalogError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CatalogError::Io { path, source }
    };
    let mut tree = Vec::new();
    for entry in fs::read_dir(root).map_err(io(root))? {
        let entry = entry.map_err(io(root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            let mut any = false;
            for inner in fs::read_dir(&path).map_err(io(&path))? {
                let inner = inner.map_err(io(&path))?;
                let file = inner.file_name().to_string_lossy().into_owned();
                if file.starts_with('.') {
                    continue;
                }
                let inner_path = inner.path();
                if inner_path.is_dir() {
                    return Err(CatalogError::UnknownFile { path: inner_path });
                }
                let bytes = fs::read(&inner_path).map_err(io(&inner_path))?;
                tree.push((PathBuf::from(&name).join(file), Some(bytes)));
                any = true;
            }
            if !any {
                // An empty version folder: kept so it is reported as missing expand.sql.
                tree.push((PathBuf::from(&name), None));
            }
        } else {
            let bytes = fs::read(&path).map_err(io(&path))?;
            tree.push((PathBuf::from(&name), Some(bytes)));
        }
    }
    Ok(tree)
}

/// For `tandem::embed_catalog!`: validates the catalog folder `root` as
/// [`Catalog::from_dir`] does and lists its files (relative paths with `/`
/// separators, sorted), each to be embedded with `include_bytes!`.
///
/// # Errors
///
/// The [`CatalogError`] of [`Catalog::from_dir`].
#[doc(hidden)]
pub fn embeddable_files(root: &Path) -> Result<Vec<String>, CatalogError> {
    let tree = read_tree(root)?;
    Catalog::parse(root, tree.clone())?;
    let mut files: Vec<String> = tree
        .into_iter()
        .filter(|(_, bytes)| bytes.is_some())
        .map(|(rel, _)| {
            rel.components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    files.sort();
    Ok(files)
}
