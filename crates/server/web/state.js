// Page state: who is signed in, and the names of the people they may see.
// Each piece lives here and nowhere else; other modules read and set it
// through the functions below. (The chain key is not here: it lives in
// `keys.js` and nowhere else.)

let signedIn = null;

/** Who is signed in (the server's session answer), or `null`. */
export function session() {
  return signedIn;
}

/** Sets who is signed in; `null` when signed out. */
export function setSession(value) {
  signedIn = value;
}

export function roleKind() {
  if (!signedIn) return null;
  if (signedIn.role === 'patient') return 'patient';
  if (signedIn.role === 'admin') return 'admin';
  return 'carer';
}

/** People's names by account (lower case), from the server's directory. */
const names = new Map();

/** Replaces the directory with `byAccount` (`{ account: name }`). */
export function setNames(byAccount) {
  names.clear();
  for (const [account, name] of Object.entries(byAccount)) names.set(account.toLowerCase(), String(name));
}

/** The name the directory gives `account`, if any. */
export function nameOf(account) {
  return names.get(String(account ?? '').toLowerCase());
}
