"""Reads medledger's FHIR API with fhirclient (SMART on FHIR's Python
client, from PyPI), as any integrator would: mutual TLS through the
client's requests session, every resource parsed into fhirclient's models
(which refuse unknown elements and wrong types), searches paged by
following the server's `next` links.

    read.py BASE CA CERT KEY observations REQUEST PATIENT
    read.py BASE CA CERT KEY refused REQUEST PATIENT   (as someone else)
    read.py BASE CA CERT KEY patient-view PATIENT

Prints one JSON object of what it read.
"""

import json
import sys

import requests
from fhirclient import server
from fhirclient.models.auditevent import AuditEvent
from fhirclient.models.capabilitystatement import CapabilityStatement
from fhirclient.models.consent import Consent
from fhirclient.models.device import Device
from fhirclient.models.observation import Observation

base, ca, cert, key, mode, *args = sys.argv[1:]
fhir = server.FHIRServer(None, base_uri=base)
# requests lets REQUESTS_CA_BUNDLE and the like override the session's own
# CA: the hospital's root is the only trust anchor here.
fhir.session.trust_env = False
fhir.session.verify = ca
fhir.session.cert = (cert, key)


def codes(observation):
    return [c.code for c in observation.code.coding]


if mode == "observations":
    request, patient = args
    fhir.session.headers["X-Access-Request"] = request
    statement = CapabilityStatement.read_from("metadata", fhir)
    search = Observation.where(struct={"patient": f"Patient/{patient}", "_count": "3"})
    pages = list(search.perform_iter(fhir))
    observations = [e.resource for page in pages for e in (page.entry or [])]
    heart = Observation.where(struct={"code": "http://loinc.org|8867-4"}).perform_resources(fhir)
    one = Observation.read(observations[0].id, fhir)
    try:
        Observation.read("0000000000000000-9", fhir)
        missing = "found"
    except server.FHIRNotFoundException as e:
        missing = e.response.json()["issue"][0]["code"]
    device = Device.read(observations[0].device.reference.split("/")[1], fhir)
    print(json.dumps({
        "fhirVersion": statement.fhirVersion,
        "resources": [r.type for r in statement.rest[0].resource],
        "pages": [len(p.entry or []) for p in pages],
        "totals": [p.total for p in pages],
        "observations": [
            {
                "id": o.id,
                "codes": codes(o),
                "value": o.valueQuantity.value,
                "unit": o.valueQuantity.unit,
                "profile": o.meta.profile,
                "device": o.device.display,
            }
            for o in observations
        ],
        "heart_rates": [o.valueQuantity.value for o in heart],
        "read": {"id": one.id, "value": one.valueQuantity.value},
        "missing": missing,
        "device": {
            "id": device.id,
            "identifiers": [i.value for i in device.identifier],
            "status": device.status,
        },
    }))
elif mode == "refused":
    request, patient = args
    answers = {}
    for name, url, headers in [
        ("no-request", f"{base}Observation?patient=Patient/{patient}", {}),
        ("unknown-parameter", f"{base}Observation?colour=red", {"X-Access-Request": request}),
        ("not-theirs", f"{base}Observation", {"X-Access-Request": request}),
        ("write", f"{base}Observation", None),
    ]:
        if headers is None:
            answer = fhir.session.post(url, json={"resourceType": "Observation"})
        else:
            answer = fhir.session.get(url, headers=headers)
        outcome = answer.json()
        answers[name] = {
            "status": answer.status_code,
            "type": answer.headers.get("content-type"),
            "resourceType": outcome.get("resourceType"),
            "code": outcome["issue"][0]["code"],
            "text": outcome["issue"][0]["diagnostics"],
        }
    print(json.dumps(answers))
elif mode == "patient-view":
    (patient,) = args
    where = {"patient": f"Patient/{patient}"}
    events = AuditEvent.where(struct=where).perform_resources(fhir)
    consents = Consent.where(struct=where).perform_resources(fhir)
    print(json.dumps({
        "audit": [{"outcome": e.outcome, "request": e.entity[1].what.identifier.value} for e in events],
        "consents": [
            {
                "status": c.status,
                "codes": [k.code for cc in c.provision.code for k in cc.coding],
                "actor": c.provision.actor[0].reference.display,
            }
            for c in consents
        ],
    }))
else:
    sys.exit(f"unknown mode {mode}")
