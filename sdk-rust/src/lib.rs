//! Rally's wire types and async clients: the one place where the shapes exchanged between the
//! platform, the CLI, runtimes and game clients are defined.
#![forbid(unsafe_code)]

pub mod manifest;
pub mod player;
pub mod runtime;
pub mod wire;

#[cfg(feature = "bundle")]
pub mod bundle;

#[cfg(feature = "guest")]
pub mod guest;

#[cfg(feature = "client")]
pub mod client;

#[cfg(feature = "client")]
pub use client::{ClientError, RallyClient};
