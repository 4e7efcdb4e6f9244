//! Simulation: devices that talk to a hospital over the wire, and a whole
//! hospital in one process for them to talk to.
//!
//! Two halves. A [`Device`] is what a third party would build from the
//! wire format and the PKI alone; the [`Hospital`] is every node of ours
//! (CA, chain and contracts, server, collectors, broker) started in this
//! process on real sockets, in a temporary directory.
//!
//! - [`device`]: a device's certificate and key, its signed readings, and
//!   [`post_readings`], the one way a reading request is sent;
//! - [`mqtt`]: a device that publishes its readings through the broker
//!   instead;
//! - [`signals`]: plausible vital signs of every device kind, over time;
//! - [`hospital`]: the in-process hospital ([`Hospital`], its [`Options`],
//!   [`Staff`], [`Ward`], [`Patient`]) and the chain helpers it uses;
//! - [`load`]: the load generator behind `medledger bench`;
//! - [`demo`]: `medledger demo`: scenarios, the attack matrix, erasure,
//!   backup and restore, with a report.
//!
//! ```text
//!  Hospital::start: CA -> embedded chain + contracts -> server, collector
//!                   (real sockets), one admitted patient with a card
//!  Hospital::device(n): a registered device assigned to the patient
//!  Device::heart_rate: a signed reading, as the device would send it
//!  post_readings(Hospital::connect(&device), ...) --> collector --> server
//! ```
//!
//! Built on by the integration tests, `medledger bench` ([`load`]),
//! `medledger sim` and `medledger demo` ([`demo`]).

pub mod demo;
pub mod device;
pub mod hospital;
pub mod load;
pub mod mqtt;
pub mod signals;

pub use device::{Device, Readings, Wait, cbor_array, post_readings};
pub use hospital::{
    GROUP, Hospital, Options, Patient, Staff, Ward, allow_kinds, auth, in_process, provider,
    record_certificate, signer,
};
pub use medledger_protocol::now_ms;
