//! Embeds every `migrations/V<N>__<name>.sql` file, in version order, into the binary.
use std::{env, fs, path::PathBuf};

fn main() {
    // Read at run time, not baked in with `env!`: a build script binary reused from another
    // checkout (a copied target dir) must still read this checkout's migrations.
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_owned());
    let dir = PathBuf::from(manifest_dir).join("../../migrations");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut found: Vec<(i64, String, PathBuf)> = Vec::new();
    if let Ok(entries) = fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
                continue;
            };
            let Some(rest) = file.strip_prefix('V').and_then(|r| r.strip_suffix(".sql")) else {
                continue;
            };
            let Some((num, name)) = rest.split_once("__") else {
                continue;
            };
            let Ok(version) = num.parse::<i64>() else {
                panic!("migration {file}: version is not a number");
            };
            println!("cargo:rerun-if-changed={}", path.display());
            found.push((version, name.to_owned(), path));
        }
    }
    found.sort_by_key(|m| m.0);
    for pair in found.windows(2) {
        if pair[0].0 == pair[1].0 {
            panic!("two migrations share version {}", pair[0].0);
        }
    }
    let mut out = String::from("pub static MIGRATIONS: &[Migration] = &[\n");
    for (version, name, path) in &found {
        out.push_str(&format!(
            "    Migration {{ version: {version}, name: {name:?}, sql: include_str!({:?}) }},\n",
            path.display().to_string()
        ));
    }
    out.push_str("];\n");
    let dest = PathBuf::from(env::var("OUT_DIR").unwrap_or_default()).join("migrations.rs");
    if let Err(e) = fs::write(&dest, out) {
        panic!("cannot write {}: {e}", dest.display());
    }
}
