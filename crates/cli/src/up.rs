//! `medledger up --data D`: the chain, a server and one collector in one
//! process, with their state in `D`. The first start initialises
//! everything (a CA, an admin, the node and server certificates, the
//! contracts, the key-encryption key); later starts reuse it. The server
//! and the collector run from the configuration files written to `D`
//! (`server.toml`, `collector.toml`), exactly as `medledger server` and
//! `medledger collector` would run them alone.
//!
//! ```text
//!  D/up.toml            the Registry address (written once)
//!  D/ca/                the CA (root.crt, crl.pem)
//!  D/chain/             the node's blocks and state
//!  D/people/admin.*     the admin's certificate, key and chain key
//!  D/server/            its certificate and keys, database, blobs
//!  D/collector/         its certificate and keys, database, cards/
//! ```

use crate::{kek, roles};
use alloy::primitives::Address;
use anyhow::{Context, Result, bail};
use clap::Args;
use medledger_chain::rpc::{Rpc, http};
use medledger_chain::{Node, NodeConfig, RegistryPermissions, Sealing};
use medledger_contracts::{Contracts, send, short_text};
use medledger_pki::{Ca, Issued, LeafRequest, Location, Role, files};
use medledger_storage::{Db, Kek, Vault};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `medledger up` as typed.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct UpCommandLine {
    #[command(subcommand)]
    command: Option<UpCommand>,
    /// The data directory (created on first start).
    #[arg(long, env = "MEDLEDGER_DATA", required = true)]
    data: Option<PathBuf>,
    /// Where the chain serves JSON-RPC over plain HTTP (a loopback address).
    #[arg(long, default_value = "127.0.0.1:8545")]
    rpc: SocketAddr,
    /// Where the server listens (collectors, staff, patients).
    #[arg(long, default_value = "127.0.0.1:8443")]
    server: SocketAddr,
    /// Where the collector listens (devices).
    #[arg(long, default_value = "127.0.0.1:8444")]
    collector: SocketAddr,
    /// Where the server serves the web portal (HTTPS).
    #[arg(long, default_value = "127.0.0.1:8446")]
    portal: SocketAddr,
    /// Where monitoring reads the server's `/metrics`, `/livez` and
    /// `/readyz`; the collector's are on the next port.
    #[arg(long)]
    metrics: Option<SocketAddr>,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum UpCommand {
    /// Rotate the key-encryption key of a stopped `medledger up`: a new
    /// one in D/server/kek.hex, every data key re-wrapped under it, the
    /// old one retired and removed. Resumes an interrupted rotation.
    RotateKek {
        /// The data directory.
        #[arg(long, env = "MEDLEDGER_DATA")]
        data: PathBuf,
    },
}

/// What `medledger up` runs with.
#[derive(Debug)]
pub(crate) struct UpArgs {
    data: PathBuf,
    rpc: SocketAddr,
    server: SocketAddr,
    collector: SocketAddr,
    /// `None`: no portal (a restore check, say).
    portal: Option<SocketAddr>,
    /// The server's monitoring listener; the collector's is on the next
    /// port.
    metrics: Option<SocketAddr>,
}

impl UpArgs {
    /// `medledger up` on `data` at these addresses.
    pub(crate) fn local(
        data: PathBuf,
        rpc: SocketAddr,
        server: SocketAddr,
        collector: SocketAddr,
    ) -> UpArgs {
        UpArgs {
            data,
            rpc,
            server,
            collector,
            portal: None,
            metrics: None,
        }
    }
}

/// What the first start decided, kept in `D/up.toml`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpState {
    /// The Registry's address.
    pub(crate) registry: Address,
    /// The chain id.
    pub(crate) chain_id: u64,
    /// The collector's address, for `medledger sim`.
    pub(crate) collector: String,
}

/// The chain id of `medledger up`'s first chain (each `chain recover`
/// takes the next one).
const CHAIN_ID: u64 = 1337;

impl UpState {
    pub(crate) fn path(data: &Path) -> PathBuf {
        data.join("up.toml")
    }

    pub(crate) fn load(data: &Path) -> Result<UpState> {
        let path = UpState::path(data);
        if !path.exists() {
            anyhow::bail!(
                "{} is missing: run `medledger up --data {}` first",
                path.display(),
                data.display()
            );
        }
        Ok(files::read_toml(&path)?)
    }

