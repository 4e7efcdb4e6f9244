//! Re-wraps, in the background, the data keys still under a previous
//! key-encryption key (a rotation, docs/operations.md), while the server
//! serves.

use crate::State;
use medledger_storage::{KekStatus, Rewrapped};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Data keys per transaction: short enough that ingest barely waits.
pub const BATCH: usize = 500;

/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Re-wraps every data key under a previous KEK, then retires those KEKs;
/// prints what it did. An error is printed and ends the task: the next
/// start (or `medledger server rewrap`) resumes.
pub(crate) async fn run(state: Arc<State>, status: KekStatus) {
    let vault = &state.vault;
    tracing::info!(
        "medledger server: re-wrapping {} data key(s) under key-encryption key {}",
        status.left(),
        vault.kek_id()
    );
    let mut last = Instant::now();
    let result = vault
        .rewrap_all(BATCH, |p| {
            if last.elapsed() >= PROGRESS_EVERY {
                last = Instant::now();
                tracing::info!(
                    "medledger server: {} data key(s) re-wrapped, {} left",
                    p.rewrapped,
                    p.left
                );
            }
        })
        .await;
    match result {
        Ok(done) => tracing::info!("medledger server: {}", summary(&done)),
        Err(e) => tracing::warn!("medledger server: re-wrapping data keys stopped: {e}"),
    }
}

/// What a finished rewrap did, for people.
pub fn summary(done: &Rewrapped) -> String {
    let mut out = format!("{} data key(s) re-wrapped", done.rewrapped);
    if done.shredded > 0 {
        out.push_str(&format!(
            ", {} stray key(s) of erased patients deleted",
            done.shredded
        ));
    }
    if done.retired.is_empty() {
        out.push_str(&format!(", {} left", done.left));
    } else {
        let ids: Vec<String> = done.retired.iter().map(ToString::to_string).collect();
        out.push_str(&format!(
            ", {} left under {}; the old key-encryption key(s) can now be destroyed (and removed from previous_kek_files)",
            done.left,
            ids.join(", ")
        ));
    }
    out
}
