//! `medledger admin`: every Registry and RuleManager action, signed with an
//! admin's chain key, against any Ethereum JSON-RPC URL.

use crate::rpc::{self, TlsArgs};
use alloy::primitives::{Address, B256};
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::TransactionReceipt;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use medledger_contracts::bindings::{AllOfRule, AllowedTypesRule, ValueRangeRule};
use medledger_contracts::{
    Contracts, Scope, StaffRole, code_key, decode_event, epc_bytes, epc_key, milli, send,
    short_text, signing_provider, text_of,
};
use medledger_pki::{Details, Epc, Identity};
use medledger_protocol::catalogue::{DataType, data_type_by_name};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub(crate) struct AdminArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: AdminCommand,
}

/// Where the chain is and who signs.
#[derive(Debug, Args)]
pub(crate) struct Connection {
    /// The chain's JSON-RPC URL.
    #[arg(
        long,
        env = "MEDLEDGER_RPC",
        default_value = "http://127.0.0.1:8545",
        global = true
    )]
    rpc: String,
    /// The file holding the signer's chain key (hex), e.g. the `PREFIX.eth.key`
    /// that `medledger ca issue` writes.
    #[arg(long, env = "MEDLEDGER_KEY", global = true)]
    key: Option<PathBuf>,
    /// The Registry's address (printed by `admin deploy`).
    #[arg(long, env = "MEDLEDGER_REGISTRY", global = true)]
    registry: Option<Address>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Deploy and wire the whole contract set; the signer becomes its first admin.
    Deploy,
    /// Show the deployment: addresses, admins count, rule version.
    Show,
    /// Add or remove admins.
    #[command(subcommand)]
    Admins(AdminsCommand),
    /// Register and deactivate staff.
    #[command(subcommand)]
    Staff(StaffCommand),
    /// Register and deactivate collectors and servers.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Register, assign, release and retire devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Admit, transfer and discharge patients; assign their carers.
    #[command(subcommand)]
    Patient(PatientCommand),
    /// People's certificates: record one, revoke an account.
    #[command(subcommand)]
    Person(PersonCommand),
    /// Deploy, register and bind rule contracts; configure the shipped rules.
    #[command(subcommand)]
    Rule(RuleCommand),
}

#[derive(Debug, Subcommand)]
enum AdminsCommand {
    /// Make an account an admin.
    Add { account: Address },
    /// Remove an admin (the last one cannot be removed).
    Remove { account: Address },
}

#[derive(Debug, Subcommand)]
enum StaffCommand {
    /// Register a staff member (or change an active one's role or department).
    Register {
        account: Address,
        #[arg(long)]
        role: StaffRole,
        #[arg(long)]
        department: String,
    },
    /// Deactivate a staff member: no more access, no more transactions.
    Deactivate { account: Address },
    /// Show a staff member.
    Show { account: Address },
}

