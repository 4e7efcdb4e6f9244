// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Registry} from "./Registry.sol";

/// Why a reading was refused. 0 allows; the rest deny. Stable: numbers are
/// never reused.
library Reason {
    uint16 internal constant ALLOW = 0;
    uint16 internal constant UNKNOWN_DEVICE = 1;
    uint16 internal constant DEVICE_INACTIVE = 2;
    uint16 internal constant NO_RULE = 3;
    uint16 internal constant RULE_FAILED = 4;
    uint16 internal constant TYPE_NOT_ALLOWED = 5;
    uint16 internal constant NO_RANGE = 6;
    uint16 internal constant BELOW_RANGE = 7;
    uint16 internal constant ABOVE_RANGE = 8;
    uint16 internal constant INVALID_INPUT = 9;
}

/// One reading as the rules see it. Values are in the data type's reporting
/// unit (the catalogue's first unit) times 1000; a waveform passes the
/// minimum and maximum of its samples, a single value passes it twice.
struct RuleInput {
    bytes12 epc;
    bytes16 code;
    int64 min;
    int64 max;
}

/// A rule contract: decides one reading of a device of `group`.
interface IRule {
    function check(bytes32 group, RuleInput calldata reading) external view returns (uint16 reason);
}

/// Holds the rule contracts, binds them to a device, room, floor or group,
/// and checks readings against the most specific one. Every change bumps
/// `version` and emits `RuleChanged`, including parameter changes inside a
/// rule contract (which report through `noteRuleUpdate`).
contract RuleManager {
    enum Scope {
        None,
        Device,
        Room,
        Floor,
        Group
    }

    Registry public immutable registry;
    uint64 public version;
    /// ruleId => rule contract
    mapping(bytes32 => address) public rules;
    /// rule contract => ruleId
    mapping(address => bytes32) public ruleIdOf;
    /// scope => key => ruleId; a device key is the EPC left-aligned.
    mapping(Scope => mapping(bytes32 => bytes32)) public bindings;

    /// `kind`: 1 rule registered, 2 rule replaced, 3 rule removed, 4 bound,
    /// 5 unbound, 6 rule parameters updated.
    event RuleChanged(
        uint64 indexed version, uint8 kind, bytes32 indexed ruleId, address rule, Scope scope, bytes32 key
    );

    error NotAdmin(address caller);
    error UnknownRule(bytes32 ruleId);
    error ZeroRuleId();
    error NotAContract(address rule);
    error RuleInUse(address rule, bytes32 ruleId);
    error InvalidScope();
    error NotBound(Scope scope, bytes32 key);

    uint8 internal constant REGISTERED = 1;
    uint8 internal constant REPLACED = 2;
    uint8 internal constant REMOVED = 3;
    uint8 internal constant BOUND = 4;
    uint8 internal constant UNBOUND = 5;
    uint8 internal constant UPDATED = 6;

    modifier onlyAdmin() {
        if (!registry.isAdmin(msg.sender)) revert NotAdmin(msg.sender);
        _;
    }

    constructor(Registry registry_) {
        registry = registry_;
    }

    /// Registers (or replaces) the contract that answers to `ruleId`.
    function registerRule(bytes32 ruleId, address rule) external onlyAdmin {
        if (ruleId == bytes32(0)) revert ZeroRuleId();
        if (rule.code.length == 0) revert NotAContract(rule);
        bytes32 owner = ruleIdOf[rule];
        if (owner != bytes32(0) && owner != ruleId) revert RuleInUse(rule, owner);
        address old = rules[ruleId];
        if (old != address(0)) delete ruleIdOf[old];
        rules[ruleId] = rule;
        ruleIdOf[rule] = ruleId;
        changed(old == address(0) ? REGISTERED : REPLACED, ruleId, rule, Scope.None, bytes32(0));
    }

    function removeRule(bytes32 ruleId) external onlyAdmin {
        address old = rules[ruleId];
        if (old == address(0)) revert UnknownRule(ruleId);
        delete rules[ruleId];
        delete ruleIdOf[old];
        changed(REMOVED, ruleId, old, Scope.None, bytes32(0));
    }

    /// Binds a registered rule to a device (key: the EPC, left-aligned), a
    /// room, a floor or a group (key: the name).
    function bind(Scope scope, bytes32 key, bytes32 ruleId) external onlyAdmin {
        if (scope == Scope.None) revert InvalidScope();
        address rule = rules[ruleId];
        if (rule == address(0)) revert UnknownRule(ruleId);
        bindings[scope][key] = ruleId;
        changed(BOUND, ruleId, rule, scope, key);
    }

    function unbind(Scope scope, bytes32 key) external onlyAdmin {
        bytes32 ruleId = bindings[scope][key];
        if (ruleId == bytes32(0)) revert NotBound(scope, key);
        delete bindings[scope][key];
        changed(UNBOUND, ruleId, rules[ruleId], scope, key);
    }

    /// Called by a rule contract when its parameters change; bumps the
    /// version if the contract is registered or is one of ours (it may be
    /// a part of a registered AllOfRule).
    function noteRuleUpdate() external {
        bytes32 ruleId = ruleIdOf[msg.sender];
        if (ruleId == bytes32(0)) {
            try AdminRule(msg.sender).manager() returns (RuleManager m) {
                if (address(m) != address(this)) return;
            } catch {
                return;
            }
        }
        changed(UPDATED, ruleId, msg.sender, Scope.None, bytes32(0));
    }

    /// The rule that governs a device, most specific first: the device's own
    /// binding, its patient's room, then floor, then its group, then the rule
    /// id in its certificate. Returns the id and scope it was found at.
    function resolve(bytes12 epc) public view returns (bytes32 ruleId, Scope scope) {
        Registry.Device memory d = registry.device(epc);
        return resolveFor(epc, d);
    }

    /// Checks a batch of readings. Returns one reason per reading (0 =
    /// allow) and the rule version the answer reflects. Consecutive readings
    /// of the same device share one lookup.
    function check(RuleInput[] calldata readings) external view returns (uint16[] memory reasons, uint64 ver) {
        reasons = new uint16[](readings.length);
        bytes12 lastEpc;
        uint16 deviceReason;
        bytes32 group;
        IRule rule;
        for (uint256 i = 0; i < readings.length; i++) {
            RuleInput calldata r = readings[i];
            if (i == 0 || r.epc != lastEpc) {
                lastEpc = r.epc;
                (deviceReason, group, rule) = lookup(r.epc);
            }
            if (deviceReason != Reason.ALLOW) {
                reasons[i] = deviceReason;
                continue;
            }
            reasons[i] = ask(rule, group, r);
        }
        return (reasons, version);
    }

    /// One rule's answer; a rule that reverts, answers nothing or answers
    /// out of range fails the reading, not the batch.
    function ask(IRule rule, bytes32 group, RuleInput calldata r) internal view returns (uint16) {
        (bool ok, bytes memory answer) = address(rule).staticcall(abi.encodeCall(IRule.check, (group, r)));
        if (!ok || answer.length != 32) return Reason.RULE_FAILED;
        uint256 reason = abi.decode(answer, (uint256));
        return reason > type(uint16).max ? Reason.RULE_FAILED : uint16(reason);
    }

    function lookup(bytes12 epc) internal view returns (uint16 reason, bytes32 group, IRule rule) {
        Registry.Device memory d = registry.device(epc);
        if (!d.registered) return (Reason.UNKNOWN_DEVICE, bytes32(0), IRule(address(0)));
        if (!d.active) return (Reason.DEVICE_INACTIVE, bytes32(0), IRule(address(0)));
        (bytes32 ruleId,) = resolveFor(epc, d);
        address at = rules[ruleId];
        if (at == address(0)) return (Reason.NO_RULE, d.group, IRule(address(0)));
        return (Reason.ALLOW, d.group, IRule(at));
    }

    function resolveFor(bytes12 epc, Registry.Device memory d) internal view returns (bytes32, Scope) {
        bytes32 id = bindings[Scope.Device][bytes32(epc)];
        if (id != bytes32(0)) return (id, Scope.Device);
        bytes32 patientRef = registry.patientOfDevice(epc);
        if (patientRef != bytes32(0)) {
            Registry.Admission memory a = registry.admission(patientRef);
            id = bindings[Scope.Room][a.room];
            if (id != bytes32(0)) return (id, Scope.Room);
            id = bindings[Scope.Floor][a.floor];
            if (id != bytes32(0)) return (id, Scope.Floor);
        }
        id = bindings[Scope.Group][d.group];
        if (id != bytes32(0)) return (id, Scope.Group);
        if (rules[d.ruleId] != address(0)) return (d.ruleId, Scope.None);
        return (bytes32(0), Scope.None);
    }

    function changed(uint8 kind, bytes32 ruleId, address rule, Scope scope, bytes32 key) internal {
        version += 1;
        emit RuleChanged(version, kind, ruleId, rule, scope, key);
    }
}

