//! `medledger ca broker`: what a Mosquitto broker needs to take readings
//! from devices for the collectors.
//!
//! ```text
//!  OUT/mosquitto.conf  listener with client certificates from our CA,
//!                      our CRL, the certificate's name as the username
//!  OUT/acl             devices: write medledger/v1/readings/{their name},
//!                      read medledger/v1/receipts/{their name}[/...];
//!                      each collector: read every readings topic, write
//!                      every receipts topic
//!  OUT/ca.pem          the root and the issuing CAs
//!  OUT/crl.pem         the CRLs (copy again after each revocation, then
//!                      reload Mosquitto: SIGHUP)
//!  OUT/broker.crt/.key the broker's certificate (role server)
//! ```

use anyhow::{Context, Result, bail};
use clap::Args;
use medledger_pki::ca::layout;
use medledger_pki::{Ca, Identity, LeafRequest, Role, files};
use medledger_protocol::mqtt;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub(crate) struct BrokerArgs {
    /// The CA directory.
    #[arg(long)]
    ca: PathBuf,
    /// The directory to write the broker's files into.
    #[arg(long)]
    out: PathBuf,
    /// The name devices and collectors reach the broker by (its
    /// certificate's name; `localhost` and 127.0.0.1 are always on it).
    #[arg(long, default_value = "localhost")]
    name: String,
    /// The address the broker listens on.
    #[arg(long, default_value = "0.0.0.0")]
    listen: String,
    /// The port the broker listens on (MQTT over TLS: 8883).
    #[arg(long, default_value_t = 8883)]
    port: u16,
    /// The user Mosquitto runs as when started as root (it must read
    /// OUT: `chown -R USER OUT`).
    #[arg(long, default_value = "mosquitto")]
    run_as: String,
    /// A collector's certificate: it may read every device's readings and
    /// answer on every receipts topic. Once per collector.
    #[arg(long = "collector", required = true)]
    collectors: Vec<PathBuf>,
}

pub(crate) fn run(args: BrokerArgs) -> Result<()> {
    let ca = Ca::open(&args.ca)?;
    let mut collectors = Vec::new();
    for path in &args.collectors {
        let der = files::read_first(path, "CERTIFICATE")?;
        let id = Identity::from_peer_certificate(&der)
            .with_context(|| format!("reading {}", path.display()))?;
        if id.role != Role::Collector {
            bail!(
                "{} is a {} certificate: --collector takes collectors' certificates",
                path.display(),
                id.role
            );
        }
        collectors.push(id.subject);
    }
    files::private_dir(&args.out)?;
    let out = absolute(&args.out)?;
    files::private_dir(&out.join("data"))?;

    let prefix = out.join("broker");
    if !files::with_suffix(&prefix, ".key").exists() {
        let mut request = LeafRequest::new(Role::Server);
        request.common_name = Some(args.name.clone());
        request.subject_alt_names = vec![args.name.clone()];
        let mut issued = ca.issue(&request)?;
        // The broker signs no transactions.
        issued.account = None;
        issued.write(&prefix)?;
    }
    let bundle: String = std::iter::once(ca.root_cert_der()?)
        .chain(ca.issuing_certs_der())
        .map(|der| files::to_pem("CERTIFICATE", &der))
        .collect();
    files::write_public(&out.join("ca.pem"), bundle.as_bytes())?;
    let crl = std::fs::read(ca.dir().join(layout::CRL))
        .with_context(|| format!("reading the CRL in {}", ca.dir().display()))?;
    files::write_public(&out.join("crl.pem"), &crl)?;
    files::write_public(&out.join("acl"), acl(&collectors).as_bytes())?;
    files::write_public(
        &out.join("mosquitto.conf"),
        config(&out, &args).as_bytes(),
    )?;
    println!(
        "wrote a Mosquitto broker for {} collector(s) into {}",
        collectors.len(),
        out.display()
    );
    for f in ["mosquitto.conf", "acl", "ca.pem", "crl.pem", "broker.crt"] {
        println!("  {}", out.join(f).display());
    }
    println!(
        "  broker.key (private, mode 0600): Mosquitto runs as {}, who must read them all",
        args.run_as
    );
    println!("start it:     mosquitto -c {}", out.join("mosquitto.conf").display());
    println!(
        "collectors:   [mqtt] broker = \"{}:{}\", broker_name = \"{}\"",
        args.name, args.port, args.name
    );
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

/// The ACL: a device's name (its EPC, 24 hex digits) is its username.
fn acl(collectors: &[String]) -> String {
    let readings = mqtt::READINGS_PREFIX;
    let receipts = mqtt::RECEIPTS_PREFIX;
    let mut acl = format!(
        "# medledger: written by `medledger ca broker`.\n\
         # Devices (the username is the certificate's name, the EPC): each\n\
         # publishes its own readings and reads its own receipts.\n\
         pattern write {readings}%u\n\
         pattern read {receipts}%u\n\
         pattern read {receipts}%u/#\n"
    );
    for collector in collectors {
        acl.push_str(&format!(
            "\n# A collector: reads every device's readings (shared subscription),\n\
             # answers on every receipts topic.\n\
             user {collector}\n\
             topic read {readings}+\n\
             topic write {receipts}#\n"
        ));
    }
    acl
}

fn config(out: &Path, args: &BrokerArgs) -> String {
    let at = |f: &str| out.join(f).display().to_string();
    format!(
        "# medledger: written by `medledger ca broker`.\n\
         user {user}\n\
         per_listener_settings false\n\
         allow_anonymous false\n\
         acl_file {acl}\n\
         # Collectors take up to 1000 readings at once; a device's session\n\
         # keeps what it has not had answered.\n\
         max_inflight_messages 1000\n\
         max_queued_messages 100000\n\
         persistence true\n\
         persistence_location {data}/\n\
         \n\
         listener {port} {listen}\n\
         cafile {ca}\n\
         certfile {crt}\n\
         keyfile {key}\n\
         crlfile {crl}\n\
         require_certificate true\n\
         use_identity_as_username true\n\
         tls_version tlsv1.2\n",
        user = args.run_as,
        port = args.port,
        listen = args.listen,
        acl = at("acl"),
        data = at("data"),
        ca = at("ca.pem"),
        crt = at("broker.crt"),
        key = at("broker.key"),
        crl = at("crl.pem"),
    )
}
