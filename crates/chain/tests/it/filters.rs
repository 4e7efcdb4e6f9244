//! Filters report each new block and log once; fee history stays bounded.

use crate::common::{Counter, start};
use alloy::primitives::U256;
use alloy::providers::Provider;
use alloy::rpc::types::Filter;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_report_new_blocks_and_logs_once() {
    let chain = start().await;
    let provider = chain.http(&chain.signer);
    let counter = Counter::deploy(provider.clone(), U256::ZERO).await.unwrap();
    let blocks = provider.new_block_filter().await.unwrap();
    let logs = provider
        .new_filter(&Filter::new().address(*counter.address()))
        .await
        .unwrap();
    let receipt = counter
        .increment()
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();

    let hashes: Vec<alloy::primitives::B256> = provider.get_filter_changes(blocks).await.unwrap();
    assert_eq!(hashes, vec![receipt.block_hash.unwrap()]);
    let found: Vec<alloy::rpc::types::Log> = provider.get_filter_changes(logs).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].transaction_hash, Some(receipt.transaction_hash));
    // Nothing new since: empty answers.
    let again: Vec<alloy::primitives::B256> = provider.get_filter_changes(blocks).await.unwrap();
    assert!(again.is_empty());
    let again: Vec<alloy::rpc::types::Log> = provider.get_filter_changes(logs).await.unwrap();
    assert!(again.is_empty());
    assert!(provider.uninstall_filter(logs).await.unwrap());
    assert!(
        provider
            .get_filter_changes::<alloy::rpc::types::Log>(logs)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fee_history_is_zero_and_bounded_by_the_head() {
    let chain = start().await;
    let provider = chain.http(&chain.signer);
    let history = provider
        .get_fee_history(
            5000,
            alloy::eips::BlockNumberOrTag::Number(u64::MAX),
            &[25.0, 75.0],
        )
        .await
        .unwrap();
    assert_eq!(history.oldest_block, 0);
    assert_eq!(history.base_fee_per_gas, vec![0, 0]);
    assert_eq!(history.reward, Some(vec![vec![0, 0]]));
}