#[derive(Debug, Subcommand)]
enum PersonCommand {
    /// Record the certificate of an admin, staff member or patient: the
    /// account it names may then sign in to the portal with its key.
    Certificate {
        /// The person's certificate (PEM), e.g. `PREFIX.crt`.
        #[arg(long)]
        cert: PathBuf,
    },
    /// End every on-chain right of an account whose certificate was
    /// revoked (an admin is removed, staff deactivated, a patient may no
    /// longer transact) until a new certificate is recorded.
    Revoke { account: Address },
    /// Show an account's recorded certificate.
    Show { account: Address },
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum NodeKind {
    Collector,
    Server,
}

impl NodeKind {
    fn name(self) -> &'static str {
        match self {
            NodeKind::Collector => "collector",
            NodeKind::Server => "server",
        }
    }
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Register a collector or a server.
    Register {
        /// Its account (or give `--cert`).
        #[arg(required_unless_present = "cert", conflicts_with = "cert")]
        account: Option<Address>,
        /// Its certificate: the account, and a collector's location, are
        /// read from it.
        #[arg(long)]
        cert: Option<PathBuf>,
        #[arg(long)]
        kind: NodeKind,
        /// Where it stands, e.g. `cardiology/2/A`; with `--cert`, it must
        /// be the certificate's.
        #[arg(long)]
        location: Option<String>,
    },
    /// Deactivate a collector or server.
    Deactivate { account: Address },
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Register a device from its certificate (EPC, group, rule id and
    /// fingerprint are read from it).
    Register {
        /// The device certificate (PEM), e.g. `PREFIX.crt`.
        #[arg(long)]
        cert: PathBuf,
    },
    /// Record a renewed certificate for a device.
    Certificate {
        #[arg(long)]
        cert: PathBuf,
    },
    /// Assign a device to an admitted patient.
    Assign {
        #[arg(long)]
        epc: Epc,
        #[arg(long)]
        patient: B256,
    },
    /// Release a device from its patient.
    Release {
        #[arg(long)]
        epc: Epc,
    },
    /// Retire a device for good.
    Deactivate {
        #[arg(long)]
        epc: Epc,
    },
    /// Show a device, its patient and the rule that governs it.
    Show {
        #[arg(long)]
        epc: Epc,
    },
}

/// Where a patient lies.
#[derive(Debug, Args)]
struct Place {
    #[arg(long)]
    department: String,
    #[arg(long, default_value = "")]
    floor: String,
    #[arg(long)]
    room: String,
    #[arg(long, default_value = "")]
    bed: String,
    /// An assigned carer (active staff); repeat.
    #[arg(long = "carer")]
    carers: Vec<Address>,
}

#[derive(Debug, Subcommand)]
enum PatientCommand {
    /// Admit a patient.
    Admit {
        /// The patientRef: keccak256(salt || patient id), 32 bytes hex.
        #[arg(long)]
        patient: B256,
        /// The account the patient signs consents with.
        #[arg(long)]
        account: Address,
        #[command(flatten)]
        place: Place,
    },
    /// Move a patient; the given carers replace the assigned ones.
    Transfer {
        #[arg(long)]
        patient: B256,
        #[command(flatten)]
        place: Place,
    },
    /// Discharge a patient.
    Discharge {
        #[arg(long)]
        patient: B256,
    },
    /// Assign one more carer to the current admission.
    AssignCarer {
        #[arg(long)]
        patient: B256,
        #[arg(long)]
        carer: Address,
    },
    /// Release a carer from the current admission.
    ReleaseCarer {
        #[arg(long)]
        patient: B256,
        #[arg(long)]
        carer: Address,
    },
    /// Show a patient's admission.
    Show {
        #[arg(long)]
        patient: B256,
    },
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum RuleKind {
    /// Which data types each device group may send.
    AllowedTypes,
    /// The plausible range of each data type.
    ValueRange,
    /// All of the rules given with --parts (registered rule ids).
    AllOf,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum BindScope {
    Device,
    Room,
    Floor,
    Group,
}

#[derive(Debug, Subcommand)]
enum RuleCommand {
    /// Deploy a new rule contract and register it under an id.
    Deploy {
        kind: RuleKind,
        #[arg(long)]
        id: String,
        /// For all-of: the registered rule ids to combine, comma-separated.
        #[arg(long, value_delimiter = ',')]
        parts: Vec<String>,
    },
    /// Register (or replace) the contract that answers to a rule id.
    Register {
        #[arg(long)]
        id: String,
        #[arg(long)]
        address: Address,
    },
    /// Remove a rule id.
    Remove {
        #[arg(long)]
        id: String,
    },
    /// Bind a rule to a device, room, floor or group.
    Bind {
        #[arg(long)]
        scope: BindScope,
        /// The device's EPC, or the room, floor or group name.
        #[arg(long)]
        target: String,
        #[arg(long)]
        id: String,
    },
    /// Remove a binding.
    Unbind {
        #[arg(long)]
        scope: BindScope,
        #[arg(long)]
        target: String,
    },
    /// Allow (or with --deny, withdraw) data types for a device group.
    Allow {
        #[arg(long)]
        group: String,
        /// Data types: names or LOINC codes, comma-separated.
        #[arg(long)]
        types: String,
        #[arg(long)]
        deny: bool,
        /// The allowed-types rule contract (default: the shipped one).
        #[arg(long)]
        rule: Option<Address>,
    },
    /// Set the plausible range of a data type, in its reporting unit.
    Range {
        #[arg(long = "type")]
        data_type: String,
        #[arg(long, allow_negative_numbers = true)]
        min: f64,
        #[arg(long, allow_negative_numbers = true)]
        max: f64,
        /// The value-range rule contract (default: the shipped one).
        #[arg(long)]
        rule: Option<Address>,
    },
    /// Remove a data type's range (its readings are then refused).
    ClearRange {
        #[arg(long = "type")]
        data_type: String,
        #[arg(long)]
        rule: Option<Address>,
    },
}

pub(crate) fn run(args: AdminArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let out = execute(&args.conn, args.command).await?;
        args.conn.print(&out)
    })
}

async fn execute(conn: &Connection, command: AdminCommand) -> Result<Value> {
    if let AdminCommand::Deploy = command {
        let (provider, _) = conn.provider()?;
        let contracts = Contracts::deploy(provider)
            .await
            .context("deploying the contracts")?;
        let a = contracts.addresses();
        return Ok(json!({
            "action": "deployed the contracts",
            "addresses": a,
            "next": format!("export MEDLEDGER_REGISTRY={}", a.registry),
        }));
    }
    let (c, me) = conn.contracts().await?;
    let reg = c.registry();
    let rules = c.rule_manager();
    let done = |action: String, receipt: TransactionReceipt| outcome(action, &receipt);
    Ok(match command {
        AdminCommand::Deploy => unreachable!("handled above"),
        AdminCommand::Show => {
            let a = c.addresses();
            json!({
                "addresses": a,
                "admins": reg.adminCount().call().await?.to_string(),
                "rule_version": rules.version().call().await?,
            })
        }
        AdminCommand::Admins(cmd) => match cmd {
            AdminsCommand::Add { account } => done(
                format!("added admin {account}"),
                send(reg.addAdmin(account)).await?,
            ),
            AdminsCommand::Remove { account } => done(
                format!("removed admin {account}"),
                send(reg.removeAdmin(account)).await?,
            ),
        },
        AdminCommand::Staff(cmd) => match cmd {
            StaffCommand::Register {
                account,
                role,
                department,
            } => done(
                format!("registered {} {account} in {department}", role.name()),
                send(reg.registerStaff(account, role.code(), text(&department)?)).await?,
            ),
            StaffCommand::Deactivate { account } => done(
                format!("deactivated staff {account}"),
                send(reg.deactivateStaff(account)).await?,
            ),
            StaffCommand::Show { account } => {
                let s = reg.staff(account).call().await?;
                json!({
                    "account": account,
                    "role": StaffRole::from_code(s.role).map_or("none", StaffRole::name),
                    "active": s.active,
                    "department": text_of(s.department),
                })
            }
        },
        AdminCommand::Node(cmd) => match cmd {
            NodeCommand::Register {
                account,
                cert,
                kind,
                location,
            } => {
                let (account, location) = match (account, cert) {
                    (_, Some(cert)) => node_certificate(&cert, kind, location)?,
                    (Some(account), None) => (account, location.unwrap_or_default()),
                    (None, None) => bail!("give the node's account or --cert"),
                };
                let code = match kind {
                    NodeKind::Collector => 1,
                    NodeKind::Server => 2,
                };
                done(
                    format!("registered {} {account}", kind.name()),
                    send(reg.registerNode(account, code, text(&location)?)).await?,
                )
            }
            NodeCommand::Deactivate { account } => done(
                format!("deactivated node {account}"),
                send(reg.deactivateNode(account)).await?,
            ),
        },
        AdminCommand::Device(cmd) => match cmd {
            DeviceCommand::Register { cert } => {
                let (epc, group, rule, fingerprint) = device_certificate(&cert)?;
                done(
                    format!("registered device {epc} (group {group}, rule {rule})"),
                    send(reg.registerDevice(
                        epc_bytes(&epc),
                        text(&group)?,
                        text(&rule)?,
                        fingerprint,
                    ))
                    .await?,
                )
            }
            DeviceCommand::Certificate { cert } => {
                let (epc, _, _, fingerprint) = device_certificate(&cert)?;
                done(
                    format!("recorded a new certificate for device {epc}"),
                    send(reg.setDeviceCertificate(epc_bytes(&epc), fingerprint)).await?,
                )
            }
            DeviceCommand::Assign { epc, patient } => done(
                format!("assigned device {epc} to patient {patient}"),
                send(reg.assignDevice(epc_bytes(&epc), patient)).await?,
            ),
            DeviceCommand::Release { epc } => done(
                format!("released device {epc}"),
                send(reg.releaseDevice(epc_bytes(&epc))).await?,
            ),
            DeviceCommand::Deactivate { epc } => done(
                format!("retired device {epc}"),
                send(reg.deactivateDevice(epc_bytes(&epc))).await?,
            ),
            DeviceCommand::Show { epc } => {
                let d = reg.device(epc_bytes(&epc)).call().await?;
                if !d.registered {
                    bail!("no device {epc} is registered");
                }
                let resolved = rules.resolve(epc_bytes(&epc)).call().await?;
                let scope = if resolved.ruleId.is_zero() {
                    "none"
                } else {
                    ["certificate", "device", "room", "floor", "group"]
                        .get(usize::from(resolved.scope))
                        .copied()
                        .unwrap_or("unknown")
                };
                json!({
                    "epc": epc.to_string(),
                    "active": d.active,
                    "group": text_of(d.group),
                    "rule_id": text_of(d.ruleId),
                    "certificate_fingerprint": d.certFingerprint,
                    "patient": reg.patientOfDevice(epc_bytes(&epc)).call().await?,
                    "governing_rule": text_of(resolved.ruleId),
                    "governing_rule_from": scope,
                })
            }
        },
        AdminCommand::Patient(cmd) => match cmd {
            PatientCommand::Admit {
                patient,
                account,
                place,
            } => {
                let [d, f, r, b] = place.words()?;
                done(
                    format!("admitted patient {patient}"),
                    send(reg.admit(patient, account, d, f, r, b, place.carers)).await?,
                )
            }
            PatientCommand::Transfer { patient, place } => {
                let [d, f, r, b] = place.words()?;
                done(
                    format!("transferred patient {patient}"),
                    send(reg.transfer(patient, d, f, r, b, place.carers)).await?,
                )
            }
            PatientCommand::Discharge { patient } => done(
                format!("discharged patient {patient}"),
                send(reg.discharge(patient)).await?,
            ),
            PatientCommand::AssignCarer { patient, carer } => done(
                format!("assigned carer {carer} to patient {patient}"),
                send(reg.assignCarer(patient, carer)).await?,
            ),
            PatientCommand::ReleaseCarer { patient, carer } => done(
                format!("released carer {carer} from patient {patient}"),
                send(reg.releaseCarer(patient, carer)).await?,
            ),
            PatientCommand::Show { patient } => {
                let a = reg.admission(patient).call().await?;
                if a.account.is_zero() {
                    bail!("no patient {patient} was ever admitted");
                }
                json!({
                    "patient": patient,
                    "admitted": a.active,
                    "account": a.account,
                    "epoch": a.epoch,
                    "since": a.since,
                    "department": text_of(a.department),
                    "floor": text_of(a.floor),
                    "room": text_of(a.room),
                    "bed": text_of(a.bed),
                })
            }
        },
        AdminCommand::Person(cmd) => match cmd {
            PersonCommand::Certificate { cert } => {
                let (account, fingerprint) = person_certificate(&cert)?;
                done(
                    format!("recorded the certificate of {account}"),
                    send(reg.setCertificate(account, fingerprint)).await?,
                )
            }
            PersonCommand::Revoke { account } => revoke_account(&c, account).await?,
            PersonCommand::Show { account } => json!({
                "account": account,
                "certificate_fingerprint": reg.certificateOf(account).call().await?,
                "revoked": reg.isRevoked(account).call().await?,
            }),
        },
        AdminCommand::Rule(cmd) => match cmd {
            RuleCommand::Deploy { kind, id, parts } => {
                let p = c.provider().clone();
                let manager = *rules.address();
                if matches!(kind, RuleKind::AllOf) == parts.is_empty() {
                    bail!("--parts goes with all-of, and all-of needs --parts");
                }
                // Refuse before deploying, not after: no orphan contract.
                if !reg.isAdmin(me).call().await? {
                    bail!("the signer is not an admin of this Registry; only admins deploy rules");
                }
                let address = match kind {
                    RuleKind::AllowedTypes => {
                        *AllowedTypesRule::deploy(p, manager).await?.address()
                    }
                    RuleKind::ValueRange => *ValueRangeRule::deploy(p, manager).await?.address(),
                    RuleKind::AllOf => {
                        let mut addresses = Vec::new();
                        for part in &parts {
                            let at = rules.rules(text(part)?).call().await?;
                            if at.is_zero() {
                                bail!("no rule is registered as {part:?}");
                            }
                            addresses.push(at);
                        }
                        *AllOfRule::deploy(p, addresses).await?.address()
                    }
                };
                let mut out = done(
                    format!("deployed a rule at {address} as {id:?}"),
                    send(rules.registerRule(text(&id)?, address)).await?,
                );
                out["address"] = json!(address);
                out
            }
            RuleCommand::Register { id, address } => done(
                format!("registered rule {id:?} at {address}"),
                send(rules.registerRule(text(&id)?, address)).await?,
            ),
            RuleCommand::Remove { id } => done(
                format!("removed rule {id:?}"),
                send(rules.removeRule(text(&id)?)).await?,
            ),
            RuleCommand::Bind { scope, target, id } => done(
                format!("bound rule {id:?} to {} {target}", scope.name()),
                send(rules.bind(scope.code(), scope_key(scope, &target)?, text(&id)?)).await?,
            ),
            RuleCommand::Unbind { scope, target } => done(
                format!("unbound the rule of {} {target}", scope.name()),
                send(rules.unbind(scope.code(), scope_key(scope, &target)?)).await?,
            ),
            RuleCommand::Allow {
                group,
                types,
                deny,
                rule,
            } => {
                let codes = data_types(&types)?
                    .into_iter()
                    .map(|t| code_key(t.code))
                    .collect();
                let at = contract(&c, rule.unwrap_or(c.addresses().allowed_types)).await?;
                let allowed = AllowedTypesRule::new(at, c.provider().clone());
                let verb = if deny { "withdrew" } else { "allowed" };
                done(
                    format!("{verb} {types} for group {group}"),
                    send(allowed.setAllowed(text(&group)?, codes, !deny)).await?,
                )
            }
            RuleCommand::Range {
                data_type,
                min,
                max,
                rule,
            } => {
                let t = data_type_named(&data_type)?;
                let at = contract(&c, rule.unwrap_or(c.addresses().value_range)).await?;
                let range = ValueRangeRule::new(at, c.provider().clone());
                done(
                    format!("set the range of {} to {min}..={max} {}", t.name, t.unit()),
                    send(range.setRange(code_key(t.code), milli(min), milli(max))).await?,
                )
            }
            RuleCommand::ClearRange { data_type, rule } => {
                let t = data_type_named(&data_type)?;
                let at = contract(&c, rule.unwrap_or(c.addresses().value_range)).await?;
                let range = ValueRangeRule::new(at, c.provider().clone());
                done(
                    format!("cleared the range of {}", t.name),
                    send(range.clearRange(code_key(t.code))).await?,
                )
            }
        },
    })
}

const NO_REGISTRY: &str = "no Registry address: pass --registry or set MEDLEDGER_REGISTRY (printed by `medledger admin deploy`)";

impl Connection {
    /// Whether both a Registry and a signing key are given.
    pub(crate) fn can_sign(&self) -> bool {
        self.registry.is_some() && self.key.is_some()
    }

