//! Helpers for tests: FHIR output checked by a validator no one here wrote.
//!
//! `fhir-check/check.mjs` runs HL7's R4 JSON Schema (with Ajv) and
//! Medplum's profile validator over a resource, applying the R4
//! vital-signs profiles by LOINC code as HL7's validator does. Its npm
//! packages come from `cd fhir-check && npm ci`, which `.ci/run` does.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// Checks `resource` (a Bundle's entries one by one as well) and panics
/// with the validator's report if it finds an error.
pub fn assert_valid_fhir(resource: &Value) {
    if let Some(Err(report)) = check_fhir(resource) {
        panic!("the FHIR validator found errors:\n{report}\nin {resource:#}");
    }
}

/// The validator's verdict on `resource`: `Err` with its report when it
/// finds an error. `None` without the validator's packages, after saying
/// loudly that the check is skipped (in CI it fails instead).
pub fn check_fhir(resource: &Value) -> Option<Result<(), String>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fhir-check");
    if !dir.join("node_modules/@medplum/core").exists() {
        let message = format!(
            "the FHIR validator's packages are not installed: run `cd {} && npm ci`",
            dir.display()
        );
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("\n!!! SKIPPED: {message}\n");
        return None;
    }
    let file = temporary_file(resource);
    let out = Command::new("node")
        .arg(dir.join("check.mjs"))
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("running node {}: {e}", dir.join("check.mjs").display()));
    let _ = std::fs::remove_file(&file);
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    })
}

/// `resource` written to a fresh file under the system's temporary
/// directory.
fn temporary_file(resource: &Value) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "medledger-fhir-{}-{}.json",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, resource.to_string())
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}
