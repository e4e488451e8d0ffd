//! Server keys: from configuration, or generated once into the data dir (mode 0600).

use anyhow::{Context, bail};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// A 32-byte key: `configured` (64 hex characters) if given, else `<data_dir>/keys/<name>.key`,
/// created with fresh random bytes on first use.
pub fn load_or_create(
    configured: Option<&SecretString>,
    data_dir: &Path,
    name: &str,
    variable: &str,
) -> anyhow::Result<[u8; 32]> {
    if let Some(hex_key) = configured {
        return parse(hex_key.expose_secret().trim())
            .with_context(|| format!("{variable} must be 64 hexadecimal characters"));
    }
    let dir = data_dir.join("keys");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", dir.display()))?;
    let path = dir.join(format!("{name}.key"));
    match std::fs::read_to_string(&path) {
        Ok(s) => parse(s.trim()).with_context(|| format!("{} is corrupt", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            rand::rng().fill_bytes(&mut key);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            f.write_all(hex::encode(key).as_bytes())?;
            f.sync_all()?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn parse(s: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = hex::decode(s)?;
    let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) else {
        bail!("expected 32 bytes, got {}", bytes.len());
    };
    Ok(key)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_generated_key_is_kept_and_private() {
        let dir = std::env::temp_dir().join(format!("gathering-keys-{}", uuid::Uuid::new_v4()));
        let a = load_or_create(None, &dir, "token", "X").unwrap();
        let b = load_or_create(None, &dir, "token", "X").unwrap();
        assert_eq!(a, b);
        let mode = std::fs::metadata(dir.join("keys/token.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
    }

    #[test]
    fn a_configured_key_must_be_64_hex() {
        let bad = SecretString::from("abcd".to_owned());
        assert!(load_or_create(Some(&bad), Path::new("/nonexistent"), "t", "X").is_err());
        let good = SecretString::from("11".repeat(32));
        assert_eq!(
            load_or_create(Some(&good), Path::new("/nonexistent"), "t", "X").unwrap(),
            [0x11; 32]
        );
    }
}
