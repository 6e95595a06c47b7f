//! What scripts can call: the `ctx` table handed to every handler, and the globals Rally adds or
//! replaces (`require`, `print`, `json`). Every function checks its arguments and raises a clear
//! error naming the function, the argument and the caller's file and line; those errors reach
//! the runtime as `HandlerError::InvalidOutput`.

use std::rc::Rc;

use mlua::{Function, Lua, MultiValue, Table, Value, Variadic};
use rally_sdk::runtime::{LogLevel, Payload, Qualifier, RuntimeCommand};

use super::json::{self, NullAs};
use super::modules::Modules;
use super::{HostState, Misuse, COMMAND_OVERHEAD_BYTES};

/// Longest client id accepted (ids are UUIDs); longer strings are a script bug, and copying them
/// into every command would let a script make the host hold far more than its memory cap.
const MAX_CLIENT_ID_BYTES: usize = 128;

/// Replaces the globals that would reach outside the bundle or load code, and adds Rally's.
/// Runs before the sandbox makes the global table read-only.
pub(super) fn install_globals(
    lua: &Lua,
    host: &Rc<HostState>,
    modules: &Rc<Modules>,
) -> mlua::Result<()> {
    let globals = lua.globals();
    // mlua's Luau set-up installs a `require` that reads the file system and a `loadstring`;
    // Luau itself has no `load`, `loadfile`, `dofile`, `io`, `debug` (not opened) and no
    // `os.execute`/`os.exit`/`os.getenv`. `getfenv`/`setfenv` go too: they are the 5.1 way to
    // reach another function's environment, and they turn off Luau's fast paths.
    for name in [
        "loadstring",
        "load",
        "loadfile",
        "dofile",
        "getfenv",
        "setfenv",
        "require",
    ] {
        globals.raw_set(name, Value::Nil)?;
    }

    let require_modules = Rc::clone(modules);
    let require = lua.create_function(move |lua, name: Value| match &name {
        Value::String(text) => require_modules.require(lua, &text.to_string_lossy()),
        other => Err(mlua::Error::runtime(format!(
            "{}require: module name must be a string, got {}",
            caller_location(lua),
            type_name(other)
        ))),
    })?;
    globals.raw_set("require", require)?;

    let print_host = Rc::clone(host);
    let print = lua.create_function(move |lua, args: Variadic<Value>| {
        let message = join_for_log(&args, "\t", print_host.limits.max_payload_bytes)?;
        print_host.log(lua, "print", LogLevel::Info, message)
    })?;
    globals.raw_set("print", print)?;

    globals.raw_set("json", json_table(lua, host)?)?;
    Ok(())
}

