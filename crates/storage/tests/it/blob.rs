//! The content-addressed blob store: CIDs (pinned to what IPFS computes)
//! and the backends, each held to the same behaviour
//! ([`behaves_as_a_blob_store`]): a local directory, and `object_store`
//! URLs (`memory://`, `file://`).

use medledger_storage::blob::object_store::{ObjectStoreExt, path::Path as ObjectPath};
use medledger_storage::blob::{BlobError, BlobStore, Cid, CidError, LocalDir, ObjectStoreBlobs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use url::Url;

const EMPTY: &str = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
const HELLO_WORLD: &str = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e";

/// Base32 lowercase without padding, written bit by bit, independently of
/// the store's encoder, to build CIDs with wrong headers.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    bits.chunks(5)
        .map(|chunk| {
            let value = (0..5).fold(0, |v, i| (v << 1) | chunk.get(i).copied().unwrap_or(0));
            char::from(ALPHABET[usize::from(value)])
        })
        .collect()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

async fn store() -> (LocalDir, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalDir::open(dir.path().join("blobs")).await.unwrap();
    (store, dir)
}

#[test]
fn cids_match_ipfs() {
    // Regenerate with `printf '' | ipfs add --only-hash --cid-version=1 -Q`
    // and `printf 'hello world' | ipfs add --only-hash --cid-version=1 -Q`.
    let empty = Cid::of(b"");
    assert_eq!(
        hex::encode(empty.digest()),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(empty.to_string(), EMPTY);
    let hello = Cid::of(b"hello world");
    assert_eq!(
        hex::encode(hello.digest()),
        "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
    );
    assert_eq!(hello.to_string(), HELLO_WORLD);
    assert_eq!(format!("{hello:?}"), format!("Cid({HELLO_WORLD})"));

    // Binary form: varint(1), varint(0x55 raw), 0x12 sha2-256, 0x20 bytes.
    let bytes = hello.to_bytes();
    assert_eq!(bytes[..4], [0x01, 0x55, 0x12, 0x20]);
    assert_eq!(&bytes[4..], hello.digest());
    assert_eq!(format!("b{}", base32(&bytes)), HELLO_WORLD);
    assert_eq!(Cid::from_digest(*hello.digest()), hello);
}

#[test]
fn text_and_binary_forms_round_trip() {
    assert_eq!(EMPTY.parse::<Cid>().unwrap(), Cid::of(b""));
    assert_eq!(HELLO_WORLD.parse::<Cid>().unwrap(), Cid::of(b"hello world"));
    for n in 0..500u32 {
        let cid = Cid::of(&n.to_le_bytes());
        let text = cid.to_string();
        assert_eq!(text.len(), 59);
        assert_eq!(text, format!("b{}", base32(&cid.to_bytes())));
        assert_eq!(text.parse::<Cid>().unwrap(), cid);
        assert_eq!(Cid::from_bytes(&cid.to_bytes()).unwrap(), cid);
    }
}

#[test]
fn bad_cids_are_refused_saying_why() {
    let parse = |text: &str| text.parse::<Cid>().unwrap_err();
    let digest = *Cid::of(b"hello world").digest();
    let with_header = |header: &[u8]| format!("b{}", base32(&[header, &digest[..]].concat()));

    assert_eq!(parse(""), CidError::Empty);
    // A CIDv0, and base32 upper case: other multibases.
    let v0 = "QmaozNR7DZHQK1ZcU9p7QdrshMvXqWK6gpu5rmrkPdT3L4";
    assert_eq!(parse(v0), CidError::Multibase('Q'));
    assert_eq!(parse(&HELLO_WORLD.to_uppercase()), CidError::Multibase('B'));
    let err = parse("zdj7W");
    assert_eq!(err, CidError::Multibase('z'));
    assert!(err.to_string().contains("multibase prefix 'z'"), "{err}");

    // Not base32: '1', '=' (padding) and upper case are outside it.
    let mut text = HELLO_WORLD.to_owned();
    text.replace_range(10..11, "1");
    assert_eq!(
        parse(&text),
        CidError::Base32 {
            index: 10,
            found: '1'
        }
    );
    assert!(parse(&text).to_string().contains("'1' at index 10"));
    assert_eq!(
        parse("bafA"),
        CidError::Base32 {
            index: 3,
            found: 'A'
        }
    );
    assert_eq!(
        parse(&format!("{HELLO_WORLD}=")),
        CidError::Base32 {
            index: 59,
            found: '='
        }
    );
    // 1, 3 or 6 characters modulo 8 cannot be whole bytes.
    assert_eq!(parse("ba"), CidError::Base32Length(1));
    assert_eq!(parse(&HELLO_WORLD[..58]), CidError::Base32Length(57));
    // The last character carries 3 bits and 2 zero bits; 'f' sets one.
    let noncanonical = format!("{}f", &HELLO_WORLD[..58]);
    assert_eq!(parse(&noncanonical), CidError::Base32Padding);

    // Well-formed base32 of the wrong CID.
    assert_eq!(
        parse(&with_header(&[0x02, 0x55, 0x12, 0x20])),
        CidError::Version(2)
    );
    let dag_pb = parse(&with_header(&[0x01, 0x70, 0x12, 0x20]));
    assert_eq!(dag_pb, CidError::Codec(0x70));
    assert!(dag_pb.to_string().contains("0x70"), "{dag_pb}");
    // Codecs from 0x80 up take a multi-byte varint: f1 01 is 0xf1.
    assert_eq!(
        parse(&with_header(&[0x01, 0xf1, 0x01, 0x12, 0x20])),
        CidError::Codec(0xf1)
    );
    let sha512 = parse(&with_header(&[0x01, 0x55, 0x13, 0x20]));
    assert_eq!(sha512, CidError::Hash(0x13));
    assert!(sha512.to_string().contains("sha2-256"), "{sha512}");
    assert_eq!(
        parse(&with_header(&[0x01, 0x55, 0x12, 0x14])),
        CidError::DigestLength(0x14)
    );
    // A varint cut short, or not minimally encoded.
    assert_eq!(parse(&format!("b{}", base32(&[0x81]))), CidError::Varint);
    assert_eq!(
        parse(&with_header(&[0x81, 0x00, 0x55, 0x12, 0x20])),
        CidError::Varint
    );
    // Digest cut short, or followed by more.
    let bytes = Cid::of(b"hello world").to_bytes();
    let short = parse(&format!("b{}", base32(&bytes[..35])));
    assert_eq!(short, CidError::Length { found: 35 });
    assert!(short.to_string().contains("35 bytes"), "{short}");
    let long = [&bytes[..], &[0]].concat();
    assert_eq!(
        parse(&format!("b{}", base32(&long))),
        CidError::Length { found: 37 }
    );
    assert_eq!(Cid::from_bytes(&[]), Err(CidError::Varint));
    assert_eq!(
        Cid::from_bytes(&bytes[..4]),
        Err(CidError::Length { found: 4 })
    );

    // A parse error converts into the store's error.
    let err: BlobError = parse("").into();
    assert!(matches!(err, BlobError::BadCid(CidError::Empty)));
}

/// What every backend owes its users, checked on `store`. `overwrite`
/// replaces the bytes kept under a CID behind the store's back, as an
/// attacker or a failing disk would.
async fn behaves_as_a_blob_store(store: &dyn BlobStore, overwrite: impl AsyncFn(&Cid, &[u8])) {
    // Put, get, contains, delete.
    let cid = store.put(b"hello world").await.unwrap();
    assert_eq!(cid.to_string(), HELLO_WORLD);
    assert!(store.contains(&cid).await.unwrap());
    assert_eq!(store.get(&cid).await.unwrap(), b"hello world");

    let empty = store.put(b"").await.unwrap();
    assert_eq!(empty.to_string(), EMPTY);
    assert_eq!(store.get(&empty).await.unwrap(), b"");

    store.delete(&cid).await.unwrap();
    assert!(!store.contains(&cid).await.unwrap());
    assert!(matches!(store.get(&cid).await, Err(BlobError::NotFound(c)) if c == cid));
    // Deleting again, or what was never there, is fine.
    store.delete(&cid).await.unwrap();
    store.delete(&Cid::of(b"never stored")).await.unwrap();
    assert_eq!(store.get(&empty).await.unwrap(), b"");

    // The same bytes twice are one blob.
    let first = store.put(b"a lab report").await.unwrap();
    let second = store.put(b"a lab report").await.unwrap();
    assert_eq!(first, second);
    assert_eq!(store.get(&first).await.unwrap(), b"a lab report");

    // A batch: in order, duplicates included, all readable at once.
    let batch: Vec<Vec<u8>> = (0..50u8)
        .map(|i| vec![i; usize::from(i) * 7])
        .chain([b"a lab report".to_vec(), b"hello world".to_vec()])
        .collect();
    let cids = store.put_many(&batch).await.unwrap();
    assert_eq!(cids.len(), batch.len());
    for (cid, bytes) in cids.iter().zip(&batch) {
        assert_eq!(*cid, Cid::of(bytes));
        assert_eq!(store.get(cid).await.unwrap(), *bytes);
    }
    assert_eq!(cids[51].to_string(), HELLO_WORLD);
    assert!(store.put_many(&[]).await.unwrap().is_empty());
    store.delete(&cids[51]).await.unwrap();

    // A missing blob is not found, by name.
    let missing = Cid::of(b"never stored");
    assert!(!store.contains(&missing).await.unwrap());
    let err = store.get(&missing).await.unwrap_err();
    assert!(
        matches!(err, BlobError::NotFound(c) if c == missing),
        "{err:?}"
    );
    assert_eq!(err.to_string(), format!("blob {missing} not found"));

    // A blob altered in storage is refused, naming it.
    let original = b"blood pressure 120/80";
    let cid = store.put(original).await.unwrap();
    let mut altered = original.to_vec();
    altered[15] ^= 0x01;
    overwrite(&cid, &altered).await;
    assert!(store.contains(&cid).await.unwrap());
    let err = store.get(&cid).await.unwrap_err();
    let BlobError::Tampered { cid: named, actual } = &err else {
        panic!("expected Tampered, got {err:?}");
    };
    assert_eq!(*named, cid);
    assert_eq!(*actual, Cid::of(&altered));
    let message = err.to_string();
    assert!(message.contains(&cid.to_string()), "{message}");
    assert!(message.contains("tampered or corrupt"), "{message}");
    // Putting the bytes again repairs it.
    assert_eq!(store.put(original).await.unwrap(), cid);
    assert_eq!(store.get(&cid).await.unwrap(), original);

    // A blob swapped for another is refused.
    let mine = store.put(b"patient A: negative").await.unwrap();
    let theirs = store.put(b"patient B: positive").await.unwrap();
    overwrite(&mine, b"patient B: positive").await;
    let err = store.get(&mine).await.unwrap_err();
    assert!(
        matches!(err, BlobError::Tampered { cid, actual } if cid == mine && actual == theirs),
        "{err:?}"
    );
    assert_eq!(store.get(&theirs).await.unwrap(), b"patient B: positive");

    // A blob large enough to be hashed off the async threads: the same
    // checks hold.
    let scan: Vec<u8> = (0..1_000_000u32).map(|n| (n % 251) as u8).collect();
    let cid = store.put(&scan).await.unwrap();
    assert_eq!(cid, Cid::of(&scan));
    assert_eq!(store.get(&cid).await.unwrap(), scan);
    let mut altered = scan.clone();
    altered[999_999] ^= 0x80;
    overwrite(&cid, &altered).await;
    let err = store.get(&cid).await.unwrap_err();
    assert!(
        matches!(err, BlobError::Tampered { cid: c, actual } if c == cid && actual == Cid::of(&altered)),
        "{err:?}"
    );
}

/// Where a blob sits under `root`, spelled out independently of the
/// stores: `<root>/<next-to-last two characters>/<cid>`.
fn blob_path(root: &Path, cid: &Cid) -> PathBuf {
    let name = cid.to_string();
    root.join(&name[56..58]).join(name)
}

#[tokio::test]
async fn a_local_dir_behaves_as_a_blob_store() {
    let (store, _dir) = store().await;
    behaves_as_a_blob_store(&store, async |cid: &Cid, bytes: &[u8]| {
        std::fs::write(store.path(cid), bytes).unwrap();
    })
    .await;
}

/// Replaces the object kept for `cid` behind the store's back.
async fn overwrite_object(store: &ObjectStoreBlobs, cid: &Cid, bytes: &[u8]) {
    store
        .store()
        .put(&store.key(cid), bytes.to_vec().into())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_memory_url_behaves_as_a_blob_store() {
    let store = ObjectStoreBlobs::from_url("memory:///blobs").unwrap();
    behaves_as_a_blob_store(&store, async |cid: &Cid, bytes: &[u8]| {
        overwrite_object(&store, cid, bytes).await
    })
    .await;
}

#[tokio::test]
async fn a_file_url_behaves_as_a_blob_store() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("blobs");
    let url = Url::from_directory_path(&root).unwrap();
    let store = ObjectStoreBlobs::from_url(url.as_str()).unwrap();
    behaves_as_a_blob_store(&store, async |cid: &Cid, bytes: &[u8]| {
        std::fs::write(blob_path(&root, cid), bytes).unwrap();
    })
    .await;
}

#[tokio::test]
async fn an_s3_bucket_behaves_as_a_blob_store() {
    let Some(store) = medledger_storage::test_utils::s3() else {
        return;
    };
    behaves_as_a_blob_store(&store, async |cid: &Cid, bytes: &[u8]| {
        overwrite_object(&store, cid, bytes).await
    })
    .await;
    // The key layout is the same as on disk, under the URL's prefix.
    let cid = store.put(b"hello world").await.unwrap();
    let key = store.key(&cid).to_string();
    assert!(key.ends_with(&format!("/n5/{HELLO_WORLD}")), "{key}");
    assert!(key.starts_with(&format!("{}/", store.prefix())), "{key}");
}

#[tokio::test]
async fn blobs_outlive_the_store_and_the_layout_is_pinned() {
    let (store, dir) = store().await;
    let cid = store.put(b"hello world").await.unwrap();
    // `<dir>/<next-to-last two characters>/<cid>`: the on-disk format.
    let path = dir.path().join("blobs").join("n5").join(HELLO_WORLD);
    assert_eq!(store.path(&cid), path);
    assert_eq!(blob_path(store.root(), &cid), path);
    assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
    assert_eq!(files(store.root()), [path]);
    drop(store);

    let reopened = LocalDir::open(dir.path().join("blobs")).await.unwrap();
    assert_eq!(reopened.get(&cid).await.unwrap(), b"hello world");
}

#[tokio::test]
async fn a_file_url_keeps_the_local_dir_layout() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("blobs");
    let url = Url::from_directory_path(&root).unwrap();
    let store = ObjectStoreBlobs::from_url(url.as_str()).unwrap();
    let cid = store.put(b"hello world").await.unwrap();
    let again = store.put(b"hello world").await.unwrap();
    assert_eq!(again, cid);
    // One file, where a `LocalDir` would put it, and no staging file left.
    let path = root.join("n5").join(HELLO_WORLD);
    assert_eq!(files(&root), std::slice::from_ref(&path));
    assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
    drop(store);

    // So the two backends read each other's blobs: a directory can move
    // from one to the other, or to an object store, as it is.
    let local = LocalDir::open(&root).await.unwrap();
    assert_eq!(local.get(&cid).await.unwrap(), b"hello world");
    let theirs = local.put(b"written by LocalDir").await.unwrap();
    let reopened = ObjectStoreBlobs::from_url(url.as_str()).unwrap();
    assert_eq!(reopened.get(&cid).await.unwrap(), b"hello world");
    assert_eq!(reopened.get(&theirs).await.unwrap(), b"written by LocalDir");
}

#[tokio::test]
async fn object_keys_are_prefix_shard_cid() {
    let store = ObjectStoreBlobs::from_url("memory:///medledger/blobs").unwrap();
    assert_eq!(store.prefix().as_ref(), "medledger/blobs");
    let cid = store.put(b"hello world").await.unwrap();
    let key = store.key(&cid);
    assert_eq!(key.as_ref(), format!("medledger/blobs/n5/{HELLO_WORLD}"));
    store.put(b"hello world").await.unwrap();
    let stored = store
        .store()
        .get(&key)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(stored.as_ref(), b"hello world");
    let listed = store.store().list_with_delimiter(None).await.unwrap();
    assert_eq!(listed.common_prefixes, [ObjectPath::from("medledger")]);

    // A store handed over by hand, under the root.
    let shared = ObjectStoreBlobs::new(Arc::clone(store.store()), ObjectPath::default());
    assert_eq!(shared.key(&cid).as_ref(), format!("n5/{HELLO_WORLD}"));
    assert!(!shared.contains(&cid).await.unwrap());
    assert!(
        ObjectStoreBlobs::from_url("memory://")
            .unwrap()
            .prefix()
            .is_root()
    );
    assert!(
        ObjectStoreBlobs::from_url("memory:///")
            .unwrap()
            .prefix()
            .is_root()
    );
    // Each `memory://` URL is a store of its own.
    let other = ObjectStoreBlobs::from_url("memory:///medledger/blobs").unwrap();
    assert!(!other.contains(&cid).await.unwrap());
}

#[tokio::test]
async fn urls_that_cannot_be_opened_are_named() {
    for url in [
        "not a url",
        "s3:///blobs",
        "gs://bucket/blobs",
        "ftp://host/blobs",
    ] {
        let err = ObjectStoreBlobs::from_url(url).unwrap_err();
        assert!(
            matches!(&err, BlobError::Url { url: named, .. } if named == url),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains(url), "{message}");
    }
    // GCS is there in the code, but its feature is off in this build.
    let err = ObjectStoreBlobs::from_url("gs://bucket/blobs").unwrap_err();
    assert!(err.to_string().contains("not enabled"), "{err}");
    // An S3 bucket opens without contacting anyone; its configuration is
    // checked at once.
    assert!(ObjectStoreBlobs::from_url_with_env("s3://bucket/blobs", []).is_ok());
    let env = [("AWS_CA_BUNDLE".to_owned(), "/no/such/ca.pem".to_owned())];
    let err = ObjectStoreBlobs::from_url_with_env("s3://bucket/blobs", env).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("s3://bucket/blobs"), "{message}");
    assert!(
        message.contains("AWS_CA_BUNDLE /no/such/ca.pem"),
        "{message}"
    );
}

