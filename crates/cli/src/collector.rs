//! `medledger collector --config FILE`: the ingest gateway;
//! `medledger collector --config FILE dead-letters list|retry`: the
//! batches the server refused, held.

use crate::roles;
use anyhow::{Context, Result};
use clap::Args;
use medledger_collector::{
    Cards, Collector, ConfigFile, MqttSettings, ServerTarget, Settings, Upstream,
};
use medledger_pki::{Role, files};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
pub(crate) struct CollectorArgs {
    /// The configuration file (TOML; see docs/operations.md).
    #[arg(long, env = "MEDLEDGER_COLLECTOR_CONFIG")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<CollectorCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum CollectorCommand {
    /// Batches the server refused with a 4xx, held aside so that the
    /// readings after them go on.
    #[command(subcommand)]
    DeadLetters(DeadLetters),
}

#[derive(Debug, clap::Subcommand)]
enum DeadLetters {
    /// Every held batch: readings, the server's status and why.
    List,
    /// Put a held batch (or all) back in the outbox; a running collector
    /// sends it again within a second or so.
    Retry {
        /// The dead letter's number, from `list`.
        #[arg(required_unless_present = "all")]
        id: Option<u64>,
        /// Every dead letter.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

pub(crate) fn run(args: CollectorArgs) -> Result<()> {
    let config = ConfigFile::load(&args.config)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    if let Some(CollectorCommand::DeadLetters(command)) = args.command {
        return runtime.block_on(dead_letters(&config, command));
    }
    runtime.block_on(async move {
        let started = start(&config, None).await?;
        println!("medledger collector {}", started.subject);
        print_endpoints(&started, &config);
        roles::shutdown().await;
        println!("medledger collector: stopping");
        Ok(())
    })
}

/// A started collector, its cards and the subject of its certificate.
pub(crate) struct Started {
    pub(crate) collector: Collector,
    pub(crate) cards: Cards,
    pub(crate) subject: String,
    /// Whether it hands its batches to a server in this process.
    pub(crate) in_process: bool,
}

/// `dead-letters list|retry` on the collector's database.
async fn dead_letters(config: &ConfigFile, command: DeadLetters) -> Result<()> {
    let db = roles::open_db(
        config.database.as_deref(),
        &config.data,
        medledger_storage::Part::Collector,
    )
    .await?;
    match command {
        DeadLetters::List => {
            let letters = medledger_collector::dead_letters::list(&db).await?;
            if letters.is_empty() {
                println!("no dead letters: every batch reached the server");
            }
            for l in letters {
                println!(
                    "{:>4}  {} readings  refused {} ({}): {}  at {}{}",
                    l.id,
                    l.readings,
                    l.status,
                    l.problem,
                    l.detail,
                    medledger_protocol::fhir::instant(l.at_ms),
                    if l.told {
                        ""
                    } else {
                        "  (patients not told yet)"
                    }
                );
            }
        }
        DeadLetters::Retry { id, all } => {
            let which = if all { None } else { id };
            let n = medledger_collector::dead_letters::retry(&db, which).await?;
            match which {
                Some(id) if n == 0 => {
                    anyhow::bail!("there is no dead letter {id} (see `dead-letters list`)")
                }
                _ => {
                    println!("{n} readings back in the outbox; a running collector sends them now")
                }
            }
        }
    }
    Ok(())
}

/// Prints where the collector serves and what it holds.
pub(crate) fn print_endpoints(started: &Started, config: &ConfigFile) {
    println!(
        "  devices      https://{}/v1/readings",
        started.collector.addr()
    );
    if let Some(m) = started.collector.metrics_addr() {
        println!(
            "  metrics      {}/metrics (and /livez, /readyz)",
            medledger_pki::health::base_url(m)
        );
    }
    if started.in_process {
        println!("  forwards to  the server in this process (in memory, verified once)");
    } else {
        println!(
            "  forwards to  https://{} ({})",
            config.server, config.server_name
        );
    }
    println!(
        "  cards        {} patient card(s) from {} (new ones are picked up)",
        started.cards.len(),
        config.cards.display()
    );
}

/// How often the cards directory is looked at for new cards.
const CARDS_POLL: Duration = Duration::from_secs(2);

/// Starts a collector as `config` says, re-reading the CRL as it changes
/// and taking up new cards put in its cards directory. It forwards to
/// `upstream` if given (a server in this process), else to the server the
/// configuration names.
pub(crate) async fn start(config: &ConfigFile, upstream: Option<Upstream>) -> Result<Started> {
    let in_process = upstream.is_some();
    let db = roles::open_db(
        config.database.as_deref(),
        &config.data,
        medledger_storage::Part::Collector,
    )
    .await?;
    let roles::NodeStart {
        credentials,
        identity,
        contracts,
    } = roles::node_start(
        Role::Collector,
        &config.credentials,
        &config.chain_rpc,
        &config.registry,
        &config.ca_root,
    )
    .await?;
    let client_auth = roles::client_auth(&config.ca_root, &config.crl, &[Role::Device])?;
    let cards = Cards::load_dir(&config.cards)?;
    let root_der = files::read_first(&config.ca_root, "CERTIFICATE")?;
    let collector = Collector::start(Settings {
        listen: roles::socket(&config.listen, "listen")?,
        metrics_listen: config
            .metrics_listen
            .as_deref()
            .map(|m| roles::socket(m, "metrics_listen"))
            .transpose()?,
        credentials,
        root_der,
        client_auth: client_auth.clone(),
        db,
        contracts,
        cards: cards.clone(),
        upstream: upstream.unwrap_or_else(|| {
            let first = std::iter::once((&config.server, &config.server_name));
            let others = config.failover.iter().map(|f| (&f.server, &f.server_name));
            Upstream::Servers(
                first
                    .chain(others)
                    .map(|(addr, name)| ServerTarget {
                        addr: addr.clone(),
                        name: name.clone(),
                    })
                    .collect(),
            )
        }),
        limits: config.limits.clone(),
        mqtt: config.mqtt.as_ref().map(|m| MqttSettings {
            broker: m.broker.clone(),
            server_name: m.broker_name.clone(),
            subscription: m.subscription.clone(),
            // Stable across certificate renewals: the broker keeps the
            // session, and the readings not yet acknowledged, under it.
            client_id: match identity.address() {
                Some(address) => format!("medledger-collector-{address}"),
                None => format!("medledger-collector-{}", identity.fingerprint_hex()),
            },
        }),
    })
    .await?;
    roles::watch_crl(config.crl.clone(), vec![client_auth]);
    let (dir, watched) = (config.cards.clone(), cards.clone());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(CARDS_POLL).await;
            match Cards::load_dir(&dir) {
                Ok(found) => {
                    for card in found.all() {
                        if watched.get(&card.account()).is_none() {
                            println!("medledger collector: a new card for {}", card.account());
                            watched.insert(card);
                        }
                    }
                }
                Err(e) => eprintln!("medledger collector: reading the cards: {e}"),
            }
        }
    });
    Ok(Started {
        collector,
        cards,
        subject: identity.subject,
        in_process,
    })
}