/// Base of the shipped rules: admins of the Registry configure them, and
/// every change is reported to the RuleManager.
abstract contract AdminRule is IRule {
    RuleManager public immutable manager;

    error NotAdmin(address caller);

    constructor(RuleManager manager_) {
        manager = manager_;
    }

    modifier onlyAdmin() {
        if (!manager.registry().isAdmin(msg.sender)) revert NotAdmin(msg.sender);
        _;
        manager.noteRuleUpdate();
    }
}

/// Which data types (LOINC codes) each device group may send.
contract AllowedTypesRule is AdminRule {
    /// group => code => allowed
    mapping(bytes32 => mapping(bytes16 => bool)) public allowed;

    event TypesAllowed(bytes32 indexed group, bytes16[] codes, bool allowed);

    constructor(RuleManager manager_) AdminRule(manager_) {}

    function setAllowed(bytes32 group, bytes16[] calldata codes, bool allow) external onlyAdmin {
        for (uint256 i = 0; i < codes.length; i++) {
            allowed[group][codes[i]] = allow;
        }
        emit TypesAllowed(group, codes, allow);
    }

    function check(bytes32 group, RuleInput calldata r) external view returns (uint16) {
        return allowed[group][r.code] ? Reason.ALLOW : Reason.TYPE_NOT_ALLOWED;
    }
}

