//! Content-addressed blob store.
//!
//! A blob is named by its [`Cid`]: a CIDv1 with the raw codec and a
//! SHA-256 multihash, the same CID IPFS computes for the same bytes. The
//! name is a promise about the content, so [`BlobStore::get`] always hashes
//! what it read and refuses to hand out bytes that do not match
//! ([`BlobError::Tampered`]).
//!
//! ```text
//!  put(bytes) --sha256--> Cid --> backend write (atomic, durable)
//!  get(cid) --> backend read --sha256--> equal? --> bytes
//!                                         no  --> Tampered { cid, actual }
//! ```
//!
//! Backends:
//! - [`LocalDir`], a directory on a local disk.
//! - [`ObjectStoreBlobs`], anything the `object_store` crate reaches, named
//!   by URL (`file://`, `memory://`; S3, GCS and Azure once their features
//!   are turned on).
//!
//! Both lay blobs out as `<shard>/<cid>` under their root (see
//! [`LocalDir`]), so a directory written by one is readable by the other.

/// The `object_store` crate, to build a store by hand for
/// [`ObjectStoreBlobs::new`] and to look into [`BlobError::Store`].
pub use object_store;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{Certificate, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload};
use ring::digest::{SHA256, digest};
use std::fmt;
use std::future::Future;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use url::Url;

/// CID version 1.
const VERSION: u64 = 1;
/// Multicodec of raw bytes.
const RAW_CODEC: u64 = 0x55;
/// Multihash code of sha2-256.
const SHA2_256: u64 = 0x12;
/// Length of a sha2-256 digest.
const DIGEST_LEN: usize = 32;
/// The binary form's header: varint(1), varint(0x55), 0x12, 0x20; every
/// field is below 0x80, so each varint is one byte.
const HEADER: [u8; 4] = [0x01, 0x55, 0x12, 0x20];
/// Length of the binary form.
const CID_LEN: usize = HEADER.len() + DIGEST_LEN;
/// Multibase prefix of base32 lowercase without padding.
const MULTIBASE_BASE32: char = 'b';
/// RFC 4648 base32 alphabet, lowercase.
const BASE32_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A content identifier: CIDv1, raw codec (0x55), sha2-256 multihash.
///
/// Binary form ([`Cid::to_bytes`]): `0x01 0x55 0x12 0x20 || digest`.
/// Text form ([`Display`](fmt::Display), [`FromStr`]): multibase base32
/// lowercase without padding, `b...`, 59 characters, e.g.
/// `bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku` for the
/// empty blob.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cid {
    digest: [u8; DIGEST_LEN],
}

impl Cid {
    /// The CID of `bytes`.
    pub fn of(bytes: &[u8]) -> Cid {
        let hash = digest(&SHA256, bytes);
        let mut out = [0; DIGEST_LEN];
        out.copy_from_slice(hash.as_ref());
        Cid { digest: out }
    }

    /// The CID of content whose SHA-256 is `digest`.
    pub fn from_digest(digest: [u8; DIGEST_LEN]) -> Cid {
        Cid { digest }
    }

    /// The SHA-256 of the content.
    pub fn digest(&self) -> &[u8; DIGEST_LEN] {
        &self.digest
    }

    /// The binary form: `0x01 0x55 0x12 0x20 || digest`.
    pub fn to_bytes(&self) -> [u8; CID_LEN] {
        let mut out = [0; CID_LEN];
        out[..HEADER.len()].copy_from_slice(&HEADER);
        out[HEADER.len()..].copy_from_slice(&self.digest);
        out
    }