    /// The contracts at `--registry`, signing with `--key`, and the
    /// signer's address.
    pub(crate) async fn contracts(&self) -> Result<(Contracts<DynProvider>, Address)> {
        let (provider, me) = self.provider()?;
        let registry = self.registry.context(NO_REGISTRY)?;
        Ok((Contracts::at(provider, registry).await?, me))
    }

    /// The contracts at `--registry`, to read: signing with `--key` if
    /// given, else with no key at all.
    pub(crate) async fn reader(&self) -> Result<Contracts<DynProvider>> {
        if self.key.is_some() {
            return Ok(self.contracts().await?.0);
        }
        let registry = self.registry.context(NO_REGISTRY)?;
        crate::roles::read_contracts(&self.rpc, registry, self.identity().as_ref()).await
    }

    /// Prints `out` as JSON (`--json`) or for people.
    pub(crate) fn print(&self, out: &Value) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(out)?);
        } else {
            print_human(out);
        }
        Ok(())
    }

    /// A provider over HTTP that signs with the key in `--key`, and the
    /// signer's address.
    fn provider(&self) -> Result<(DynProvider, Address)> {
        let path = self
            .key
            .as_ref()
            .context("no signing key: pass --key FILE or set MEDLEDGER_KEY")?;
        let signer = crate::roles::load_signer(path)?;
        let me = signer.address();
        let client = rpc::client(&self.rpc, self.identity().as_ref())?;
        Ok((signing_provider(signer, client), me))
    }

    /// What to show the chain over `https://`.
    fn identity(&self) -> Option<rpc::Identity> {
        self.tls.identity(self.key.as_deref())
    }
}

