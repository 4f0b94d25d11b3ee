//! The one integration test binary of fanout-core. Model calls go to the simulator
//! (`fanout-sim`) over real HTTP on loopback; repositories are real git repositories in temp
//! directories; security tests judge by effects (canary files, a loopback canary listener).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod adversarial;
mod agent;
mod caching;
mod checkpoint;
mod config;
mod distributed;
mod fleet;
mod items;
mod layers;
mod plan;
mod provider;
mod ratelimits;
mod security;
mod store;
mod support;