    /// Parses the binary form, refusing anything but a CIDv1 of raw bytes
    /// with a sha2-256 multihash.
    pub fn from_bytes(bytes: &[u8]) -> Result<Cid, CidError> {
        let mut pos = 0;
        let version = read_varint(bytes, &mut pos)?;
        if version != VERSION {
            return Err(CidError::Version(version));
        }
        let codec = read_varint(bytes, &mut pos)?;
        if codec != RAW_CODEC {
            return Err(CidError::Codec(codec));
        }
        let hash = read_varint(bytes, &mut pos)?;
        if hash != SHA2_256 {
            return Err(CidError::Hash(hash));
        }
        let digest_len = read_varint(bytes, &mut pos)?;
        if digest_len != DIGEST_LEN as u64 {
            return Err(CidError::DigestLength(digest_len));
        }
        let digest = bytes
            .get(pos..)
            .and_then(|rest| <[u8; DIGEST_LEN]>::try_from(rest).ok())
            .ok_or(CidError::Length { found: bytes.len() })?;
        Ok(Cid { digest })
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::with_capacity(1 + (CID_LEN * 8).div_ceil(5));
        text.push(MULTIBASE_BASE32);
        base32_encode(&self.to_bytes(), &mut text);
        f.write_str(&text)
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cid({self})")
    }
}

impl FromStr for Cid {
    type Err = CidError;

    fn from_str(text: &str) -> Result<Cid, CidError> {
        let mut chars = text.chars();
        match chars.next() {
            None => Err(CidError::Empty),
            Some(MULTIBASE_BASE32) => Cid::from_bytes(&base32_decode(chars.as_str())?),
            Some(other) => Err(CidError::Multibase(other)),
        }
    }
}

/// Why text or bytes are not a [`Cid`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CidError {
    /// The text is empty.
    #[error("empty CID")]
    Empty,
    /// The text is not multibase base32 lowercase (a CIDv0 `Qm...`, say).
    #[error("unsupported multibase prefix {0:?} (expected 'b', base32 lowercase)")]
    Multibase(char),
    /// A character outside the base32 lowercase alphabet.
    #[error("invalid base32 character {found:?} at index {index} (expected a-z or 2-7)")]
    Base32 {
        /// Its index in the text, counting the multibase prefix.
        index: usize,
        /// The character.
        found: char,
    },
    /// So many base32 characters cannot encode a whole number of bytes.
    #[error("{0} base32 characters cannot encode whole bytes")]
    Base32Length(usize),
    /// The unused bits of the last base32 character are not zero, so this
    /// is not the one canonical spelling.
    #[error("non-canonical base32: the unused bits of the last character are not zero")]
    Base32Padding,
    /// A header varint is truncated, longer than 9 bytes or not minimal.
    #[error("malformed varint in the CID header")]
    Varint,
    /// Not CIDv1.
    #[error("CID version {0} is not supported (expected 1)")]
    Version(u64),
    /// Not the raw codec.
    #[error("content codec {0:#x} is not supported (expected 0x55, raw)")]
    Codec(u64),
    /// Not a sha2-256 multihash.
    #[error("multihash code {0:#x} is not supported (expected 0x12, sha2-256)")]
    Hash(u64),
    /// The multihash declares a digest length other than 32.
    #[error("sha2-256 digest length {0} (expected 32)")]
    DigestLength(u64),
    /// The digest is cut short or followed by more bytes.
    #[error("the CID is {found} bytes long (expected 36)")]
    Length {
        /// The length found.
        found: usize,
    },
}

/// Reads one unsigned varint (multiformats: LEB128, at most 9 bytes,
/// minimally encoded).
fn read_varint(bytes: &[u8], pos: &mut usize) -> Result<u64, CidError> {
    let mut value = 0u64;
    for i in 0..9 {
        let byte = *bytes.get(*pos).ok_or(CidError::Varint)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if byte == 0 && i > 0 {
                return Err(CidError::Varint);
            }
            return Ok(value);
        }
    }
    Err(CidError::Varint)
}

/// Appends RFC 4648 base32, lowercase, without padding.
fn base32_encode(bytes: &[u8], out: &mut String) {
    let mut acc = 0u32;
    let mut bits = 0u32;
    for &byte in bytes {
        acc = (acc << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32_ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(
            BASE32_ALPHABET[((acc << (5 - bits)) & 31) as usize],
        ));
    }
}

