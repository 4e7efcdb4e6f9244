//! Logs of what peers do wrong (connections refused, readings rejected),
//! limited so that a flood cannot fill the disk: at most [`BURST`] lines a
//! [`WINDOW`] per log, then one line saying how many were left out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines a log may write per window.
pub const BURST: u32 = 20;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(10);

/// One such log: `what` names it in the line counting what was left out.
#[derive(Debug)]
pub struct LogThrottle {
    what: &'static str,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    left_out: u64,
}

impl LogThrottle {
    /// A log of `what` (e.g. "refused connections").
    pub fn new(what: &'static str) -> LogThrottle {
        LogThrottle {
            what,
            window: Mutex::new(Window {
                started: Instant::now(),
                logged: 0,
                left_out: 0,
            }),
        }
    }

    /// Whether one more line may be written now. A new window first logs
    /// how many lines the last one left out.
    pub fn admit(&self) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if w.started.elapsed() >= WINDOW {
            if w.left_out > 0 {
                tracing::warn!(
                    "{} more {} in {} s were not logged (each is counted in /metrics)",
                    w.left_out,
                    self.what,
                    w.started.elapsed().as_secs()
                );
            }
            *w = Window {
                started: Instant::now(),
                logged: 0,
                left_out: 0,
            };
        }
        if w.logged < BURST {
            w.logged += 1;
            true
        } else {
            w.left_out += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_logged_a_burst_at_a_time() {
        let log = LogThrottle::new("refusals");
        let admitted = (0..1000).filter(|_| log.admit()).count();
        assert_eq!(admitted, BURST as usize);
        let left = log.window.lock().expect("not poisoned").left_out;
        assert_eq!(left, 1000 - u64::from(BURST));
    }
}
