//! The embedded chain under load: transactions/s for simple contract calls
//! (signature recovery included), and send-to-receipt latency on demand.
//! Transactions are signed before the clock starts. And the start of a
//! long chain: `Node::start` (from the signed checkpoint at its head)
//! beside `verify_chain` (every block from 0) on the same chain of
//! `MEDLEDGER_BENCH_BLOCKS` empty blocks (20,000 by default;
//! `MEDLEDGER_BENCH_FULL_WALK=0` leaves the full walk out, for a chain of
//! a million).
#![allow(clippy::unwrap_used, missing_docs)]

use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy::eips::eip2718::Encodable2718;
use alloy::network::{EthereumWallet, TxSignerSync};
use alloy::primitives::{Address, B256, Bytes, TxKind, U256};
use alloy::providers::ProviderBuilder;
use alloy::rpc::client::RpcClient;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use medledger_chain::rpc::Rpc;
use medledger_chain::rpc::transport::InProcess;
use medledger_chain::{Node, NodeConfig, Sealing};
use std::time::{Duration, Instant};

alloy::sol!(
    #[sol(rpc)]
    Counter,
    "../../contracts/out/Counter.json"
);

const CHAIN_ID: u64 = 1337;
const BATCH: u64 = 2000;

struct Bench {
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    node: Node,
    signer: PrivateKeySigner,
    counter: Address,
    nonce: u64,
}

fn setup(min_interval: Duration) -> Bench {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let signer = PrivateKeySigner::random();
    let (node, counter) = rt.block_on(async {
        let mut config = NodeConfig::new(dir.path());
        config.chain_id = CHAIN_ID;
        config.allow = vec![signer.address()];
        config.sealing = Sealing::OnDemand { min_interval };
        let node = Node::start(&config).unwrap();
        let client = RpcClient::new(InProcess::new(Rpc::new(node.clone())), true);
        let provider = ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer.clone()))
            .connect_client(client);
        let counter = Counter::deploy(provider, U256::ZERO).await.unwrap();
        (node, *counter.address())
    });
    Bench {
        rt,
        _dir: dir,
        node,
        signer,
        counter,
        nonce: 1,
    }
}

impl Bench {
    /// `increment()` calls with the next nonces, signed.
    fn sign(&mut self, n: u64) -> Vec<(B256, Bytes)> {
        (0..n)
            .map(|_| {
                let mut tx = TxEip1559 {
                    chain_id: CHAIN_ID,
                    nonce: self.nonce,
                    gas_limit: 100_000,
                    max_fee_per_gas: 0,
                    max_priority_fee_per_gas: 0,
                    to: TxKind::Call(self.counter),
                    value: U256::ZERO,
                    input: Counter::incrementCall {}.abi_encode().into(),
                    access_list: Default::default(),
                };
                self.nonce += 1;
                let sig = self.signer.sign_transaction_sync(&mut tx).unwrap();
                let envelope = TxEnvelope::from(tx.into_signed(sig));
                (*envelope.tx_hash(), envelope.encoded_2718().into())
            })
            .collect()
    }

    /// Submits `txs` and waits until the last one is in a block.
    fn run(&self, txs: &[(B256, Bytes)]) -> Duration {
        self.rt.block_on(async {
            let mut blocks = self.node.subscribe_blocks();
            let start = Instant::now();
            for (_, raw) in txs {
                self.node.send_raw_transaction(raw).unwrap();
            }
            let last = txs.last().unwrap().0;
            while self.node.store().tx_location(&last).unwrap().is_none() {
                blocks.changed().await.unwrap();
            }
            start.elapsed()
        })
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("chain");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    let mut b = setup(Duration::from_millis(50));
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("contract_calls_2000", |bencher| {
        bencher.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let txs = b.sign(BATCH);
                    b.run(&txs)
                })
                .sum()
        })
    });
    drop(b);

    let mut b = setup(Duration::ZERO);
    group.throughput(Throughput::Elements(1));
    group
        .sample_size(100)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("send_to_receipt", |bencher| {
        bencher.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let txs = b.sign(1);
                    b.run(&txs)
                })
                .sum()
        })
    });
    group.finish();
}

fn start(c: &mut Criterion) {
    let blocks: u64 = std::env::var("MEDLEDGER_BENCH_BLOCKS")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig::new(dir.path());
    let start_once = || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async { Node::start(&config).unwrap().block_number() })
        // Dropping the runtime stops the node and closes its store.
    };
    start_once();
    let made = Instant::now();
    let head = medledger_chain::test_utils::extend_with_empty_blocks(dir.path(), blocks).unwrap();
    eprintln!(
        "start: a chain of {head} blocks made in {:.1?}",
        made.elapsed()
    );
    // The first start walks them all and leaves a checkpoint at the head.
    let first = Instant::now();
    assert_eq!(start_once(), head);
    eprintln!(
        "start: the first start, walking every block: {:.1?}",
        first.elapsed()
    );
    let mut group = c.benchmark_group(format!("start of {head} blocks"));
    group.sample_size(10);
    group.bench_function("node start from the checkpoint", |b| {
        b.iter(|| assert_eq!(start_once(), head));
    });
    if std::env::var("MEDLEDGER_BENCH_FULL_WALK").as_deref() != Ok("0") {
        group.bench_function("verify_chain, every block", |b| {
            b.iter(|| assert_eq!(medledger_chain::verify_chain(dir.path()).unwrap(), head));
        });
    }
    group.finish();
}

criterion_group!(benches, bench, start);
criterion_main!(benches);
