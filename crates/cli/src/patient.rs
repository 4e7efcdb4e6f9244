//! `medledger patient ref --salt-file F --id ID`: the patientRef a
//! hospital admits a patient under, without the patient's identifier ever
//! reaching the chain.
//!
//! patientRef = keccak256(salt ‖ id): `salt` the bytes of the hospital's
//! secret salt, written in its file as hex (any length, whitespace around
//! it ignored; `openssl rand -hex 32` makes one), `id` the patient's
//! identifier in the hospital's records as UTF-8, exactly as given.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub(crate) enum PatientCommand {
    /// Print the patientRef of a patient: keccak256(salt ‖ id).
    Ref {
        /// The hospital's salt: hex in a file only its owner may read.
        #[arg(long, env = "MEDLEDGER_SALT_FILE")]
        salt_file: PathBuf,
        /// The patient's identifier in the hospital's records (UTF-8).
        #[arg(long)]
        id: String,
    },
}

pub(crate) fn run(cmd: PatientCommand) -> Result<()> {
    match cmd {
        PatientCommand::Ref { salt_file, id } => {
            let salt = read_salt(&salt_file)?;
            println!("{}", patient_ref(&salt, &id));
            Ok(())
        }
    }
}

/// keccak256(salt ‖ id).
fn patient_ref(salt: &[u8], id: &str) -> alloy::primitives::B256 {
    alloy::primitives::keccak256([salt, id.as_bytes()].concat())
}

/// The salt in `path`: hex, in a file only its owner may read.
fn read_salt(path: &Path) -> Result<Vec<u8>> {
    medledger_pki::files::require_private(path)?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the salt file {}", path.display()))?;
    let hex_text = text.trim();
    let salt = hex::decode(hex_text.strip_prefix("0x").unwrap_or(hex_text)).with_context(|| {
        format!(
            "the salt file {} must hold the salt in hex (make one with `openssl rand -hex 32`)",
            path.display()
        )
    })?;
    if salt.len() < 16 {
        bail!(
            "the salt in {} is {} bytes; use at least 16 (`openssl rand -hex 32` makes 32)",
            path.display(),
            salt.len()
        );
    }
    Ok(salt)
}