    /// Writes the file atomically (a recovery cut short must find the old
    /// one or the new one).
    pub(crate) fn save(&self, data: &Path) -> Result<()> {
        files::write_public(
            &UpState::path(data),
            format!(
                "# Written by `medledger up`.\nregistry = \"{}\"\nchain_id = {}\ncollector = \"{}\"\n",
                self.registry, self.chain_id, self.collector
            )
            .as_bytes(),
        )?;
        Ok(())
    }
}

pub(crate) fn run(line: UpCommandLine) -> Result<()> {
    if let Some(UpCommand::RotateKek { data }) = line.command {
        return rotate_kek(&data);
    }
    let args = UpArgs {
        data: line
            .data
            .expect("clap requires --data without a subcommand"),
        rpc: line.rpc,
        server: line.server,
        collector: line.collector,
        portal: Some(line.portal),
        metrics: line.metrics,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(up(args))
}

fn issue(ca: &Ca, request: &LeafRequest, prefix: &Path) -> Result<Issued> {
    if let Some(dir) = prefix.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let issued = ca.issue(request)?;
    issued.write(prefix)?;
    Ok(issued)
}

/// First start: CA, admin, node certificates, key-encryption key and the
/// contracts; writes `up.toml` last, so an interrupted start begins again.
async fn initialise(args: &UpArgs, node_dir: &Path) -> Result<(Node, UpState)> {
    let d = &args.data;
    println!("medledger up: first start, initialising {}", d.display());
    for dir in ["ca", "chain", "server"] {
        let path = d.join(dir);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("clearing an interrupted start: {}", path.display()))?;
        }
    }
    let _ = std::fs::remove_dir_all(d.join("people"));
    let _ = std::fs::remove_dir_all(d.join("collector"));
    let ca = Ca::init(&d.join("ca"), "medledger")?;
    ca.write_crl()?;
    let admin = issue(&ca, &LeafRequest::new(Role::Admin), &d.join("people/admin"))?;
    let server = issue(
        &ca,
        &LeafRequest::new(Role::Server),
        &d.join("server/server"),
    )?;
    let mut request = LeafRequest::new(Role::Collector);
    request.location = Some("ward/1/A".parse::<Location>()?);
    let collector = issue(&ca, &request, &d.join("collector/collector"))?;
    std::fs::create_dir_all(d.join("collector/cards"))?;
    files::write_secret(&d.join("server/kek.hex"), Kek::generate_hex().as_bytes())?;
    let admin_signer = medledger_sim::signer(&admin)?;
    let node = start_node(node_dir, CHAIN_ID, vec![admin_signer.address()])?;
    let contracts = Contracts::deploy(medledger_sim::provider(&node, &admin_signer)).await?;
    medledger_sim::record_certificate(&contracts, &admin).await?;
    let registry = contracts.registry();
    for (issued, kind, place) in [(&server, 2u8, "server"), (&collector, 1u8, "ward/1")] {
        let account = medledger_sim::signer(issued)?.address();
        send(registry.registerNode(account, kind, short_text(place)?)).await?;
    }
    let state = UpState {
        registry: contracts.addresses().registry,
        chain_id: CHAIN_ID,
        collector: args.collector.to_string(),
    };
    state.save(d)?;
    Ok((node, state))
}

/// The node of `medledger up` in `dir`, with chain id `chain_id`.
pub(crate) fn start_node(dir: &Path, chain_id: u64, allow: Vec<Address>) -> Result<Node> {
    Node::start(&NodeConfig {
        data_dir: dir.to_path_buf(),
        chain_id,
        allow,
        sealing: Sealing::OnDemand {
            min_interval: Duration::from_millis(5),
        },
    })
    .with_context(|| format!("starting the chain in {}", dir.display()))
}

