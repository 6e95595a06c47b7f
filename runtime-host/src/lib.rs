//! The runtime host: loads a version's bundle, runs its lobby or match logic in a sandboxed
//! engine (Lua or WASM), and connects it to the platform through the runtime protocol.
// One function forks (the launcher's); everything else is safe code.
#![deny(unsafe_code)]

pub mod engine;
pub mod launcher;
pub mod limits;
pub mod loader;
pub mod lua;
pub mod session;
pub mod simulate;
pub mod wasm;
pub mod watchdog;
