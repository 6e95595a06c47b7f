//! Placeholder until the Lua engine lands.
fn main() {}
