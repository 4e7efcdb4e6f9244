// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// A minimal contract for testing the chain node: storage, events, reverts.
contract Counter {
    uint256 public count;
    address public owner;

    event Incremented(address indexed by, uint256 count);

    error NotOwner(address caller);

    constructor(uint256 start) {
        count = start;
        owner = msg.sender;
    }

    function increment() external returns (uint256) {
        count += 1;
        emit Incremented(msg.sender, count);
        return count;
    }

    function add(uint256 n) external {
        require(n <= 1000, "too large");
        count += n;
        emit Incremented(msg.sender, count);
    }

    function reset() external {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        count = 0;
    }
}
