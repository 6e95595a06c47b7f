//! JSON for Lua values: `ctx.json.encode`/`decode`, profiles sent with `ctx.set_profile`, and the
//! user data, config and profiles the platform hands to the logic.
//!
//! Both directions stream (no intermediate `serde_json::Value` for decoding) so that what a
//! script decodes is built directly in Lua memory, under the runtime's memory cap, and what it
//! encodes is written into a buffer that refuses to grow past a limit: a small table that holds
//! the same megabyte string a million times must not become a terabyte of JSON in the host.

use std::cell::RefCell;
use std::fmt;
use std::io;

use mlua::{Lua, Value};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, Error as _, SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

/// Deepest nesting of tables accepted when encoding; deeper tables (or tables that contain
/// themselves) are refused instead of exhausting the host's stack. Decoding has the same limit
/// from `serde_json`.
const MAX_DEPTH: usize = 128;

/// Largest integer a Lua number (a double) holds exactly; integral numbers below it are written
/// without a fraction.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// What to turn a JSON `null` into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NullAs {
    /// `nil`: a null field reads as absent, as in Defold's `json.decode`.
    Nil,
    /// The `json.null` sentinel, which survives a round trip through `encode`.
    Sentinel,
}

/// Encodes `value` as JSON text of at most `max_bytes` bytes.
pub(super) fn encode(value: &Value, max_bytes: usize) -> Result<Vec<u8>, String> {
    let mut out = BoundedWriter {
        bytes: Vec::new(),
        max_bytes,
    };
    match serde_json::to_writer(&mut out, &Encodable { value, depth: 0 }) {
        Ok(()) => Ok(out.bytes),
        Err(err) if err.is_io() => Err(format!(
            "the JSON text would be larger than {max_bytes} bytes"
        )),
        Err(err) => Err(err.to_string()),
    }
}

/// Decodes JSON `text` into Lua values. A failure to allocate in Lua comes back as the Lua
/// error (so the engine can tell a memory error from bad JSON); bad JSON as a runtime error
/// naming the line and column.
pub(super) fn decode(lua: &Lua, text: &[u8], null_as: NullAs) -> mlua::Result<Value> {
    let failure = RefCell::new(None);
    let seed = LuaSeed {
        lua,
        null_as,
        failure: &failure,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    let result = seed
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    match result {
        Ok(value) => Ok(value),
        Err(err) => match failure.into_inner() {
            Some(lua_error) => Err(lua_error),
            None => Err(mlua::Error::runtime(format!("invalid JSON: {err}"))),
        },
    }
}

/// Converts a JSON value from the platform (user data, config, a profile) into Lua values;
/// `null` becomes `nil`.
pub(super) fn to_lua(lua: &Lua, value: &serde_json::Value) -> mlua::Result<Value> {
    let failure = RefCell::new(None);
    let seed = LuaSeed {
        lua,
        null_as: NullAs::Nil,
        failure: &failure,
    };
    match seed.deserialize(value) {
        Ok(value) => Ok(value),
        Err(err) => Err(failure
            .into_inner()
            .unwrap_or_else(|| mlua::Error::runtime(err.to_string()))),
    }
}

/// An `io::Write` that fails once more than `max_bytes` would be written.
struct BoundedWriter {
    bytes: Vec<u8>,
    max_bytes: usize,
}

impl io::Write for BoundedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + data.len() > self.max_bytes {
            return Err(io::Error::other("JSON text too large"));
        }
        self.bytes.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Encodable<'a> {
    value: &'a Value,
    depth: usize,
}

impl Serialize for Encodable<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.value {
            Value::Nil => serializer.serialize_unit(),
            Value::Boolean(boolean) => serializer.serialize_bool(*boolean),
            Value::Integer(integer) => serializer.serialize_i64(*integer),
            Value::Number(number) => serialize_number(*number, serializer),
            Value::String(text) => match std::str::from_utf8(&text.as_bytes()) {
                Ok(text) => serializer.serialize_str(text),
                Err(_) => Err(S::Error::custom(
                    "cannot encode a string that is not valid UTF-8",
                )),
            },
            Value::Table(table) => serialize_table(table, self.depth, serializer),
            null if *null == Value::NULL => serializer.serialize_unit(),
            other => Err(S::Error::custom(format!(
                "cannot encode a value of type {}",
                super::api::type_name(other)
            ))),
        }
    }
}

