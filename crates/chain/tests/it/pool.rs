//! Transactions sent while blocks are being built all make it in.

use crate::common::start;
use crate::rejections::{sign_1559, transfer};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_one_sender_is_accepted_and_mined_in_order() {
    let chain = start().await;
    let txs: Vec<Vec<u8>> = (0..400)
        .map(|n| sign_1559(&chain.signer, transfer(31337, n, 21_000)))
        .collect();
    let mut hashes = Vec::new();
    for (n, raw) in txs.iter().enumerate() {
        // Blocks are sealed meanwhile (every 5 ms): the next nonce must
        // count the transactions of the block being built.
        hashes.push(
            chain
                .node
                .send_raw_transaction(raw)
                .unwrap_or_else(|e| panic!("tx {n}: {e}")),
        );
    }
    let mut blocks = chain.node.subscribe_blocks();
    let last = *hashes.last().unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while chain.node.store().tx_location(&last).unwrap().is_none() {
            blocks.changed().await.unwrap();
        }
    })
    .await
    .expect("all mined within 30 s");
    let mut previous = (0, 0);
    for hash in hashes {
        let location = chain
            .node
            .store()
            .tx_location(&hash)
            .unwrap()
            .expect("mined");
        assert!(
            location > previous || previous == (0, 0),
            "nonce order kept"
        );
        previous = location;
    }
    assert_eq!(chain.node.nonce(&chain.signer.address(), false), 400);
}
