//! Anchor: collectors and servers anchor roots; anyone reads them.

use crate::common::{Hospital, assert_refused, event};
use alloy::primitives::{B256, U256};
use medledger_contracts::bindings::Anchor;
use medledger_contracts::send;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_anchor_anyone_reads() {
    let h = Hospital::start().await;
    let root = B256::repeat_byte(1);
    let (first, last) = (B256::repeat_byte(2), B256::repeat_byte(3));
    let id = h
        .collector
        .anchor_root(1, root, 10, first, last)
        .await
        .unwrap();
    assert_eq!(id, 1);

    let anchor = h.stranger.anchor();
    let r = anchor.record(U256::from(1)).call().await.unwrap();
    assert_eq!(
        (r.by, r.kind, r.count, r.root, r.first, r.last),
        (h.collector.address, 1, 10, root, first, last)
    );
    assert!(r.time > 0);
    assert_eq!(anchor.anchorCount().call().await.unwrap(), U256::from(1));

    // Batches of collectors are anchored by collectors, server batches and
    // ledger checkpoints by servers.
    assert_refused(
        h.collector
            .anchor_root(3, root, 1, h.patient_ref, last)
            .await,
        "WrongNodeKind",
    );
    assert_refused(
        h.collector.anchor_root(2, root, 1, first, last).await,
        "WrongNodeKind",
    );
    let server = h.account();
    send(
        h.admin
            .registry()
            .registerNode(server.address, 2, crate::common::text("dc-1")),
    )
    .await
    .unwrap();
    assert_refused(
        server.anchor_root(1, root, 1, first, last).await,
        "WrongNodeKind",
    );

    // Several at once: one event each, consecutive ids.
    let inputs = vec![
        Anchor::Input {
            kind: 3,
            count: 5,
            root: B256::repeat_byte(4),
            first: h.patient_ref,
            last: B256::repeat_byte(5),
        },
        Anchor::Input {
            kind: 2,
            count: 7,
            root: B256::repeat_byte(6),
            first,
            last,
        },
    ];
    let receipt = send(server.anchor().anchorMany(inputs)).await.unwrap();
    let logs: Vec<Anchor::Anchored> = receipt
        .inner
        .logs()
        .iter()
        .filter_map(|l| {
            alloy::sol_types::SolEvent::decode_log(&l.inner)
                .ok()
                .map(|l: alloy::primitives::Log<Anchor::Anchored>| l.data)
        })
        .collect();
    assert_eq!(logs.len(), 2);
    assert_eq!(
        (
            logs[0].id,
            logs[0].kind,
            logs[0].first,
            logs[0].by,
            logs[0].root,
            logs[0].count,
            logs[0].last
        ),
        (
            U256::from(2),
            3,
            h.patient_ref,
            server.address,
            B256::repeat_byte(4),
            5,
            B256::repeat_byte(5)
        )
    );
    assert_eq!((logs[1].id, logs[1].kind), (U256::from(3), 2));
    let first_event: Anchor::Anchored = event(&receipt);
    assert_eq!(first_event.id, U256::from(2));

    // Only active collectors and servers anchor, and only well-formed roots.
    assert_refused(
        h.doctor.anchor_root(1, root, 1, first, last).await,
        "NotANode",
    );
    assert_refused(
        h.stranger.anchor_root(1, root, 1, first, last).await,
        "NotANode",
    );
    assert_refused(
        h.collector.anchor_root(0, root, 1, first, last).await,
        "InvalidAnchor",
    );
    // Erasures and recoveries are the server's word alone.
    for kind in [4, 5] {
        assert_refused(
            h.collector.anchor_root(kind, root, 1, first, last).await,
            "WrongNodeKind",
        );
    }
    assert_refused(
        h.collector.anchor_root(1, B256::ZERO, 1, first, last).await,
        "InvalidAnchor",
    );
    assert_refused(
        h.collector.anchor_root(1, root, 0, first, last).await,
        "InvalidAnchor",
    );
    send(h.admin.registry().deactivateNode(h.collector.address))
        .await
        .unwrap();
    assert_refused(
        h.collector.anchor_root(1, root, 1, first, last).await,
        "NotANode",
    );
    assert_refused(
        anchor
            .record(U256::from(9))
            .call()
            .await
            .map_err(Into::into),
        "UnknownAnchor",
    );
}

#[test]
fn the_protocol_document_gives_the_anchor_abi_as_compiled() {
    use alloy::sol_types::{SolCall, SolEvent};
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/protocol.md"),
    )
    .unwrap();
    for selector in [
        Anchor::anchorCall::SELECTOR,
        Anchor::anchorManyCall::SELECTOR,
        Anchor::anchorCountCall::SELECTOR,
        Anchor::recordCall::SELECTOR,
    ] {
        let text = format!("`0x{}`", alloy::hex::encode(selector));
        assert!(doc.contains(&text), "docs/protocol.md lacks {text}");
    }
    let topic = format!("`{}`", Anchor::Anchored::SIGNATURE_HASH);
    assert!(doc.contains(&topic), "docs/protocol.md lacks {topic}");
}

/// Log queries walk the chain in bounded ranges: asked one block at a
/// time, the anchors of several blocks come back whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchors_are_read_in_bounded_block_ranges() {
    let h = Hospital::start().await;
    let (first, last) = (B256::repeat_byte(2), B256::repeat_byte(3));
    for n in 1..=3u8 {
        h.collector
            .anchor_root(1, B256::repeat_byte(n), u64::from(n), first, last)
            .await
            .unwrap();
    }
    let filter = h.stranger.anchors_filter(1, None);
    let provider = h.stranger.provider();
    let whole = medledger_contracts::logs::logs_between(provider, &filter, 0, None)
        .await
        .unwrap();
    let stepped = medledger_contracts::logs::logs_in_steps(provider, &filter, 0, None, 1)
        .await
        .unwrap();
    assert_eq!(stepped, whole);
    let anchors = medledger_contracts::anchors_from(&stepped).unwrap();
    let sizes: Vec<u64> = anchors.iter().map(|a| a.size).collect();
    assert_eq!(sizes, [1, 2, 3]);
    assert!(anchors.windows(2).all(|w| w[0].block < w[1].block));
}