impl Place {
    fn words(&self) -> Result<[B256; 4]> {
        Ok([
            text(&self.department)?,
            text(&self.floor)?,
            text(&self.room)?,
            text(&self.bed)?,
        ])
    }
}

/// `at`, if a contract is there (a call to an address without code would
/// "succeed" and do nothing).
async fn contract(c: &Contracts<DynProvider>, at: Address) -> Result<Address> {
    if at.is_zero() || c.provider().get_code_at(at).await?.is_empty() {
        bail!("no rule contract at {at} (was the shipped rule replaced or removed? pass --rule)");
    }
    Ok(at)
}

fn text(s: &str) -> Result<B256> {
    Ok(short_text(s)?)
}

impl BindScope {
    fn name(self) -> &'static str {
        match self {
            BindScope::Device => "device",
            BindScope::Room => "room",
            BindScope::Floor => "floor",
            BindScope::Group => "group",
        }
    }

    /// `RuleManager.Scope`'s number.
    fn code(self) -> u8 {
        match self {
            BindScope::Device => 1,
            BindScope::Room => 2,
            BindScope::Floor => 3,
            BindScope::Group => 4,
        }
    }
}

fn scope_key(scope: BindScope, key: &str) -> Result<B256> {
    match scope {
        BindScope::Device => Ok(epc_key(&key.parse::<Epc>()?)),
        _ => text(key),
    }
}