/// The `ctx` table. Fields that come with `Event::Started` (`user_data`, `config`, `mode`,
/// `qualifier`) are filled in then.
pub(super) fn context(lua: &Lua, host: &Rc<HostState>) -> mlua::Result<Table> {
    let ctx = lua.create_table()?;

    let state = Rc::clone(host);
    ctx.raw_set(
        "respond",
        lua.create_function(
            move |lua, (client_id, payload, kind): (Value, Value, Value)| {
                let client_id = client_id_arg(lua, "ctx.respond", "client_id", &client_id)?;
                let payload = payload_arg(lua, &state, "ctx.respond", &payload, &kind)?;
                let size = client_id.len() + payload_size(&payload);
                state.emit(
                    lua,
                    "ctx.respond",
                    RuntimeCommand::RespondClient { client_id, payload },
                    size,
                )
            },
        )?,
    )?;

    let state = Rc::clone(host);
    ctx.raw_set(
        "multicast",
        lua.create_function(
            move |lua, (client_ids, payload, kind): (Value, Value, Value)| {
                let Value::Table(list) = &client_ids else {
                    return Err(misuse(
                        lua,
                        format!(
                            "ctx.multicast: client_ids must be a list of client ids, got {}",
                            type_name(&client_ids)
                        ),
                    ));
                };
                let mut ids = Vec::with_capacity(list.raw_len());
                let mut size = 0;
                for id in list.sequence_values::<Value>() {
                    let id = client_id_arg(lua, "ctx.multicast", "each of client_ids", &id?)?;
                    size += id.len() + COMMAND_OVERHEAD_BYTES;
                    state.check_allowance(lua, "ctx.multicast", size)?;
                    ids.push(id);
                }
                let payload = payload_arg(lua, &state, "ctx.multicast", &payload, &kind)?;
                if ids.is_empty() {
                    return Ok(());
                }
                size += payload_size(&payload);
                state.emit(
                    lua,
                    "ctx.multicast",
                    RuntimeCommand::Multicast {
                        client_ids: ids,
                        payload,
                    },
                    size,
                )
            },
        )?,
    )?;

    let state = Rc::clone(host);
    ctx.raw_set(
        "broadcast",
        lua.create_function(move |lua, (payload, kind): (Value, Value)| {
            let payload = payload_arg(lua, &state, "ctx.broadcast", &payload, &kind)?;
            let size = payload_size(&payload);
            state.emit(
                lua,
                "ctx.broadcast",
                RuntimeCommand::Broadcast { payload },
                size,
            )
        })?,
    )?;

    let state = Rc::clone(host);
    ctx.raw_set(
        "kick",
        lua.create_function(move |lua, (client_id, reason): (Value, Value)| {
            let client_id = client_id_arg(lua, "ctx.kick", "client_id", &client_id)?;
            let reason = optional_text_arg(lua, &state, "ctx.kick", "reason", &reason)?
                .unwrap_or_else(|| "kicked".into());
            let size = client_id.len() + reason.len();
            state.emit(
                lua,
                "ctx.kick",
                RuntimeCommand::KickClient { client_id, reason },
                size,
            )
        })?,
    )?;

    let state = Rc::clone(host);
    ctx.raw_set(
        "set_profile",
        lua.create_function(move |lua, (client_id, profile): (Value, Value)| {
            let client_id = client_id_arg(lua, "ctx.set_profile", "client_id", &client_id)?;
            let profile = profile_arg(lua, &state, &profile)?;
            let size = client_id.len() + profile.1;
            state.emit(
                lua,
                "ctx.set_profile",
                RuntimeCommand::SetProfile {
                    client_id,
                    profile: profile.0,
                },
                size,
            )
        })?,
    )?;

    let state = Rc::clone(host);
    ctx.raw_set(
        "request_matchmaking",
        lua.create_function(move |lua, (client_id, mode): (Value, Value)| {
            let client_id = client_id_arg(lua, "ctx.request_matchmaking", "client_id", &client_id)?;
            let Some(mode) =
                optional_text_arg(lua, &state, "ctx.request_matchmaking", "mode", &mode)?
            else {
                return Err(misuse(
                    lua,
                    "ctx.request_matchmaking: mode must be a string, got nil",
                ));
            };
            let size = client_id.len() + mode.len();
            state.emit(
                lua,
                "ctx.request_matchmaking",
                RuntimeCommand::RequestMatchmaking { client_id, mode },
                size,
            )
        })?,
    )?;

    let state = Rc::clone(host);
    ctx.raw_set(
        "stop_match",
        lua.create_function(move |lua, reason: Value| {
            if state.qualifier.get() == Some(Qualifier::Lobby) {
                return Err(misuse(
                    lua,
                    "ctx.stop_match: only a match can be stopped; this runtime is a lobby",
                ));
            }
            let reason = optional_text_arg(lua, &state, "ctx.stop_match", "reason", &reason)?
                .unwrap_or_else(|| "finished".into());
            let size = reason.len();
            state.emit(
                lua,
                "ctx.stop_match",
                RuntimeCommand::StopMatch { reason },
                size,
            )
        })?,
    )?;

    ctx.raw_set("log", log_table(lua, host)?)?;
    ctx.raw_set("json", lua.globals().get::<Table>("json")?)?;

    let state = Rc::clone(host);
    ctx.raw_set(
        "now",
        lua.create_function(move |_, ()| Ok(state.started_at.elapsed().as_secs_f64()))?,
    )?;

    let state = Rc::clone(host);
    ctx.raw_set(
        "after",
        lua.create_function(move |lua, (seconds, callback): (Value, Value)| {
            let delay = seconds_arg(lua, "ctx.after", &seconds, Zero::Allowed)?;
            let callback = callback_arg(lua, "ctx.after", &callback)?;
            state
                .timers
                .borrow_mut()
                .add(delay, None, callback)
                .map_err(|message| misuse(lua, format!("ctx.after: {message}")))
        })?,
    )?;

    let state = Rc::clone(host);
    ctx.raw_set(
        "every",
        lua.create_function(move |lua, (seconds, callback): (Value, Value)| {
            let interval = seconds_arg(lua, "ctx.every", &seconds, Zero::Refused)?;
            let callback = callback_arg(lua, "ctx.every", &callback)?;
            (state
                .timers
                .borrow_mut()
                .add(interval, Some(interval), callback))
            .map_err(|message| misuse(lua, format!("ctx.every: {message}")))
        })?,
    )?;

    let state = Rc::clone(host);
    ctx.raw_set(
        "cancel",
        lua.create_function(move |lua, id: Value| {
            let id = match id {
                Value::Number(number) if number.fract() == 0.0 && number >= 0.0 => number as u64,
                Value::Integer(integer) if integer >= 0 => integer as u64,
                other => {
                    return Err(misuse(
                        lua,
                        format!(
                            "ctx.cancel: id must be a timer id from ctx.after or ctx.every, got {}",
                            describe(&other)
                        ),
                    ));
                }
            };
            Ok(state.timers.borrow_mut().cancel(id))
        })?,
    )?;

    Ok(ctx)
}

