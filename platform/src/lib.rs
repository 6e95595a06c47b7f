//! The Rally platform: the HTTP server and everything it owns, plus the `rally` command line.
#![forbid(unsafe_code)]

pub mod accounts;
pub mod audit;
pub mod auth;
pub mod builds;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod deployed;
pub mod deployments;
pub mod dispatcher;
pub mod error;
pub mod grants;
pub mod health;
pub mod idempotency;
pub mod images;
pub mod leases;
pub mod loadtest;
pub mod matchmaker;
pub mod metrics;
pub mod nodes;
pub mod openapi;
pub mod permissions;
pub mod players;
pub mod pools;
pub mod projects;
pub mod registry;
pub mod runtimes;
pub mod server;
pub mod stages;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod tenants;
pub mod users;
pub mod versions;
