//! `medledger demo`: a small hospital in this process, run through the
//! access scenarios and every attack, with a readable report
//! (`medledger_sim::demo`). Exits non-zero if any expectation fails.

use anyhow::{Context, Result, bail};
use clap::Args;
use medledger_sim::demo::{self, Check, DemoOptions, Report};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Readings each device sends.
    #[arg(long, default_value_t = 10)]
    readings: usize,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Leave the hospital running afterwards, and print how to reach it.
    #[arg(long)]
    keep: bool,
    /// Keep the patients' card keys on this PKCS#11 token while the demo
    /// runs (`pkcs11:token=LABEL?module-path=...&pin-source=file:...`):
    /// each card signs there.
    #[arg(long, value_name = "PKCS11_URI")]
    cards_on_token: Option<String>,
}

pub(crate) fn run(args: DemoArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        println!("medledger demo: a small hospital in this process, on a temporary directory");
        let started = Instant::now();
        let progress = move |step: &str| {
            eprintln!("  [{:>5.1} s] {step}", started.elapsed().as_secs_f64());
        };
        let options = DemoOptions {
            readings_per_device: args.readings.max(1),
            card_token: args.cards_on_token.clone(),
        };
        let (demo, report) = demo::run(&options, &progress).await?;
        print_report(&report);
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_vec_pretty(&report)?)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("The report as JSON: {}", path.display());
        }
        if args.keep {
            keep(&demo).await?;
        }
        if !report.ok() {
            bail!("some expectations failed (marked FAIL above)");
        }
        Ok(())
    })
}

fn mark(ok: bool) -> &'static str {
    if ok { "ok  " } else { "FAIL" }
}

fn print_checks(title: &str, checks: &[Check]) {
    println!();
    println!("{title}");
    for c in checks {
        println!("  {} {}", mark(c.ok), c.what);
        println!("       expected: {}", c.expected);
        println!("       observed: {}", c.observed);
    }
}

fn print_report(r: &Report) {
    println!();
    println!(
        "Hospital: {} departments, {} patients, {} devices ({} over MQTT, the rest over HTTPS), {} staff",
        r.hospital["departments"],
        r.hospital["patients"],
        r.hospital["devices"],
        r.hospital.get("devices over MQTT").copied().unwrap_or(0),
        r.hospital["staff"]
    );
    let rejected: Vec<String> = r.rejected.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "Readings: {} accepted by the collectors; rejected by cause: {}",
        r.accepted,
        if rejected.is_empty() {
            "none".to_owned()
        } else {
            rejected.join(", ")
        }
    );
    print_checks("Access scenarios:", &r.accesses);
    print_checks("Attacks:", &r.attacks);
    println!();
    println!("Patient ledgers against the chain:");
    for l in &r.ledgers {
        println!(
            "  {} {:<4} {:>4} entries, {:>2} checkpoints anchored, {:>2} alerts{}",
            mark(l.ok),
            l.patient,
            l.entries,
            l.anchors,
            l.alerts,
            if l.problem.is_empty() {
                String::new()
            } else {
                format!(": {}", l.problem)
            }
        );
    }
    print_checks("Right to be forgotten:", &r.forgotten);
    print_checks(
        "Backup (taken before the erasure) and restore:",
        &r.restored,
    );
    println!();
    println!("Roots anchored on chain: {}", r.anchors);
    let checks = r
        .accesses
        .iter()
        .chain(&r.attacks)
        .chain(&r.forgotten)
        .chain(&r.restored);
    let total = checks.clone().count() + r.ledgers.len();
    let failed = checks.filter(|c| !c.ok).count() + r.ledgers.iter().filter(|l| !l.ok).count();
    if failed == 0 {
        println!("All {total} expectations held, in {:.1} s.", r.seconds);
    } else {
        println!(
            "{failed} of {total} expectations FAILED, in {:.1} s.",
            r.seconds
        );
    }
}

/// Keeps the hospital running until Ctrl-C, after saying how to reach it.
async fn keep(demo: &demo::Demo) -> Result<()> {
    let h = &demo.hospital;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let rpc = format!("http://{}", listener.local_addr()?);
    tokio::spawn(medledger_chain::rpc::http::serve(
        medledger_chain::rpc::Rpc::new(h.node.clone()),
        listener,
    ));
    let people = h.dir.path().join("people");
    std::fs::create_dir_all(&people)?;
    for (label, patient, _) in &demo.patients {
        patient.card.write(&people.join(label))?;
    }
    for (label, staff) in &demo.staff {
        staff.issued.write(&people.join(label.replace(' ', "-")))?;
    }
    let root = h.ca.dir().join("root.crt");
    println!();
    println!("The hospital keeps running (Ctrl-C stops it):");
    println!("  chain JSON-RPC       {rpc}");
    println!("  Registry             {}", h.admin.addresses().registry);
    println!("  server               {}", h.server.addr());
    if let Some(portal) = h.server.portal_addr() {
        println!(
            "  web portal           https://{portal}/ (sign in with a PERSON.eth.key below; trust the root CA)"
        );
    }
    println!("  cardiology collector {}", h.collector.addr());
    println!("  neurology collector  {}", demo.neurology.collector.addr());
    println!("  certificates, keys   {}", people.display());
    println!("  root CA              {}", root.display());
    println!();
    println!("For example, p1's alerts:");
    println!(
        "  medledger alerts list --server {} --cert {} --ca-root {}",
        h.server.addr(),
        people.join("p1").display(),
        root.display()
    );
    println!("and p1's ledger against the chain:");
    println!(
        "  medledger verify --patient {} --rpc {rpc} --registry {} --server {} --cert {} --ca-root {}",
        demo.patients[0].1.patient_ref,
        h.admin.addresses().registry,
        h.server.addr(),
        people.join("p1").display(),
        root.display()
    );
    crate::roles::shutdown().await;
    Ok(())
}
