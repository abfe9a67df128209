//! Integration tests, one module per capability, all in one binary (one link, shared helpers).
//! They talk to the real RabbitMQ on 127.0.0.1:5672 and to the Graph simulator over real HTTP.
//! The simulator's own tests are in its crate, `crates/graph-sim/tests/`.

mod common;

mod at_rest;
mod authority;
mod browser;
mod budget;
mod cli;
mod console;
mod defaults;
mod fidelity;
mod fleet;
mod graph_client;
mod graph_reset;
mod intake;
mod kill_switch;
mod pipeline;
mod records;
mod reliability;
mod reports;
mod requests;
mod restore;
mod tap;
mod trust;
