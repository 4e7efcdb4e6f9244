// The third-party code the portal page runs, bundled by build.mjs into
// crates/server/web/vendor.js. Only what signing.js imports is re-exported.
export { secp256k1 } from '@noble/curves/secp256k1.js';
export { keccak_256 } from '@noble/hashes/sha3.js';
export { bytesToHex, hexToBytes, utf8ToBytes, concatBytes } from '@noble/hashes/utils.js';