/// The server's and the collector's configuration files, rewritten on
/// every start from the flags.
pub(crate) fn write_configs(args: &UpArgs, state: &UpState) -> Result<()> {
    let rpc = format!("http://{}", args.rpc);
    let common = format!(
        "ca_root = \"ca/root.crt\"\ncrl = \"ca/crl.pem\"\nchain_rpc = \"{rpc}\"\nregistry = \"{}\"\n",
        state.registry
    );
    // An interrupted `medledger up rotate-kek` left the old KEK beside the
    // new one: the server re-wraps in the background.
    let portal = args
        .portal
        .map(|p| format!("portal_listen = \"{p}\"\n"))
        .unwrap_or_default();
    let metrics = |next: u16| {
        args.metrics
            .map(|mut m| {
                if m.port() != 0 {
                    m.set_port(m.port().saturating_add(next));
                }
                format!("metrics_listen = \"{m}\"\n")
            })
            .unwrap_or_default()
    };
    let previous = if up_previous_kek(&args.data).exists() {
        "previous_kek_files = [\"server/kek.previous.hex\"]\n"
    } else {
        ""
    };
    std::fs::write(
        args.data.join("server.toml"),
        format!(
            "# Written by `medledger up` on every start.\nlisten = \"{}\"\n{portal}{}data = \"server\"\ncredentials = \"server/server\"\nkek_file = \"server/kek.hex\"\n{previous}ledger_key = \"server/ledger.key\"\n{common}",
            args.server,
            metrics(0)
        ),
    )?;
    let collector = args.data.join("collector.toml");
    let limits = std::fs::read_to_string(&collector)
        .ok()
        .and_then(|text| limits_section(&text))
        .unwrap_or_default();
    std::fs::write(
        &collector,
        format!(
            "# Written by `medledger up` on every start (a [limits] table is kept).\nlisten = \"{}\"\n{}data = \"collector\"\ncredentials = \"collector/collector\"\ncards = \"collector/cards\"\nserver = \"{}\"\nserver_name = \"localhost\"\n{common}{limits}",
            args.collector,
            metrics(1),
            args.server
        ),
    )?;
    Ok(())
}

/// The `[limits]` table of a collector configuration, as written (up to
/// the next table), so that an operator's limits survive a restart.
fn limits_section(text: &str) -> Option<String> {
    let start = text.lines().position(|l| l.trim() == "[limits]")?;
    let section: Vec<&str> = text
        .lines()
        .skip(start)
        .enumerate()
        .take_while(|(i, l)| *i == 0 || !l.trim_start().starts_with('['))
        .map(|(_, l)| l)
        .collect();
    Some(format!("\n{}\n", section.join("\n")))
}

async fn up(args: UpArgs) -> Result<()> {
    crate::rpc::loopback_only(args.rpc)?;
    let d = args.data.clone();
    medledger_pki::files::private_dir(&d)?;
    let node_dir = d.join("chain");
    let first = !UpState::path(&d).exists();
    let (node, mut state) = if first {
        initialise(&args, &node_dir).await?
    } else {
        let state = UpState::load(&d)?;
        let admin = roles::load_signer(&d.join("people/admin.eth.key"))?;
        (
            start_node(&node_dir, state.chain_id, vec![admin.address()])?,
            state,
        )
    };
    node.set_permissions(Arc::new(RegistryPermissions::new(state.registry)));
    if state.collector != args.collector.to_string() {
        state.collector = args.collector.to_string();
        state.save(&d)?;
    }
    let listener = tokio::net::TcpListener::bind(args.rpc)
        .await
        .with_context(|| format!("binding {}", args.rpc))?;
    let rpc = Rpc::new(node.clone());
    tokio::spawn(async move {
        if let Err(e) = http::serve(rpc, listener).await {
            eprintln!("medledger up: serving JSON-RPC: {e}");
        }
    });
    write_configs(&args, &state)?;
    let control = crate::backup::serve_control(d.clone(), node.clone());
    tokio::spawn(async move {
        if let Err(e) = control.await {
            eprintln!("medledger up: the control socket: {e:#}");
        }
    });
    let server_config = medledger_server::ConfigFile::load(&d.join("server.toml"))?;
    let server = crate::server::start(&server_config).await?;
    let collector_config = medledger_collector::ConfigFile::load(&d.join("collector.toml"))?;
    // The collector hands its batches to the server in this process: one
    // verification per reading, no TLS hop.
    let collector = crate::collector::start(
        &collector_config,
        Some(medledger_sim::in_process(&server.server)),
    )
    .await?;

    let root = d.join("ca/root.crt");
    let admin_key = d.join("people/admin.eth.key");
    println!(
        "medledger up: {} ({})",
        d.display(),
        if first { "initialised" } else { "reused" }
    );
    println!(
        "  chain        http://{} (chain id {}, head block {})",
        args.rpc,
        state.chain_id,
        node.block_number()
    );
    println!("  Registry     {}", state.registry);
    println!(
        "  server       https://{} ({})",
        server.server.addr(),
        server.subject
    );
    crate::server::print_endpoints(&server.server);
    println!("  collector    {}", collector.subject);
    crate::collector::print_endpoints(&collector, &collector_config);
    println!(
        "  CA           {} (root.crt, crl.pem)",
        d.join("ca").display()
    );
    println!(
        "  admin        {} (.crt, .key, .eth.key)",
        d.join("people/admin").display()
    );
    println!();
    println!("Use the other commands against it with:");
    println!(
        "  export MEDLEDGER_RPC=http://{} MEDLEDGER_REGISTRY={} MEDLEDGER_SERVER={} MEDLEDGER_CA_ROOT={} MEDLEDGER_KEY={}",
        args.rpc,
        state.registry,
        server.server.addr(),
        root.display(),
        admin_key.display()
    );
    println!("and drive it with simulated devices from another terminal:");
    println!("  medledger sim --data {} --devices 10", d.display());
    println!("Back it up while it runs:");
    println!("  medledger backup --data {} --out BACKUP_DIR", d.display());
    roles::shutdown().await;
    println!("medledger up: stopping");
    Ok(())
}