fn data_type_named(name: &str) -> Result<&'static DataType> {
    data_type_by_name(name).with_context(|| {
        format!("unknown data type {name:?} (expected a LOINC code or a name such as heart-rate)")
    })
}

fn data_types(list: &str) -> Result<Vec<&'static DataType>> {
    let scope: Scope = list.parse()?;
    if scope == Scope::ALL {
        return Ok(medledger_protocol::CATALOGUE.iter().collect());
    }
    Ok(medledger_protocol::CATALOGUE
        .iter()
        .filter(|t| scope.contains(t))
        .collect())
}

/// Reads a device certificate: its EPC, group, rule id and fingerprint.
fn device_certificate(path: &Path) -> Result<(Epc, String, String, B256)> {
    let der = medledger_pki::files::read_first(path, "CERTIFICATE")
        .with_context(|| format!("reading the certificate {}", path.display()))?;
    let id = Identity::from_peer_certificate(&der)
        .with_context(|| format!("reading {}", path.display()))?;
    match id.details {
        Details::Device { epc, group, rule } => Ok((epc, group, rule, B256::from(id.fingerprint))),
        Details::Account { .. } => bail!(
            "{} is a {} certificate, not a device's",
            path.display(),
            id.role.name()
        ),
    }
}

/// The account and location a collector's or server's certificate names;
/// refuses another role, or a `location` given that is not the
/// certificate's.
fn node_certificate(
    path: &Path,
    kind: NodeKind,
    location: Option<String>,
) -> Result<(Address, String)> {
    let der = medledger_pki::files::read_first(path, "CERTIFICATE")
        .with_context(|| format!("reading the certificate {}", path.display()))?;
    let id = Identity::from_peer_certificate(&der)
        .with_context(|| format!("reading {}", path.display()))?;
    let role = match kind {
        NodeKind::Collector => medledger_pki::Role::Collector,
        NodeKind::Server => medledger_pki::Role::Server,
    };
    let (Some(account), true) = (id.address(), id.role == role) else {
        bail!(
            "{} is a {} certificate, not a {}'s",
            path.display(),
            id.role.name(),
            kind.name()
        );
    };
    let in_cert = id.location().map(ToString::to_string).unwrap_or_default();
    match location {
        Some(given) if given != in_cert => bail!(
            "--location {given} is not the certificate's location ({}): leave it out, or issue a certificate for {given}",
            if in_cert.is_empty() { "none" } else { &in_cert }
        ),
        _ => Ok((account, in_cert)),
    }
}