#[tokio::test]
async fn object_store_failures_name_the_object() {
    // A file where the store's directory should be: every write fails.
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let url = Url::from_directory_path(blocker.join("blobs")).unwrap();
    let store = ObjectStoreBlobs::from_url(url.as_str()).unwrap();

    let err = store.put(b"hello world").await.unwrap_err();
    let BlobError::Store { key, .. } = &err else {
        panic!("expected Store, got {err:?}");
    };
    assert_eq!(*key, store.key(&Cid::of(b"hello world")).to_string());
    let message = err.to_string();
    assert!(message.contains(HELLO_WORLD), "{message}");
    assert!(std::error::Error::source(&err).is_some());
}

#[tokio::test]
async fn the_same_bytes_twice_are_one_blob() {
    let (store, _dir) = store().await;
    let first = store.put(b"a lab report").await.unwrap();
    let second = store.put(b"a lab report").await.unwrap();
    assert_eq!(first, second);
    assert_eq!(files(store.root()), [store.path(&first)]);
    assert_eq!(store.get(&first).await.unwrap(), b"a lab report");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_leave_no_temporary_files() {
    let (store, dir) = store().await;
    let store: Arc<dyn BlobStore> = Arc::new(store);
    // Concurrent puts, half of them of bytes another task also puts.
    let tasks: Vec<_> = (0..64u32)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.put(format!("blob {}", n % 32).as_bytes()).await })
        })
        .collect();
    let mut cids = Vec::new();
    for task in tasks {
        cids.push(task.await.unwrap().unwrap());
    }
    cids.sort();
    cids.dedup();
    assert_eq!(cids.len(), 32);

    let on_disk = files(dir.path());
    assert_eq!(on_disk.len(), 32, "{on_disk:?}");
    for path in on_disk {
        let name = path.file_name().unwrap().to_str().unwrap();
        let cid: Cid = name.parse().unwrap();
        assert!(cids.contains(&cid));
        assert_eq!(Cid::of(&std::fs::read(&path).unwrap()), cid);
    }
}