/// Decodes RFC 4648 base32, lowercase, without padding; only the canonical
/// spelling (unused trailing bits zero) is accepted. `text` follows the
/// one-character multibase prefix, which error indexes count.
fn base32_decode(text: &str) -> Result<Vec<u8>, CidError> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut acc = 0u32;
    let mut bits = 0u32;
    let mut count = 0;
    for (i, c) in text.chars().enumerate() {
        let value = match c {
            'a'..='z' => u32::from(c) - u32::from('a'),
            '2'..='7' => u32::from(c) - u32::from('2') + 26,
            _ => {
                return Err(CidError::Base32 {
                    index: i + 1,
                    found: c,
                });
            }
        };
        acc = (acc << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        count = i + 1;
    }
    if bits >= 5 {
        return Err(CidError::Base32Length(count));
    }
    if acc & ((1 << bits) - 1) != 0 {
        return Err(CidError::Base32Padding);
    }
    Ok(out)
}

/// Why a blob could not be stored or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// No blob has this CID.
    #[error("blob {0} not found")]
    NotFound(Cid),
    /// The stored bytes do not hash to their CID; they were not returned.
    #[error(
        "blob {cid} does not match its content hash (it hashes to {actual}): tampered or corrupt"
    )]
    Tampered {
        /// The CID asked for.
        cid: Cid,
        /// The CID of the bytes actually stored.
        actual: Cid,
    },
    /// The storage failed.
    #[error("blob store I/O on {}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The object store failed.
    #[error("object store failed on {key}: {source}")]
    Store {
        /// The object concerned, `<prefix>/<shard>/<cid>`; the prefix
        /// alone when a `put` failed before its CID was known.
        key: String,
        /// Why.
        #[source]
        source: object_store::Error,
    },
    /// A blob store URL that this build cannot open.
    #[error("cannot open blob store {url}: {source}")]
    Url {
        /// The URL, as given.
        url: String,
        /// Why: it does not parse, or names a store whose feature is off.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Text or bytes that should name a blob do not.
    #[error("bad CID: {0}")]
    BadCid(#[from] CidError),
}

/// The result of blob store work.
pub type Result<T, E = BlobError> = std::result::Result<T, E>;

/// The future a [`BlobStore`] method returns. Boxed, so that a store chosen
/// at run time can be used as `Arc<dyn BlobStore>`; one allocation is
/// nothing next to the I/O behind it.
pub type BlobFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Somewhere blobs are kept, each under the [`Cid`] of its bytes.
pub trait BlobStore: Send + Sync {
    /// Stores `bytes` durably and returns their CID. Storing the same bytes
    /// again is harmless.
    fn put<'a>(&'a self, bytes: &'a [u8]) -> BlobFuture<'a, Cid>;

    /// The bytes stored under `cid`, after checking that they hash to it:
    /// bytes that do not are never returned ([`BlobError::Tampered`]); a
    /// missing blob is [`BlobError::NotFound`].
    fn get<'a>(&'a self, cid: &'a Cid) -> BlobFuture<'a, Vec<u8>>;

    /// Stores several blobs durably and returns their CIDs, in order. By
    /// default the puts run concurrently; a store that can make a whole
    /// batch durable at once does so.
    fn put_many<'a>(&'a self, blobs: &'a [Vec<u8>]) -> BlobFuture<'a, Vec<Cid>> {
        Box::pin(futures_util::future::try_join_all(
            blobs.iter().map(|b| self.put(b)),
        ))
    }

    /// Whether a blob is stored under `cid` (its content is not checked).
    fn contains<'a>(&'a self, cid: &'a Cid) -> BlobFuture<'a, bool>;

    /// Deletes the blob under `cid`; deleting an absent blob succeeds.
    fn delete<'a>(&'a self, cid: &'a Cid) -> BlobFuture<'a, ()>;
}

/// Blobs in a directory on a local disk.
///
/// Layout: `<dir>/<shard>/<cid>`, where `<cid>` is the text form and
/// `<shard>` its next-to-last two characters (IPFS flatfs's default
/// `next-to-last/2`: those carry 10 bits of the digest, so up to 1024
/// evenly filled shards; the leading characters would not do, as every
/// CID starts `bafkrei`). The layout is part of the on-disk format.
///
/// Writes are atomic and durable: a blob is written to a fresh temporary
/// file (`.tmp-...`) in its shard, synced, renamed into place, and the
/// shard directory synced, so a crash never leaves a partial blob under
/// its final name (it may leave a temporary file). On Unix, files are
/// created readable by their owner only and directories are `0700`.
///
/// Cloning is cheap and the clones share their state.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
    /// Shards whose directory entry this store has made durable, one bit
    /// per shard, so that only a shard's first write pays for syncing the
    /// root directory.
    durable_shards: Arc<[AtomicU64; 16]>,
}

