// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Registry} from "./Registry.sol";
import {Consent} from "./Consent.sol";
import {PurposeOfUse} from "./PurposeOfUse.sol";

/// Every staff request for a patient's data, decided and kept for good:
/// nothing here can be changed or deleted. Also break-glass access with its
/// review queue, and annotations of readings.
contract AccessLog {
    enum Decision {
        None,
        Granted,
        Denied
    }

    /// Why a request was granted.
    enum Basis {
        None,
        Carer,
        Consent,
        Emergency
    }

    enum AnnotationKind {
        None,
        Annotation,
        Correction
    }

    /// Why a request was denied. Stable: numbers are never reused.
    uint8 public constant DENY_NOT_STAFF = 1;
    uint8 public constant DENY_UNKNOWN_PATIENT = 2;
    uint8 public constant DENY_OPTED_OUT = 3;
    uint8 public constant DENY_NO_CONSENT = 4;
    uint8 public constant DENY_NOT_DOCTOR = 5;

    struct Request {
        address requester;
        Decision decision;
        Basis basis;
        uint8 denyReason;
        bool reviewed;
        uint64 time;
        uint64 expiresAt;
        bytes32 patientRef;
        uint256 scope;
        bytes32 purpose;
        /// The consent grant relied on, if any.
        uint256 grantId;
        /// Break-glass only: the SHA-256 of the justification.
        bytes32 emergencyReason;
    }

    Registry public immutable registry;
    Consent public immutable consent;
    /// How long a granted request stays usable, in seconds.
    uint64 public accessTtl = 8 hours;
    /// Request ids start at 1.
    Request[] internal requests;
    /// Break-glass requests not yet reviewed.
    uint256[] internal openReviews;
    mapping(uint256 => uint256) internal reviewSlot;
    uint256 public annotationCount;

    event AccessGranted(
        uint256 indexed id,
        bytes32 indexed patientRef,
        address indexed requester,
        uint256 scope,
        bytes32 purpose,
        Basis basis,
        uint256 grantId,
        uint64 expiresAt
    );
    event AccessDenied(
        uint256 indexed id,
        bytes32 indexed patientRef,
        address indexed requester,
        uint256 scope,
        bytes32 purpose,
        uint8 reason
    );
    event BreakGlass(uint256 indexed id, bytes32 indexed patientRef, address indexed requester, bytes32 reason);
    event ReviewClosed(uint256 indexed id, address indexed reviewer, bytes32 outcome);
    event Annotated(
        uint256 indexed id,
        bytes32 indexed patientRef,
        address indexed author,
        uint256 requestId,
        bytes32 readingRef,
        AnnotationKind kind,
        bytes32 contentHash
    );
    event AccessTtlChanged(uint64 ttl);

    error NotAdmin(address caller);
    error EmptyScope();
    error MissingPurpose();
    error UnknownPurpose(bytes32 purpose);
    error MissingReason();
    error UnknownRequest(uint256 id);
    error NotUnderReview(uint256 id);
    error OwnReview(uint256 id);
    error RequestNotUsable(uint256 id);
    error InvalidAnnotation();
    error InvalidTtl();

    constructor(Registry registry_, Consent consent_) {
        registry = registry_;
        consent = consent_;
    }

    /// Asks for `scope` of a patient's data for `purpose`, a PurposeOfUse
    /// code (`TREAT`, ...). Granted for active
    /// staff who are an assigned carer of the current admission (unless the
    /// patient opted out) or hold a live consent covering the scope; denied
    /// otherwise. Either way recorded; returns the request id.
    function requestAccess(bytes32 patientRef, uint256 scope, bytes32 purpose) external returns (uint256 id) {
        if (scope == 0) revert EmptyScope();
        if (purpose == bytes32(0)) revert MissingPurpose();
        if (!PurposeOfUse.isCode(purpose)) revert UnknownPurpose(purpose);
        Registry.Staff memory s = registry.staff(msg.sender);
        uint8 deny;
        Basis basis;
        uint256 grantId;
        if (!s.active) {
            deny = DENY_NOT_STAFF;
        } else if (registry.patientAccount(patientRef) == address(0)) {
            deny = DENY_UNKNOWN_PATIENT;
        } else {
            bool carer = registry.isAssignedCarer(patientRef, msg.sender);
            bool optedOut = consent.optedOut(patientRef);
            if (carer && !optedOut) {
                basis = Basis.Carer;
            } else {
                grantId = consent.covering(patientRef, msg.sender, s.role, scope, purpose);
                if (grantId != 0) basis = Basis.Consent;
                else deny = carer ? DENY_OPTED_OUT : DENY_NO_CONSENT;
            }
        }
        uint64 expiresAt;
        if (deny == 0) {
            expiresAt = uint64(block.timestamp) + accessTtl;
            if (basis == Basis.Consent) {
                uint64 until = consent.grantOf(grantId).expiry;
                if (until < expiresAt) expiresAt = until;
            }
        }
        id = record(patientRef, scope, purpose, deny, basis, grantId, expiresAt, bytes32(0));
    }

    /// Emergency access: an active doctor gives `reason`, the SHA-256 of
    /// their justification (its text goes sealed to the server, never on
    /// chain), and is granted whatever the consents; the request is flagged
    /// and queued for review. Anyone else is denied (and recorded).
    function breakGlass(bytes32 patientRef, uint256 scope, bytes32 reason) external returns (uint256 id) {
        if (scope == 0) revert EmptyScope();
        if (reason == bytes32(0)) revert MissingReason();
        Registry.Staff memory s = registry.staff(msg.sender);
        uint8 deny;
        if (!s.active) deny = DENY_NOT_STAFF;
        else if (s.role != Registry.StaffRole.Doctor) deny = DENY_NOT_DOCTOR;
        else if (registry.patientAccount(patientRef) == address(0)) deny = DENY_UNKNOWN_PATIENT;
        uint64 expiresAt = deny == 0 ? uint64(block.timestamp) + accessTtl : 0;
        bytes32 purpose = "ETREAT";
        id = record(patientRef, scope, purpose, deny, deny == 0 ? Basis.Emergency : Basis.None, 0, expiresAt, reason);
        emit BreakGlass(id, patientRef, msg.sender, reason);
        if (deny == 0) {
            reviewSlot[id] = openReviews.length;
            openReviews.push(id);
        }
    }

    /// Whether `code` is a purpose this contract takes (PurposeOfUse).
    function isPurpose(bytes32 code) external pure returns (bool) {
        return PurposeOfUse.isCode(code);
    }

    /// An admin closes the review of a break-glass request with an outcome.
    function closeReview(uint256 id, bytes32 outcome) external {
        if (!registry.isAdmin(msg.sender)) revert NotAdmin(msg.sender);
        Request storage r = request(id);
        if (r.basis != Basis.Emergency || r.reviewed) revert NotUnderReview(id);
        if (r.requester == msg.sender) revert OwnReview(id);
        r.reviewed = true;
        uint256 slot = reviewSlot[id];
        uint256 last = openReviews[openReviews.length - 1];
        openReviews[slot] = last;
        reviewSlot[last] = slot;
        openReviews.pop();
        delete reviewSlot[id];
        emit ReviewClosed(id, msg.sender, outcome);
    }

    function pendingReviewCount() external view returns (uint256) {
        return openReviews.length;
    }

    /// Up to `limit` break-glass requests awaiting review, from `offset`.
    function pendingReviews(uint256 offset, uint256 limit) external view returns (uint256[] memory out) {
        uint256 n = openReviews.length;
        uint256 end = offset >= n ? offset : (n - offset > limit ? offset + limit : n);
        out = new uint256[](end - offset);
        for (uint256 i = offset; i < end; i++) {
            out[i - offset] = openReviews[i];
        }
    }

    /// Appends an annotation or a correction to a reading (never an
    /// overwrite). The author must hold a usable request for the patient;
    /// the content stays off-chain, named by its hash.
    function annotate(uint256 requestId, bytes32 readingRef, AnnotationKind kind, bytes32 contentHash)
        external
        returns (uint256 id)
    {
        if (kind == AnnotationKind.None || readingRef == bytes32(0) || contentHash == bytes32(0)) {
            revert InvalidAnnotation();
        }
        if (!usable(requestId, msg.sender)) revert RequestNotUsable(requestId);
        id = ++annotationCount;
        emit Annotated(
            id, requests[requestId - 1].patientRef, msg.sender, requestId, readingRef, kind, contentHash
        );
    }

    function setAccessTtl(uint64 ttl) external {
        if (!registry.isAdmin(msg.sender)) revert NotAdmin(msg.sender);
        if (ttl == 0) revert InvalidTtl();
        accessTtl = ttl;
        emit AccessTtlChanged(ttl);
    }

    function requestCount() external view returns (uint256) {
        return requests.length;
    }

    function requestOf(uint256 id) external view returns (Request memory) {
        return request(id);
    }

    /// Whether request `id` lets `requester` read now: granted to them, not
    /// expired, and its basis still holds (the consent not revoked, the
    /// carer still assigned and not opted out). Break-glass holds until it
    /// expires.
    function usable(uint256 id, address requester) public view returns (bool) {
        if (id == 0 || id > requests.length) return false;
        Request storage r = requests[id - 1];
        if (r.decision != Decision.Granted || r.requester != requester) return false;
        if (r.expiresAt <= block.timestamp || !registry.isActiveStaff(requester)) return false;
        if (r.basis == Basis.Carer) {
            return registry.isAssignedCarer(r.patientRef, requester) && !consent.optedOut(r.patientRef);
        }
        if (r.basis == Basis.Consent) {
            Registry.StaffRole role = registry.staff(requester).role;
            return consent.stillCovers(r.grantId, requester, role, r.scope, r.purpose);
        }
        return true;
    }

    function request(uint256 id) internal view returns (Request storage) {
        if (id == 0 || id > requests.length) revert UnknownRequest(id);
        return requests[id - 1];
    }

    function record(
        bytes32 patientRef,
        uint256 scope,
        bytes32 purpose,
        uint8 deny,
        Basis basis,
        uint256 grantId,
        uint64 expiresAt,
        bytes32 emergencyReason
    ) internal returns (uint256 id) {
        requests.push(
            Request({
                requester: msg.sender,
                decision: deny == 0 ? Decision.Granted : Decision.Denied,
                basis: basis,
                denyReason: deny,
                reviewed: false,
                time: uint64(block.timestamp),
                expiresAt: expiresAt,
                patientRef: patientRef,
                scope: scope,
                purpose: purpose,
                grantId: grantId,
                emergencyReason: emergencyReason
            })
        );
        id = requests.length;
        if (deny == 0) emit AccessGranted(id, patientRef, msg.sender, scope, purpose, basis, grantId, expiresAt);
        else emit AccessDenied(id, patientRef, msg.sender, scope, purpose, deny);
    }
}
