//! Bad transactions and requests get clear errors, and nothing changes.