impl LocalDir {
    /// Opens the blob directory `dir`, creating it if needed.
    pub async fn open(dir: impl Into<PathBuf>) -> Result<LocalDir> {
        let root = dir.into();
        let path = root.clone();
        blocking(root.clone(), move || {
            create_dir_all(&path)?;
            sync_dir(&path)?;
            // The directory's own entry, in case it was just created.
            match path.parent() {
                Some(parent) if parent.as_os_str().is_empty() => sync_dir(Path::new(".")),
                Some(parent) => sync_dir(parent),
                None => Ok(()),
            }
        })
        .await?;
        Ok(LocalDir {
            root,
            durable_shards: Default::default(),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `cid` is (or would be) stored.
    pub fn path(&self, cid: &Cid) -> PathBuf {
        let name = cid.to_string();
        self.root.join(shard(&name)).join(name)
    }

    /// Writes `bytes` as the blob `cid`, atomically and durably.
    fn write(&self, cid: &Cid, bytes: &[u8]) -> Result<()> {
        let name = cid.to_string();
        let shard_name = shard(&name);
        let shard_dir = self.root.join(shard_name);
        self.ensure_shard(shard_name, &shard_dir)?;

        let (tmp_path, mut file) = create_temp(&shard_dir)?;
        let written = file
            .write_all(bytes)
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp_path, shard_dir.join(&name)));
        drop(file);
        if let Err(source) = written {
            // Best effort: the error that matters is the write's.
            let _ = std::fs::remove_file(&tmp_path);
            return Err(BlobError::Io {
                path: tmp_path,
                source,
            });
        }
        sync_dir(&shard_dir)
    }

    /// Writes a batch of blobs atomically and durably, with two syncs of
    /// the file system for the whole batch instead of two per blob: every
    /// temporary file is written, the file system synced, every file
    /// renamed into place, and the file system synced again.
    #[cfg(target_os = "linux")]
    fn write_many(&self, blobs: &[Vec<u8>]) -> Result<Vec<Cid>> {
        let mut staged: Vec<(Cid, PathBuf, PathBuf)> = Vec::with_capacity(blobs.len());
        let mut stage = || -> Result<()> {
            for bytes in blobs {
                let cid = Cid::of(bytes);
                let name = cid.to_string();
                let shard_name = shard(&name);
                let shard_dir = self.root.join(shard_name);
                self.ensure_shard(shard_name, &shard_dir)?;
                let (tmp_path, mut file) = create_temp(&shard_dir)?;
                staged.push((cid, tmp_path.clone(), shard_dir.join(name)));
                file.write_all(bytes).map_err(|source| BlobError::Io {
                    path: tmp_path,
                    source,
                })?;
            }
            sync_fs(&self.root)?;
            for (_, tmp_path, path) in &staged {
                std::fs::rename(tmp_path, path).map_err(|source| BlobError::Io {
                    path: tmp_path.clone(),
                    source,
                })?;
            }
            sync_fs(&self.root)
        };
        let written = stage();
        if written.is_err() {
            // Best effort, as in `write`; renamed files are whole blobs.
            for (_, tmp_path, _) in &staged {
                let _ = std::fs::remove_file(tmp_path);
            }
        }
        written.map(|()| staged.into_iter().map(|(cid, ..)| cid).collect())
    }

    /// Writes a batch of blobs one by one, each atomically and durably.
    #[cfg(not(target_os = "linux"))]
    fn write_many(&self, blobs: &[Vec<u8>]) -> Result<Vec<Cid>> {
        blobs
            .iter()
            .map(|bytes| {
                let cid = Cid::of(bytes);
                self.write(&cid, bytes).map(|()| cid)
            })
            .collect()
    }

    /// Creates the shard directory if needed and makes its entry in the
    /// root durable, once per shard per store (whoever created it: a
    /// concurrent writer may have created it and not yet synced the root).
    fn ensure_shard(&self, shard_name: &str, shard_dir: &Path) -> Result<()> {
        let index = shard_index(shard_name);
        let (word, bit) = (&self.durable_shards[index / 64], 1u64 << (index % 64));
        if word.load(Ordering::Acquire) & bit != 0 {
            return Ok(());
        }
        create_dir_all(shard_dir)?;
        sync_dir(&self.root)?;
        word.fetch_or(bit, Ordering::Release);
        Ok(())
    }
}

impl BlobStore for LocalDir {
    fn put<'a>(&'a self, bytes: &'a [u8]) -> BlobFuture<'a, Cid> {
        // The blocking pool needs owned data: one copy, cheap next to fsync.
        let bytes = bytes.to_vec();
        Box::pin(async move {
            let store = self.clone();
            blocking(self.root.clone(), move || {
                let cid = Cid::of(&bytes);
                store.write(&cid, &bytes)?;
                Ok(cid)
            })
            .await
        })
    }

