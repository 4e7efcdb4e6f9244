//! `medledger ca`: the certificate authority commands.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use medledger_pki::ca::layout;
use medledger_pki::{Ca, Details, Epc, Identity, KeyAlg, LeafRequest, Location, Role, files};
use serde::Serialize;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Debug, Subcommand)]
pub(crate) enum CaCommand {
    /// Create a root CA and an issuing CA in a new directory.
    Init {
        /// The CA directory to create.
        #[arg(long)]
        dir: PathBuf,
        /// Organization name in the CA certificates.
        #[arg(long, default_value = "medledger")]
        org: String,
    },
    /// Issue a certificate (and, for all roles but device, an EVM account).
    Issue(IssueArgs),
    /// Print what a certificate says: role, EPC, group, rule, address, ...
    Show {
        /// A certificate file (PEM or DER); the first certificate is shown.
        cert: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a certificate and rewrite the CA's CRL. For a person's
    /// certificate, also end the account's on-chain rights
    /// (`Registry.revokeAccount`) given --registry and an admin's --key;
    /// without them, print the command that does.
    Revoke {
        /// The CA directory.
        #[arg(long)]
        ca: PathBuf,
        /// The certificate to revoke.
        cert: PathBuf,
        #[command(flatten)]
        chain: crate::admin::Connection,
    },
    /// Write freshly signed CRLs (the root's and each issuing CA's), PEM.
    Crl {
        /// The CA directory.
        #[arg(long)]
        ca: PathBuf,
        /// Where to write them.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a new issuing CA the one that issues; the one it replaces
    /// stays trusted until `ca retire`.
    Rotate {
        /// The CA directory.
        #[arg(long)]
        ca: PathBuf,
    },
    /// Set up a Mosquitto broker for devices that speak MQTT: its
    /// certificate (role server), `mosquitto.conf`, the ACL file (each
    /// device publishes to its own topic only; the collectors read them
    /// all), the CA bundle and the CRL.
    Broker(crate::broker::BrokerArgs),
    /// Retire a replaced issuing CA: the root revokes it and its key is
    /// deleted; nothing it issued is accepted once the new CRL is out.
    Retire {
        /// The CA directory.
        #[arg(long)]
        ca: PathBuf,
        /// The serial of the issuing CA (as `ca rotate` printed it).
        serial: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct IssueArgs {
    /// The CA directory.
    #[arg(long)]
    ca: PathBuf,
    /// device, collector, server, admin, doctor, nurse or patient.
    #[arg(long)]
    role: Role,
    /// Writes PREFIX.crt, PREFIX.key and (not for devices) PREFIX.eth.key;
    /// with `--count`, a directory to write `device-SERIAL.*` into.
    #[arg(long)]
    out: PathBuf,
    /// Device EPC: an SGTIN-96 tag URI or 24 hex digits; with `--count`,
    /// the first one (the next devices' serials follow it).
    #[arg(long)]
    epc: Option<Epc>,
    /// Issue this many devices at once, serials counting up from `--epc`'s.
    #[arg(long, requires = "epc")]
    count: Option<u64>,
    /// Device group id, e.g. icu-hr-monitor.
    #[arg(long)]
    group: Option<String>,
    /// Rule id the device answers to.
    #[arg(long)]
    rule: Option<String>,
    /// Collector location: department/room/bed.
    #[arg(long)]
    location: Option<Location>,
    /// Subject common name (default: the EPC or the role and address).
    #[arg(long)]
    cn: Option<String>,
    /// Key type: p256 (default) or ed25519.
    #[arg(long, default_value = "p256")]
    key_type: KeyAlg,
    /// Extra DNS name or IP for collector and server certificates.
    #[arg(long)]
    san: Vec<String>,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: CaCommand) -> Result<()> {
    match cmd {
        CaCommand::Init { dir, org } => {
            Ca::init(&dir, &org)?;
            println!("created CA in {}", dir.display());
            for f in [layout::ROOT_CERT, layout::ISSUING_CERT, layout::CRL] {
                println!("  {}", dir.join(f).display());
            }
            println!(
                "  {} and {} (private, mode 0600)",
                layout::ROOT_KEY,
                layout::ISSUING_KEY
            );
            Ok(())
        }
        CaCommand::Issue(args) => issue(args),
        CaCommand::Broker(args) => crate::broker::run(args),
        CaCommand::Show { cert, json } => show(&cert, json),
        CaCommand::Revoke { ca, cert, chain } => {
            let ca = Ca::open(&ca)?;
            let der = first_cert(&cert)?;
            ca.revoke(&der)?;
            println!(
                "revoked {}; CRL rewritten at {}: off-chain access ends when servers and collectors load it",
                cert.display(),
                ca.dir().join(layout::CRL).display()
            );
            let id = Identity::from_peer_certificate(&der)?;
            match id.address().filter(|_| id.role.is_person()) {
                Some(account) => revoke_on_chain(&chain, account),
                None => Ok(()),
            }
        }
        CaCommand::Crl { ca, out } => {
            let ca = Ca::open(&ca)?;
            let pem: String = ca
                .write_crl()?
                .iter()
                .map(|der| files::to_pem("X509 CRL", der))
                .collect();
            files::write_public(&out, pem.as_bytes())?;
            println!(
                "wrote CRLs with {} revoked certificate(s) to {}",
                ca.revoked()?.len(),
                out.display()
            );
            Ok(())
        }
        CaCommand::Rotate { ca } => {
            let old = Ca::open(&ca)?;
            let replaced = old.issuing_serial().to_owned();
            let ca = old.rotate()?;
            println!("new issuing CA {}", ca.issuing_serial());
            println!("  {}", ca.dir().join(layout::ISSUING_CERT).display());
            println!(
                "replaced {replaced}: what it issued stays valid until `medledger ca retire --ca {} {replaced}`",
                ca.dir().display()
            );
            println!(
                "CRLs rewritten at {}: give the new one to every collector, server and chain node",
                ca.dir().join(layout::CRL).display()
            );
            Ok(())
        }
        CaCommand::Retire { ca, serial } => {
            let ca = Ca::open(&ca)?.retire(&serial)?;
            println!("retired issuing CA {serial}: its key is deleted and the root revoked it");
            println!(
                "CRLs rewritten at {}: once they are out, nothing it issued is accepted",
                ca.dir().join(layout::CRL).display()
            );
            Ok(())
        }
    }
}

/// The on-chain half of revoking a person's certificate: made with an
/// admin's key and the Registry, else told.
fn revoke_on_chain(
    chain: &crate::admin::Connection,
    account: alloy::primitives::Address,
) -> Result<()> {
    if !chain.can_sign() {
        println!(
            "the account {account} keeps its on-chain rights until an admin runs:\n  \
             medledger admin --registry REGISTRY --key ADMIN.eth.key person revoke {account}"
        );
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let (contracts, _) = chain.contracts().await?;
        let out = crate::admin::revoke_account(&contracts, account).await?;
        chain.print(&out)
    })
}

fn issue(args: IssueArgs) -> Result<()> {
    let ca = Ca::open(&args.ca)?;
    let mut request = LeafRequest {
        role: args.role,
        common_name: args.cn,
        key_alg: args.key_type,
        epc: args.epc,
        group: args.group,
        rule: args.rule,
        location: args.location,
        subject_alt_names: args.san,
        validity_days: args.days,
    };
    let Some(count) = args.count else {
        return issue_one(&ca, &request, &args.out, args.json);
    };
    if args.role != Role::Device {
        bail!("--count issues devices only (--role device)");
    }
    if request.common_name.is_some() {
        bail!("--count gives each device its EPC as its name: leave out --cn");
    }
    let first = args
        .epc
        .context("--count needs --epc, the first device's EPC")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    for n in 0..count {
        let epc = Epc::new(
            first.filter(),
            &first.company_prefix(),
            &first.item_reference(),
            first.serial() + n,
        )
        .with_context(|| format!("the EPC of device {} of {count}", n + 1))?;
        request.epc = Some(epc);
        let prefix = args.out.join(format!("device-{}", epc.serial()));
        issue_one(&ca, &request, &prefix, args.json)?;
    }
    Ok(())
}

/// Issues `request` into `PREFIX.*` and prints what was written.
fn issue_one(ca: &Ca, request: &LeafRequest, prefix: &Path, json: bool) -> Result<()> {
    let issued = ca.issue(request)?;
    let written = issued
        .write(prefix)
        .with_context(|| format!("writing {}.*", prefix.display()))?;
    let id = issued.identity()?;
    if json {
        let mut v = serde_json::to_value(CertView::new(&id))?;
        v["files"] = written.iter().map(|p| p.display().to_string()).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", CertView::new(&id));
        for p in written {
            println!("wrote        {}", p.display());
        }
    }
    Ok(())
}

fn first_cert(path: &Path) -> Result<Vec<u8>> {
    Ok(files::read_first(path, "CERTIFICATE")?)
}

fn show(path: &Path, json: bool) -> Result<()> {
    let der = first_cert(path)?;
    let id = Identity::from_peer_certificate(&der)
        .with_context(|| format!("{} is not a medledger leaf certificate", path.display()))?;
    let view = CertView::new(&id);
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{view}");
    }
    Ok(())
}

/// What `ca show` prints.
#[derive(Debug, Serialize)]
struct CertView {
    role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    epc: Option<EpcView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<String>,
    subject: String,
    serial: String,
    not_before: String,
    not_after: String,
    key: String,
    sha256_fingerprint: String,
}

#[derive(Debug, Serialize)]
struct EpcView {
    uri: String,
    hex: String,
}

fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

impl CertView {
    fn new(id: &Identity) -> Self {
        let (mut epc, mut group, mut rule, mut address, mut location) =
            (None, None, None, None, None);
        match &id.details {
            Details::Device {
                epc: e,
                group: g,
                rule: r,
            } => {
                epc = Some(EpcView {
                    uri: e.to_tag_uri(),
                    hex: e.to_hex(),
                });
                group = Some(g.clone());
                rule = Some(r.clone());
            }
            Details::Account {
                address: a,
                location: l,
            } => {
                address = Some(a.to_string());
                location = l.as_ref().map(ToString::to_string);
            }
        }
        CertView {
            role: id.role.to_string(),
            epc,
            group,
            rule,
            address,
            location,
            subject: id.subject.clone(),
            serial: id.serial_hex(),
            not_before: rfc3339(id.not_before),
            not_after: rfc3339(id.not_after),
            key: id.key.algorithm().to_string(),
            sha256_fingerprint: id.fingerprint_hex(),
        }
    }
}

impl std::fmt::Display for CertView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "role         {}", self.role)?;
        if let Some(epc) = &self.epc {
            writeln!(f, "epc          {}", epc.uri)?;
            writeln!(f, "epc (hex)    {}", epc.hex)?;
        }
        for (label, value) in [
            ("group", &self.group),
            ("rule", &self.rule),
            ("address", &self.address),
            ("location", &self.location),
        ] {
            if let Some(v) = value {
                writeln!(f, "{label:<12} {v}")?;
            }
        }
        writeln!(f, "subject      {}", self.subject)?;
        writeln!(f, "serial       {}", self.serial)?;
        writeln!(f, "valid        {} to {}", self.not_before, self.not_after)?;
        writeln!(f, "key          {}", self.key)?;
        writeln!(f, "sha256       {}", self.sha256_fingerprint)
    }
}
