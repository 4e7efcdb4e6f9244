//! The web portal: a single-page app for patients, staff and admins, and
//! the JSON it reads, on its own HTTPS port.
//!
//! ```text
//!  browser --HTTPS, client certificate optional--> identify:
//!      certificate  -> Caller (role and account from its extensions)
//!      session cookie -> Caller (signed in with the chain key: the role
//!                        from the Registry)
//!      neither      -> only the page and sign-in
//!  state changes: on chain, a transaction the browser signs (prepare ->
//!      sign in the page -> /portal/v1/transactions relays it); off chain
//!      (/v1/... PUT, POST, DELETE), a request the browser signs
//!      (x-medledger-signature over portal, nonce, method, path, time and
//!      body), taken once
//! ```
//!
//! Private keys stay in the page: the server sees signatures only.

mod events;
mod session;
mod tx;
mod views;

use crate::State;
use crate::answer::{Refused, refused};
use crate::caller::Caller;
use axum::Router;
use axum::extract::{Request, State as AxState};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use medledger_pki::https::Peer;
use medledger_protocol::ProblemType;
use session::Sessions;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The page and its assets, built into the binary.
const INDEX_HTML: &str = include_str!("../../web/index.html");
const STYLE_CSS: &str = include_str!("../../web/style.css");

/// `(path, contents)` of a script in `web/`, served under `/assets/`.
macro_rules! script {
    ($name:literal) => {
        (
            concat!("/assets/", $name),
            include_str!(concat!("../../web/", $name)),
        )
    };
}

/// The page's scripts, by path: ES modules served as they are (no bundler
/// at run time), `app.js` the entry. Every module one of them imports is
/// here, and every script in `web/` (tests check).
const SCRIPTS: &[(&str, &str)] = &[
    script!("app.js"),
    script!("admin.js"),
    script!("alerts.js"),
    script!("catalogue.js"),
    script!("charts.js"),
    script!("dom.js"),
    script!("everyone.js"),
    script!("fhir.js"),
    script!("http.js"),
    script!("keys.js"),
    script!("patient.js"),
    script!("routing.js"),
    script!("signin.js"),
    script!("signing.js"),
    script!("staff.js"),
    script!("state.js"),
    script!("status.js"),
    script!("tx.js"),
    script!("vendor.js"),
];

/// No script, style, frame or connection but our own.
const CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; \
                   base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// The portal's routes: the page, sign-in, its JSON, and the people
/// endpoints of the API port.
pub(crate) fn router(state: Arc<State>) -> Router {
    let scripts = SCRIPTS
        .iter()
        .fold(Router::new(), |router, &(path, script)| {
            router.route(
                path,
                get(move || asset(script, "text/javascript; charset=utf-8")),
            )
        });
    scripts
        .route("/", get(|| asset(INDEX_HTML, "text/html; charset=utf-8")))
        .route(
            "/assets/style.css",
            get(|| asset(STYLE_CSS, "text/css; charset=utf-8")),
        )
        .route("/portal/v1/challenge", post(session::challenge))
        .route(
            "/portal/v1/session",
            get(session::show)
                .post(session::sign_in)
                .delete(session::sign_out),
        )
        .route("/portal/v1/prepare", post(tx::prepare))
        .route("/portal/v1/transactions", post(tx::relay))
        .route("/portal/v1/tx/{hash}", get(views::transaction))
        .route("/portal/v1/catalogue", get(views::catalogue))
        .route("/portal/v1/events", get(views::events))
        .route("/portal/v1/consents", get(views::consents))
        .route("/portal/v1/vitals", get(views::vitals))
        .route("/portal/v1/ledger/{index}", get(views::ledger_entry))
        .route("/portal/v1/requests", get(views::requests))
        .route("/portal/v1/overview", get(views::overview))
        .route("/portal/v1/reviews", get(views::reviews))
        .merge(crate::http::people())
        .fallback(medledger_pki::https::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::directory::learn,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            identify,
        ))
        .layer(axum::middleware::from_fn(
            medledger_pki::https::problems_only,
        ))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    response
}

/// Paths anyone may reach before signing in.
fn public(path: &str) -> bool {
    path == "/"
        || path.starts_with("/assets/")
        || path == "/portal/v1/challenge"
        || path == "/portal/v1/session"
        || path == "/portal/v1/catalogue"
}

/// Middleware: who is asking (certificate, else session cookie), and for
/// off-chain state changes, that the caller signed this very request.
async fn identify(
    AxState(state): AxState<Arc<State>>,
    request: Request,
    next: Next,
) -> Result<Response, Refused> {
    let (mut parts, body) = request.into_parts();
    // A page of another site may not make the browser ask (a client
    // certificate goes with every request, whatever SameSite says).
    let site = parts
        .headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok());
    if matches!(site, Some(s) if s != "same-origin" && s != "none") {
        return Err(refused(
            ProblemType::Forbidden,
            "the portal answers its own pages only (Sec-Fetch-Site)",
        ));
    }
    let caller = match parts.extensions.get::<Peer>() {
        Some(peer) => Some(Caller::of_peer(peer)),
        None => match session::cookie(&parts.headers) {
            Some(token) => state.portal.sessions.caller(&state, token).await,
            None => None,
        },
    };
    let path = parts.uri.path().to_owned();
    let Some(caller) = caller else {
        if public(&path) {
            return Ok(next.run(Request::from_parts(parts, body)).await);
        }
        return Err(refused(
            ProblemType::SignInRequired,
            "sign in with your client certificate or your chain key",
        ));
    };
    let changes = !matches!(parts.method, Method::GET | Method::HEAD);
    let body = if changes && path.starts_with("/v1/") {
        session::check_signed_request(&state, &caller, &parts, body).await?
    } else {
        body
    };
    parts.extensions.insert(caller);
    Ok(next.run(Request::from_parts(parts, body)).await)
}