/// `D/server/kek.hex`: the KEK of `medledger up`.
pub(crate) fn up_kek(data: &Path) -> PathBuf {
    data.join("server/kek.hex")
}

/// `D/server/kek.previous.hex`: the KEK a rotation of `medledger up`
/// moves away from, until its rewrap finishes.
pub(crate) fn up_previous_kek(data: &Path) -> PathBuf {
    data.join("server/kek.previous.hex")
}

/// `medledger up rotate-kek --data D`, with `medledger up` stopped: a new
/// KEK in `D/server/kek.hex` (the old one in `kek.previous.hex` meanwhile),
/// every data key re-wrapped, the old KEK retired and its file removed.
/// Resumes an interrupted rotation.
fn rotate_kek(data: &Path) -> Result<()> {
    UpState::load(data)?;
    if std::os::unix::net::UnixStream::connect(crate::backup::control_socket(data)).is_ok() {
        bail!(
            "medledger up is running on {}: stop it first (its server holds the old key-encryption key)",
            data.display()
        );
    }
    let (current_path, previous_path) = (up_kek(data), up_previous_kek(data));
    // Each step is durable before the next, so an interruption anywhere
    // leaves both KEKs on disk and a rerun resumes.
    if !previous_path.exists() {
        let old = std::fs::read(&current_path)
            .with_context(|| format!("reading {}", current_path.display()))?;
        kek::replace_secret(&previous_path, &old)?;
    }
    let previous = Kek::from_file(&previous_path)?;
    if Kek::from_file(&current_path)?.id() == previous.id() {
        kek::replace_secret(
            &current_path,
            format!("{}\n", Kek::generate_hex()).as_bytes(),
        )?;
    } else {
        println!("resuming the rotation away from {}", previous.id());
    }
    let current = Kek::from_file(&current_path)?;
    println!(
        "rotating the key-encryption key of {}: {} -> {}",
        data.display(),
        previous.id(),
        current.id()
    );
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let done = runtime.block_on(async {
        let db = Db::open_sqlite(&data.join("server/server.db")).await?;
        db.migrate_for(medledger_storage::Part::Server).await?;
        let done = kek::rewrap(
            Vault::with_previous(db.clone(), current, vec![previous]),
            500,
        )
        .await;
        db.close().await;
        done
    })?;
    println!("{}", medledger_server::rewrap::summary(&done));
    // `medledger up` wrote server.toml naming the old KEK's file while it
    // existed: name it no more.
    let config = data.join("server.toml");
    if let Ok(text) = std::fs::read_to_string(&config) {
        let kept: String = text
            .lines()
            .filter(|l| !l.starts_with("previous_kek_files"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&config, kept).with_context(|| format!("writing {}", config.display()))?;
    }
    std::fs::remove_file(&previous_path)
        .with_context(|| format!("removing {}", previous_path.display()))?;
    kek::sync_dir(&data.join("server"))?;
    println!(
        "removed {}; backups taken before this rotation hold the old key (their server/kek.hex)",
        previous_path.display()
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::limits_section;

    #[test]
    fn an_operators_collector_limits_survive_the_rewrite() {
        let text = "listen = \"127.0.0.1:1\"\n\n[limits]\ndevice_rate_per_s = 1e9\ndevice_burst = 1e9\n\n[other]\nx = 1\n";
        assert_eq!(
            limits_section(text).unwrap(),
            "\n[limits]\ndevice_rate_per_s = 1e9\ndevice_burst = 1e9\n\n"
        );
        assert_eq!(limits_section("listen = \"127.0.0.1:1\"\n"), None);
    }
}
