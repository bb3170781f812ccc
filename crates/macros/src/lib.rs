//! `embed_catalog!`, re-exported by [tandem](https://docs.rs/tandem) as
//! `tandem::embed_catalog!`: see its documentation there.

use std::path::{Path, PathBuf};

use proc_macro::{TokenStream, TokenTree};

/// Embeds a catalog folder (`schema_versions/`) in the binary, validated at
/// compile time: expands to a `&'static tandem::EmbeddedCatalog` for
/// `tandem::Catalog::from_embedded`.
///
/// ```ignore
/// let catalog = tandem::Catalog::from_embedded(tandem::embed_catalog!("schema_versions"))?;
/// ```
///
/// The folder is relative to the package's root (`CARGO_MANIFEST_DIR`, read
/// as the macro expands, so a copy of the package built elsewhere embeds its
/// own files). A malformed folder fails the build with the same
/// `CatalogError` that `Catalog::from_dir` gives at run time. Each file is
/// embedded with `include_bytes!`, so cargo rebuilds when one changes; like
/// diesel's `embed_migrations!`, a *new* file or folder is seen only if the
/// package has a build script with
/// `println!("cargo:rerun-if-changed=schema_versions");`.
#[proc_macro]
pub fn embed_catalog(input: TokenStream) -> TokenStream {
    match expand(input) {
        Ok(code) => code,
        Err(message) => compile_error(&message),
    }
}

fn expand(input: TokenStream) -> Result<TokenStream, String> {
    let dir = folder_argument(input)?;
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .ok_or("embed_catalog!: CARGO_MANIFEST_DIR is not set (expand it through cargo)")?;
    let root = manifest.join(&dir);
    let files = tandem_catalog::embeddable_files(&root)
        .map_err(|e| format!("embed_catalog!(\"{dir}\"): {e}"))?;
    let mut code = String::from("&::tandem::EmbeddedCatalog { ");
    code.push_str(&format!("root: {dir:?}, files: &["));
    for file in files {
        let relative = format!("/{dir}/{file}");
        code.push_str(&format!(
            "::tandem::EmbeddedFile {{ path: {file:?}, contents: include_bytes!(concat!(env!(\"CARGO_MANIFEST_DIR\"), {relative:?})) }},"
        ));
    }
    code.push_str("] }");
    code.parse()
        .map_err(|e| format!("embed_catalog!: generated code did not parse: {e}"))
}

/// The folder argument: one plain string literal, a relative path without
/// `..`; `"schema_versions"` when empty.
fn folder_argument(input: TokenStream) -> Result<String, String> {
    let tokens: Vec<TokenTree> = input.into_iter().collect();
    let literal = match tokens.as_slice() {
        [] => return Ok("schema_versions".to_owned()),
        [TokenTree::Literal(literal)] => literal.to_string(),
        _ => return Err(usage("expected one string literal")),
    };
    let dir = literal
        .strip_prefix('"')
        .and_then(|l| l.strip_suffix('"'))
        .filter(|d| !d.is_empty() && !d.contains('\\') && !d.contains('"'))
        .ok_or_else(|| usage("expected a plain string literal (no escapes, not raw)"))?;
    let path = Path::new(dir);
    if path.is_absolute() || path.components().any(|c| c.as_os_str() == "..") {
        return Err(usage(
            "the folder must be relative to the package root, inside it",
        ));
    }
    Ok(dir.trim_end_matches('/').to_owned())
}

fn usage(problem: &str) -> String {
    format!("embed_catalog!: {problem}, such as embed_catalog!(\"schema_versions\")")
}

fn compile_error(message: &str) -> TokenStream {
    format!("compile_error!({message:?})")
        .parse()
        .unwrap_or_default()
}
