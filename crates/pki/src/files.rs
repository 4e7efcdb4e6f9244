//! Reading and writing PEM files and private keys on disk.

use crate::{Error, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes a private key: created new (never overwriting), mode 0600, synced.
pub fn write_secret(path: &Path, contents: &[u8]) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(|e| Error::io(path, e))?;
    f.write_all(contents).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Writes a public file atomically (temporary file, sync, rename).
pub fn write_public(path: &Path, contents: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(contents).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Fails unless the file at `path` is its owner's alone (no access for
/// group or others): a private key others on the machine can read is
/// compromised, so it is refused rather than used.
pub fn require_private(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::Format {
                path: path.to_path_buf(),
                reason: format!(
                    "a private key or secret that others may read (mode {mode:04o}); \
                     make it its owner's alone: chmod 600 {}",
                    path.display()
                ),
            });
        }
    }
    Ok(())
}

/// Reads the first `tag` PEM block of a private key file, which must be
/// private ([`require_private`]).
pub fn read_private(path: &Path, tag: &str) -> Result<Vec<u8>> {
    require_private(path)?;
    read_first(path, tag)
}

/// Creates the directory `path` (and its missing parents) for its owner
/// alone (0700), and takes group and others' access away from it if it
/// already exists.
pub fn private_dir(path: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path).map_err(|e| Error::io(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o700))
                .map_err(|e| Error::io(path, e))?;
        }
    }
    Ok(())
}

/// Reads a file.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::io(path, e))
}

/// Reads every PEM block with `tag` from a file, or the file itself if it
/// is DER (no PEM armour).
pub fn read_der_blocks(path: &Path, tag: &str) -> Result<Vec<Vec<u8>>> {
    der_blocks(&read(path)?, tag).map_err(|e| Error::Format {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Why bytes hold no block of the kind asked for.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// PEM armour that does not parse.
    #[error("not PEM: {0}")]
    NotPem(#[from] pem::PemError),
    /// PEM without a block of this tag, e.g. `CERTIFICATE`.
    #[error("no {0} PEM block")]
    NoBlock(String),
}

/// Every PEM block with `tag` in `bytes`, or `bytes` itself if it is DER
/// (no PEM armour); at least one, else why not.
pub fn der_blocks(bytes: &[u8], tag: &str) -> std::result::Result<Vec<Vec<u8>>, PemError> {
    if !bytes.starts_with(b"-----BEGIN") {
        return Ok(vec![bytes.to_vec()]);
    }
    let ders: Vec<Vec<u8>> = pem::parse_many(bytes)?
        .into_iter()
        .filter(|p| p.tag() == tag)
        .map(pem::Pem::into_contents)
        .collect();
    if ders.is_empty() {
        return Err(PemError::NoBlock(tag.to_owned()));
    }
    Ok(ders)
}

/// The first PEM block with `tag` in a file, or the file itself if DER.
pub fn read_first(path: &Path, tag: &str) -> Result<Vec<u8>> {
    let mut blocks = read_der_blocks(path, tag)?;
    Ok(blocks.swap_remove(0))
}

/// PEM text of one DER block.
pub fn to_pem(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der.to_vec()))
}

/// `PREFIX` + `suffix` as a path (`out/dev1` + `.crt`).
pub fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: String,
}

impl ConfigError {
    /// A problem with `path`.
    pub fn new(path: &Path, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.to_owned(),
            problem: problem.into(),
        }
    }
}

/// Reads a TOML configuration file into `T`.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new(path, e.to_string()))?;
    toml::from_str(&text).map_err(|e| ConfigError::new(path, e.to_string()))
}

/// Makes every relative path in `paths` relative to the directory that
/// holds `file` (a configuration file's paths are relative to it).
pub fn relative_to<'a>(file: &Path, paths: impl IntoIterator<Item = &'a mut PathBuf>) {
    let base = file.parent().unwrap_or(Path::new("."));
    for p in paths {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
}
