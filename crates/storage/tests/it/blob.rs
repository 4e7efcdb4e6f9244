//! The content-addressed blob store: CIDs (pinned to what IPFS computes)
//! and the local-directory backend.

use medledger_storage::blob::{BlobError, BlobStore, Cid, CidError, LocalDir};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
        hex(empty.digest()),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(empty.to_string(), EMPTY);
    let hello = Cid::of(b"hello world");
    assert_eq!(
        hex(hello.digest()),
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

#[tokio::test]
async fn put_get_contains_delete() {
    let (store, _dir) = store().await;
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
}

#[tokio::test]
async fn blobs_outlive_the_store_and_the_layout_is_pinned() {
    let (store, dir) = store().await;
    let cid = store.put(b"hello world").await.unwrap();
    // `<dir>/<next-to-last two characters>/<cid>`: the on-disk format.
    let path = dir.path().join("blobs").join("n5").join(HELLO_WORLD);
    assert_eq!(store.path(&cid), path);
    assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
    assert_eq!(files(store.root()), [path]);
    drop(store);

    let reopened = LocalDir::open(dir.path().join("blobs")).await.unwrap();
    assert_eq!(reopened.get(&cid).await.unwrap(), b"hello world");
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

#[tokio::test]
async fn a_blob_altered_on_disk_is_refused() {
    let (store, _dir) = store().await;
    let cid = store.put(b"blood pressure 120/80").await.unwrap();
    let path = store.path(&cid);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[15] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let err = store.get(&cid).await.unwrap_err();
    let BlobError::Tampered { cid: named, actual } = &err else {
        panic!("expected Tampered, got {err:?}");
    };
    assert_eq!(*named, cid);
    assert_eq!(*actual, Cid::of(&bytes));
    let message = err.to_string();
    assert!(message.contains(&cid.to_string()), "{message}");
    assert!(message.contains("tampered or corrupt"), "{message}");

    // Putting the bytes again repairs it.
    assert_eq!(store.put(b"blood pressure 120/80").await.unwrap(), cid);
    assert_eq!(store.get(&cid).await.unwrap(), b"blood pressure 120/80");
}

#[tokio::test]
async fn a_blob_swapped_for_another_is_refused() {
    let (store, _dir) = store().await;
    let mine = store.put(b"patient A: negative").await.unwrap();
    let theirs = store.put(b"patient B: positive").await.unwrap();
    std::fs::copy(store.path(&theirs), store.path(&mine)).unwrap();

    let err = store.get(&mine).await.unwrap_err();
    assert!(
        matches!(err, BlobError::Tampered { cid, actual } if cid == mine && actual == theirs),
        "{err:?}"
    );
    assert_eq!(store.get(&theirs).await.unwrap(), b"patient B: positive");
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

#[tokio::test]
async fn a_missing_blob_is_not_found_by_name() {
    let (store, _dir) = store().await;
    let cid = Cid::of(b"never stored");
    assert!(!store.contains(&cid).await.unwrap());
    let err = store.get(&cid).await.unwrap_err();
    assert!(matches!(err, BlobError::NotFound(c) if c == cid), "{err:?}");
    assert_eq!(err.to_string(), format!("blob {cid} not found"));
}
