// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Registry} from "./Registry.sol";

/// Merkle roots that collectors and servers commit to: batches of readings
/// and patient-ledger checkpoints. Anyone reads them; nothing is changed.
///
/// Kinds: 1 a collector's batch (collectors only); servers only: 2 a
/// server's batch, 3 a patient-ledger checkpoint (`first` = patientRef,
/// `last` = the checkpoint's hash), 4 an erasure (`first` = patientRef,
/// the tombstone's root) and 5 a chain recovery (`root` = the retired
/// chain's last trusted block hash). Other non-zero kinds are open to any
/// active node. `first` and `last` name the first and last item covered, in
/// the kind's own terms.
contract Anchor {
    struct Record {
        address by;
        uint8 kind;
        uint64 time;
        uint64 count;
        bytes32 root;
        bytes32 first;
        bytes32 last;
    }

    struct Input {
        uint8 kind;
        uint64 count;
        bytes32 root;
        bytes32 first;
        bytes32 last;
    }

    Registry public immutable registry;
    /// Anchor ids start at 1.
    Record[] internal records;

    event Anchored(
        uint256 indexed id,
        uint8 indexed kind,
        bytes32 indexed first,
        address by,
        bytes32 root,
        uint64 count,
        bytes32 last
    );

    error NotANode(address caller);
    error WrongNodeKind(uint8 kind, address caller);
    error InvalidAnchor();
    error UnknownAnchor(uint256 id);

    constructor(Registry registry_) {
        registry = registry_;
    }

    /// Anchors one root; only active collectors and servers may.
    function anchor(uint8 kind, bytes32 root, uint64 count, bytes32 first, bytes32 last)
        external
        returns (uint256)
    {
        return push(sender(), Input({kind: kind, count: count, root: root, first: first, last: last}));
    }

    /// Anchors several roots in one transaction; returns the first id.
    function anchorMany(Input[] calldata inputs) external returns (uint256 firstId) {
        if (inputs.length == 0) revert InvalidAnchor();
        Registry.NodeKind kind = sender();
        firstId = records.length + 1;
        for (uint256 i = 0; i < inputs.length; i++) {
            push(kind, inputs[i]);
        }
    }

    function anchorCount() external view returns (uint256) {
        return records.length;
    }

    function record(uint256 id) external view returns (Record memory) {
        if (id == 0 || id > records.length) revert UnknownAnchor(id);
        return records[id - 1];
    }

    /// The caller's node kind; only active nodes anchor.
    function sender() internal view returns (Registry.NodeKind) {
        Registry.Node memory n = registry.node(msg.sender);
        if (!n.active) revert NotANode(msg.sender);
        return n.kind;
    }

    function push(Registry.NodeKind by, Input memory input) internal returns (uint256 id) {
        if (input.kind == 0 || input.root == bytes32(0) || input.count == 0) revert InvalidAnchor();
        Registry.NodeKind needed = input.kind == 1
            ? Registry.NodeKind.Collector
            : (input.kind <= 5 ? Registry.NodeKind.Server : Registry.NodeKind.None);
        if (needed != Registry.NodeKind.None && by != needed) revert WrongNodeKind(input.kind, msg.sender);
        records.push(
            Record({
                by: msg.sender,
                kind: input.kind,
                time: uint64(block.timestamp),
                count: input.count,
                root: input.root,
                first: input.first,
                last: input.last
            })
        );
        id = records.length;
        emit Anchored(id, input.kind, input.first, msg.sender, input.root, input.count, input.last);
    }
}
