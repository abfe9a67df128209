//! `graph-sim`: the Microsoft Graph simulator as a process. STUB.
fn main() {}
