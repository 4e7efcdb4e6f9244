//! `alloy::sol!` bindings generated from the committed artifacts in
//! `contracts/out` (ABI and bytecode), so each type can be called and
//! deployed over any alloy `Provider`.
//!
//! Each contract's bindings live in their own module: a type of another
//! contract in its ABI (say `Registry.StaffRole` in Consent's) is generated
//! there again, as the plain value type it encodes to.

#![allow(missing_docs, clippy::too_many_arguments)]

/// `Registry` (its ABI's types from other contracts live inside this module).
pub mod registry {
    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug, PartialEq, Eq)]
        Registry,
        "../../contracts/out/Registry.json"
    );
}
pub use registry::Registry;

/// `RuleManager` (its ABI's types from other contracts live inside this module).
pub mod rule_manager {
    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug, PartialEq, Eq)]
        RuleManager,
        "../../contracts/out/RuleManager.json"
    );
}
pub use rule_manager::RuleManager;

/// `AllowedTypesRule` (its ABI's types from other contracts live inside this module).
pub mod allowed_types_rule {
    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug, PartialEq, Eq)]
        AllowedTypesRule,
        "../../contracts/out/AllowedTypesRule.json"
    );
}
pub use allowed_types_rule::AllowedTypesRule;

/// `ValueRangeRule` (its ABI's types from other contracts live inside this module).
pub mod value_range_rule {
    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug, PartialEq, Eq)]
        ValueRangeRule,
        "../../contracts/out/ValueRangeRule.json"
    );
}
pub use value_range_rule::ValueRangeRule;

/// `AllOfRule` (its ABI's types from other contracts live inside this module).
pub mod all_of_rule {
    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug, PartialEq, Eq)]
        AllOfRule,
        "../../contracts/out/AllOfRule.json"
    );
}
pub use all_of_rule::AllOfRule;

/// `Consent` (its ABI's types from other contracts live inside this module).
pub mod consent {
    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug, PartialEq, Eq)]
        Consent,
        "../../contracts/out/Consent.json"
    );
}
pub use consent::Consent;

/// `AccessLog` (its ABI's types from other contracts live inside this module).
pub mod access_log {
    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug, PartialEq, Eq)]
        AccessLog,
        "../../contracts/out/AccessLog.json"
    );
}
pub use access_log::AccessLog;

/// `Anchor` (its ABI's types from other contracts live inside this module).
pub mod anchor {
    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug, PartialEq, Eq)]
        Anchor,
        "../../contracts/out/Anchor.json"
    );
}
pub use anchor::Anchor;

/// The ABI JSON of every contract, for decoding revert data by name.
pub(crate) const ARTIFACTS: &[&str] = &[
    include_str!("../../../contracts/out/Registry.json"),
    include_str!("../../../contracts/out/RuleManager.json"),
    include_str!("../../../contracts/out/AllowedTypesRule.json"),
    include_str!("../../../contracts/out/ValueRangeRule.json"),
    include_str!("../../../contracts/out/AllOfRule.json"),
    include_str!("../../../contracts/out/Consent.json"),
    include_str!("../../../contracts/out/AccessLog.json"),
    include_str!("../../../contracts/out/Anchor.json"),
];
