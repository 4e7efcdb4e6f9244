//! SoftHSM2 for tests (Debian's `softhsm2`, which `.ci/run` installs):
//! tokens of a test's own, keys imported into them, named by `pkcs11:`
//! URIs for [`crate::token::TokenKey`]. SoftHSM2 reads its configuration
//! from `SOFTHSM2_CONF` (`.ci/run` points it at a token directory of the
//! run's own) or `/etc/softhsm/softhsm2.conf`.

use std::path::PathBuf;
use std::process::Command;

/// Where Debian puts the module.
const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// SoftHSM2's module.
#[derive(Debug)]
pub struct SoftHsm {
    /// The PKCS#11 module.
    pub module: PathBuf,
}

/// SoftHSM2, or `None` after saying loudly that the test is skipped (in
/// CI it fails instead).
pub fn softhsm() -> Option<SoftHsm> {
    let module = std::env::var_os(crate::token::MODULE_VAR)
        .map_or_else(|| PathBuf::from(MODULE), PathBuf::from);
    let util = Command::new("softhsm2-util").arg("--version").output();
    if !module.exists() || util.is_err() {
        let message = format!(
            "SoftHSM2 not found ({} and softhsm2-util): apt-get install softhsm2",
            module.display()
        );
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("\n!!! SKIPPED: {message}\n");
        return None;
    }
    Some(SoftHsm { module })
}

fn run(command: &mut Command) {
    let out = command.output().expect("softhsm2-util runs");
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A token of a test's own, deleted when dropped.
#[derive(Debug)]
pub struct Token {
    /// Its label: the name the test gave, made unique to the process.
    pub label: String,
    /// Its user PIN.
    pub pin: String,
    module: PathBuf,
    dir: PathBuf,
}

impl SoftHsm {
    /// A new token for `name`, with a user PIN.
    pub fn token(&self, name: &str) -> Token {
        let label = format!("{name}-{}", std::process::id());
        let pin = "1234".to_owned();
        run(Command::new("softhsm2-util").args([
            "--init-token",
            "--free",
            "--label",
            &label,
            "--pin",
            &pin,
            "--so-pin",
            "so-pin-of-the-test",
        ]));
        let dir = std::env::temp_dir().join(format!("medledger-{label}"));
        crate::files::private_dir(&dir).expect("a directory for keys to import");
        Token {
            label,
            pin,
            module: self.module.clone(),
            dir,
        }
    }
}

impl Token {
    /// Imports the PKCS#8 key `pkcs8` (P-256 or secp256k1) as `object`,
    /// and deletes the file it went through; returns the URI that names
    /// it, with the module and the PIN in it.
    pub fn import(&self, object: &str, pkcs8: &[u8]) -> String {
        let pem = self.dir.join(format!("{object}.pem"));
        crate::files::write_secret(&pem, crate::files::to_pem("PRIVATE KEY", pkcs8).as_bytes())
            .expect("the key to import");
        let id: String = object.bytes().map(|b| format!("{b:02x}")).collect();
        run(Command::new("softhsm2-util")
            .arg("--import")
            .arg(&pem)
            .args(["--token", &self.label, "--label", object, "--id", &id])
            .args(["--pin", &self.pin]));
        std::fs::remove_file(&pem).expect("the imported key file removed");
        format!(
            "pkcs11:token={};object={object}?module-path={}&pin-value={}",
            self.label,
            self.module.display(),
            self.pin
        )
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        let _ = Command::new("softhsm2-util")
            .args(["--delete-token", "--token", &self.label])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A DER element of `tag` (contents shorter than 256 bytes).
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let length = u8::try_from(content.len()).expect("a short DER element");
    let header = if length < 0x80 {
        vec![tag, length]
    } else {
        vec![tag, 0x81, length]
    };
    [header, content.to_vec()].concat()
}

/// A chain account's secp256k1 key as PKCS#8 (RFC 5915's ECPrivateKey
/// with its public key, in RFC 5208's PrivateKeyInfo), for
/// [`Token::import`].
pub fn secp256k1_pkcs8(key: &k256::ecdsa::SigningKey) -> Vec<u8> {
    const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const SECP256K1: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
    let point = key.verifying_key().to_encoded_point(false);
    let ec_private_key = der(
        0x30,
        &[
            der(0x02, &[1]),
            der(0x04, &key.to_bytes()),
            der(0xa1, &der(0x03, &[&[0][..], point.as_bytes()].concat())),
        ]
        .concat(),
    );
    der(
        0x30,
        &[
            der(0x02, &[0]),
            der(0x30, &[EC_PUBLIC_KEY, SECP256K1].concat()),
            der(0x04, &ec_private_key),
        ]
        .concat(),
    )
}
