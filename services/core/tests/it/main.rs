//! Integration tests of the core geometry.

mod precision;
