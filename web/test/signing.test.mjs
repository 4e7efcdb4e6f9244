// Checks the portal page's signing and parsing code (crates/server/web/
// signing.js and fhir.js) against published vectors: RLP examples from the
// Ethereum wiki, the EIP-155 example transaction, and web3.js's documented
// personal_sign example.
//
//   cd web && node --test
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  addressOf,
  hex0x,
  intBytes,
  parseKeyFile,
  personalSign,
  requestSigningText,
  rlp,
  signLegacyTx,
} from '../../crates/server/web/signing.js';
import { eventText, ledgerIndexOf, observationsOf, outOfRange } from '../../crates/server/web/fhir.js';

const text = (s) => new TextEncoder().encode(s);

test('rlp encodes the reference examples', () => {
  assert.equal(hex0x(rlp(text('dog'))), '0x83646f67');
  assert.equal(hex0x(rlp([text('cat'), text('dog')])), '0xc88363617483646f67');
  assert.equal(hex0x(rlp(new Uint8Array(0))), '0x80');
  assert.equal(hex0x(rlp([])), '0xc0');
  assert.equal(hex0x(rlp(intBytes(0))), '0x80');
  assert.equal(hex0x(rlp(intBytes(15))), '0x0f');
  assert.equal(hex0x(rlp(intBytes(1024))), '0x820400');
  assert.equal(hex0x(rlp([[], [[]], [[], [[]]]])), '0xc7c0c1c0c3c0c1c0');
  const lorem = 'Lorem ipsum dolor sit amet, consectetur adipisicing elit';
  assert.equal(hex0x(rlp(text(lorem))), '0xb838' + Buffer.from(lorem).toString('hex'));
});

test('signLegacyTx reproduces the EIP-155 example', () => {
  const raw = signLegacyTx(parseKeyFile('46'.repeat(32)), {
    nonce: 9,
    gasPrice: 20000000000n,
    gas: 21000,
    to: '0x' + '35'.repeat(20),
    value: 1000000000000000000n,
    data: '0x',
    chainId: 1,
  });
  assert.equal(
    raw,
    '0xf86c098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a76400008025a028ef61340bd939bc2195fe537567866003e1a15d3c71ff63e1590620aa636276a067cbe9d8997f761aecb703304b3800ccf555c9f3dc64214b297fb1966a3b6d83',
  );
});

test('personalSign matches the web3.js example and its address', () => {
  const key = parseKeyFile('0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318\n');
  assert.equal(addressOf(key), '0x2c7536e3605d9c16a7a3d7b1898e529396a65c23');
  assert.equal(
    personalSign(key, 'Some data'),
    '0xb91467e570a6466aa9e9876cbcd013baba02900b8979d43fe208a4a4f339f5fd6007e74cd82e037b800186422fc2da167c747ef045e5d18a5f5d4300f8e1a0291c',
  );
});

test('parseKeyFile refuses what is not a key', () => {
  assert.throws(() => parseKeyFile('12'), /64 hexadecimal digits/);
  assert.throws(() => parseKeyFile('zz'.repeat(32)), /64 hexadecimal digits/);
  assert.throws(() => parseKeyFile('00'.repeat(32)), /not a valid secp256k1 key/);
  assert.equal(parseKeyFile(`  0X${'11'.repeat(32)} \r\n`).length, 32);
});

test('requestSigningText joins portal, nonce, method, path, time and body', () => {
  assert.equal(
    requestSigningText('127.0.0.1:8446', '00112233445566778899aabbccddeeff', 'PUT', '/v1/alerts/preferences', '1700000000000', '{"mode":"all"}'),
    'medledger portal request\nportal: 127.0.0.1:8446\nnonce: 00112233445566778899aabbccddeeff\nPUT /v1/alerts/preferences\n1700000000000\n{"mode":"all"}',
  );
});