/// The account a person's certificate names and the certificate's
/// fingerprint; refuses devices, collectors and servers.
fn person_certificate(path: &Path) -> Result<(Address, B256)> {
    let der = medledger_pki::files::read_first(path, "CERTIFICATE")
        .with_context(|| format!("reading the certificate {}", path.display()))?;
    let id = Identity::from_peer_certificate(&der)
        .with_context(|| format!("reading {}", path.display()))?;
    match (id.role.is_person(), id.address()) {
        (true, Some(account)) => Ok((account, B256::from(id.fingerprint))),
        _ => bail!(
            "{} is a {} certificate, not an admin's, a staff member's or a patient's",
            path.display(),
            id.role.name()
        ),
    }
}

/// `Registry.revokeAccount`: the on-chain half of revoking a person's
/// certificate.
pub(crate) async fn revoke_account(c: &Contracts<DynProvider>, account: Address) -> Result<Value> {
    Ok(outcome(
        format!(
            "revoked account {account}: it may not transact until a new certificate is recorded"
        ),
        &send(c.registry().revokeAccount(account)).await?,
    ))
}

/// What a transaction did, with its events decoded.
pub(crate) fn outcome(action: String, receipt: &TransactionReceipt) -> Value {
    let events: Vec<Value> = receipt
        .inner
        .logs()
        .iter()
        .filter_map(|log| decode_event(&log.inner))
        .map(|e| {
            let args: serde_json::Map<String, Value> =
                e.args.into_iter().map(|(k, v)| (k, json!(v))).collect();
            json!({ "event": e.name, "contract": e.address, "args": args })
        })
        .collect();
    json!({
        "action": action,
        "tx": receipt.transaction_hash,
        "block": receipt.block_number,
        "gas_used": receipt.gas_used,
        "events": events,
    })
}

fn print_human(out: &Value) {
    let Some(obj) = out.as_object() else {
        println!("{out}");
        return;
    };
    if let Some(action) = obj.get("action").and_then(Value::as_str) {
        println!("{action}");
    }
    for (key, value) in obj {
        match key.as_str() {
            "action" => {}
            "events" => {
                for e in value.as_array().into_iter().flatten() {
                    let args: Vec<String> = e["args"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or_default()))
                        .collect();
                    println!(
                        "  event  {}({})",
                        e["event"].as_str().unwrap_or("?"),
                        args.join(", ")
                    );
                }
            }
            "addresses" => {
                for (name, address) in value.as_object().into_iter().flatten() {
                    println!("  {name:<14} {}", address.as_str().unwrap_or_default());
                }
            }
            _ => match value {
                Value::String(s) => println!("  {key:<14} {s}"),
                other => println!("  {key:<14} {other}"),
            },
        }
    }
}
