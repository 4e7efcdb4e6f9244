//! Blocks survive a restart; a tampered store is refused.
