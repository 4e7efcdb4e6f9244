//! `medledger besu config` and `medledger besu allowlist`.
//!
//! Besu is not installed here (no registry we reach ships it). So the
//! allowlist is kept on fakes of a Besu node: its three account `PERM`
//! methods with their `-32000` refusals, and the way it rewrites its
//! permissions file after each change, as Besu's documentation and source
//! have them (`PermAddAccountsToAllowlist`, `RpcErrorType`,
//! `AllowlistPersistor`): one served over HTTP, as a validator's loopback
//! listener is, one over WebSocket, as an RPC node's. The Registry runs on
//! anvil, a real node, which also carries the funding transfers.

use crate::ca::ok;
use alloy::primitives::{Address, U256, keccak256};
use alloy::providers::Provider;
use alloy::rpc::client::RpcClient;
use alloy::signers::local::PrivateKeySigner;
use axum::extract::State;
use futures_util::{SinkExt, StreamExt};
use medledger_chain::test_utils::{Anvil, tool};
use medledger_contracts::{Contracts, StaffRole, send, signing_provider};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/besu-qbft")
}

/// The committed example is what the command writes from its
/// network.toml, and the genesis names its validators.
#[test]
fn besu_config_writes_the_committed_example_from_its_description() {
    let out = tempfile::tempdir().unwrap();
    let network = example().join("network.toml");
    ok(&[
        "besu",
        "config",
        "--network",
        network.to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let mut written = 0;
    for name in [
        "genesis.json",
        "permissions_config.toml",
        "validator1/config.toml",
        "validator4/config.toml",
        "rpc-a/config.toml",
    ] {
        let ours = std::fs::read_to_string(out.path().join(name)).unwrap();
        let committed = std::fs::read_to_string(example().join(name)).unwrap_or_default();
        assert!(
            ours == committed,
            "deploy/besu-qbft/{name} is not what `medledger besu config --network \
             deploy/besu-qbft/network.toml --out deploy/besu-qbft` writes: run it"
        );
        written += 1;
    }
    assert_eq!(written, 5);

    // extraData, decoded: [vanity, [validators], [], round, []], the
    // validators the accounts of the four validator keys in order.
    let description: toml::Table =
        toml::from_str(&std::fs::read_to_string(&network).unwrap()).unwrap();
    let expected: Vec<[u8; 20]> = description["node"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"].as_str() == Some("validator"))
        .map(|n| {
            let key = hex::decode(n["public_key"].as_str().unwrap().trim_start_matches("0x"));
            keccak256(key.unwrap())[12..].try_into().unwrap()
        })
        .collect();
    assert_eq!(expected.len(), 4);
    let genesis: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("genesis.json")).unwrap())
            .unwrap();
    let extra = hex::decode(
        genesis["extraData"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
    );
    let extra = extra.unwrap();
    let mut buf = extra.as_slice();
    let outer = alloy_rlp::Header::decode(&mut buf).unwrap();
    assert!(outer.list);
    assert_eq!(outer.payload_length, buf.len());
    let vanity: [u8; 32] = alloy_rlp::Decodable::decode(&mut buf).unwrap();
    assert_eq!(vanity, [0; 32]);
    let validators: Vec<[u8; 20]> = alloy_rlp::Decodable::decode(&mut buf).unwrap();
    assert_eq!(validators, expected);
    let votes: Vec<[u8; 20]> = alloy_rlp::Decodable::decode(&mut buf).unwrap();
    assert!(votes.is_empty());
    let round: u64 = alloy_rlp::Decodable::decode(&mut buf).unwrap();
    assert_eq!(round, 0);
    let seals: Vec<Vec<u8>> = alloy_rlp::Decodable::decode(&mut buf).unwrap();
    assert!(seals.is_empty() && buf.is_empty());
    assert_eq!(genesis["config"]["chainId"], 6_284_171_939u64);
    assert_eq!(genesis["config"]["zeroBaseFee"], true);

    // Every node may connect to every other.
    let permissions: toml::Table = toml::from_str(
        &std::fs::read_to_string(out.path().join("permissions_config.toml")).unwrap(),
    )
    .unwrap();
    assert_eq!(permissions["nodes-allowlist"].as_array().unwrap().len(), 5);

    // A description with a key that is no point of the curve is refused
    // by name.
    let bad = out.path().join("bad.toml");
    let text = std::fs::read_to_string(&network).unwrap().replacen(
        "public_key = \"0x11c7",
        "public_key = \"0x11c8",
        1,
    );
    std::fs::write(&bad, text).unwrap();
    let said = crate::ca::fails(&[
        "besu",
        "config",
        "--network",
        bad.to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(
        said.contains("validator1") && said.contains("not a point of secp256k1"),
        "{said}"
    );
}

/// A fake of one Besu node's account allowlist.
struct FakeBesu {
    /// The allowlist in the node's memory, lower-case.
    list: Mutex<Vec<String>>,
    /// Its permissions file.
    file: PathBuf,
}

const ACCOUNTS: &str = "accounts-allowlist";

/// A TOML array's items as Besu writes them: quoted, comma-separated.
fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(",")
}

impl FakeBesu {
    fn new(file: PathBuf, accounts: &[String], nodes: &[String]) -> Arc<FakeBesu> {
        std::fs::write(
            &file,
            format!(
                "# the operator's comment\n{ACCOUNTS}=[{}]\nnodes-allowlist=[{}]\n",
                quoted(accounts),
                quoted(nodes)
            ),
        )
        .unwrap();
        Arc::new(FakeBesu {
            list: Mutex::new(accounts.to_vec()),
            file,
        })
    }

    fn list(&self) -> BTreeSet<String> {
        self.list.lock().unwrap().iter().cloned().collect()
    }

    fn file(&self) -> toml::Table {
        toml::from_str(&std::fs::read_to_string(&self.file).unwrap()).unwrap()
    }

    fn answer(&self, request: &Value) -> Value {
        let result = match request["method"].as_str().unwrap_or_default() {
            "perm_getAccountsAllowlist" => Ok(json!(*self.list.lock().unwrap())),
            "perm_addAccountsToAllowlist" => self.change(&request["params"][0], true),
            "perm_removeAccountsFromAllowlist" => self.change(&request["params"][0], false),
            _ => Err((-32604, "Method not enabled")),
        };
        match result {
            Ok(result) => json!({"jsonrpc": "2.0", "id": request["id"], "result": result}),
            Err((code, message)) => json!({
                "jsonrpc": "2.0",
                "id": request["id"],
                "error": {"code": code, "message": message},
            }),
        }
    }

    /// Besu's `addAccounts`/`removeAccounts`: checks, the change in
    /// memory, then the file rewritten (AllowlistPersistor: the other lists
    /// kept, comments dropped, this list appended without a newline).
    fn change(&self, params: &Value, add: bool) -> Result<Value, (i64, &'static str)> {
        let accounts: Vec<String> = params
            .as_array()
            .ok_or((-32602, "Invalid params"))?
            .iter()
            .map(|a| a.as_str().unwrap_or_default().to_lowercase())
            .collect();
        if accounts.is_empty() {
            return Err((-32000, "Request contains an empty list of accounts"));
        }
        let valid = |a: &String| {
            a.len() == 42 && a.starts_with("0x") && a[2..].bytes().all(|b| b.is_ascii_hexdigit())
        };
        if !accounts.iter().all(valid) {
            return Err((-32000, "Request contains an invalid account"));
        }
        if accounts.iter().collect::<BTreeSet<_>>().len() != accounts.len() {
            return Err((-32000, "Request contains duplicate accounts"));
        }
        let mut list = self.list.lock().unwrap();
        if add && accounts.iter().any(|a| list.contains(a)) {
            return Err((-32000, "Cannot add an existing account to allowlist"));
        }
        if !add && accounts.iter().any(|a| !list.contains(a)) {
            return Err((-32000, "Cannot remove an absent account from allowlist"));
        }
        let on_file: Vec<String> = self.file()[ACCOUNTS]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        let in_sync = list.iter().all(|a| on_file.contains(a));
        if add {
            list.extend(accounts);
        } else {
            list.retain(|a| !accounts.contains(a));
        }
        if !in_sync {
            return Err((
                -32000,
                "The permissioning allowlist configuration file is out of sync.  The changes have been applied, but not persisted to disk",
            ));
        }
        let mut text: String = self
            .file()
            .iter()
            .filter(|(k, _)| *k != ACCOUNTS)
            .map(|(k, v)| {
                let items: Vec<String> = v
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i.as_str().unwrap().to_owned())
                    .collect();
                format!("{k}=[{}]\n", quoted(&items))
            })
            .collect();
        text += &format!("{ACCOUNTS}=[{}]", quoted(&list));
        std::fs::write(&self.file, text).unwrap();
        Ok(json!("Success"))
    }

    /// Serves JSON-RPC over HTTP; its port.
    async fn serve_http(self: &Arc<Self>) -> u16 {
        async fn rpc(State(fake): State<Arc<FakeBesu>>, body: String) -> String {
            let request: Value = serde_json::from_str(&body).unwrap();
            fake.answer(&request).to_string()
        }
        let app = axum::Router::new()
            .route("/", axum::routing::post(rpc))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    /// Serves JSON-RPC over WebSocket; its port.
    async fn serve_ws(self: &Arc<Self>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let fake = self.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let fake = fake.clone();
                tokio::spawn(async move {
                    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                    while let Some(Ok(message)) = ws.next().await {
                        if let Message::Text(text) = message {
                            let request: Value = serde_json::from_str(&text).unwrap();
                            let answer = fake.answer(&request).to_string();
                            ws.send(Message::text(answer)).await.unwrap();
                        }
                    }
                });
            }
        });
        port
    }
}

