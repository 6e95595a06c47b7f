//! The seam between the runtime's connection and the game logic: an [`Engine`] (Lua or WASM)
//! takes one [`Event`] at a time and appends the commands the logic emitted.

use rally_sdk::runtime::{Payload, Qualifier, RuntimeCommand};

/// What the logic is told, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Once, first: the runtime starts (`on_start`).
    Started {
        qualifier: Qualifier,
        user_data: serde_json::Value,
        config: serde_json::Value,
        /// The mode of a match; `None` for lobbies.
        mode: Option<String>,
    },
    /// `on_client_assigned`.
    ClientAssigned {
        client_id: String,
        user_id: String,
        profile: serde_json::Value,
        group: Option<String>,
    },
    /// `on_client_removed`.
    ClientRemoved { client_id: String, reason: String },
    /// `on_message`: text stays a string, binary arrives as bytes.
    Message { client_id: String, payload: Payload },
    /// `on_tick(dt)`, `dt` in seconds since the previous tick.
    Tick { dt: f64 },
    /// `on_stop`: the last event.
    Stopping,
}

/// Why a handler call failed. The runtime reports it and goes on with the next event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// The logic raised an error; `message` carries file, line and traceback.
    #[error("script error: {message}")]
    Script { message: String },
    /// The handler ran past its instruction (Lua) or fuel (WASM) budget and was stopped.
    #[error("handler stopped after exceeding its budget: {location}")]
    BudgetExceeded { location: String },
    /// The logic tried to use more memory than the runtime's cap.
    #[error("handler stopped: memory limit of {limit_bytes} bytes reached")]
    OutOfMemory { limit_bytes: usize },
    /// The handler returned something the protocol cannot carry (wrong type, bad arguments).
    #[error("invalid handler output: {message}")]
    InvalidOutput { message: String },
}

/// Limits every engine enforces on the logic it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory the logic may hold, in bytes.
    pub memory_bytes: usize,
    /// Work allowed per handler call: Luau interrupt points (calls, returns, loop back-edges,
    /// pattern-matching steps; the Lua engine also derives a wall-clock bound from it), or WASM
    /// fuel units.
    pub budget_per_call: u64,
    /// Largest payload the logic may send, in bytes.
    pub max_payload_bytes: usize,
}

/// Wall time allowed per budget unit: a call gets `budget_per_call × 100 ns`.
const NANOS_PER_BUDGET_UNIT: u64 = 100;

/// The shortest wall time a call is allowed, whatever its budget.
const MIN_TIME_PER_CALL: std::time::Duration = std::time::Duration::from_millis(100);

impl Limits {
    /// The wall time one handler call may take (1 s with the default budget). The Lua engine
    /// stops its logic at this limit itself; [`crate::watchdog`] ends the runtime when a call
    /// that cannot be interrupted runs on past it, whatever the engine.
    pub fn time_per_call(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.budget_per_call.saturating_mul(NANOS_PER_BUDGET_UNIT))
            .max(MIN_TIME_PER_CALL)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 * 1024 * 1024,
            budget_per_call: 10_000_000,
            max_payload_bytes: 64 * 1024,
        }
    }
}

/// One loaded piece of game logic. Not shared between threads: a runtime runs its logic on one
/// thread, in event order.
pub trait Engine {
    /// Runs the handler for `event`; the commands it emitted are appended to `commands` even
    /// when the handler fails part-way (what it sent before the failure stands).
    fn handle(
        &mut self,
        event: &Event,
        commands: &mut Vec<RuntimeCommand>,
    ) -> Result<(), HandlerError>;
}
