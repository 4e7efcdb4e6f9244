//! Bad transactions and requests get clear JSON-RPC errors; nothing is
//! committed and the node keeps serving.

use crate::common::{TestChain, start};
use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope, TxLegacy};
use alloy::eips::eip2718::Encodable2718;
use alloy::network::TxSignerSync;
use alloy::primitives::{Address, Bytes, TxKind, U256};
use alloy::providers::Provider;
use alloy::signers::local::PrivateKeySigner;
use alloy::transports::http::reqwest;
use serde_json::{Value, json};

pub fn transfer(chain_id: u64, nonce: u64, gas_limit: u64) -> TxEip1559 {
    TxEip1559 {
        chain_id,
        nonce,
        gas_limit,
        max_fee_per_gas: 0,
        max_priority_fee_per_gas: 0,
        to: TxKind::Call(Address::repeat_byte(0x42)),
        value: U256::ZERO,
        input: Bytes::new(),
        access_list: Default::default(),
    }
}

pub fn sign_1559(signer: &PrivateKeySigner, mut tx: TxEip1559) -> Vec<u8> {
    let sig = signer.sign_transaction_sync(&mut tx).unwrap();
    TxEnvelope::from(tx.into_signed(sig)).encoded_2718()
}

async fn rpc(chain: &TestChain, method: &str, params: Value) -> Value {
    let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
    reqwest::Client::new()
        .post(&chain.url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn send_raw(chain: &TestChain, raw: &[u8]) -> Value {
    rpc(
        chain,
        "eth_sendRawTransaction",
        json!([Bytes::copy_from_slice(raw)]),
    )
    .await
}

fn error_message(answer: &Value) -> String {
    assert_eq!(answer["error"]["code"], -32000, "{answer}");
    answer["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_transactions_are_refused_with_their_reason() {
    let chain = start().await;
    let me = &chain.signer;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("rlp:", vec![0x02, 0xc0, 0x01]),
        (
            "rlp:",
            sign_1559(me, transfer(31337, 0, 21_000))[..40].to_vec(),
        ),
        (
            "invalid chain id for signer: have Some(1) want 31337",
            sign_1559(me, transfer(1, 0, 21_000)),
        ),
        (
            "nonce too high: next nonce 0, tx nonce 65",
            sign_1559(me, transfer(31337, 65, 21_000)),
        ),
        (
            "exceeds block gas limit",
            sign_1559(me, transfer(31337, 0, 200_000_000)),
        ),
        (
            "intrinsic gas too low",
            sign_1559(me, transfer(31337, 0, 20_000)),
        ),
        ("oversized data", {
            let mut tx = transfer(31337, 0, 30_000_000);
            tx.input = Bytes::from(vec![1u8; 200 * 1024]);
            sign_1559(me, tx)
        }),
    ];
    for (expected, raw) in cases {
        let answer = send_raw(&chain, &raw).await;
        let message = error_message(&answer);
        assert!(
            message.starts_with(expected),
            "expected `{expected}`, got `{message}`"
        );
    }
    // A well-formed signature that recovers no sender: r above the curve
    // order.
    // (r and s must each take their full 32 bytes in the RLP, `a0` and
    // 32 bytes, for the overwrite below to hit r: a random key gives a
    // shorter one now and then, so vary the transaction until it does.)
    let mut raw = (21_000..)
        .map(|gas| sign_1559(me, transfer(31337, 0, gas)))
        .find(|raw| raw[raw.len() - 33] == 0xa0 && raw[raw.len() - 66] == 0xa0)
        .expect("some signature has full-length r and s");
    let len = raw.len();
    raw[len - 65..len - 33].fill(0xff);
    assert_eq!(
        error_message(&send_raw(&chain, &raw).await),
        "invalid sender"
    );
    // An account not on the allowlist.
    let stranger = PrivateKeySigner::random();
    let message =
        error_message(&send_raw(&chain, &sign_1559(&stranger, transfer(31337, 0, 21_000))).await);
    assert!(message.contains("is not permitted"), "{message}");
    // Pre-EIP-155 legacy transactions (replayable on any chain) are refused.
    let mut legacy = TxLegacy {
        chain_id: None,
        nonce: 0,
        gas_price: 0,
        gas_limit: 21_000,
        to: TxKind::Call(Address::repeat_byte(1)),
        value: U256::ZERO,
        input: Bytes::new(),
    };
    let sig = me.sign_transaction_sync(&mut legacy).unwrap();
    let raw = TxEnvelope::from(legacy.into_signed(sig)).encoded_2718();
    assert!(
        error_message(&send_raw(&chain, &raw).await)
            .starts_with("invalid chain id for signer: have None")
    );

    // Nothing was mined, and the node still works.
    let provider = chain.http(me);
    assert_eq!(provider.get_block_number().await.unwrap(), 0);
    assert_eq!(
        provider.get_transaction_count(me.address()).await.unwrap(),
        0
    );

    // A good one goes through; sending it again is "already known", and a
    // second transaction with a used nonce is "nonce too low".
    let good = sign_1559(me, transfer(31337, 0, 21_000));
    let hash = send_raw(&chain, &good).await["result"]
        .as_str()
        .unwrap()
        .to_owned();
    chain
        .node
        .wait_for_block(1, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    let receipt = rpc(&chain, "eth_getTransactionReceipt", json!([hash])).await;
    assert_eq!(receipt["result"]["status"], "0x1", "{receipt}");
    assert_eq!(
        error_message(&send_raw(&chain, &good).await),
        "already known"
    );
    let message =
        error_message(&send_raw(&chain, &sign_1559(me, transfer(31337, 0, 22_000))).await);
    assert!(message.starts_with("nonce too low"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_rpc_errors() {
    let chain = start().await;
    let answer = rpc(&chain, "eth_noSuchMethod", json!([])).await;
    assert_eq!(answer["error"]["code"], -32601);
    let answer = rpc(&chain, "eth_getBalance", json!(["not an address"])).await;
    assert_eq!(answer["error"]["code"], -32602);
    let answer = rpc(&chain, "eth_getBalance", json!([Address::ZERO, "0x5"])).await;
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("historical state"),
        "{answer}"
    );

    let client = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        client
            .post(&chain.url)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let answer: Value = post(b"{not json".to_vec())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["error"]["code"], -32700);
    // A batch answers every request in it, errors included.
    let batch = json!([
        { "jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": [] },
        { "jsonrpc": "2.0", "id": 2, "method": "eth_nope", "params": [] },
        { "jsonrpc": "2.0", "id": 3, "method": "eth_blockNumber" },
    ]);
    let answer: Value = post(serde_json::to_vec(&batch).unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let answers = answer.as_array().unwrap();
    assert_eq!(answers.len(), 3);
    assert_eq!(answers[0]["result"], "0x7a69");
    assert_eq!(answers[1]["error"]["code"], -32601);
    assert_eq!(answers[2]["result"], "0x0");
    // Last: a body over the limit is refused with 413 and a JSON-RPC error
    // before it is read; the server then closes the connection, which can
    // cut the upload short before the client reads the answer.
    let big = vec![b' '; 6 * 1024 * 1024];
    match post(big).await {
        Ok(response) => {
            assert_eq!(response.status(), 413);
            let answer: Value = response.json().await.unwrap();
            assert!(
                answer["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("larger than"),
                "{answer}"
            );
        }
        Err(e) => assert!(e.is_request(), "{e}"),
    }
    // And the node still answers.
    assert_eq!(
        rpc(&chain, "eth_chainId", json!([])).await["result"],
        "0x7a69"
    );
}

/// An unknown method is named in the error, but never echoed whole: a
/// 2 MiB method name comes back as a few dozen characters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_method_is_quoted_back_bounded() {
    let chain = start().await;
    let huge = "x".repeat(2 << 20);
    let answer = rpc(&chain, &huge, json!([])).await;
    assert_eq!(
        answer["error"]["code"],
        -32601,
        "{}",
        &answer.to_string()[..200]
    );
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.len() < 200, "{} bytes echoed", message.len());
    assert!(message.contains(&"x".repeat(64)), "{message}");
    let answer = rpc(&chain, "eth_noSuchThing", json!([])).await;
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("eth_noSuchThing"),
        "{answer}"
    );
}
