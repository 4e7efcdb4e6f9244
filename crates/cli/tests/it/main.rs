//! The `medledger` binary, run as an operator would.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod access;
mod admin;
mod alerts;
mod bench;
mod besu;
mod ca;
mod chain;
mod crash;
mod dead_letters;
mod demo;
mod deploy;
mod erase;
mod fhir_api;
mod full_disk;
mod health;
mod indexer;
mod ingest;
mod mqtt;
mod network;
mod portal;
mod records;
mod restore;
mod revocation;
mod servers;
mod sim;
mod site;
mod token;
mod up;
mod verify;
mod walk;