    fn put_many<'a>(&'a self, blobs: &'a [Vec<u8>]) -> BlobFuture<'a, Vec<Cid>> {
        let blobs = blobs.to_vec();
        Box::pin(async move {
            let store = self.clone();
            blocking(self.root.clone(), move || store.write_many(&blobs)).await
        })
    }

    fn get<'a>(&'a self, cid: &'a Cid) -> BlobFuture<'a, Vec<u8>> {
        let (cid, path) = (*cid, self.path(cid));
        Box::pin(blocking(path.clone(), move || {
            let bytes = std::fs::read(&path).map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => BlobError::NotFound(cid),
                _ => BlobError::Io { path, source },
            })?;
            let actual = Cid::of(&bytes);
            if actual != cid {
                return Err(BlobError::Tampered { cid, actual });
            }
            Ok(bytes)
        }))
    }

    fn contains<'a>(&'a self, cid: &'a Cid) -> BlobFuture<'a, bool> {
        let path = self.path(cid);
        Box::pin(blocking(path.clone(), move || {
            match std::fs::metadata(&path) {
                Ok(meta) => Ok(meta.is_file()),
                Err(source) if source.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(source) => Err(BlobError::Io { path, source }),
            }
        }))
    }

    fn delete<'a>(&'a self, cid: &'a Cid) -> BlobFuture<'a, ()> {
        let path = self.path(cid);
        Box::pin(blocking(path.clone(), move || {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(source) if source.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(source) => return Err(BlobError::Io { path, source }),
            }
            match path.parent() {
                Some(shard_dir) => sync_dir(shard_dir),
                None => Ok(()),
            }
        }))
    }
}