/// `ctx.log(...)` logs at info; `ctx.log.debug/info/warn/error(...)` at that level. Arguments
/// are converted like `tostring` and joined with spaces.
fn log_table(lua: &Lua, host: &Rc<HostState>) -> mlua::Result<Table> {
    let log = lua.create_table()?;
    for (name, level) in [
        ("debug", LogLevel::Debug),
        ("info", LogLevel::Info),
        ("warn", LogLevel::Warn),
        ("error", LogLevel::Error),
    ] {
        let state = Rc::clone(host);
        let function_name = format!("ctx.log.{name}");
        log.raw_set(
            name,
            lua.create_function(move |lua, args: Variadic<Value>| {
                let message = join_for_log(&args, " ", state.limits.max_payload_bytes)?;
                state.log(lua, &function_name, level, message)
            })?,
        )?;
    }
    let state = Rc::clone(host);
    let call = lua.create_function(move |lua, mut args: MultiValue| {
        args.pop_front(); // the log table itself
        let args: Vec<Value> = args.into_iter().collect();
        let message = join_for_log(&args, " ", state.limits.max_payload_bytes)?;
        state.log(lua, "ctx.log", LogLevel::Info, message)
    })?;
    let metatable = lua.create_table()?;
    metatable.raw_set("__call", call)?;
    log.set_metatable(Some(metatable))?;
    Ok(log)
}

/// `json.encode(value)`, `json.decode(text[, options])`, `json.null`: the global `json` (as in
/// Defold) and `ctx.json` are the same table.
fn json_table(lua: &Lua, host: &Rc<HostState>) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    let state = Rc::clone(host);
    table.raw_set(
        "encode",
        lua.create_function(move |lua, value: Value| {
            let text = json::encode(&value, state.limits.memory_bytes)
                .map_err(|message| misuse(lua, format!("json.encode: {message}")))?;
            lua.create_string(text)
        })?,
    )?;
    table.raw_set(
        "decode",
        lua.create_function(|lua, (text, options): (Value, Value)| {
            let Value::String(text) = &text else {
                return Err(misuse(
                    lua,
                    format!(
                        "json.decode: text must be a string, got {}",
                        type_name(&text)
                    ),
                ));
            };
            let null_as = match &options {
                Value::Nil => NullAs::Nil,
                Value::Table(options) => {
                    match options.raw_get::<Value>("decode_null_as_userdata")? {
                        Value::Boolean(true) => NullAs::Sentinel,
                        _ => NullAs::Nil,
                    }
                }
                other => {
                    return Err(misuse(
                        lua,
                        format!(
                            "json.decode: options must be a table, got {}",
                            type_name(other)
                        ),
                    ));
                }
            };
            json::decode(lua, &text.as_bytes(), null_as).map_err(|err| match err {
                mlua::Error::RuntimeError(message) => {
                    mlua::Error::runtime(format!("{}json.decode: {message}", caller_location(lua)))
                }
                other => other,
            })
        })?,
    )?;
    table.raw_set("null", Value::NULL)?;
    Ok(table)
}