/// The plausible range of each data type; a type without a range is refused.
contract ValueRangeRule is AdminRule {
    struct Range {
        bool set;
        int64 min;
        int64 max;
    }

    mapping(bytes16 => Range) public ranges;

    event RangeSet(bytes16 indexed code, int64 min, int64 max);
    event RangeCleared(bytes16 indexed code);

    error InvalidRange(int64 min, int64 max);
    error LengthMismatch();

    constructor(RuleManager manager_) AdminRule(manager_) {}

    function setRange(bytes16 code, int64 min, int64 max) external onlyAdmin {
        put(code, min, max);
    }

    /// Sets several ranges at once: `codes[i]` gets `mins[i]..=maxs[i]`.
    function setRanges(bytes16[] calldata codes, int64[] calldata mins, int64[] calldata maxs)
        external
        onlyAdmin
    {
        if (codes.length != mins.length || codes.length != maxs.length) revert LengthMismatch();
        for (uint256 i = 0; i < codes.length; i++) {
            put(codes[i], mins[i], maxs[i]);
        }
    }

    function put(bytes16 code, int64 min, int64 max) internal {
        if (min > max) revert InvalidRange(min, max);
        ranges[code] = Range({set: true, min: min, max: max});
        emit RangeSet(code, min, max);
    }

    function clearRange(bytes16 code) external onlyAdmin {
        delete ranges[code];
        emit RangeCleared(code);
    }

    function check(bytes32, RuleInput calldata r) external view returns (uint16) {
        if (r.min > r.max) return Reason.INVALID_INPUT;
        Range memory range = ranges[r.code];
        if (!range.set) return Reason.NO_RANGE;
        if (r.min < range.min) return Reason.BELOW_RANGE;
        if (r.max > range.max) return Reason.ABOVE_RANGE;
        return Reason.ALLOW;
    }
}

/// Allows a reading only if every one of its rules does; answers with the
/// first refusal.
contract AllOfRule is IRule {
    IRule[] internal parts;

    error NoParts();

    constructor(IRule[] memory parts_) {
        if (parts_.length == 0) revert NoParts();
        parts = parts_;
    }

    function rules() external view returns (IRule[] memory) {
        return parts;
    }

    function check(bytes32 group, RuleInput calldata r) external view returns (uint16) {
        for (uint256 i = 0; i < parts.length; i++) {
            uint16 reason = parts[i].check(group, r);
            if (reason != Reason.ALLOW) return reason;
        }
        return Reason.ALLOW;
    }
}
