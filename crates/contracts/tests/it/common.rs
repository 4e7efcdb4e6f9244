//! A hospital on a fresh embedded chain: the deployed contracts, an admin,
//! staff, a collector and an admitted patient, each with its own signer.

use alloy::primitives::{Address, B256, keccak256};
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::client::RpcClient;
use alloy::rpc::types::TransactionReceipt;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolEvent;
use medledger_chain::rpc::Rpc;
use medledger_chain::rpc::transport::InProcess;
use medledger_chain::{Node, NodeConfig, RegistryPermissions, Sealing};
use medledger_contracts::{Contracts, Error, StaffRole, send, short_text, signing_provider};
use medledger_pki::Epc;
use std::sync::Arc;
use std::time::Duration;

pub type Client = Contracts<DynProvider>;

/// Someone with a chain account, and the contracts as they see them.
pub struct Actor {
    pub address: Address,
    pub client: Client,
}

impl std::ops::Deref for Actor {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

pub struct Hospital {
    _dir: tempfile::TempDir,
    pub node: Node,
    pub admin: Actor,
    pub doctor: Actor,
    pub nurse: Actor,
    /// Active staff, not assigned to the patient.
    pub other_doctor: Actor,
    pub collector: Actor,
    pub patient: Actor,
    pub patient_ref: B256,
    /// Someone the Registry does not know (sends through the genesis allowlist).
    pub stranger: Actor,
}

pub fn text(s: &str) -> B256 {
    short_text(s).expect("short")
}

pub fn patient_ref(id: &str) -> B256 {
    keccak256(format!("salt:{id}"))
}

pub fn epc(serial: u64) -> Epc {
    Epc::new(3, "0614141", "812345", serial).expect("valid EPC")
}

/// A provider that signs as `signer`, through the in-process transport.
pub fn provider(node: &Node, signer: &PrivateKeySigner) -> DynProvider {
    let client = RpcClient::new(InProcess::new(Rpc::new(node.clone())), true);
    signing_provider(signer.clone(), client)
}

/// The first `E` in a receipt.
pub fn event<E: SolEvent>(receipt: &TransactionReceipt) -> E {
    receipt
        .inner
        .logs()
        .iter()
        .find_map(|log| E::decode_log(&log.inner).ok())
        .map(|log| log.data)
        .unwrap_or_else(|| panic!("no {} event", E::SIGNATURE))
}

/// Asserts that `result` is a revert with the contract error `name`.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(result: Result<T, Error>, name: &str) {
    match result {
        Err(e) => assert_eq!(e.revert_name(), Some(name), "{e}"),
        Ok(v) => panic!("expected {name}, got {v:?}"),
    }
}

impl Hospital {
    pub async fn start() -> Hospital {
        let dir = tempfile::tempdir().expect("tempdir");
        let admin = PrivateKeySigner::random();
        let stranger = PrivateKeySigner::random();
        let node = Node::start(&NodeConfig {
            data_dir: dir.path().to_owned(),
            chain_id: 31337,
            allow: vec![admin.address(), stranger.address()],
            sealing: Sealing::OnDemand {
                min_interval: Duration::from_millis(1),
            },
        })
        .expect("node starts");
        let admin_client = Contracts::deploy(provider(&node, &admin))
            .await
            .expect("deploys");
        node.set_permissions(Arc::new(RegistryPermissions::new(
            admin_client.addresses().registry,
        )));
        let as_ = |signer: &PrivateKeySigner| Actor {
            address: signer.address(),
            client: admin_client.with_provider(provider(&node, signer)),
        };
        let [doctor, nurse, other_doctor, collector, patient] =
            std::array::from_fn(|_| PrivateKeySigner::random());
        let registry = admin_client.registry();
        for (who, role, dept) in [
            (&doctor, StaffRole::Doctor, "cardiology"),
            (&nurse, StaffRole::Nurse, "cardiology"),
            (&other_doctor, StaffRole::Doctor, "oncology"),
        ] {
            send(registry.registerStaff(who.address(), role.code(), text(dept)))
                .await
                .expect("staff registered");
        }
        send(registry.registerNode(collector.address(), 1, text("cardiology/2")))
            .await
            .expect("collector registered");
        let patient_ref = patient_ref("p1");
        send(registry.admit(
            patient_ref,
            patient.address(),
            text("cardiology"),
            text("floor-2"),
            text("room-201"),
            text("bed-1"),
            vec![doctor.address(), nurse.address()],
        ))
        .await
        .expect("admitted");
        Hospital {
            doctor: as_(&doctor),
            nurse: as_(&nurse),
            other_doctor: as_(&other_doctor),
            collector: as_(&collector),
            patient: as_(&patient),
            stranger: as_(&stranger),
            admin: Actor {
                address: admin.address(),
                client: admin_client,
            },
            patient_ref,
            node,
            _dir: dir,
        }
    }

    /// A fresh account the Registry does not know (yet).
    pub fn account(&self) -> Actor {
        let signer = PrivateKeySigner::random();
        Actor {
            address: signer.address(),
            client: self.admin.with_provider(provider(&self.node, &signer)),
        }
    }

    /// The chain's latest block timestamp.
    pub async fn now(&self) -> u64 {
        let block = self
            .admin
            .provider()
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .expect("rpc")
            .expect("a head");
        block.header.timestamp
    }
}