/// An API misuse, raised in Lua with the caller's location.
pub(super) fn misuse(lua: &Lua, message: impl AsRef<str>) -> mlua::Error {
    mlua::Error::external(Misuse(format!(
        "{}{}",
        caller_location(lua),
        message.as_ref()
    )))
}

/// `file:line: ` of the innermost Lua function on the stack (the caller of a Rust function),
/// or nothing when no Lua function is running.
pub(super) fn caller_location(lua: &Lua) -> String {
    lua_frame(lua)
        .map(|(file, line, _)| format!("{file}:{line}: "))
        .unwrap_or_default()
}

/// File, line and function name of the innermost Lua (not C or Rust) function on the stack.
pub(super) fn lua_frame(lua: &Lua) -> Option<(String, usize, Option<String>)> {
    for level in 0..32 {
        let frame = lua.inspect_stack(level, |debug| {
            let source = debug.source();
            if source.what == "C" {
                return None;
            }
            let file = source.short_src.as_deref().unwrap_or("?").to_owned();
            let line = debug.current_line().unwrap_or(0);
            let name = debug.names().name.map(|name| name.into_owned());
            Some((file, line, name))
        })?;
        if frame.is_some() {
            return frame;
        }
    }
    None
}

/// A value's type as Lua's `type()` names it (mlua tells integers apart; Lua does not).
pub(super) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Integer(_) => "number",
        other => other.type_name(),
    }
}

/// The type of a value, and the value itself for numbers.
fn describe(value: &Value) -> String {
    match value {
        Value::Number(number) => format!("number {number}"),
        Value::Integer(integer) => format!("number {integer}"),
        other => type_name(other).to_owned(),
    }
}

fn client_id_arg(lua: &Lua, function: &str, argument: &str, value: &Value) -> mlua::Result<String> {
    let Value::String(text) = value else {
        return Err(misuse(
            lua,
            format!(
                "{function}: {argument} must be a client id string, got {}",
                describe(value)
            ),
        ));
    };
    let bytes = text.as_bytes();
    if bytes.len() > MAX_CLIENT_ID_BYTES {
        return Err(misuse(
            lua,
            format!("{function}: {argument} is {} bytes long; client ids are at most {MAX_CLIENT_ID_BYTES}", bytes.len()),
        ));
    }
    match std::str::from_utf8(&bytes) {
        Ok(id) => Ok(id.to_owned()),
        Err(_) => Err(misuse(
            lua,
            format!("{function}: {argument} is not valid UTF-8"),
        )),
    }
}

/// A string argument that may be omitted; bounded like a payload.
fn optional_text_arg(
    lua: &Lua,
    host: &HostState,
    function: &str,
    argument: &str,
    value: &Value,
) -> mlua::Result<Option<String>> {
    let text = match value {
        Value::Nil => return Ok(None),
        Value::String(text) => text,
        other => {
            return Err(misuse(
                lua,
                format!(
                    "{function}: {argument} must be a string, got {}",
                    describe(other)
                ),
            ));
        }
    };
    let bytes = text.as_bytes();
    if bytes.len() > host.limits.max_payload_bytes {
        return Err(misuse(
            lua,
            format!(
                "{function}: {argument} of {} bytes is larger than the limit of {} bytes",
                bytes.len(),
                host.limits.max_payload_bytes
            ),
        ));
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(Some(text.to_owned())),
        Err(_) => Err(misuse(
            lua,
            format!("{function}: {argument} is not valid UTF-8"),
        )),
    }
}

