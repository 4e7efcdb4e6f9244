//! `medledger ca broker`: a Mosquitto broker's files, written from the CA
//! (see `medledger_mqtt::mosquitto`).

use anyhow::Result;
use clap::Args;
use medledger_mqtt::mosquitto::{self, BrokerSpec};
use medledger_pki::Ca;
use std::path::PathBuf;

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
    let spec = BrokerSpec {
        collectors: mosquitto::collector_names(&args.collectors)?,
        name: args.name,
        listen: args.listen,
        port: args.port,
        run_as: args.run_as,
    };
    let conf = mosquitto::write(&ca, &args.out, &spec)?;
    let dir = conf.parent().unwrap_or(&args.out);
    println!(
        "wrote a Mosquitto broker for {} collector(s) into {}",
        spec.collectors.len(),
        dir.display()
    );
    for f in ["mosquitto.conf", "acl", "ca.pem", "crl.pem", "broker.crt"] {
        println!("  {}", dir.join(f).display());
    }
    println!(
        "  broker.key (private, mode 0600): Mosquitto runs as {}, who must read them all",
        spec.run_as
    );
    println!("start it:     mosquitto -c {}", conf.display());
    println!(
        "collectors:   [mqtt] broker = \"{}:{}\", broker_name = \"{}\"",
        spec.name, spec.port, spec.name
    );
    Ok(())
}
