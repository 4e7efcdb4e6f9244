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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonces_arriving_out_of_order_are_mined_and_a_gap_seals_no_empty_blocks() {
    let chain = start().await;
    let tx = |n| sign_1559(&chain.signer, transfer(31337, n, 21_000));
    // Nonce 1 first, then 0: both run, in nonce order.
    let one = chain.node.send_raw_transaction(&tx(1)).unwrap();
    let zero = chain.node.send_raw_transaction(&tx(0)).unwrap();
    // Nonce 5 leaves a gap: it waits, and no block is sealed for it.
    let five = chain.node.send_raw_transaction(&tx(5)).unwrap();
    let mut blocks = chain.node.subscribe_blocks();
    tokio::time::timeout(Duration::from_secs(10), async {
        while chain.node.store().tx_location(&one).unwrap().is_none() {
            blocks.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    assert!(
        chain.node.store().tx_location(&zero).unwrap().unwrap()
            < chain.node.store().tx_location(&one).unwrap().unwrap()
    );
    // Fill the gap: 2, 3, 4 make 5 runnable too.
    for n in 2..5 {
        chain.node.send_raw_transaction(&tx(n)).unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        while chain.node.store().tx_location(&five).unwrap().is_none() {
            blocks.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    // Every block after genesis holds transactions: none was sealed empty
    // while nonce 5 waited.
    for number in 1..=chain.node.block_number() {
        let body = chain.node.store().body(number).unwrap().unwrap();
        assert!(!body.is_empty(), "block {number} is empty");
    }
    assert_eq!(chain.node.nonce(&chain.signer.address(), false), 6);
}
