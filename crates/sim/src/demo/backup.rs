//! The right to be forgotten, and a backup that outlives it: p10 is
//! erased; a backup taken before the erasure is restored, and p10 is
//! erased again because the live chain records it.

use super::{Check, Demo, cause, check};
use crate::signals::{KINDS, Vitals};
use crate::{Readings, Wait, post_readings};
use anyhow::{Context, Result};
use medledger_pki::Role;
use medledger_pki::https::Connection;
use medledger_storage::{Db, LocalDir};
use std::time::Duration;

impl Demo {
    /// p10 asks to be forgotten: their readings no longer open, their
    /// ledger is a tombstone that still matches the chain, and nothing new
    /// is taken for them.
    pub async fn forget(&mut self, progress: &(dyn Fn(&str) + Sync)) -> Result<Vec<Check>> {
        progress("right to be forgotten: p10 is erased");
        let i = self.patients.len() - 1;
        let (label, patient, _) = &self.patients[i];
        let label = label.clone();
        let patient_ref = patient.patient_ref;
        let mut checks = Vec::new();
        let mut conn = self.patient_conn(i).await?;
        let reply = conn
            .request(
                "DELETE",
                &format!("/v1/patients/{}", hex::encode(patient_ref)),
                &[],
                vec![],
            )
            .await?;
        let done: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        checks.push(check(
            &format!("{label} asks to be erased"),
            "200: keys destroyed, blobs deleted, ledger reduced to a signed tombstone",
            format!(
                "{}: {} readings unlinked, {} blobs deleted",
                reply.status, done["readings"], done["blobs"]
            ),
            reply.status == 200,
        ));
        // Their readings: the hashes of what their devices sent.
        let theirs: Vec<usize> = self
            .devices
            .iter()
            .enumerate()
            .filter(|(_, (_, p))| *p == i)
            .map(|(k, _)| k)
            .collect();
        let n = self.sent.len() / self.devices.len().max(1);
        let mut opened = 0;
        for k in &theirs {
            for hash in &self.sent[k * n..(k + 1) * n] {
                if matches!(self.hospital.server.reading(hash).await, Ok(Some(_))) {
                    opened += 1;
                }
            }
        }
        checks.push(check(
            &format!("reading {label}'s stored readings afterwards"),
            "none opens",
            format!("{opened} of {} open", theirs.len() * n),
            opened == 0,
        ));
        let ledger = self.hospital.server.ledger();
        let bundle = serde_json::to_string(&ledger.export(&patient_ref.0).await?)?;
        let observed =
            match medledger_patient_ledger::bundle::verify(&bundle, Some(&ledger.verifier_key())) {
                Ok(report) => {
                    let anchors = self.hospital.admin.checkpoint_anchors(patient_ref).await?;
                    let matched = anchors
                        .iter()
                        .filter(|a| report.check_extends(a.size, &a.root.0) == Ok(true))
                        .count();
                    format!(
                        "erased: {}; {} entries, none held; {matched} of {} anchors still match",
                        report.erased,
                        report.size,
                        anchors.len()
                    )
                }
                Err(e) => format!("does not verify: {e}"),
            };
        checks.push(check(
            &format!("{label}'s ledger"),
            "a signed tombstone that still matches its latest anchor",
            observed.clone(),
            observed.starts_with("erased: true") && !observed.contains(" 0 of"),
        ));
        let k = theirs[0];
        let kind = KINDS[k % KINDS.len()];
        let addr = self.patients[i].2.clone();
        let config = self
            .hospital
            .client_config(&self.devices[k].0.credentials(), Role::Collector)?;
        let mut vitals = Vitals::new(1);
        let device = &mut self.devices[k].0;
        let cose = device.reading(vitals.observe(&kind, medledger_protocol::now_ms()));
        let mut conn = Connection::open(config, &addr, "localhost").await?;
        let reply = post_readings(&mut conn, Readings::One(cose), Wait::Committed).await?;
        checks.push(check(
            &format!("one of {label}'s devices sends a new reading"),
            "refused by the server: the patient was erased",
            cause(&reply),
            reply.status != 202 && String::from_utf8_lossy(&reply.body).contains("erased"),
        ));
        Ok(checks)
    }

