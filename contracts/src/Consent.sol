// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Registry} from "./Registry.sol";
import {PurposeOfUse} from "./PurposeOfUse.sol";

/// A patient's consents, changed only by the patient's own account (the one
/// the Registry holds for the patientRef), but while a set deployed for a
/// chain recovery is `restoring` (below).
///
/// A scope is a bit set over the data type catalogue (bit i = the i-th type
/// of `medledger-protocol`'s catalogue; all ones = every type, including
/// types added later). A purpose is short UTF-8 text in a `bytes32`; a grant
/// with a zero purpose serves any purpose.
///
/// A set deployed to replace a compromised chain (`medledger chain
/// recover`) starts `restoring`: until an admin closes that for good, admins
/// may copy the live grants and opt-outs of the retired chain, each linked
/// to its old id. Nobody can restore anything afterwards.
contract Consent {
    struct Grant {
        bytes32 patientRef;
        /// The staff account granted, or zero for a grant to a role.
        address grantee;
        /// The staff role granted, or None for a grant to an account.
        Registry.StaffRole role;
        bool revoked;
        uint64 grantedAt;
        uint64 expiry;
        uint256 scope;
        bytes32 purpose;
    }

    /// At most this many live grants per patient; expired ones make room.
    uint256 public constant MAX_LIVE = 64;

    Registry public immutable registry;
    /// Grant ids start at 1.
    Grant[] internal grants;
    mapping(bytes32 => uint256[]) internal live;
    /// Whether the patient refused default access by assigned carers.
    mapping(bytes32 => bool) public optedOut;
    /// Whether admins may still restore grants from a retired chain.
    bool public restoring;

    event ConsentGranted(
        uint256 indexed id,
        bytes32 indexed patientRef,
        address indexed grantee,
        Registry.StaffRole role,
        uint256 scope,
        bytes32 purpose,
        uint64 expiry
    );
    event ConsentRevoked(uint256 indexed id, bytes32 indexed patientRef);
    event OptOutChanged(bytes32 indexed patientRef, bool optedOut);
    /// Grant `id` is grant `retiredId` of the retired chain, restored.
    event ConsentRestored(uint256 indexed id, uint256 indexed retiredId, bytes32 indexed patientRef);
    event RestoreClosed(address by);

    error NotPatient(address caller, bytes32 patientRef);
    error EmptyScope();
    error ExpiryNotInFuture(uint64 expiry);
    error GranteeOrRole();
    error TooManyGrants(bytes32 patientRef);
    error UnknownGrant(uint256 id);
    error AlreadyRevoked(uint256 id);
    error UnknownPurpose(bytes32 purpose);
    error NotAdmin(address caller);
    error NotRestoring();

    modifier onlyPatient(bytes32 patientRef) {
        if (
            patientRef == bytes32(0) || registry.patientAccount(patientRef) != msg.sender
                || registry.isRevoked(msg.sender)
        ) {
            revert NotPatient(msg.sender, patientRef);
        }
        _;
    }

    modifier onlyRestoringAdmin() {
        if (!registry.isAdmin(msg.sender)) revert NotAdmin(msg.sender);
        if (!restoring) revert NotRestoring();
        _;
    }

    constructor(Registry registry_, bool restoring_) {
        registry = registry_;
        restoring = restoring_;
    }

    /// Grants `grantee` (an account) or `role` (every active staff member of
    /// it), exactly one of the two, access to `scope` for `purpose` (a
    /// PurposeOfUse code, or zero for any) until `expiry` (Unix seconds).
    /// Returns the grant id.
    function grant(
        bytes32 patientRef,
        address grantee,
        Registry.StaffRole role,
        uint256 scope,
        bytes32 purpose,
        uint64 expiry
    ) external onlyPatient(patientRef) returns (uint256 id) {
        if (purpose != bytes32(0) && !PurposeOfUse.isCode(purpose)) revert UnknownPurpose(purpose);
        return add(patientRef, grantee, role, scope, purpose, expiry);
    }

    /// Copies grant `retiredId` of the retired chain (still live there),
    /// while `restoring`.
    function restoreGrant(
        uint256 retiredId,
        bytes32 patientRef,
        address grantee,
        Registry.StaffRole role,
        uint256 scope,
        bytes32 purpose,
        uint64 expiry
    ) external onlyRestoringAdmin returns (uint256 id) {
        if (registry.patientAccount(patientRef) == address(0)) revert NotPatient(address(0), patientRef);
        id = add(patientRef, grantee, role, scope, purpose, expiry);
        emit ConsentRestored(id, retiredId, patientRef);
    }

    /// Copies a patient's opt-out of the retired chain, while `restoring`
    /// (only ever on: nothing restored takes a patient's choice away).
    function restoreOptOut(bytes32 patientRef) external onlyRestoringAdmin {
        if (registry.patientAccount(patientRef) == address(0)) revert NotPatient(address(0), patientRef);
        optedOut[patientRef] = true;
        emit OptOutChanged(patientRef, true);
    }

    /// Ends restoring for good.
    function closeRestore() external onlyRestoringAdmin {
        restoring = false;
        emit RestoreClosed(msg.sender);
    }

    function add(
        bytes32 patientRef,
        address grantee,
        Registry.StaffRole role,
        uint256 scope,
        bytes32 purpose,
        uint64 expiry
    ) internal returns (uint256 id) {
        if ((grantee == address(0)) == (role == Registry.StaffRole.None)) revert GranteeOrRole();
        if (scope == 0) revert EmptyScope();
        if (expiry <= block.timestamp) revert ExpiryNotInFuture(expiry);
        uint256[] storage ids = live[patientRef];
        dropExpired(ids);
        if (ids.length >= MAX_LIVE) revert TooManyGrants(patientRef);
        grants.push(
            Grant({
                patientRef: patientRef,
                grantee: grantee,
                role: role,
                revoked: false,
                grantedAt: uint64(block.timestamp),
                expiry: expiry,
                scope: scope,
                purpose: purpose
            })
        );
        id = grants.length;
        ids.push(id);
        emit ConsentGranted(id, patientRef, grantee, role, scope, purpose, expiry);
    }

    function revoke(bytes32 patientRef, uint256 id) external onlyPatient(patientRef) {
        if (id == 0 || id > grants.length || grants[id - 1].patientRef != patientRef) revert UnknownGrant(id);
        Grant storage g = grants[id - 1];
        if (g.revoked) revert AlreadyRevoked(id);
        g.revoked = true;
        uint256[] storage ids = live[patientRef];
        for (uint256 i = 0; i < ids.length; i++) {
            if (ids[i] == id) {
                ids[i] = ids[ids.length - 1];
                ids.pop();
                break;
            }
        }
        emit ConsentRevoked(id, patientRef);
    }

    /// Refuses (or restores) default access by the patient's assigned carers.
    function setOptOut(bytes32 patientRef, bool optOut) external onlyPatient(patientRef) {
        optedOut[patientRef] = optOut;
        emit OptOutChanged(patientRef, optOut);
    }

    function grantOf(uint256 id) external view returns (Grant memory) {
        if (id == 0 || id > grants.length) revert UnknownGrant(id);
        return grants[id - 1];
    }

    /// The patient's grants that are neither revoked nor expired.
    function liveGrants(bytes32 patientRef) external view returns (uint256[] memory out) {
        uint256[] storage ids = live[patientRef];
        uint256 n = 0;
        out = new uint256[](ids.length);
        for (uint256 i = 0; i < ids.length; i++) {
            if (grants[ids[i] - 1].expiry > block.timestamp) out[n++] = ids[i];
        }
        assembly {
            mstore(out, n)
        }
    }

    /// The first live grant letting `requester` (of `role`) see `scope` for
    /// `purpose`, or 0.
    function covering(bytes32 patientRef, address requester, Registry.StaffRole role, uint256 scope, bytes32 purpose)
        external
        view
        returns (uint256)
    {
        uint256[] storage ids = live[patientRef];
        for (uint256 i = 0; i < ids.length; i++) {
            if (covers(grants[ids[i] - 1], requester, role, scope, purpose)) return ids[i];
        }
        return 0;
    }

    /// Whether grant `id` still lets `requester` see `scope` for `purpose`.
    function stillCovers(uint256 id, address requester, Registry.StaffRole role, uint256 scope, bytes32 purpose)
        external
        view
        returns (bool)
    {
        if (id == 0 || id > grants.length) return false;
        Grant storage g = grants[id - 1];
        return !g.revoked && covers(g, requester, role, scope, purpose);
    }

    function covers(Grant storage g, address requester, Registry.StaffRole role, uint256 scope, bytes32 purpose)
        internal
        view
        returns (bool)
    {
        if (g.expiry <= block.timestamp) return false;
        if (g.grantee != address(0) ? g.grantee != requester : g.role != role) return false;
        if (g.purpose != bytes32(0) && g.purpose != purpose) return false;
        return scope & ~g.scope == 0;
    }

    function dropExpired(uint256[] storage ids) internal {
        uint256 i = 0;
        while (i < ids.length) {
            if (grants[ids[i] - 1].expiry <= block.timestamp) {
                ids[i] = ids[ids.length - 1];
                ids.pop();
            } else {
                i++;
            }
        }
    }
}