/// The portal's sessions (in SQL), and what it keeps in memory: block
/// times and sign-in challenge rates per address.
#[derive(Debug)]
pub(crate) struct Portal {
    sessions: Sessions,
    block_times: Mutex<HashMap<u64, u64>>,
    /// Challenges per address: a token bucket each.
    challenge_rates: Mutex<HashMap<std::net::IpAddr, (f64, std::time::Instant)>>,
}

/// Challenges one address may ask for at once, and per second after.
const CHALLENGE_BURST: f64 = 60.0;
const CHALLENGES_PER_S: f64 = 5.0;
/// Addresses whose buckets are kept at most (a flood from many addresses
/// empties the table rather than growing it).
const MAX_RATED_ADDRESSES: usize = 100_000;

/// Block times kept at most (they are cheap to ask for again).
const MAX_BLOCK_TIMES: usize = 100_000;

impl Portal {
    /// The portal of the server on `db`.
    pub(crate) async fn open(
        db: &medledger_storage::Db,
    ) -> Result<Portal, medledger_storage::sqlx::Error> {
        Ok(Portal {
            sessions: Sessions::open(db).await?,
            block_times: Mutex::default(),
            challenge_rates: Mutex::default(),
        })
    }

    /// Takes a challenge from `from`'s bucket; how long to wait if empty.
    fn take_challenge(&self, from: std::net::IpAddr) -> Result<(), std::time::Duration> {
        let now = std::time::Instant::now();
        let mut rates = self
            .challenge_rates
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if rates.len() >= MAX_RATED_ADDRESSES && !rates.contains_key(&from) {
            rates.clear();
        }
        let (tokens, at) = rates.entry(from).or_insert((CHALLENGE_BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * CHALLENGES_PER_S)
            .min(CHALLENGE_BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(std::time::Duration::from_secs_f64(
                (1.0 - *tokens) / CHALLENGES_PER_S,
            ))
        }
    }

    fn block_time(&self, number: u64) -> Option<u64> {
        let times = self.block_times.lock().unwrap_or_else(|e| e.into_inner());
        times.get(&number).copied()
    }

    fn remember_block_time(&self, number: u64, ms: u64) {
        let mut times = self.block_times.lock().unwrap_or_else(|e| e.into_inner());
        if times.len() >= MAX_BLOCK_TIMES {
            times.clear();
        }
        times.insert(number, ms);
    }
}

#[cfg(test)]
mod tests {
    use super::{INDEX_HTML, SCRIPTS};
    use std::collections::{BTreeMap, BTreeSet};

    /// The `/assets/` paths of the modules `script` imports (`import { .. }
    /// from './x.js';`, on one line or several).
    fn imports(script: &str) -> Vec<String> {
        script
            .lines()
            // An `import {` line is closed by its `} from` line.
            .filter(|line| *line != "import {")
            .filter(|line| line.starts_with("import ") || line.starts_with("} from "))
            .map(|line| {
                let module = line
                    .split(" from './")
                    .nth(1)
                    .and_then(|rest| rest.strip_suffix("';"))
                    .unwrap_or_else(|| panic!("an import the test cannot read: {line}"));
                format!("/assets/{module}")
            })
            .collect()
    }

    #[test]
    fn the_page_loads_only_scripts_that_are_served() {
        let served: BTreeSet<String> = SCRIPTS.iter().map(|(path, _)| (*path).to_owned()).collect();
        assert!(INDEX_HTML.contains(r#"<script type="module" src="/assets/app.js"></script>"#));
        for (path, script) in SCRIPTS {
            for module in imports(script) {
                assert!(
                    served.contains(&module),
                    "{path} imports {module}, which is not served"
                );
            }
        }
        // And no module in the folder is forgotten.
        let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/web");
        for entry in std::fs::read_dir(folder).expect("the page's folder is readable") {
            let name = entry.expect("the page's folder lists").file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".js") {
                assert!(
                    served.contains(&format!("/assets/{name}")),
                    "web/{name} is not served"
                );
            }
        }
    }

    #[test]
    fn the_page_modules_import_one_way() {
        let graph: BTreeMap<&str, Vec<String>> = SCRIPTS
            .iter()
            .map(|(path, script)| (*path, imports(script)))
            .collect();
        /// Depth first; meeting a module again on the current path is a cycle.
        fn visit<'a>(
            module: &'a str,
            graph: &'a BTreeMap<&str, Vec<String>>,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) {
            if done.contains(module) {
                return;
            }
            if let Some(start) = path.iter().position(|m| *m == module) {
                panic!("import cycle: {} -> {module}", path[start..].join(" -> "));
            }
            path.push(module);
            for next in graph.get(module).into_iter().flatten() {
                visit(next, graph, path, done);
            }
            path.pop();
            done.insert(module);
        }
        let mut done = BTreeSet::new();
        for module in graph.keys() {
            visit(module, &graph, &mut Vec::new(), &mut done);
        }
        assert_eq!(done.len(), SCRIPTS.len());
    }
}
