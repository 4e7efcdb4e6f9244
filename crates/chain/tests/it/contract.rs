//! Deploy and use a Solidity contract, over HTTP and in-process.

use crate::common::{Counter, start};
use alloy::primitives::U256;
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::Filter;
use alloy::sol_types::SolEvent;

pub async fn exercise(provider: DynProvider, me: alloy::primitives::Address) {
    let counter = Counter::deploy(provider.clone(), U256::from(5))
        .await
        .unwrap();
    assert_eq!(counter.count().call().await.unwrap(), U256::from(5));
    assert_eq!(counter.owner().call().await.unwrap(), me);
    assert!(
        !provider
            .get_code_at(*counter.address())
            .await
            .unwrap()
            .is_empty()
    );

    // A call that changes state, with an event.
    let receipt = counter
        .increment()
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status());
    assert_eq!(receipt.from, me);
    let logs = receipt.inner.logs();
    assert_eq!(logs.len(), 1);
    let event = Counter::Incremented::decode_log(&logs[0].inner).unwrap();
    assert_eq!((event.by, event.count), (me, U256::from(6)));
    assert_eq!(counter.count().call().await.unwrap(), U256::from(6));

    // The block holds the transaction and its receipt's root.
    let block = provider
        .get_block_by_number(receipt.block_number.unwrap().into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(block.header.hash, receipt.block_hash.unwrap());
    assert!(
        block
            .transactions
            .hashes()
            .any(|h| h == receipt.transaction_hash)
    );
    let tx = provider
        .get_transaction_by_hash(receipt.transaction_hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tx.block_number, receipt.block_number);

    // Logs can be found by filter.
    let filter = Filter::new()
        .address(*counter.address())
        .event_signature(Counter::Incremented::SIGNATURE_HASH)
        .from_block(0);
    assert_eq!(provider.get_logs(&filter).await.unwrap().len(), 1);

    // A revert with a reason, and a custom error.
    let err = counter
        .add(U256::from(5000))
        .send()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("too large"), "{err}");
    let Err(err) = counter.add(U256::from(5000)).call().await else {
        panic!("add(5000) succeeded")
    };
    assert!(err.to_string().contains("too large"), "{err}");
    let Err(err) = counter
        .reset()
        .from(alloy::primitives::Address::repeat_byte(9))
        .call()
        .await
    else {
        panic!("reset by a stranger succeeded")
    };
    let decoded = err.as_decoded_error::<Counter::NotOwner>().unwrap();
    assert_eq!(decoded.caller, alloy::primitives::Address::repeat_byte(9));

    // Nonces count mined and waiting transactions.
    let nonce = provider.get_transaction_count(me).await.unwrap();
    assert_eq!(nonce, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_and_call_a_contract_over_http() {
    let chain = start().await;
    exercise(chain.http(&chain.signer), chain.signer.address()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_and_call_a_contract_in_process() {
    let chain = start().await;
    exercise(chain.in_process(&chain.signer), chain.signer.address()).await;
}
