// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// Who is who on the authority chain: admins, staff, collectors, servers,
/// devices and patient admissions. Only admins change it. The chain node's
/// account permissioning reads `canTransact`.
///
/// A person (admin, staff member, patient) is their certificate and their
/// account together: `certificateOf` records the SHA-256 of the DER of the
/// certificate that names the account, and `revokeAccount`, the on-chain
/// half of revoking that certificate, ends every right of the account.
///
/// No personal data: a patient is a `patientRef = keccak256(salt || id)` and
/// the account the patient signs with. Short names (department, room, group,
/// rule id, ...) are `bytes32` holding UTF-8 text, left-aligned and zero-padded.
contract Registry {
    enum StaffRole {
        None,
        Doctor,
        Nurse
    }

    enum NodeKind {
        None,
        Collector,
        Server
    }

    struct Staff {
        StaffRole role;
        bool active;
        /// Bumped at each deactivation: assignments made before it lapse,
        /// even if the account is registered again.
        uint64 generation;
        bytes32 department;
    }

    struct Node {
        NodeKind kind;
        bool active;
        bytes32 location;
    }

    struct Device {
        bool registered;
        bool active;
        bytes32 group;
        bytes32 ruleId;
        /// SHA-256 of the device certificate's DER.
        bytes32 certFingerprint;
        /// The patient the device is assigned to, or zero.
        bytes32 patientRef;
        /// The patient's stay it was assigned in; a later stay does not
        /// inherit it.
        uint64 stay;
        /// The certificate `certFingerprint` replaced, and when (block
        /// time, Unix seconds): readings it signed before then still count.
        bytes32 previousCertFingerprint;
        uint64 certChangedAt;
    }

    /// What a collector or server needs to know about a device at once.
    struct DeviceBinding {
        bool registered;
        bool active;
        bytes32 certFingerprint;
        /// patientOfDevice: the admitted patient it reports for, or zero.
        bytes32 patientRef;
        /// That patient's account, or zero.
        address account;
        /// The retired certificate and when it was retired (Device).
        bytes32 previousCertFingerprint;
        uint64 certChangedAt;
    }

    struct Admission {
        bool active;
        address account;
        /// Counts admissions and transfers; carers belong to one epoch.
        uint64 epoch;
        /// Counts admissions only; device assignments belong to one stay.
        uint64 stay;
        uint64 since;
        bytes32 department;
        bytes32 floor;
        bytes32 room;
        bytes32 bed;
    }

    /// Other contracts of the set, so that a client needs only this address.
    struct Directory {
        address ruleManager;
        address consent;
        address accessLog;
        address anchor;
    }

    mapping(address => bool) public isAdmin;
    uint256 public adminCount;
    mapping(address => Staff) internal staffs;
    mapping(address => Node) internal nodes;
    mapping(bytes12 => Device) internal devices;
    mapping(bytes32 => Admission) internal admissions;
    /// patientRef => epoch => carer => the carer's generation + 1 when
    /// assigned (0: not assigned)
    mapping(bytes32 => mapping(uint64 => mapping(address => uint64))) internal carers;
    /// The patient's account => patientRef.
    mapping(address => bytes32) public patientOfAccount;
    /// A person's account => SHA-256 of their current certificate's DER
    /// (zero: none recorded, or revoked).
    mapping(address => bytes32) public certificateOf;
    /// Accounts whose certificate was revoked: they may not transact (nor
    /// act as a patient) until an admin records a new certificate.
    mapping(address => bool) public isRevoked;
    Directory internal dir;

    event AdminAdded(address indexed account, address indexed by);
    event AdminRemoved(address indexed account, address indexed by);
    event StaffRegistered(address indexed account, StaffRole role, bytes32 department);
    event StaffDeactivated(address indexed account);
    event NodeRegistered(address indexed account, NodeKind kind, bytes32 location);
    event NodeDeactivated(address indexed account);
    event DeviceRegistered(bytes12 indexed epc, bytes32 group, bytes32 ruleId, bytes32 certFingerprint);
    event DeviceCertificateChanged(bytes12 indexed epc, bytes32 certFingerprint);
    event DeviceDeactivated(bytes12 indexed epc);
    event DeviceAssigned(bytes12 indexed epc, bytes32 indexed patientRef);
    event DeviceReleased(bytes12 indexed epc, bytes32 indexed patientRef);
    event PatientAdmitted(
        bytes32 indexed patientRef,
        address account,
        uint64 epoch,
        bytes32 department,
        bytes32 floor,
        bytes32 room,
        bytes32 bed
    );
    event PatientTransferred(
        bytes32 indexed patientRef, uint64 epoch, bytes32 department, bytes32 floor, bytes32 room, bytes32 bed
    );
    event PatientDischarged(bytes32 indexed patientRef, uint64 epoch);
    event CarerAssigned(bytes32 indexed patientRef, address indexed carer, uint64 epoch);
    event CarerReleased(bytes32 indexed patientRef, address indexed carer, uint64 epoch);
    event DirectorySet(address ruleManager, address consent, address accessLog, address anchor);
    event CertificateRecorded(address indexed account, bytes32 certFingerprint);
    event AccountRevoked(address indexed account, address indexed by);

    error NotAdmin(address caller);
    error LastAdmin();
    error AlreadyAdmin(address account);
    error UnknownAdmin(address account);
    error ZeroAddress();
    error InvalidRole();
    error AlreadyRegistered(address account);
    error UnknownStaff(address account);
    error UnknownNode(address account);
    error DuplicateDevice(bytes12 epc);
    error UnknownDevice(bytes12 epc);
    error DeviceInactive(bytes12 epc);
    error DeviceInUse(bytes12 epc, bytes32 patientRef);
    error DeviceNotAssigned(bytes12 epc);
    error InvalidPatientRef();
    error AlreadyAdmitted(bytes32 patientRef);
    error NotAdmitted(bytes32 patientRef);
    error AccountInUse(address account, bytes32 patientRef);
    error AccountFixed(bytes32 patientRef, address account);
    error NotActiveStaff(address account);
    error AlreadyCarer(bytes32 patientRef, address carer);
    error NotCarer(bytes32 patientRef, address carer);
    error NoCertificate();

    modifier onlyAdmin() {
        if (!isAdmin[msg.sender]) revert NotAdmin(msg.sender);
        _;
    }

    constructor() {
        isAdmin[msg.sender] = true;
        adminCount = 1;
        emit AdminAdded(msg.sender, msg.sender);
    }

    // ---- admins

    function addAdmin(address account) external onlyAdmin {
        if (account == address(0)) revert ZeroAddress();
        if (isAdmin[account]) revert AlreadyAdmin(account);
        if (patientOfAccount[account] != bytes32(0)) revert AlreadyRegistered(account);
        isAdmin[account] = true;
        adminCount += 1;
        emit AdminAdded(account, msg.sender);
    }

    /// Removes an admin; the last one cannot be removed.
    function removeAdmin(address account) external onlyAdmin {
        if (!isAdmin[account]) revert UnknownAdmin(account);
        dropAdmin(account);
    }

    function dropAdmin(address account) internal {
        if (adminCount == 1) revert LastAdmin();
        isAdmin[account] = false;
        adminCount -= 1;
        emit AdminRemoved(account, msg.sender);
    }

    // ---- people's certificates

    /// Records the certificate that now names `account` (SHA-256 of its
    /// DER); a revoked account may transact again with its new certificate.
    function setCertificate(address account, bytes32 certFingerprint) external onlyAdmin {
        if (account == address(0)) revert ZeroAddress();
        if (certFingerprint == bytes32(0)) revert NoCertificate();
        certificateOf[account] = certFingerprint;
        isRevoked[account] = false;
        emit CertificateRecorded(account, certFingerprint);
    }

    /// The on-chain half of revoking a person's certificate: an admin is
    /// removed (not the last), a staff member deactivated (assignments
    /// lapse), and the account may not transact nor act as a patient until
    /// a new certificate is recorded. Consents already given stay as they are.
    function revokeAccount(address account) external onlyAdmin {
        if (account == address(0)) revert ZeroAddress();
        if (isAdmin[account]) dropAdmin(account);
        if (staffs[account].active) dropStaff(account);
        certificateOf[account] = bytes32(0);
        isRevoked[account] = true;
        emit AccountRevoked(account, msg.sender);
    }

    function setDirectory(Directory calldata d) external onlyAdmin {
        dir = d;
        emit DirectorySet(d.ruleManager, d.consent, d.accessLog, d.anchor);
    }

    function directory() external view returns (Directory memory) {
        return dir;
    }

    // ---- staff and nodes

    /// Registers a staff member, or updates an active one's role and department.
    function registerStaff(address account, StaffRole role, bytes32 department) external onlyAdmin {
        if (account == address(0)) revert ZeroAddress();
        if (role == StaffRole.None) revert InvalidRole();
        if (nodes[account].kind != NodeKind.None || patientOfAccount[account] != bytes32(0)) {
            revert AlreadyRegistered(account);
        }
        Staff storage st = staffs[account];
        st.role = role;
        st.active = true;
        st.department = department;
        emit StaffRegistered(account, role, department);
    }

    function deactivateStaff(address account) external onlyAdmin {
        if (!staffs[account].active) revert UnknownStaff(account);
        dropStaff(account);
    }

    function dropStaff(address account) internal {
        Staff storage st = staffs[account];
        st.active = false;
        st.generation += 1;
        emit StaffDeactivated(account);
    }

    function staff(address account) external view returns (Staff memory) {
        return staffs[account];
    }

    function isActiveStaff(address account) public view returns (bool) {
        return staffs[account].active;
    }

    /// Registers a collector or a server with where it stands.
    function registerNode(address account, NodeKind kind, bytes32 location) external onlyAdmin {
        if (account == address(0)) revert ZeroAddress();
        if (kind == NodeKind.None) revert InvalidRole();
        if (staffs[account].role != StaffRole.None || patientOfAccount[account] != bytes32(0)) {
            revert AlreadyRegistered(account);
        }
        nodes[account] = Node({kind: kind, active: true, location: location});
        emit NodeRegistered(account, kind, location);
    }

    function deactivateNode(address account) external onlyAdmin {
        if (!nodes[account].active) revert UnknownNode(account);
        nodes[account].active = false;
        emit NodeDeactivated(account);
    }

    function node(address account) external view returns (Node memory) {
        return nodes[account];
    }

    function isActiveNode(address account) external view returns (bool) {
        return nodes[account].active;
    }

    // ---- devices

    /// Registers a device by its EPC; an EPC is registered once, ever.
    function registerDevice(bytes12 epc, bytes32 group, bytes32 ruleId, bytes32 certFingerprint)
        external
        onlyAdmin
    {
        if (devices[epc].registered) revert DuplicateDevice(epc);
        devices[epc] = Device({
            registered: true,
            active: true,
            group: group,
            ruleId: ruleId,
            certFingerprint: certFingerprint,
            patientRef: bytes32(0),
            stay: 0,
            previousCertFingerprint: bytes32(0),
            certChangedAt: 0
        });
        emit DeviceRegistered(epc, group, ruleId, certFingerprint);
    }

    /// Records a renewed certificate for an active device. The certificate
    /// it replaces is retired now: what it signed before stays acceptable.
    function setDeviceCertificate(bytes12 epc, bytes32 certFingerprint) external onlyAdmin {
        Device storage d = activeDevice(epc);
        if (d.certFingerprint == certFingerprint) return;
        d.previousCertFingerprint = d.certFingerprint;
        d.certChangedAt = uint64(block.timestamp);
        d.certFingerprint = certFingerprint;
        emit DeviceCertificateChanged(epc, certFingerprint);
    }

    /// Retires a device for good (its EPC stays taken).
    function deactivateDevice(bytes12 epc) external onlyAdmin {
        Device storage d = activeDevice(epc);
        d.active = false;
        if (d.patientRef != bytes32(0)) {
            emit DeviceReleased(epc, d.patientRef);
            d.patientRef = bytes32(0);
        }
        emit DeviceDeactivated(epc);
    }

    function device(bytes12 epc) external view returns (Device memory) {
        return devices[epc];
    }

    /// Assigns an active device to an admitted patient.
    function assignDevice(bytes12 epc, bytes32 patientRef) external onlyAdmin {
        Device storage d = activeDevice(epc);
        Admission storage a = admissions[patientRef];
        if (!a.active) revert NotAdmitted(patientRef);
        bytes32 current = patientOfDevice(epc);
        if (current != bytes32(0)) revert DeviceInUse(epc, current);
        d.patientRef = patientRef;
        d.stay = a.stay;
        emit DeviceAssigned(epc, patientRef);
    }

    function releaseDevice(bytes12 epc) external onlyAdmin {
        Device storage d = devices[epc];
        bytes32 patientRef = d.patientRef;
        if (patientRef == bytes32(0)) revert DeviceNotAssigned(epc);
        d.patientRef = bytes32(0);
        emit DeviceReleased(epc, patientRef);
    }

    /// The admitted patient an active device reports for, or zero: the
    /// assignment lapses when that stay ends (discharge).
    function patientOfDevice(bytes12 epc) public view returns (bytes32) {
        Device storage d = devices[epc];
        if (!d.active) return bytes32(0);
        bytes32 patientRef = d.patientRef;
        if (patientRef == bytes32(0)) return bytes32(0);
        Admission storage a = admissions[patientRef];
        if (!a.active || a.stay != d.stay) return bytes32(0);
        return patientRef;
    }

    /// The bindings of several devices in one call.
    function deviceBindings(bytes12[] calldata epcs) external view returns (DeviceBinding[] memory out) {
        out = new DeviceBinding[](epcs.length);
        for (uint256 i = 0; i < epcs.length; i++) {
            Device storage d = devices[epcs[i]];
            bytes32 patientRef = patientOfDevice(epcs[i]);
            out[i] = DeviceBinding({
                registered: d.registered,
                active: d.active,
                certFingerprint: d.certFingerprint,
                patientRef: patientRef,
                account: patientRef == bytes32(0) ? address(0) : admissions[patientRef].account,
                previousCertFingerprint: d.previousCertFingerprint,
                certChangedAt: d.certChangedAt
            });
        }
    }

    function activeDevice(bytes12 epc) internal view returns (Device storage d) {
        d = devices[epc];
        if (!d.registered) revert UnknownDevice(epc);
        if (!d.active) revert DeviceInactive(epc);
    }

    // ---- patients

    /// Admits a patient: where they lie and who cares for them. `account` is
    /// the key the patient signs consents with; it is fixed at the first
    /// admission and stays theirs after discharge.
    function admit(
        bytes32 patientRef,
        address account,
        bytes32 department,
        bytes32 floor,
        bytes32 room,
        bytes32 bed,
        address[] calldata carerList
    ) external onlyAdmin {
        if (patientRef == bytes32(0)) revert InvalidPatientRef();
        if (account == address(0)) revert ZeroAddress();
        Admission storage a = admissions[patientRef];
        if (a.active) revert AlreadyAdmitted(patientRef);
        // A patient's account is theirs for good: an admin cannot swap it
        // to take over their consents.
        if (a.account != address(0) && a.account != account) revert AccountFixed(patientRef, a.account);
        bytes32 owner = patientOfAccount[account];
        if (owner != bytes32(0) && owner != patientRef) revert AccountInUse(account, owner);
        if (isAdmin[account] || staffs[account].role != StaffRole.None || nodes[account].kind != NodeKind.None) {
            revert AlreadyRegistered(account);
        }
        patientOfAccount[account] = patientRef;
        a.active = true;
        a.account = account;
        a.stay += 1;
        a.epoch += 1;
        a.since = uint64(block.timestamp);
        a.department = department;
        a.floor = floor;
        a.room = room;
        a.bed = bed;
        emit PatientAdmitted(patientRef, account, a.epoch, department, floor, room, bed);
        assignCarers(patientRef, a.epoch, carerList);
    }

    /// Moves an admitted patient; `carerList` replaces the assigned carers.
    function transfer(
        bytes32 patientRef,
        bytes32 department,
        bytes32 floor,
        bytes32 room,
        bytes32 bed,
        address[] calldata carerList
    ) external onlyAdmin {
        Admission storage a = admitted(patientRef);
        a.epoch += 1;
        a.department = department;
        a.floor = floor;
        a.room = room;
        a.bed = bed;
        emit PatientTransferred(patientRef, a.epoch, department, floor, room, bed);
        assignCarers(patientRef, a.epoch, carerList);
    }

    function discharge(bytes32 patientRef) external onlyAdmin {
        Admission storage a = admitted(patientRef);
        a.active = false;
        emit PatientDischarged(patientRef, a.epoch);
    }

    function assignCarer(bytes32 patientRef, address carer) external onlyAdmin {
        Admission storage a = admitted(patientRef);
        address[] memory one = new address[](1);
        one[0] = carer;
        assignCarers(patientRef, a.epoch, one);
    }

    function releaseCarer(bytes32 patientRef, address carer) external onlyAdmin {
        Admission storage a = admitted(patientRef);
        if (!isAssignedCarer(patientRef, carer)) revert NotCarer(patientRef, carer);
        carers[patientRef][a.epoch][carer] = 0;
        emit CarerReleased(patientRef, carer, a.epoch);
    }

    function admission(bytes32 patientRef) external view returns (Admission memory) {
        return admissions[patientRef];
    }

    /// The account a patient signs with (kept after discharge), or zero.
    function patientAccount(bytes32 patientRef) external view returns (address) {
        return admissions[patientRef].account;
    }

    /// Whether `carer` is an assigned carer of the patient's current
    /// admission (and has not been deactivated since being assigned).
    function isAssignedCarer(bytes32 patientRef, address carer) public view returns (bool) {
        Admission storage a = admissions[patientRef];
        return a.active && carers[patientRef][a.epoch][carer] == staffs[carer].generation + 1;
    }

    function admitted(bytes32 patientRef) internal view returns (Admission storage a) {
        a = admissions[patientRef];
        if (!a.active) revert NotAdmitted(patientRef);
    }

    function assignCarers(bytes32 patientRef, uint64 epoch, address[] memory list) internal {
        for (uint256 i = 0; i < list.length; i++) {
            address carer = list[i];
            Staff storage st = staffs[carer];
            if (!st.active) revert NotActiveStaff(carer);
            if (carers[patientRef][epoch][carer] == st.generation + 1) revert AlreadyCarer(patientRef, carer);
            carers[patientRef][epoch][carer] = st.generation + 1;
            emit CarerAssigned(patientRef, carer, epoch);
        }
    }

    // ---- permissioning

    /// Whether the chain accepts transactions from `account`: admins, active
    /// staff and nodes, and registered patients, unless revoked.
    function canTransact(address account) external view returns (bool) {
        if (isRevoked[account]) return false;
        return isAdmin[account] || staffs[account].active || nodes[account].active
            || patientOfAccount[account] != bytes32(0);
    }
}
