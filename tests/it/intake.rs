//! Integration tests: intake.
