//! The one integration test binary of fanout-core: every test talks to the simulator
//! (`fanout-sim`) over real HTTP on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod adversarial;
mod agent;
mod checkpoint;
mod config;
mod fleet;
mod items;
mod plan;
mod provider;
mod security;
mod store;