/// `payload[, kind]`: a string sent as a text frame (it must be UTF-8) or, with kind
/// `"binary"`, as a binary frame of its bytes.
fn payload_arg(
    lua: &Lua,
    host: &HostState,
    function: &str,
    payload: &Value,
    kind: &Value,
) -> mlua::Result<Payload> {
    let binary = match kind {
        Value::Nil => false,
        Value::String(kind) if kind.as_bytes().as_ref() == b"text" => false,
        Value::String(kind) if kind.as_bytes().as_ref() == b"binary" => true,
        Value::String(kind) => {
            return Err(misuse(
                lua,
                format!(
                    "{function}: kind must be \"text\" or \"binary\", got \"{}\"",
                    kind.to_string_lossy()
                ),
            ));
        }
        other => {
            return Err(misuse(
                lua,
                format!(
                    "{function}: kind must be \"text\" or \"binary\", got {}",
                    describe(other)
                ),
            ));
        }
    };
    let Value::String(payload) = payload else {
        return Err(misuse(
            lua,
            format!(
                "{function}: payload must be a string, got {} (encode tables with ctx.json.encode)",
                describe(payload)
            ),
        ));
    };
    let bytes = payload.as_bytes();
    if bytes.len() > host.limits.max_payload_bytes {
        return Err(misuse(
            lua,
            format!(
                "{function}: payload of {} bytes is larger than the limit of {} bytes",
                bytes.len(),
                host.limits.max_payload_bytes
            ),
        ));
    }
    if binary {
        return Ok(Payload::Binary(bytes.to_vec().into()));
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(Payload::Text(text.to_owned())),
        Err(_) => Err(misuse(
            lua,
            format!(
                "{function}: a text payload must be valid UTF-8; send bytes with kind \"binary\""
            ),
        )),
    }
}

fn payload_size(payload: &Payload) -> usize {
    match payload {
        Payload::Text(text) => text.len(),
        Payload::Binary(bytes) => bytes.len(),
    }
}

/// A profile: a table with string keys (an empty table is `{}`), at most a payload's size as
/// JSON. Returns the JSON value and its size.
fn profile_arg(
    lua: &Lua,
    host: &HostState,
    value: &Value,
) -> mlua::Result<(serde_json::Value, usize)> {
    if !matches!(value, Value::Table(_)) {
        return Err(misuse(
            lua,
            format!(
                "ctx.set_profile: profile must be a table, got {}",
                describe(value)
            ),
        ));
    }
    let max = host.limits.max_payload_bytes;
    let text = json::encode(value, max)
        .map_err(|message| misuse(lua, format!("ctx.set_profile: {message}")))?;
    let profile: serde_json::Value = serde_json::from_slice(&text).map_err(|err| {
        misuse(
            lua,
            format!("ctx.set_profile: the profile is not valid JSON: {err}"),
        )
    })?;
    if !profile.is_object() {
        return Err(misuse(
            lua,
            "ctx.set_profile: profile must be a table with string keys, not a list",
        ));
    }
    Ok((profile, text.len()))
}

/// Whether a timer may have no delay.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Zero {
    Allowed,
    Refused,
}

fn seconds_arg(lua: &Lua, function: &str, value: &Value, zero: Zero) -> mlua::Result<f64> {
    let seconds = match value {
        Value::Number(number) => *number,
        Value::Integer(integer) => *integer as f64,
        other => {
            return Err(misuse(
                lua,
                format!(
                    "{function}: seconds must be a number, got {}",
                    describe(other)
                ),
            ))
        }
    };
    let valid = seconds.is_finite() && (seconds > 0.0 || (zero == Zero::Allowed && seconds == 0.0));
    if !valid {
        let expected = if zero == Zero::Allowed {
            "zero or more"
        } else {
            "more than zero"
        };
        return Err(misuse(
            lua,
            format!("{function}: seconds must be a finite number {expected}, got {seconds}"),
        ));
    }
    Ok(seconds)
}

fn callback_arg(lua: &Lua, function: &str, value: &Value) -> mlua::Result<Function> {
    match value {
        Value::Function(callback) => Ok(callback.clone()),
        other => Err(misuse(
            lua,
            format!(
                "{function}: callback must be a function, got {}",
                describe(other)
            ),
        )),
    }
}

/// Arguments converted like `tostring`, joined by `separator`, cut at `max_bytes`.
fn join_for_log(args: &[Value], separator: &str, max_bytes: usize) -> mlua::Result<String> {
    let mut message = String::new();
    for (index, arg) in args.iter().enumerate() {
        if index > 0 {
            message.push_str(separator);
        }
        match arg {
            Value::String(text) => {
                // Only what can still fit is copied out of Lua.
                let bytes = text.as_bytes();
                let room = (max_bytes + 1)
                    .saturating_sub(message.len())
                    .min(bytes.len());
                message.push_str(&String::from_utf8_lossy(&bytes[..room]));
            }
            other => message.push_str(&other.to_string()?),
        }
        if message.len() > max_bytes {
            break;
        }
    }
    if message.len() > max_bytes {
        let mut end = max_bytes;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(" [truncated]");
    }
    Ok(message)
}