test('observationsOf reads scalar observations, ranges and reading hashes', () => {
  const hash = 'ab'.repeat(32);
  const bundle = {
    entry: [
      {
        resource: {
          resourceType: 'Observation',
          identifier: [{ value: `${hash}#0` }],
          code: { coding: [{ code: '8867-4', display: 'Heart rate' }] },
          effectiveDateTime: '2024-01-01T00:00:00.000Z',
          valueQuantity: { value: 130, unit: '/min' },
          interpretation: [{ coding: [{ code: 'H' }] }],
        },
      },
      { resource: { resourceType: 'Observation', code: { coding: [{ code: '131328' }] }, valueSampledData: { data: '1 2 E 3' } } },
      { resource: { resourceType: 'AuditEvent' } },
    ],
  };
  const [hr, ecg] = observationsOf(bundle);
  assert.equal(hr.reading, hash);
  assert.equal(hr.value, 130);
  assert.equal(hr.time, Date.UTC(2024, 0, 1));
  assert.equal(outOfRange(hr, null), 'high');
  assert.equal(outOfRange({ ...hr, interp: null }, [60, 100]), 'high');
  assert.equal(outOfRange({ ...hr, interp: null, value: 50 }, [60, 100]), 'low');
  assert.equal(outOfRange({ ...hr, interp: null, value: 70 }, [60, 100]), null);
  assert.deepEqual(ecg.waveform, [1, 2, 3]);
});

test('observationsOf gives a blood-pressure panel as its two pressures, from one device', () => {
  const bundle = {
    entry: [
      {
        resource: {
          resourceType: 'Observation',
          identifier: [{ value: `${'cd'.repeat(32)}#2` }],
          code: { coding: [{ code: '85354-9' }] },
          effectiveDateTime: '2024-01-01T00:00:00.000Z',
          device: { reference: 'Device/30', display: 'urn:epc:id:sgtin:0614141.812345.6789' },
          component: [
            { code: { coding: [{ code: '8480-6', display: 'Systolic blood pressure' }] }, valueQuantity: { value: 150, unit: 'mmHg', code: 'mm[Hg]' }, interpretation: [{ coding: [{ code: 'H' }] }] },
            { code: { coding: [{ code: '8462-4', display: 'Diastolic blood pressure' }] }, valueQuantity: { value: 80, unit: 'mmHg', code: 'mm[Hg]' } },
          ],
        },
      },
    ],
  };
  const [systolic, diastolic] = observationsOf(bundle);
  assert.deepEqual([systolic.code, systolic.value, systolic.unit, systolic.interp], ['8480-6', 150, 'mmHg', 'H']);
  assert.deepEqual([diastolic.code, diastolic.value, diastolic.index], ['8462-4', 80, '2']);
  assert.equal(diastolic.device, 'urn:epc:id:sgtin:0614141.812345.6789');
  assert.equal(diastolic.time, Date.UTC(2024, 0, 1));
});

test('ledgerIndexOf finds the ledger entry of an AuditEvent', () => {
  const audit = {
    entity: [
      { what: { identifier: { system: 'urn:medledger:access-request', value: '3' } } },
      { what: { identifier: { system: 'urn:medledger:ledger-entry', value: `${'cd'.repeat(32)}/12` } } },
    ],
  };
  assert.equal(ledgerIndexOf(audit), '12');
  assert.equal(ledgerIndexOf({ entity: [] }), null);
});

test('eventText names the decision', () => {
  assert.equal(eventText({ event: 'AccessGranted', args: { id: '3', basis: '2' } }), 'Access request 3 granted (basis consent)');
  assert.equal(eventText({ event: 'AccessGranted', args: { id: '3', basis: 'consent' } }), 'Access request 3 granted (basis consent)');
  assert.equal(eventText({ event: 'ConsentGranted', args: { id: '1', grantee: '0x' + '0'.repeat(40), role: '1' } }), 'Consent 1 granted to every doctor');
});
