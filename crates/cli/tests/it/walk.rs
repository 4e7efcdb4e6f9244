//! docs/operations.md, "Each role on its own machine", walked as written:
//! every shell block of that section run in order, the roles as processes
//! of their own, so that the document cannot drift from the program. The
//! section says how its commands are taken on one machine; this file is
//! that: the host names become `localhost`, the example addresses
//! 127.0.0.1, the ports free ones, the system directories directories of
//! the test's, `scp -p` a `cp -p`, and `sudo` what one user can do. A
//! `0xNAME...` is bound to the value the command whose comment names it
//! printed. The walk ends with the nurse's FHIR Bundle of the readings
//! `medledger sim` sent.

use medledger_storage::test_utils;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The section walked, from its heading to the next heading.
const SECTION: &str = "## Each role on its own machine";

/// The example hosts of the section and of `deploy/*.toml`.
const HOSTS: [&str; 5] = [
    "chain.example",
    "medledger.example",
    "collector1.example",
    "collector2.example",
    "db.example",
];
const ADDRESSES: [&str; 4] = ["10.0.0.10", "10.0.0.20", "10.0.0.30", "0.0.0.0"];
/// The example ports: the chain's two listeners, the server's, the
/// collector's, and their metrics listeners.
const PORTS: [u16; 6] = [8545, 8546, 9443, 8443, 9102, 9101];

/// The shell commands of the section, in order: each a line (joined over
/// trailing backslashes), or a `for` loop to its `done`. Blocks that
/// install systemd units are left out: `deploy.rs` checks the units.
fn commands(doc: &str) -> Vec<String> {
    let start = doc.find(SECTION).expect("the section is in the document");
    let section = &doc[start + SECTION.len()..];
    let section = &section[..section.find("\n#").unwrap_or(section.len())];
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    let mut block = Vec::new();
    for line in section.lines().map(str::trim) {
        if line.starts_with("```") {
            in_block = line == "```sh";
            if !in_block && block.iter().all(|c: &String| !c.contains("systemctl")) {
                commands.append(&mut block);
            }
            block.clear();
            continue;
        }
        if !in_block || line.is_empty() {
            continue;
        }
        let continued = line.strip_suffix('\\');
        pending.push_str(continued.unwrap_or(line));
        pending.push(if continued.is_some() { ' ' } else { '\n' });
        let done = line.starts_with("done") || line.ends_with("; done");
        let open = pending.starts_with("for ") && !done;
        if continued.is_none() && !open {
            block.push(std::mem::take(&mut pending).trim().to_owned());
        }
    }
    assert!(pending.is_empty(), "an unfinished command: {pending}");
    commands
}

/// A command split from its comment (after ` # `, outside loops).
fn split_comment(command: &str) -> (&str, &str) {
    match command.find(" # ") {
        Some(at) if !command.starts_with("for ") => {
            (command[..at].trim(), command[at + 3..].trim())
        }
        _ => (command, ""),
    }
}

/// The `0xNAME...` placeholders of `text`: (start, end, NAME).
fn placeholders(text: &str) -> Vec<(usize, usize, &str)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("0x").map(|i| from + i) {
        let name: &str = &text[at + 2..];
        let len = name
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit()))
            .unwrap_or(name.len());
        if len > 0
            && name[len..].starts_with("...")
            && name[..len].chars().any(|c| c.is_ascii_alphabetic())
        {
            found.push((at, at + 2 + len + 3, &name[..len]));
        }
        from = at + 2;
    }
    found
}

/// The first `0x` value of 40 hex digits or more in `text`.
fn first_value(text: &str) -> Option<&str> {
    text.match_indices("0x").find_map(|(at, _)| {
        let len = text[at + 2..]
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(text.len() - at - 2);
        (len >= 40).then(|| &text[at..at + 2 + len])
    })
}

/// One machine standing in for the section's several.
struct Walk {
    root: PathBuf,
    cwd: PathBuf,
    ports: BTreeMap<u16, u16>,
    values: BTreeMap<String, String>,
    exports: Vec<String>,
    database: String,
    roles: Vec<Role>,
    /// Each command run and what it printed, for a failure's message.
    said: String,
}

/// A role running: its kind (`chain`, `server`, ...), its process, its
/// output and, for a server or a collector, its metrics listener.
struct Role {
    kind: String,
    child: Child,
    log: PathBuf,
    metrics: Option<SocketAddr>,
}

