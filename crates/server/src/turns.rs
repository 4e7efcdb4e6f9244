//! The order in which a collector's batches in flight commit.
//!
//! A collector may send several batches at once, over several connections,
//! so that the server verifies one while it commits another. The batches
//! must still commit in the order they were sent: a device's later readings
//! committed first would make its earlier ones look like replays. So each
//! batch carries its [`Order`] in a stream of its collector, and one sent
//! while its predecessor was unanswered (`after`) waits here, verified,
//! until that predecessor has committed. If the predecessor failed, or does
//! not commit within [`WAIT`], the follower fails too, and the collector
//! sends both again in a new stream.

use alloy::primitives::Address;
use medledger_protocol::Order;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a batch waits for its predecessor.
const WAIT: Duration = Duration::from_secs(10);

/// How long a stream nobody sends on is remembered.
const FORGET: Duration = Duration::from_secs(300);

/// The streams of every collector.
#[derive(Default)]
pub(crate) struct Turns {
    streams: Mutex<HashMap<(Address, u64), Progress>>,
    changed: Notify,
}

/// How far a stream has committed.
struct Progress {
    /// The highest batch number committed.
    done: u64,
    /// A batch failed: the ones waiting behind it fail too.
    broken: bool,
    touched: Instant,
}

/// Why a batch may not commit.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OutOfTurn {
    #[error("batch {after} of this stream, which this batch follows, was not committed")]
    Failed { after: u64 },
    #[error("batch {after} of this stream, which this batch follows, has not arrived")]
    Missing { after: u64 },
}

impl Turns {
    /// Waits until `collector`'s batch `order` may commit.
    pub(crate) async fn wait(&self, collector: Address, order: Order) -> Result<(), OutOfTurn> {
        let Some(after) = order.after else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
                match streams.get(&(collector, order.stream)) {
                    Some(p) if p.done >= after => return Ok(()),
                    Some(p) if p.broken => return Err(OutOfTurn::Failed { after }),
                    _ => {}
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(OutOfTurn::Missing { after });
            }
        }
    }

    /// Records that `collector`'s batch `order` committed (`ok`) or failed.
    pub(crate) fn finished(&self, collector: Address, order: Order, ok: bool) {
        let now = Instant::now();
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams.retain(|_, p| now.duration_since(p.touched) < FORGET);
        let progress = streams
            .entry((collector, order.stream))
            .or_insert(Progress {
                done: 0,
                broken: false,
                touched: now,
            });
        progress.touched = now;
        if ok {
            progress.done = progress.done.max(order.n);
        } else {
            progress.broken = true;
        }
        drop(streams);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn order(n: u64, after: Option<u64>) -> Order {
        Order {
            stream: 9,
            n,
            after,
        }
    }

    #[tokio::test]
    async fn a_batch_waits_for_the_one_it_follows() {
        let turns = Arc::new(Turns::default());
        let collector = Address::repeat_byte(1);
        turns.wait(collector, order(1, None)).await.unwrap();

        let waiting = tokio::spawn({
            let turns = turns.clone();
            async move { turns.wait(collector, order(2, Some(1))).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // Another collector's stream of the same number does not count.
        turns.finished(Address::repeat_byte(2), order(1, None), true);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        turns.finished(collector, order(1, None), true);
        waiting.await.unwrap().unwrap();

        turns.finished(collector, order(2, Some(1)), false);
        let err = turns.wait(collector, order(3, Some(2))).await.unwrap_err();
        assert!(matches!(err, OutOfTurn::Failed { after: 2 }), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_predecessor_that_never_comes_fails_its_follower() {
        let turns = Turns::default();
        let err = turns
            .wait(Address::ZERO, order(5, Some(4)))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "batch 4 of this stream, which this batch follows, has not arrived"
        );
    }
}
