//! `embed_catalog!` (in `testing::demo`) embeds `schema_versions/` file by
//! file, so cargo rebuilds when one changes; this line makes it notice a new
//! version folder too (the line the README asks of applications).

fn main() {
    println!("cargo:rerun-if-changed=schema_versions");
}
