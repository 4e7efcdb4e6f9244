// Bytes, RLP and signatures: what the page signs with the chain key (EIP-155
// transactions, EIP-191 messages), all pure. `web/test/signing.test.mjs`
// checks it in node against published vectors.

import { bytesToHex, concatBytes, hexToBytes, keccak_256, secp256k1, utf8ToBytes } from './vendor.js';

/** `0x`-prefixed lowercase hex of `bytes`. */
export function hex0x(bytes) {
  return '0x' + bytesToHex(bytes);
}

/** Bytes of a hex string with or without `0x`; throws on odd length or non-hex. */
export function unhex(text) {
  const digits = String(text).replace(/^0x/i, '');
  if (digits.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(digits)) {
    throw new Error(`not hexadecimal bytes: ${String(text).slice(0, 20)}`);
  }
  return hexToBytes(digits);
}

/** A non-negative integer (number, bigint or decimal/0x string) as a bigint. */
export function toBigInt(value, what = 'value') {
  if (typeof value === 'bigint') return value;
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) return BigInt(value);
  if (typeof value === 'string' && /^(0x[0-9a-fA-F]+|[0-9]+)$/.test(value)) return BigInt(value);
  throw new Error(`${what} is not a non-negative integer: ${String(value)}`);
}

/** Minimal big-endian bytes of an integer; zero is the empty string (RLP's rule). */
export function intBytes(value) {
  const n = toBigInt(value);
  if (n === 0n) return new Uint8Array(0);
  let digits = n.toString(16);
  if (digits.length % 2) digits = '0' + digits;
  return hexToBytes(digits);
}

function rlpLength(length, offset) {
  if (length < 56) return Uint8Array.of(offset + length);
  const size = intBytes(length);
  return concatBytes(Uint8Array.of(offset + 55 + size.length), size);
}

/** RLP of a byte string (Uint8Array) or a list of items. */
export function rlp(item) {
  if (item instanceof Uint8Array) {
    if (item.length === 1 && item[0] < 0x80) return item;
    return concatBytes(rlpLength(item.length, 0x80), item);
  }
  if (Array.isArray(item)) {
    const body = concatBytes(...item.map(rlp));
    return concatBytes(rlpLength(body.length, 0xc0), body);
  }
  throw new Error('rlp: items are byte strings or lists');
}

/** The secret key in a `.eth.key` file: 64 hex digits, maybe `0x`, maybe whitespace. */
export function parseKeyFile(text) {
  const digits = String(text).trim().replace(/^0x/i, '');
  if (!/^[0-9a-fA-F]{64}$/.test(digits)) {
    throw new Error('This is not a chain key file: it must hold 64 hexadecimal digits (optionally starting with 0x).');
  }
  const key = hexToBytes(digits);
  if (!secp256k1.utils.isValidSecretKey(key)) {
    throw new Error('This chain key file holds a number that is not a valid secp256k1 key.');
  }
  return key;
}

/** The chain account of a secret key: last 20 bytes of keccak(uncompressed public key). */
export function addressOf(key) {
  const publicKey = secp256k1.getPublicKey(key, false);
  return hex0x(keccak_256(publicKey.subarray(1)).subarray(12));
}

/** Deterministic low-s signature of a 32-byte hash: `{ r, s, recovery }`. */
function signHash(key, hash) {
  const sig = secp256k1.sign(hash, key, { prehash: false, lowS: true, format: 'recovered' });
  return { recovery: sig[0], r: sig.subarray(1, 33), s: sig.subarray(33, 65) };
}

/** EIP-191 `personal_sign` hash of a text message. */
export function personalHash(message) {
  const body = utf8ToBytes(message);
  return keccak_256(concatBytes(utf8ToBytes(`\x19Ethereum Signed Message:\n${body.length}`), body));
}

/** EIP-191 `personal_sign`: `0x` + r (32) + s (32) + v (27 + recovery). */
export function personalSign(key, message) {
  const { r, s, recovery } = signHash(key, personalHash(message));
  return hex0x(concatBytes(r, s, Uint8Array.of(27 + recovery)));
}

/**
 * A signed legacy EIP-155 transaction, as raw `0x` hex.
 * `tx`: `{ nonce, gasPrice, gas, to, value, data, chainId }`.
 */
export function signLegacyTx(key, tx) {
  const to = unhex(tx.to);
  if (to.length !== 20) throw new Error(`transaction target is not a 20-byte address: ${tx.to}`);
  const data = unhex(tx.data ?? '0x');
  const chainId = toBigInt(tx.chainId, 'chain id');
  const fields = [
    intBytes(toBigInt(tx.nonce, 'nonce')),
    intBytes(toBigInt(tx.gasPrice ?? 0, 'gas price')),
    intBytes(toBigInt(tx.gas, 'gas')),
    to,
    intBytes(toBigInt(tx.value ?? 0, 'value')),
    data,
  ];
  const hash = keccak_256(rlp([...fields, intBytes(chainId), new Uint8Array(0), new Uint8Array(0)]));
  const { r, s, recovery } = signHash(key, hash);
  const v = chainId * 2n + 35n + BigInt(recovery);
  return hex0x(rlp([...fields, intBytes(v), intBytes(BigInt(hex0x(r))), intBytes(BigInt(hex0x(s)))]));
}

/**
 * The text an off-chain request signature covers: the portal it is meant for
 * and a fresh nonce (the server takes each request once), then the request.
 */
export function requestSigningText(portal, nonce, method, path, signedAtMs, body) {
  return `medledger portal request\nportal: ${portal}\nnonce: ${nonce}\n${method} ${path}\n${signedAtMs}\n${body}`;
}

/** A fresh request nonce: 32 hex digits from the browser's CSPRNG. */
export function freshNonce() {
  return bytesToHex(crypto.getRandomValues(new Uint8Array(16)));
}
