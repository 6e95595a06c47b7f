//! Placeholder until the WASM engine lands.
fn main() {}