/// anvil's first development key (funded there).
const ADMIN_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

fn lower(a: Address) -> String {
    format!("{a:#x}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn besu_allowlist_follows_the_registry_on_every_node_and_funds_new_signers() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(bin) = tool("anvil") else {
        return;
    };
    let anvil = Anvil::start(&bin, &[]);
    let admin: PrivateKeySigner = ADMIN_KEY.parse().unwrap();
    let provider = signing_provider(
        admin.clone(),
        RpcClient::new_http(anvil.url.parse().unwrap()),
    );
    let c = Contracts::deploy(provider.clone()).await.unwrap();
    let reg = c.registry();
    let [doctor, server, collector, patient] =
        std::array::from_fn(|_| PrivateKeySigner::random().address());
    let text = medledger_contracts::short_text;
    send(reg.registerStaff(doctor, StaffRole::Doctor.code(), text("icu").unwrap()))
        .await
        .unwrap();
    send(reg.registerNode(server, 2, text("site-a").unwrap()))
        .await
        .unwrap();
    send(reg.registerNode(collector, 1, text("icu/1").unwrap()))
        .await
        .unwrap();
    let p = keccak256("salt:besu");
    let place = text("1").unwrap();
    send(reg.admit(p, patient, place, place, place, place, vec![doctor]))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let stale = "0x000000000000000000000000000000000000dead".to_owned();
    let enode = format!("enode://{}@127.0.0.1:30303", "ab".repeat(64));
    let start = [lower(admin.address()), stale.clone()];
    let validator = FakeBesu::new(
        dir.path().join("validator.toml"),
        &start,
        std::slice::from_ref(&enode),
    );
    let rpc_node = FakeBesu::new(
        dir.path().join("rpc.toml"),
        &start,
        std::slice::from_ref(&enode),
    );
    let http = validator.serve_http().await;
    let ws = rpc_node.serve_ws().await;
    let network = dir.path().join("network.toml");
    std::fs::write(
        &network,
        format!(
            "accounts = [\"{}\"]\n\
             [[node]]\nname = \"validator1\"\nkind = \"validator\"\nhost = \"127.0.0.1\"\nrpc_port = {http}\n\
             public_key = \"0x11c76d50869f36891245ca277680aadb55dcc826d45ca97dffa25e625a27a9f27805ff3dbf80d8eab3bc08e842790fc4da6b997fbaef265c7c5dba6b045e160f\"\n\
             [[node]]\nname = \"rpc-a\"\nkind = \"rpc\"\nhost = \"127.0.0.1\"\nadmin_port = {ws}\n\
             public_key = \"0xa652d1ceb11b4784bb433ae50c4ca92d7a4ec23f0e160fe1c352b61f0a72405dc9c81342d7e13ea4df034b4b4a1902e83a730b009436faaab045ddee062f15b7\"\n",
            admin.address()
        ),
    )
    .unwrap();
    let key = dir.path().join("admin.eth.key");
    std::fs::write(&key, ADMIN_KEY).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let registry = c.addresses().registry.to_string();
    let args = |follow: bool| {
        let mut a = vec![
            "besu".to_owned(),
            "allowlist".to_owned(),
            "--network".to_owned(),
            network.to_str().unwrap().to_owned(),
            "--rpc".to_owned(),
            anvil.url.clone(),
            "--registry".to_owned(),
            registry.clone(),
            "--key".to_owned(),
            key.to_str().unwrap().to_owned(),
        ];
        if follow {
            a.extend([
                "--follow".to_owned(),
                "--interval-ms".to_owned(),
                "100".to_owned(),
            ]);
        }
        a
    };

    // One pass: both nodes hold exactly the Registry's accounts and the
    // network's own; the stale one is gone; the files say the same.
    let said = tokio::task::spawn_blocking({
        let args = args(false);
        move || ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    let wanted: BTreeSet<String> = [admin.address(), doctor, server, collector, patient]
        .into_iter()
        .map(lower)
        .collect();
    for fake in [&validator, &rpc_node] {
        assert_eq!(fake.list(), wanted, "{said}");
        let file = fake.file();
        let on_file: BTreeSet<String> = file[ACCOUNTS]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(on_file, wanted);
        assert_eq!(file["nodes-allowlist"].as_array().unwrap().len(), 1);
    }
    assert!(said.contains("validator1: no longer allowed"), "{said}");
    // Each new signer got the small balance Besu asks of a sender.
    let hundredth = U256::from(10u64).pow(U256::from(16u64));
    for account in [doctor, server, collector, patient] {
        assert_eq!(
            provider.get_balance(account).await.unwrap(),
            hundredth,
            "{said}"
        );
    }

    // Following: a deactivated doctor and a revoked patient leave every
    // node's list; a second admin joins it.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args(args(true))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let second = PrivateKeySigner::random().address();
    send(reg.deactivateStaff(doctor)).await.unwrap();
    send(reg.revokeAccount(patient)).await.unwrap();
    send(reg.addAdmin(second)).await.unwrap();
    let wanted: BTreeSet<String> = [admin.address(), server, collector, second]
        .into_iter()
        .map(lower)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while [&validator, &rpc_node].iter().any(|f| f.list() != wanted) {
        assert!(
            Instant::now() < deadline,
            "{:?} {:?}",
            validator.list(),
            rpc_node.list()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while provider.get_balance(second).await.unwrap() != hundredth {
        assert!(Instant::now() < deadline, "the second admin was not funded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    follower.kill().unwrap();
    follower.wait().unwrap();
}
