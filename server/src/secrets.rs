//! The secret key that seals secrets at rest, and the JWT signing secret.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use switchboard_storage::crypto::{KEY_LEN, SecretBox};
use switchboard_storage::{Db, settings};

use crate::config::Config;

/// Decodes a base64 key of exactly [`KEY_LEN`] bytes.
pub fn decode_key(text: &str) -> Option<[u8; KEY_LEN]> {
    STANDARD.decode(text.trim()).ok()?.try_into().ok()
}

/// The secret key from the configuration, else from `<data_dir>/secret.key` (created with mode
/// 0600 on first start).
pub fn load_secret_box(config: &Config) -> anyhow::Result<SecretBox> {
    if let Some(text) = &config.security.secret_key {
        // Validated when the configuration was loaded.
        let key = decode_key(text).context("security.secret_key is not base64 of 32 bytes")?;
        return Ok(SecretBox::new(&key));
    }
    let path = config.data_dir.join("secret.key");
    let key = match std::fs::read_to_string(&path) {
        Ok(text) => decode_key(&text)
            .with_context(|| format!("{} does not hold base64 of 32 bytes", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SecretBox::generate_key();
            write_private(&path, STANDARD.encode(key).as_bytes())?;
            tracing::info!(path = %path.display(), "generated a new secret key");
            key
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(SecretBox::new(&key))
}

/// Writes `bytes` to a new file readable only by its owner.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// The JWT signing secret: configured, else stored sealed in the database (generated once).
pub async fn jwt_secret(
    config: &Config,
    db: &Db,
    secret_box: &SecretBox,
) -> anyhow::Result<Vec<u8>> {
    const KEY: &str = "jwt_secret";
    if let Some(secret) = &config.auth.jwt_secret {
        return Ok(secret.as_bytes().to_vec());
    }
    let fresh = secret_box.seal(KEY, &SecretBox::generate_key());
    let sealed = settings::get_or_insert(db, KEY, &fresh).await?;
    secret_box.open(KEY, &sealed).context(
        "the stored JWT secret cannot be decrypted: is this the secret key it was created with?",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let first = load_secret_box(&config).unwrap();
        let sealed = first.seal("ctx", b"x");
        let second = load_secret_box(&config).unwrap();
        assert_eq!(second.open("ctx", &sealed).unwrap(), b"x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("secret.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.path().join("secret.key"), "garbage").unwrap();
        assert!(load_secret_box(&config).is_err());
    }
}
