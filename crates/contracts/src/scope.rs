//! Which data types an access or a consent covers: a bit set over the
//! catalogue, as the Consent and AccessLog contracts store it.
//!
//! Bit `i` is the `i`-th entry of [`medledger_protocol::CATALOGUE`]; the
//! catalogue only ever grows at its end, so bits keep their meaning. All ones
//! means every type, including types added later.

use alloy::primitives::U256;
use medledger_protocol::catalogue::{CATALOGUE, DataType, data_type_by_name};
use std::fmt;
use std::str::FromStr;

/// A set of data types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope(pub U256);

/// A scope that names no known data type.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScopeError {
    /// Neither a LOINC code nor a short name of the catalogue.
    #[error(
        "unknown data type {0:?} in scope (expected `all`, or LOINC codes or names such as heart-rate, spo2)"
    )]
    UnknownType(String),
    /// Nothing listed.
    #[error("empty scope (expected `all`, or LOINC codes or names separated by commas)")]
    Empty,
}

impl Scope {
    /// Every data type, now and later.
    pub const ALL: Scope = Scope(U256::MAX);

    /// The scope of exactly these data types.
    pub fn of<'a>(types: impl IntoIterator<Item = &'a DataType>) -> Scope {
        let mut bits = U256::ZERO;
        for t in types {
            bits |= U256::from(1) << bit(t);
        }
        Scope(bits)
    }

    /// Whether `data_type` is in the scope.
    pub fn contains(&self, data_type: &DataType) -> bool {
        self.0.bit(bit(data_type))
    }

    /// Whether every type of `other` is in this scope.
    pub fn covers(&self, other: &Scope) -> bool {
        other.0 & !self.0 == U256::ZERO
    }
}

fn bit(data_type: &DataType) -> usize {
    CATALOGUE
        .iter()
        .position(|t| std::ptr::eq(t, data_type) || t.code == data_type.code)
        .expect("a DataType comes from the catalogue")
}

impl FromStr for Scope {
    type Err = ScopeError;

    /// `all`, or LOINC codes or short names separated by commas.
    fn from_str(s: &str) -> Result<Scope, ScopeError> {
        if s.trim() == "all" {
            return Ok(Scope::ALL);
        }
        let mut types = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            types.push(
                data_type_by_name(part).ok_or_else(|| ScopeError::UnknownType(part.to_owned()))?,
            );
        }
        if types.is_empty() {
            return Err(ScopeError::Empty);
        }
        Ok(Scope::of(types))
    }
}

impl fmt::Display for Scope {
    /// `all`, or the short names of the types in the scope.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Scope::ALL {
            return f.write_str("all");
        }
        let names: Vec<&str> = CATALOGUE
            .iter()
            .filter(|t| self.contains(t))
            .map(|t| t.name)
            .collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bits are stored on chain: pin them.
    #[test]
    fn bits_are_stable() {
        let codes: Vec<&str> = CATALOGUE.iter().map(|t| t.code).collect();
        assert_eq!(
            codes,
            [
                "8867-4", "59408-5", "8310-5", "8480-6", "8462-4", "9279-1", "2339-0", "15074-8",
                "29463-7", "11524-6"
            ]
        );
        let s: Scope = "heart-rate,8310-5".parse().expect("valid");
        assert_eq!(s.0, U256::from(0b101));
        assert_eq!(s.to_string(), "heart-rate,body-temperature");
    }

    #[test]
    fn parse_and_cover() {
        let all: Scope = "all".parse().expect("valid");
        let hr: Scope = "heart-rate".parse().expect("valid");
        let vitals: Scope = "heart-rate, spo2".parse().expect("valid");
        assert!(all.covers(&vitals) && vitals.covers(&hr) && !hr.covers(&vitals));
        assert_eq!(
            "pulse".parse::<Scope>(),
            Err(ScopeError::UnknownType("pulse".into()))
        );
        assert_eq!(" , ".parse::<Scope>(), Err(ScopeError::Empty));
        assert_eq!(all.to_string(), "all");
    }
}