fn serialize_number<S: Serializer>(number: f64, serializer: S) -> Result<S::Ok, S::Error> {
    if !number.is_finite() {
        return Err(S::Error::custom("cannot encode NaN or infinity"));
    }
    if number.fract() == 0.0 && number.abs() < MAX_EXACT_INTEGER {
        // Exact: the magnitude is below 2^53 and the number has no fraction.
        serializer.serialize_i64(number as i64)
    } else {
        serializer.serialize_f64(number)
    }
}

/// A table whose keys are exactly 1..n becomes an array; any other table an object whose keys
/// are strings or numbers. An empty table is `{}`.
fn serialize_table<S: Serializer>(
    table: &mlua::Table,
    depth: usize,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    if depth >= MAX_DEPTH {
        return Err(S::Error::custom(format!(
            "cannot encode tables nested more than {MAX_DEPTH} levels deep (or a table that contains itself)"
        )));
    }
    let length = table.raw_len();
    if length > 0 && is_sequence(table, length).map_err(S::Error::custom)? {
        let mut array = serializer.serialize_seq(Some(length))?;
        for index in 1..=length {
            let item: Value = table.raw_get(index).map_err(S::Error::custom)?;
            array.serialize_element(&Encodable {
                value: &item,
                depth: depth + 1,
            })?;
        }
        return array.end();
    }
    let mut object = serializer.serialize_map(None)?;
    for pair in table.pairs::<Value, Value>() {
        let (key, item) = pair.map_err(S::Error::custom)?;
        object.serialize_entry(
            &object_key(&key)?,
            &Encodable {
                value: &item,
                depth: depth + 1,
            },
        )?;
    }
    object.end()
}

fn is_sequence(table: &mlua::Table, length: usize) -> mlua::Result<bool> {
    let mut count = 0usize;
    for pair in table.pairs::<Value, Value>() {
        let (key, _) = pair?;
        let in_range = match key {
            Value::Integer(index) => index >= 1 && (index as u64) <= length as u64,
            Value::Number(index) => index.fract() == 0.0 && index >= 1.0 && index <= length as f64,
            _ => false,
        };
        if !in_range {
            return Ok(false);
        }
        count += 1;
    }
    Ok(count == length)
}

fn object_key<E: ser::Error>(key: &Value) -> Result<String, E> {
    match key {
        Value::String(text) => match text.to_str() {
            Ok(text) => Ok(text.to_owned()),
            Err(_) => Err(E::custom(
                "cannot encode a table key that is not valid UTF-8",
            )),
        },
        Value::Integer(integer) => Ok(integer.to_string()),
        Value::Number(number) if number.fract() == 0.0 && number.abs() < MAX_EXACT_INTEGER => {
            Ok((*number as i64).to_string())
        }
        Value::Number(number) if number.is_finite() => Ok(number.to_string()),
        other => Err(E::custom(format!(
            "cannot encode a table key of type {}",
            super::api::type_name(other)
        ))),
    }
}

/// Builds Lua values straight from a JSON deserializer. A Lua error (out of memory) is parked
/// in `failure` and surfaces as an opaque serde error, which [`decode`] swaps back.
#[derive(Clone, Copy)]
struct LuaSeed<'a> {
    lua: &'a Lua,
    null_as: NullAs,
    failure: &'a RefCell<Option<mlua::Error>>,
}

impl LuaSeed<'_> {
    fn fail<E: de::Error>(&self, err: mlua::Error) -> E {
        let message = err.to_string();
        self.failure.borrow_mut().get_or_insert(err);
        E::custom(message)
    }

    fn string<E: de::Error>(&self, text: &str) -> Result<Value, E> {
        self.lua
            .create_string(text)
            .map(Value::String)
            .map_err(|err| self.fail(err))
    }
}

impl<'de> DeserializeSeed<'de> for LuaSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LuaSeed<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Boolean(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value as f64))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value as f64))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        Ok(Value::Number(value))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Value, E> {
        self.string(value)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(match self.null_as {
            NullAs::Nil => Value::Nil,
            NullAs::Sentinel => Value::NULL,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Value, A::Error> {
        let table = self.lua.create_table().map_err(|err| self.fail(err))?;
        let mut index = 0usize;
        while let Some(item) = items.next_element_seed(self)? {
            index += 1;
            table.raw_set(index, item).map_err(|err| self.fail(err))?;
        }
        Ok(Value::Table(table))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Value, A::Error> {
        let table = self.lua.create_table().map_err(|err| self.fail(err))?;
        while let Some(key) = entries.next_key::<String>()? {
            let key = self.string::<A::Error>(&key)?;
            let item = entries.next_value_seed(self)?;
            table.raw_set(key, item).map_err(|err| self.fail(err))?;
        }
        Ok(Value::Table(table))
    }
}