/// Blobs in an [`ObjectStore`]: S3, GCS, Azure, a local file system or
/// memory, chosen by URL ([`ObjectStoreBlobs::from_url`]).
///
/// Layout: `<prefix>/<shard>/<cid>`, with the same `<shard>` as
/// [`LocalDir`]'s (the CID's next-to-last two characters), so
/// `file:///srv/blobs` and `LocalDir::open("/srv/blobs")` are the same
/// store. The layout is part of the storage format.
///
/// This build reaches `file://`, `memory://` and S3 or any S3-compatible
/// store (`s3://bucket/prefix`, configured from the environment as the AWS
/// SDKs are: [`ObjectStoreBlobs::from_url`]). GCS and Azure need
/// `object_store`'s `gcp` and `azure` features, which are off. A store that
/// needs other options is built with its builder and handed to
/// [`ObjectStoreBlobs::new`]; errors name the URL, so it should carry no
/// secret.
///
/// A write is atomic (readers see the whole blob or none of it) and, for
/// `file://`, durable: it is synced to disk before `put` returns. A delete
/// of a local file is not synced. For blobs on a local disk, [`LocalDir`]
/// is still the better choice: it also makes its files readable by their
/// owner only, which `object_store` does not.
///
/// Cloning is cheap and the clones share the store.
#[derive(Debug, Clone)]
pub struct ObjectStoreBlobs {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
}

impl ObjectStoreBlobs {
    /// Blobs under `prefix` in `store`, for a store configured by hand
    /// (credentials, retries, a client of its own).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: ObjectPath) -> ObjectStoreBlobs {
        ObjectStoreBlobs { store, prefix }
    }

    /// The store named by `url`, e.g. `file:///srv/medledger/blobs`,
    /// `memory:///` or `s3://bucket/blobs`; the URL's path is the prefix.
    /// An S3 bucket is configured as the AWS SDKs configure themselves,
    /// from the `AWS_*` variables of this process's environment:
    /// `AWS_REGION` (or `AWS_DEFAULT_REGION`), `AWS_ENDPOINT_URL` for a
    /// store other than AWS (MinIO, Ceph RGW, ...), `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` (without them, the
    /// instance's or container's role), `AWS_CA_BUNDLE` (a PEM file of CAs
    /// to trust beside the system's), `AWS_ALLOW_HTTP=true` for an endpoint
    /// without TLS (tests only). Nothing is created or contacted until
    /// the first operation. Each `memory://` URL opened is a new, empty
    /// store.
    pub fn from_url(url: &str) -> Result<ObjectStoreBlobs> {
        Self::from_url_with_env(url, std::env::vars())
    }

    /// [`ObjectStoreBlobs::from_url`] with the environment `env`.
    pub fn from_url_with_env(
        url: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<ObjectStoreBlobs> {
        let url_error = |source: Box<dyn std::error::Error + Send + Sync>| BlobError::Url {
            url: url.to_owned(),
            source,
        };
        // reqwest's rustls comes without a provider in this build: ring,
        // as everywhere else (an S3 client is made as soon as it is named).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let parsed = Url::parse(url).map_err(|err| url_error(err.into()))?;
        if let "s3" | "s3a" = parsed.scheme() {
            // `parse_url` would give an S3 client that knows nothing of
            // the environment.
            let prefix =
                ObjectPath::from_url_path(parsed.path()).map_err(|err| url_error(err.into()))?;
            let store = Arc::new(Self::s3(&parsed, env).map_err(url_error)?);
            return Ok(ObjectStoreBlobs { store, prefix });
        }
        let (store, prefix) =
            object_store::parse_url(&parsed).map_err(|err| url_error(err.into()))?;
        let store: Arc<dyn ObjectStore> = if parsed.scheme() == "file" {
            // `parse_url` gives a `LocalFileSystem` that does not fsync:
            // a blob acknowledged to a patient must survive a power cut.
            Arc::new(LocalFileSystem::new().with_fsync(true))
        } else {
            store.into()
        };
        Ok(ObjectStoreBlobs { store, prefix })
    }

    /// The S3 bucket of `url` (`s3://bucket/...`), configured from the
    /// `AWS_*` variables of `env` as [`ObjectStoreBlobs::from_url`] says.
    fn s3(
        url: &Url,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> std::result::Result<AmazonS3, Box<dyn std::error::Error + Send + Sync>> {
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(key, _)| key.starts_with("AWS_"))
            .collect();
        let mut options = ClientOptions::new();
        for (_, bundle) in env.iter().filter(|(key, _)| key == "AWS_CA_BUNDLE") {
            let pem = std::fs::read(bundle).map_err(|e| format!("AWS_CA_BUNDLE {bundle}: {e}"))?;
            for ca in Certificate::from_pem_bundle(&pem)? {
                options = options.with_root_certificate(ca);
            }
        }
        // The options first: the variables below add to them.
        let mut builder = AmazonS3Builder::new().with_client_options(options);
        for (key, value) in env {
            if let Ok(config) = key.to_ascii_lowercase().parse() {
                builder = builder.with_config(config, value);
            }
        }
        Ok(builder.with_url(url.as_str()).build()?)
    }

    /// The object store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The prefix every key starts with.
    pub fn prefix(&self) -> &ObjectPath {
        &self.prefix
    }

    /// The key the blob `cid` is (or would be) stored under.
    pub fn key(&self, cid: &Cid) -> ObjectPath {
        let name = cid.to_string();
        self.prefix.clone().join(shard(&name)).join(name.as_str())
    }
}

