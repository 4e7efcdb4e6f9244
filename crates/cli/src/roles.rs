//! What the long-running roles (`collector`, `server`) share: keys, the
//! chain connection, client verification with a CRL that is re-read when
//! it changes, and waiting for Ctrl-C.

use crate::rpc::{self, Identity};
use alloy::network::TxSigner;
use alloy::primitives::{Address, Signature};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::LocalSigner;
use anyhow::{Context, Result};
use medledger_contracts::{Contracts, signing_provider};
use medledger_pki::token::{ChainKey, KeyUri};
use medledger_pki::{ClientAuth, Credentials, Role, files};
use medledger_storage::{Db, Part};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often the CRL file is looked at.
const CRL_POLL: Duration = Duration::from_secs(5);

/// A chain account's signer: its key in a file or on a PKCS#11 token.
pub(crate) type ChainSigner = LocalSigner<ChainKey>;

/// The chain key at `path`: a `PREFIX.eth.key` file holding the key in hex
/// or the `pkcs11:` URI of a secp256k1 key on a token, or that URI itself.
pub(crate) fn load_signer(path: &Path) -> Result<ChainSigner> {
    let named = path.to_string_lossy();
    let text = if KeyUri::is_uri(&named) {
        named.into_owned()
    } else {
        files::require_private(path)?;
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the chain key {}", path.display()))?
    };
    let key = ChainKey::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let address = key.address();
    Ok(LocalSigner::new_with_credential(key, address, None))
}

/// The contracts at `registry` on the chain at `rpc`, signing as `signer`;
/// `identity` is shown to a node over `https://`.
pub(crate) async fn contracts(
    rpc: &str,
    registry: &str,
    signer: impl TxSigner<Signature> + Send + Sync + 'static,
    identity: Option<&Identity>,
) -> Result<Contracts<DynProvider>> {
    let registry: Address = registry
        .parse()
        .with_context(|| format!("registry {registry:?} is not an address"))?;
    let provider = signing_provider(signer, rpc::client(rpc, identity)?);
    Contracts::at(provider, registry)
        .await
        .with_context(|| format!("finding the contracts from the Registry at {registry} on {rpc}"))
}

/// A server's or a collector's identity and contracts.
pub(crate) struct NodeStart {
    pub(crate) credentials: Credentials,
    pub(crate) identity: medledger_pki::Identity,
    pub(crate) contracts: Contracts<DynProvider>,
}

/// Loads the certificate and key at `credentials` (which must be of
/// `role`) and reaches the contracts at `registry` on the chain at `rpc`:
/// signing with its chain key (`credentials.eth.key`), and over
/// `https://` showing its certificate and checking the node's against
/// `ca_root`.
pub(crate) async fn node_start(
    role: Role,
    credentials: &Path,
    rpc: &str,
    registry: &str,
    ca_root: &Path,
) -> Result<NodeStart> {
    let loaded = Credentials::load(credentials)
        .with_context(|| format!("loading {}", credentials.display()))?;
    let identity = loaded.identity()?;
    identity.require_role(&[role])?;
    let signer = load_signer(&files::with_suffix(credentials, ".eth.key"))?;
    let contracts = contracts(
        rpc,
        registry,
        signer,
        Some(&Identity::new(ca_root, credentials)),
    )
    .await?;
    Ok(NodeStart {
        credentials: loaded,
        identity,
        contracts,
    })
}

/// The contracts at `registry` on the chain at `rpc`, to read (no key:
/// anyone may read the chain, over `https://` anyone with `identity`).
pub(crate) async fn read_contracts(
    rpc: &str,
    registry: Address,
    identity: Option<&Identity>,
) -> Result<Contracts<DynProvider>> {
    let provider = ProviderBuilder::new()
        .disable_recommended_fillers()
        .connect_client(rpc::client(rpc, identity)?)
        .erased();
    Contracts::at(provider, registry)
        .await
        .with_context(|| format!("finding the contracts from the Registry at {registry} on {rpc}"))
}

/// Verifies peers of `roles` against the root and the CRL file.
pub(crate) fn client_auth(root: &Path, crl: &Path, roles: &[Role]) -> Result<Arc<ClientAuth>> {
    ClientAuth::load(root, crl, roles)
        .with_context(|| format!("loading {} and {}", root.display(), crl.display()))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Re-reads the CRL file whenever it changes and hands it to every
/// verifier; a revoked peer's open connections close.
pub(crate) fn watch_crl(path: PathBuf, auths: Vec<Arc<ClientAuth>>) {
    tokio::spawn(async move {
        let mut seen = modified(&path);
        loop {
            tokio::time::sleep(CRL_POLL).await;
            let now = modified(&path);
            if now == seen {
                continue;
            }
            seen = now;
            match files::read_der_blocks(&path, "X509 CRL") {
                Ok(crls) => {
                    for auth in &auths {
                        if let Err(e) = auth.update_crls(crls.clone()) {
                            eprintln!("medledger: the new CRL {}: {e}", path.display());
                        }
                    }
                    println!("medledger: CRL {} reloaded", path.display());
                }
                Err(e) => eprintln!("medledger: reading the CRL {}: {e}", path.display()),
            }
        }
    });
}

/// The database at `url`, or else the SQLite file `data/file`, migrated;
/// creates `data` if needed, for its owner alone (0700).
pub(crate) async fn open_db(url: Option<&str>, data: &Path, part: Part) -> Result<Db> {
    files::private_dir(data)?;
    let file = match part {
        Part::Server => "server.db",
        Part::Collector => "collector.db",
    };
    let db = match url {
        Some(url) => Db::connect(url).await,
        None => Db::open_sqlite(&data.join(file)).await,
    }
    .context("opening the database")?;
    db.migrate_for(part)
        .await
        .context("migrating the database")?;
    Ok(db)
}

/// Resolves on Ctrl-C or SIGTERM. SIGTERM is taken over at the call, not
/// at the first poll: call it before saying that the service is up, or a
/// SIGTERM right after would kill the process instead of stopping it.
pub(crate) fn shutdown() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let term = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                () = term => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    }
}

/// `host:port` as a socket address.
pub(crate) fn socket(text: &str, what: &str) -> Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    text.to_socket_addrs()
        .with_context(|| format!("{what} {text:?} is not host:port"))?
        .next()
        .with_context(|| format!("{what} {text:?} resolves to nothing"))
}
