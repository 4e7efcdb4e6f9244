// The data types the server knows (its catalogue) and the scopes of grants
// and requests written with them; patients' and carers' views share them.

import { api } from './http.js';

let catalogue = null;

export function scopeText(scope) {
  if (Array.isArray(scope)) return scope.join(', ');
  return String(scope ?? '');
}

export function scopeHint() {
  const names = (catalogue ?? []).map((c) => c.name).filter(Boolean);
  return names.length
    ? `\u201call\u201d, or data types separated by commas: ${names.join(', ')}.`
    : '\u201call\u201d, or data type names separated by commas (heart-rate, spo2, …).';
}

export async function loadCatalogue() {
  if (catalogue) return catalogue;
  try {
    const list = await api('GET', '/portal/v1/catalogue', undefined, { what: 'Loading the data types' });
    catalogue = Array.isArray(list) ? list : (list.types ?? []);
  } catch {
    catalogue = null;
  }
  return catalogue ?? [];
}

export function normaliseScope(scope) {
  const text = scope
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .join(',');
  if (!text) throw new Error('Give a scope: \u201call\u201d or data type names separated by commas.');
  return text;
}