impl Drop for Walk {
    fn drop(&mut self) {
        for role in self.roles.iter_mut().rev() {
            stop(&mut role.child);
        }
    }
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

impl Walk {
    /// The text as it reads on this machine.
    fn localise(&self, text: &str) -> String {
        let root = self.root.display();
        let mut text = text
            .replace("/etc/medledger", &format!("{root}/etc"))
            .replace("/var/lib/medledger", &format!("{root}/var"))
            .replace("/srv/medledger", &format!("{root}/srv"));
        for host in HOSTS {
            text = text.replace(host, "localhost");
        }
        for address in ADDRESSES {
            text = text.replace(address, "127.0.0.1");
        }
        for (example, port) in &self.ports {
            text = text.replace(&format!(":{example}"), &format!(":{port}"));
        }
        text
    }

    /// The command with its placeholders' values, `sudo` and `scp` as one
    /// user on one machine does them; `None` for what one user cannot do.
    fn prepare(&self, command: &str) -> Option<String> {
        let mut text = command.to_owned();
        for (start, end, name) in placeholders(command).into_iter().rev() {
            let value = self.values.get(name).unwrap_or_else(|| {
                panic!("0x{name}... is used before a command printed it: {command}")
            });
            text.replace_range(start..end, value);
        }
        let text = self.localise(&text);
        if text.starts_with("sudo useradd ") || text.starts_with("sudo chown ") {
            return None;
        }
        let text = text
            .replace("sudo -u medledger ", "")
            .replace("sudo install ", "install ")
            .replace(" -o medledger -g medledger", "");
        assert!(
            !text.contains("sudo"),
            "the walk does not know how to run: {text}"
        );
        if !text.contains("scp -p ") {
            return Some(text);
        }
        // scp to a host: the copy to that host's directory, here.
        let words: Vec<String> = text
            .replace("scp -p ", "cp -p ")
            .split(' ')
            .map(|word| match word.split_once(":/") {
                Some((_, path)) => format!("/{path}"),
                None => word.to_owned(),
            })
            .collect();
        Some(words.join(" "))
    }