/// Maps an object store failure on `key`.
fn store_error(key: &ObjectPath) -> impl FnOnce(object_store::Error) -> BlobError + '_ {
    move |source| BlobError::Store {
        key: key.to_string(),
        source,
    }
}

impl BlobStore for ObjectStoreBlobs {
    fn put<'a>(&'a self, bytes: &'a [u8]) -> BlobFuture<'a, Cid> {
        Box::pin(async move {
            // The payload must be owned: one copy, cheap next to the upload.
            // Until hashed, the object's key is known only to be under the
            // prefix.
            let (cid, bytes) = hash(bytes.to_vec(), &self.prefix).await?;
            let key = self.key(&cid);
            // Overwriting is harmless (the same bytes) and repairs a
            // tampered object.
            self.store
                .put(&key, PutPayload::from(bytes))
                .await
                .map_err(store_error(&key))?;
            Ok(cid)
        })
    }

    fn get<'a>(&'a self, cid: &'a Cid) -> BlobFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let key = self.key(cid);
            let read = async { self.store.get(&key).await?.bytes().await };
            let bytes = match read.await {
                Ok(bytes) => Vec::from(bytes),
                Err(object_store::Error::NotFound { .. }) => return Err(BlobError::NotFound(*cid)),
                Err(source) => return Err(store_error(&key)(source)),
            };
            let (actual, bytes) = hash(bytes, &key).await?;
            if actual != *cid {
                return Err(BlobError::Tampered { cid: *cid, actual });
            }
            Ok(bytes)
        })
    }

    fn contains<'a>(&'a self, cid: &'a Cid) -> BlobFuture<'a, bool> {
        Box::pin(async move {
            let key = self.key(cid);
            match self.store.head(&key).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(source) => Err(store_error(&key)(source)),
            }
        })
    }

    fn delete<'a>(&'a self, cid: &'a Cid) -> BlobFuture<'a, ()> {
        Box::pin(async move {
            let key = self.key(cid);
            match self.store.delete(&key).await {
                // Some stores (S3, memory) report success for an absent
                // object, others (a local file system) `NotFound`.
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(source) => Err(store_error(&key)(source)),
            }
        })
    }
}

/// Blobs up to this size are hashed on the async thread: that takes tens
/// of microseconds, less than handing them to a blocking thread.
const INLINE_HASH_MAX: usize = 16 * 1024;

/// The CID of `bytes` (read from or bound for `key`), hashed off the async
/// threads when they are large enough to stall them; `bytes` are handed
/// back.
async fn hash(bytes: Vec<u8>, key: &ObjectPath) -> Result<(Cid, Vec<u8>)> {
    if bytes.len() <= INLINE_HASH_MAX {
        return Ok((Cid::of(&bytes), bytes));
    }
    match tokio::task::spawn_blocking(move || (Cid::of(&bytes), bytes)).await {
        Ok(done) => Ok(done),
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        // Cancelled: the runtime is shutting down.
        Err(source) => Err(store_error(key)(object_store::Error::JoinError { source })),
    }
}