/// A backup's copy of a local blob store: every blob under its own name
/// and directory, byte for byte, and none of the temporary files of puts
/// in flight.
#[tokio::test]
async fn a_blob_store_is_copied_without_the_files_being_written() {
    let (store, dir) = store().await;
    let mut cids = Vec::new();
    for n in 0..10 {
        cids.push(store.put(format!("reading {n}").as_bytes()).await.unwrap());
    }
    // A put in flight: a temporary file beside the blobs.
    let shard = store.path(&cids[0]).parent().unwrap().to_path_buf();
    std::fs::write(shard.join(".tmp-123-0"), b"half a blob").unwrap();

    let to = dir.path().join("copy");
    LocalDir::copy_blobs(store.root(), &to).unwrap();
    let copy = LocalDir::open(&to).await.unwrap();
    for cid in &cids {
        assert_eq!(copy.get(cid).await.unwrap(), store.get(cid).await.unwrap());
    }
    let copied: Vec<PathBuf> = files(&to)
        .iter()
        .map(|p| p.strip_prefix(&to).unwrap().to_path_buf())
        .collect();
    let originals: Vec<PathBuf> = cids
        .iter()
        .map(|c| {
            store
                .path(c)
                .strip_prefix(store.root())
                .unwrap()
                .to_path_buf()
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(copied, originals, "the blobs, and nothing being written");
}
