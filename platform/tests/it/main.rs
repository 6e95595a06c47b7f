//! Integration tests: the real server on port 0, real SQLite files and a real PostgreSQL
//! (`RALLY_TEST_POSTGRES_URL`, set up by `scripts/test`), real child processes for the CLI.
//! Tests that touch storage run once per backend: `<module>::sqlite::<test>` and
//! `<module>::postgres::<test>`.

mod helpers;

mod auth;
mod builds;
mod cli;
mod defold;
mod dev;
mod docker;
mod docs;
mod errors;
mod imports;
mod management;
mod nodes;
mod permissions;
mod players;
mod playground;
mod pools;
mod programs;
mod registry;
mod rules;
mod runtimes;
mod security;
mod server;
mod servers;
mod storage;
mod tictactoe;
mod users;
