//! The genesis of a Besu QBFT network for medledger, its validators named
//! in its `extraData`.
//!
//! QBFT's genesis `extraData` is the RLP list
//! `[32 zero bytes, [validator addresses], [] (no vote), 0 (round), [] (no seals)]`.

use alloy::primitives::{Address, U256};

/// The genesis: QBFT with `validators`, every fork up to Cancun at block
/// 0 (the contracts use no later opcode; deploy/besu-qbft/README.md), no
/// base fee, the embedded node's gas limit.
pub(super) fn genesis(
    chain_id: u64,
    validators: &[Address],
    allocs: &[(Address, U256)],
    block_period_s: u64,
) -> serde_json::Value {
    let alloc: serde_json::Map<String, serde_json::Value> = allocs
        .iter()
        .map(|(a, wei)| {
            (
                a.to_string(),
                serde_json::json!({ "balance": format!("{wei:#x}") }),
            )
        })
        .collect();
    serde_json::json!({
        "config": {
            "chainId": chain_id,
            "berlinBlock": 0,
            "londonBlock": 0,
            "shanghaiTime": 0,
            "cancunTime": 0,
            "zeroBaseFee": true,
            "contractSizeLimit": 2_147_483_647u64,
            "qbft": {
                "blockperiodseconds": block_period_s,
                "epochlength": 30_000,
                "requesttimeoutseconds": (block_period_s * 2).max(4),
            },
        },
        "nonce": "0x0",
        "timestamp": "0x0",
        "extraData": format!("0x{}", hex::encode(qbft_extra_data(validators))),
        "gasLimit": "0x5f5e100",
        "difficulty": "0x1",
        "mixHash": "0x63746963616c2062797a616e74696e65206661756c7420746f6c6572616e6365",
        "coinbase": "0x0000000000000000000000000000000000000000",
        "alloc": alloc,
    })
}

/// QBFT's genesis `extraData` for `validators`.
fn qbft_extra_data(validators: &[Address]) -> Vec<u8> {
    let mut addresses = Vec::new();
    for v in validators {
        rlp_string(&mut addresses, v.as_slice());
    }
    let mut items = Vec::new();
    rlp_string(&mut items, &[0u8; 32]); // vanity
    rlp_list(&mut items, &addresses);
    rlp_list(&mut items, &[]); // no vote
    rlp_string(&mut items, &[]); // round 0
    rlp_list(&mut items, &[]); // no seals
    let mut out = Vec::new();
    rlp_list(&mut out, &items);
    out
}

/// RLP: a byte string (never a single byte below 0x80 here).
fn rlp_string(out: &mut Vec<u8>, bytes: &[u8]) {
    rlp_header(out, 0x80, bytes.len());
    out.extend_from_slice(bytes);
}

/// RLP: a list of already encoded items.
fn rlp_list(out: &mut Vec<u8>, payload: &[u8]) {
    rlp_header(out, 0xc0, payload.len());
    out.extend_from_slice(payload);
}

fn rlp_header(out: &mut Vec<u8>, base: u8, len: usize) {
    if len < 56 {
        out.push(base + len as u8);
    } else {
        let len = len.to_be_bytes();
        let len = &len[len.iter().take_while(|b| **b == 0).count()..];
        out.push(base + 55 + len.len() as u8);
        out.extend_from_slice(len);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The `extraData` of the QBFT genesis in Besu's documentation, for
    /// its four example validators.
    #[test]
    fn extra_data_is_besus_for_the_same_validators() {
        let validators: Vec<Address> = [
            "0x64a702e6263b7297a96638cac6ae65e6541f4169",
            "0x3923390ad55e90c237593b3b0e401f3b08a03185",
            "0xaefdb9a738c9f433e5b6b212a6d62f6370c2f692",
            "0xc7eeb9a4e00ce683cf93039b212648e01c6c6b78",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        assert_eq!(
            hex::encode(qbft_extra_data(&validators)),
            "f87aa00000000000000000000000000000000000000000000000000000000000000000\
             f8549464a702e6263b7297a96638cac6ae65e6541f4169943923390ad55e90c237593b3b\
             0e401f3b08a0318594aefdb9a738c9f433e5b6b212a6d62f6370c2f69294c7eeb9a4e00c\
             e683cf93039b212648e01c6c6b78c080c0"
        );
    }

    #[test]
    fn the_genesis_names_its_validators_and_balances() {
        let v: Address = "0x64a702e6263b7297a96638cac6ae65e6541f4169"
            .parse()
            .unwrap();
        let admin: Address = "0x3923390ad55e90c237593b3b0e401f3b08a03185"
            .parse()
            .unwrap();
        let wei = U256::from(1000u64) * U256::from(10u64).pow(U256::from(18u64));
        let g = genesis(6_284_171_939, &[v], &[(admin, wei)], 2);
        assert_eq!(g["config"]["chainId"], 6_284_171_939u64);
        let extra = g["extraData"].as_str().unwrap();
        assert!(extra.contains(&hex::encode(v.as_slice())), "{extra}");
        assert_eq!(
            g["alloc"][admin.to_string()]["balance"],
            "0x3635c9adc5dea00000"
        );
    }
}