    /// Backs up the server's data and the chain while they run, as
    /// `medledger backup` does and with the same copy
    /// ([`Db::vacuum_into`], [`LocalDir::copy_blobs`]): the database by
    /// SQLite's online copy, the blobs after it (they never change once
    /// written), the chain last (it only grows). Returns the backup
    /// directory.
    pub async fn backup(&self, progress: &(dyn Fn(&str) + Sync)) -> Result<std::path::PathBuf> {
        progress("backing up the server and the chain while they run");
        let dir = self.hospital.dir.path();
        let out = dir.join("backup");
        std::fs::create_dir_all(out.join("server"))?;
        let db = Db::open_sqlite(&dir.join("server/server.db")).await?;
        db.vacuum_into(&out.join("server/server.db"))
            .await
            .context("copying the server's database")?;
        LocalDir::copy_blobs(&dir.join("server/blobs"), &out.join("server/blobs"))?;
        self.hospital.node.backup(&out.join("chain"))?;
        Ok(out)
    }

    /// Starts the server of the backup on the backup's chain, erases again
    /// every patient whose erasure the live chain records, and checks
    /// every ledger against the backup chain's anchors.
    pub async fn restore(
        &self,
        backup: &std::path::Path,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Vec<Check>> {
        progress("restoring the backup taken before the erasure");
        let h = &self.hospital;
        let node = medledger_chain::Node::start(&medledger_chain::NodeConfig {
            data_dir: backup.join("chain"),
            chain_id: h.node.chain_id(),
            allow: vec![h.admin_signer.address()],
            sealing: medledger_chain::Sealing::OnDemand {
                min_interval: Duration::from_millis(1),
            },
        })?;
        node.set_permissions(std::sync::Arc::new(
            medledger_chain::RegistryPermissions::new(h.admin.addresses().registry),
        ));
        let server = h.restored_server(&backup.join("server"), &node).await?;
        let live: Vec<[u8; 32]> = h
            .admin
            .erasures()
            .await?
            .iter()
            .map(|a| a.patient.0)
            .collect();
        let again = server.erase_recorded(&live).await?;
        let (label, forgotten, _) = &self.patients[self.patients.len() - 1];
        let erased = server.ledger().is_erased(&forgotten.patient_ref.0).await?;
        let mut checks = vec![check(
            &format!("restoring a backup taken before {label}'s erasure"),
            &format!("{label} erased again: the live chain records the erasure"),
            format!("{again} patient(s) erased again; {label} erased: {erased}"),
            again == 1 && erased,
        )];
        let failures = server.verify_ledgers().await?;
        let patients = server.patients().await?;
        checks.push(check(
            "every restored ledger against the backup chain's anchors",
            "all verify",
            if failures.is_empty() {
                format!("{} of {} verify", patients.len(), patients.len())
            } else {
                failures.join("; ")
            },
            failures.is_empty() && patients.len() == self.patients.len(),
        ));
        let n = self.sent.len() / self.devices.len().max(1);
        let (mut kept, mut back) = (0, 0);
        for (k, (_, p)) in self.devices.iter().enumerate() {
            for hash in &self.sent[k * n..(k + 1) * n] {
                if matches!(server.reading(hash).await, Ok(Some(_))) {
                    if *p == self.patients.len() - 1 {
                        back += 1;
                    } else {
                        kept += 1;
                    }
                }
            }
        }
        checks.push(check(
            "the restored readings",
            &format!("everyone's open but {label}'s"),
            format!("{kept} open; {back} of {label}'s"),
            kept > 0 && back == 0,
        ));
        Ok(checks)
    }
}