    fn run(&mut self, command: &str) {
        let (command, comment) = split_comment(command);
        let Some(text) = self.prepare(command) else {
            return;
        };
        if let Some(dir) = text.strip_prefix("cd ") {
            self.cwd = PathBuf::from(dir);
            return;
        }
        if let Some(export) = text.strip_prefix("export ") {
            self.exports.push(format!("export {export}"));
            return;
        }
        for role in ["chain", "server", "collector"] {
            if text.starts_with(&format!("medledger {role} --")) {
                return self.start(role, &text);
            }
        }
        let script = format!("set -e\n{}\n{text}", self.exports.join("\n"));
        let out = Command::new("bash")
            .args(["-c", &script])
            .current_dir(&self.cwd)
            .env("PATH", path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.said.push_str(&format!("$ {text}\n{printed}\n"));
        assert!(out.status.success(), "{}\nfailed: {text}", self.said);
        // The value the comment names, after the words before it.
        if let Some(&(start, _, name)) = placeholders(comment).first() {
            let words = comment[..start].trim().trim_start_matches("prints").trim();
            let after = printed.find(words).map_or(0, |at| at + words.len());
            let value = first_value(&printed[after..])
                .unwrap_or_else(|| panic!("{}\nno 0x{name}... in what {text} printed", self.said));
            self.values.insert(name.to_owned(), value.to_owned());
        }
    }

    /// Starts a role; a chain started again replaces the running one,
    /// stopped as the section says (SIGTERM).
    fn start(&mut self, role: &str, text: &str) {
        if let Some(at) = self
            .roles
            .iter()
            .position(|r| r.kind == role && role == "chain")
        {
            let mut chain = self.roles.remove(at);
            stop(&mut chain.child);
            let said = read(&chain.log);
            assert!(said.contains("medledger chain: stopping"), "{said}");
        }
        let config = word_after(text, "--config");
        if let Some(config) = &config {
            self.write_config(role, Path::new(config));
        }
        let metrics = config.map(|c| {
            let text = std::fs::read_to_string(c).unwrap();
            toml_value(&text, "metrics_listen").parse().unwrap()
        });
        // What it listens on first: the chain's TLS listener, a role's
        // metrics listener.
        let addr: SocketAddr = match metrics {
            Some(addr) => addr,
            None => word_after(text, "--rpc-tls").unwrap().parse().unwrap(),
        };
        let log = self.root.join(format!("{role}-{}.log", self.roles.len()));
        let child = Command::new("bash")
            .args(["-c", &format!("exec {text}")])
            .current_dir(&self.cwd)
            .env("PATH", path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .unwrap();
        self.said
            .push_str(&format!("$ {text} &  (its output: {})\n", log.display()));
        self.roles.push(Role {
            kind: role.to_owned(),
            child,
            log: log.clone(),
            metrics,
        });
        let started = Instant::now();
        loop {
            let child = &mut self.roles.last_mut().unwrap().child;
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "{}\nthe {role} exited ({status}):\n{}",
                    self.said,
                    read(&log)
                );
            }
            if std::net::TcpStream::connect(addr).is_ok() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{}",
                read(&log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A role's file, made as the section says: the example in `deploy/`
    /// with this machine's names and the values the operator fills in.
    fn write_config(&self, role: &str, path: &Path) {
        if path.exists() {
            return;
        }
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../deploy/{role}.toml"));
        let mut text = self.localise(&std::fs::read_to_string(example).unwrap());
        text = set(&text, "registry", &self.values["REGISTRY"]);
        if role == "server" {
            text = set(&text, "database", &self.database);
        }
        std::fs::write(path, text).unwrap();
    }

    /// Waits until every role started answers `/readyz` with 200.
    async fn ready(&self) {
        for addr in self.roles.iter().filter_map(|r| r.metrics) {
            crate::health::readyz_until(addr, 200).await;
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// PATH with the binary under test first.
fn path() -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_medledger")).parent().unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn word_after(text: &str, flag: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == flag)?;
    words.next().map(str::to_owned)
}

/// The string value of `key` in a TOML file's text.
fn toml_value(text: &str, key: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{key} =")))
        .unwrap_or_else(|| panic!("no {key} in {text}"));
    line.split('"').nth(1).unwrap().to_owned()
}

/// The text with `key`'s line set to `value`.
fn set(text: &str, key: &str, value: &str) -> String {
    let prefix = format!("{key} =");
    let lines: Vec<String> = text
        .lines()
        .map(|l| match l.starts_with(&prefix) {
            true => format!("{key} = \"{value}\""),
            false => l.to_owned(),
        })
        .collect();
    assert!(
        lines.iter().any(|l| l.starts_with(&prefix)),
        "no {key} in {text}"
    );
    lines.join("\n")
}

#[test]
fn the_section_reads_as_the_walk_takes_it() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/operations.md"),
    )
    .unwrap();
    let commands = commands(&doc);
    assert!(
        commands
            .iter()
            .any(|c| c.starts_with("for serial in 500 501 502; do\n"))
    );
    assert!(
        commands
            .iter()
            .any(|c| c.starts_with("medledger records get --request 1 "))
    );
    assert_eq!(
        placeholders("--allow 0xADMIN... --patient 0xP1... 0x5FbDB 0xACCOUNT"),
        [(8, 18, "ADMIN"), (29, 36, "P1")]
    );
    assert_eq!(
        first_value("address      0xB7262dbE7775e104546370CaE280eEd9A3BCB165\n"),
        Some("0xB7262dbE7775e104546370CaE280eEd9A3BCB165")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_on_its_own_machine_walks_as_the_document_says() {
    let Some((database, _, _db)) = test_utils::postgres_schema().await else {
        return;
    };
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/operations.md"),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let home = root.join("home");
    std::fs::create_dir(&home).unwrap();
    let ports = PORTS
        .iter()
        .map(|&p| (p, crate::ingest::free_port()))
        .collect();
    let mut walk = Walk {
        root,
        cwd: home,
        ports,
        values: BTreeMap::new(),
        exports: Vec::new(),
        database,
        roles: Vec::new(),
        said: String::new(),
    };
    for command in commands(&doc) {
        if command.contains("medledger sim ") || command.starts_with("medledger access ") {
            // Devices send, and the nurse reads, once every role is ready.
            walk.ready().await;
        }
        walk.run(&command);
    }
    let bundle: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(walk.cwd.join("bundle.json")).unwrap())
            .unwrap();
    let observations: Vec<_> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Observation")
        .collect();
    assert!(!observations.is_empty(), "{}\n{bundle}", walk.said);
    let patient = &walk.values["PATIENTREF"];
    for o in observations {
        let subject = o["resource"]["subject"].to_string();
        assert!(
            subject
                .to_lowercase()
                .contains(&patient[2..].to_lowercase()),
            "{subject} {patient}"
        );
    }
}
