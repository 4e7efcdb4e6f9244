"""A medledger device over MQTT, written from docs/protocol.md alone
(sections 3.4, 4.1-4.4) with paho-mqtt, cbor2 and cryptography.

usage: paho_device.py HOST PORT CA_PEM CERT_PEM KEY_PEM SEQ BPM
Publishes one heart-rate reading and prints the collector's answer as
JSON: {"status": ..., "content_type": ..., "correlation": ..., "body": ...}.
"""

import hashlib
import json
import ssl
import sys
import threading
import time

import cbor2
import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

host, port, ca, cert_file, key_file, seq, bpm = sys.argv[1:8]

# The certificate chain as the .crt holds it: leaf, then the issuing CA.
pems = open(cert_file, "rb").read()
chain = [
    c.public_bytes(serialization.Encoding.DER)
    for c in x509.load_pem_x509_certificates(pems)
]
leaf = x509.load_der_x509_certificate(chain[0])
epc_hex = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
key = serialization.load_pem_private_key(open(key_file, "rb").read(), None)

# 4.3: the reading, deterministic CBOR (4.4: shortest floats, sorted keys).
reading = {
    "dev": bytes.fromhex(epc_hex),
    "seq": int(seq),
    "ts": int(time.time() * 1000),
    "obs": [{"code": "8867-4", "v": float(bpm), "unit": "/min"}],
}
payload = cbor2.dumps(reading, canonical=True)

# 4.1: protected header {1: -7, 4: kid, 33: [leaf, issuing CA]}.
kid = hashlib.sha256(chain[0]).digest()
protected = cbor2.dumps({1: -7, 4: kid, 33: chain}, canonical=True)

# 4.2: ES256 over Sig_structure ["Signature1", protected, h'', payload],
# r || s, 32 bytes each.
to_sign = cbor2.dumps(["Signature1", protected, b"", payload], canonical=True)
r, s = decode_dss_signature(key.sign(to_sign, ec.ECDSA(hashes.SHA256())))
signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
cose = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature]))

# 3.4: MQTT 5 over TLS with the device certificate.
readings = "medledger/v1/readings/" + epc_hex
receipts = "medledger/v1/receipts/" + epc_hex
answered = threading.Event()
answer = {}
subscribed = threading.Event()


def on_subscribe(client, userdata, mid, reason_codes, properties):
    subscribed.set()


def on_message(client, userdata, message):
    props = message.properties
    answer["status"] = int(dict(getattr(props, "UserProperty", []))["status"])
    answer["content_type"] = getattr(props, "ContentType", None)
    answer["correlation"] = getattr(props, "CorrelationData", b"").decode()
    answer["body"] = json.loads(message.payload)
    answered.set()


client = mqtt.Client(
    mqtt.CallbackAPIVersion.VERSION2, client_id=epc_hex, protocol=mqtt.MQTTv5
)
client.tls_set(ca_certs=ca, certfile=cert_file, keyfile=key_file)
client.on_subscribe = on_subscribe
client.on_message = on_message
client.connect(host, int(port))
client.loop_start()
client.subscribe(receipts, qos=1)
if not subscribed.wait(10):
    sys.exit("no SUBACK")

properties = mqtt.Properties(mqtt.PacketTypes.PUBLISH)
properties.ResponseTopic = receipts
properties.CorrelationData = b"paho-" + seq.encode()
properties.ContentType = "application/cose"
client.publish(readings, cose, qos=1, properties=properties).wait_for_publish(10)
if not answered.wait(30):
    sys.exit("no answer within 30 s")
client.loop_stop()
client.disconnect()
print(json.dumps(answer))
