//! The Rally platform: the HTTP server and everything it owns, plus the `rally` command line.
#![forbid(unsafe_code)]

pub mod accounts;
pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod health;
pub mod loadtest;
pub mod metrics;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod users;