/// The shard of a blob: the next-to-last two characters of its text CID.
fn shard(name: &str) -> &str {
    name.get(name.len() - 3..name.len() - 1)
        .expect("a CID's text form is 59 ASCII characters")
}

/// The shard's number, 0..1024, from its two base32 characters.
fn shard_index(shard: &str) -> usize {
    shard.bytes().fold(0, |index, c| {
        let value = BASE32_ALPHABET
            .iter()
            .position(|&a| a == c)
            .expect("a CID's text form is base32");
        index * 32 + value
    })
}

/// Runs blocking file work (and hashing) off the async threads.
async fn blocking<T: Send + 'static>(
    path: PathBuf,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(err) => Err(BlobError::Io {
            path,
            source: io::Error::other(err),
        }),
    }
}

impl LocalDir {
    /// Copies the blobs of the store in the directory `from` to `to`
    /// (created if needed), files as they are, leaving out those still
    /// being written (`.tmp-...`, see [`LocalDir`]). Safe while the store
    /// is written: a blob under its final name never changes, so the copy
    /// holds every blob stored before it began.
    pub fn copy_blobs(from: &Path, to: &Path) -> io::Result<()> {
        copy_tree(from, to, &|rel| {
            rel.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
        })
    }
}

/// Copies every file under `from` to the same place under `to`, creating
/// its directories, but those whose path relative to `from` `skip` says
/// (a skipped directory is not entered). Links and special files are left
/// out. An error names the file or directory it concerns. Backups and
/// restores copy blob stores ([`LocalDir::copy_blobs`]) and data
/// directories with it.
pub fn copy_tree(from: &Path, to: &Path, skip: &dyn Fn(&Path) -> bool) -> io::Result<()> {
    let named = |what: &str, path: &Path, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
    };
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = from.join(&rel);
        std::fs::create_dir_all(to.join(&rel)).map_err(|e| named("creating", &to.join(&rel), e))?;
        for entry in std::fs::read_dir(&dir).map_err(|e| named("reading", &dir, e))? {
            let entry = entry.map_err(|e| named("reading", &dir, e))?;
            let rel = rel.join(entry.file_name());
            if skip(&rel) {
                continue;
            }
            let kind = entry
                .file_type()
                .map_err(|e| named("reading", &entry.path(), e))?;
            if kind.is_dir() {
                stack.push(rel);
            } else if kind.is_file() {
                std::fs::copy(entry.path(), to.join(&rel))
                    .map_err(|e| named("copying", &entry.path(), e))?;
            }
        }
    }
    Ok(())
}

/// Creates a temporary file with a name no other writer uses, in `dir`.
fn create_temp(dir: &Path) -> Result<(PathBuf, std::fs::File)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let pid = std::process::id();
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".tmp-{pid}-{n}"));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&path) {
            Ok(file) => return Ok((path, file)),
            // Left by a crashed process that had our pid: try the next name.
            Err(source) if source.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(BlobError::Io { path, source }),
        }
    }
}

/// Creates `dir` and its missing parents.
fn create_dir_all(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| BlobError::Io {
        path: dir.to_owned(),
        source,
    })
}

/// Makes the entries of `dir` (creations, renames, removals) durable.
/// Syncs the whole file system holding `dir` (data and metadata of every
/// file on it).
#[cfg(target_os = "linux")]
fn sync_fs(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| rustix::fs::syncfs(&d).map_err(io::Error::from))
        .map_err(|source| BlobError::Io {
            path: dir.to_owned(),
            source,
        })
}

fn sync_dir(dir: &Path) -> Result<()> {
    // Only Unix can open and fsync a directory; elsewhere a rename is as
    // durable as the platform makes it.
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| BlobError::Io {
            path: dir.to_owned(),
            source,
        })?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
