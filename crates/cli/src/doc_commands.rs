//! The `medledger` commands the documents show parse as this build reads
//! them: every `medledger ...` line of a code block in the README and
//! `docs/*.md`, its placeholders (`0xREGISTRY...`, `0xPATIENTREF...`) given
//! a value of their shape, must be accepted by the argument parser. A flag
//! renamed or removed in the program fails here until the doc follows.

#![allow(clippy::unwrap_used)]

use crate::Cli;
use clap::Parser;
use std::path::Path;

/// The `medledger` command lines of the shell code blocks of `text`
/// (lines joined at a trailing `\`, comments, the prompt and `[optional]`
/// parts dropped), each as words, with the line it starts on.
fn commands(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut found = Vec::new();
    let mut in_block = false;
    let mut pending: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_block = trimmed == "```sh" || trimmed == "```bash";
            continue;
        }
        if !in_block || trimmed.starts_with('#') {
            continue;
        }
        let mut piece = trimmed.trim_start_matches("$ ").to_owned();
        if let Some((before, _)) = piece.split_once(" #") {
            piece = before.trim_end().to_owned();
        }
        let continues = piece.ends_with('\\');
        let piece = piece.trim_end_matches('\\').trim().to_owned();
        let (start, joined) = match pending.take() {
            Some((start, so_far)) => (start, format!("{so_far} {piece}")),
            None => (n + 1, piece),
        };
        if continues {
            pending = Some((start, joined));
            continue;
        }
        let words = words(&without_optional(&joined));
        // `medledger` in command position: first, after environment
        // assignments, after `sudo -u USER`, or in `$(...)`.
        for (i, word) in words.iter().enumerate() {
            let at_start = words[..i].iter().all(|w| w.contains('='))
                || (i >= 2 && words[i - 2] == "-u" && words[..i - 2].iter().any(|w| w == "sudo"))
                || word.starts_with("$(");
            if at_start && word.trim_start_matches("$(") == "medledger" {
                let mut command = vec!["medledger".to_owned()];
                for w in &words[i + 1..] {
                    if ["|", "&&", ";", ">", "2>&1"].contains(&w.as_str()) || w.starts_with('>') {
                        break;
                    }
                    let end = w.ends_with(')') && !w.contains('(');
                    command.push(w.trim_end_matches(')').to_owned());
                    if end {
                        break;
                    }
                }
                found.push((start, command));
                break;
            }
        }
    }
    found
}

/// `line` without its `[optional]` parts.
fn without_optional(line: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in line.chars() {
        match c {
            '[' => depth += 1,
            ']' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// `line` split as a shell would, quotes kept together.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, ' ') => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            _ => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// A placeholder such as `0xREGISTRY...` or `0xPATIENTREF` given a value
/// of its shape: 32 bytes for a patientRef, a root or a hash, else an
/// address.
fn filled(word: &str) -> String {
    let Some(rest) = word.strip_prefix("0x") else {
        return word.to_owned();
    };
    let name = rest.trim_end_matches("...");
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_hexdigit()) && name.len() % 2 == 0 {
        return word.to_owned();
    }
    if ["REF", "ROOT", "HASH"].iter().any(|k| name.contains(k)) {
        format!("0x{}", "cd".repeat(32))
    } else {
        format!("0x{}", "ab".repeat(20))
    }
}

#[test]
fn every_medledger_command_in_the_documents_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = vec![
        root.join("README.md"),
        root.join("deploy/besu-qbft/README.md"),
    ];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "md") {
            files.push(path);
        }
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (line, command) in commands(&text) {
            // Shell variables, and elisions (`--epc ...`), stand for values
            // the reader supplies.
            if command
                .iter()
                .any(|w| w.contains('$') || w.contains("...") && !w.starts_with("0x"))
            {
                continue;
            }
            checked += 1;
            let args: Vec<String> = command.iter().map(|w| filled(w)).collect();
            if let Err(e) = Cli::try_parse_from(&args) {
                use clap::error::ErrorKind;
                if !matches!(
                    e.kind(),
                    ErrorKind::DisplayHelp
                        | ErrorKind::DisplayVersion
                        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                ) {
                    failures.push(format!(
                        "{}:{line}: {}\n  {}",
                        file.strip_prefix(&root).unwrap_or(file).display(),
                        command.join(" "),
                        e.to_string().lines().next().unwrap_or_default()
                    ));
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} commands found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// clap's own checks of the whole command line (a global argument that is
/// also required, clashing names...), which otherwise fail only when that
/// subcommand runs.
#[test]
fn the_command_line_is_well_formed() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
}
