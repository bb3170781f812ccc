//! Embeds the demo catalog (`schema_versions/`) for tandem's own examples,
//! tests and doctests, the same way an application's build script does.

#[path = "src/embed.rs"]
#[allow(dead_code)]
mod embed;

fn main() -> std::io::Result<()> {
    embed::write_to_out_dir("schema_versions", std::path::Path::new("schema_versions"))?;
    Ok(())
}
