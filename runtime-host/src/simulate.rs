//! `rally-runtime simulate <bundle> <script>`: runs a bundle's logic with no platform. The script
//! is a list of events, one per line; every command the logic emits is printed as a JSON line,
//! so a game's own tests can run a session and compare the output.
//!
//! ```text
//! # comments and blank lines are skipped
//! start lobby                 # or: start match duel     (qualifier and, for a match, the mode)
//! join c1 user=u1 group=red profile={"wins":3}
//! message c1 hello there      # a text message: the rest of the line
//! binary c1 AAEC/w==          # a binary message, base64
//! tick 0.1                    # on_tick with dt = 0.1 s (timers due by then fire)
//! tick 0.1 x10                # ten ticks
//! leave c1 left               # on_client_removed with a reason
//! stop
//! ```
//!
//! Output lines: `> <line number> <event>` for each event, `< {command JSON}` for each command,
//! `! <error>` for a handler that failed. The exit code is 1 when any handler failed.

use crate::engine::{Engine, Event};
use rally_sdk::runtime::{Payload, Qualifier, RuntimeCommand};
use std::io::Write;

/// A script line that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ScriptError {
    pub line: usize,
    pub message: String,
}

/// Reads a script into events, with their line numbers.
pub fn parse(script: &str) -> Result<Vec<(usize, Event)>, ScriptError> {
    let mut events = Vec::new();
    for (index, raw) in script.lines().enumerate() {
        let line = index + 1;
        let text = raw.split(" #").next().unwrap_or_default().trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let error = |message: &str| ScriptError {
            line,
            message: message.to_owned(),
        };
        let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
        let rest = rest.trim();
        match word {
            "start" => {
                let mut parts = rest.split_whitespace();
                let qualifier = match parts.next() {
                    Some("lobby") | None => Qualifier::Lobby,
                    Some("match") => Qualifier::Match,
                    Some(other) => {
                        return Err(error(&format!("start takes lobby or match, not {other:?}")))
                    }
                };
                events.push((
                    line,
                    Event::Started {
                        qualifier,
                        user_data: serde_json::Value::Null,
                        config: serde_json::Value::Null,
                        mode: parts.next().map(str::to_owned),
                    },
                ));
            }
            "join" => {
                let mut parts = rest.splitn(2, ' ');
                let client_id = parts
                    .next()
                    .filter(|id| !id.is_empty())
                    .ok_or_else(|| error("join needs a client id"))?;
                let mut user_id = format!("user-{client_id}");
                let mut group = None;
                let mut profile = serde_json::json!({});
                let options = parts.next().unwrap_or_default();
                // `profile=` takes the rest of the line (JSON may hold spaces).
                let (simple, profile_text) = match options.find("profile=") {
                    Some(at) => (&options[..at], Some(&options[at + "profile=".len()..])),
                    None => (options, None),
                };
                for option in simple.split_whitespace() {
                    match option.split_once('=') {
                        Some(("user", value)) => user_id = value.to_owned(),
                        Some(("group", value)) => group = Some(value.to_owned()),
                        _ => return Err(error(&format!("unknown join option {option:?}"))),
                    }
                }
                if let Some(text) = profile_text {
                    profile = serde_json::from_str(text.trim())
                        .map_err(|problem| error(&format!("profile is not JSON: {problem}")))?;
                }
                events.push((
                    line,
                    Event::ClientAssigned {
                        client_id: client_id.to_owned(),
                        user_id,
                        profile,
                        group,
                    },
                ));
            }
            "message" | "binary" => {
                let (client_id, body) = rest.split_once(' ').unwrap_or((rest, ""));
                if client_id.is_empty() {
                    return Err(error("a message needs a client id"));
                }
                let payload = if word == "message" {
                    Payload::Text(body.to_owned())
                } else {
                    use base64::Engine as _;
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(body.trim())
                        .map_err(|problem| {
                            error(&format!("binary payload is not base64: {problem}"))
                        })?;
                    Payload::Binary(bytes.into())
                };
                events.push((
                    line,
                    Event::Message {
                        client_id: client_id.to_owned(),
                        payload,
                    },
                ));
            }
            "tick" => {
                let mut parts = rest.split_whitespace();
                let dt: f64 = parts
                    .next()
                    .and_then(|dt| dt.parse().ok())
                    .filter(|dt: &f64| dt.is_finite() && *dt >= 0.0)
                    .ok_or_else(|| error("tick needs a duration in seconds, e.g. tick 0.1"))?;
                let times: usize = match parts.next() {
                    Some(times) => times
                        .strip_prefix('x')
                        .and_then(|times| times.parse().ok())
                        .ok_or_else(|| error("repeat ticks with xN, e.g. tick 0.1 x10"))?,
                    None => 1,
                };
                events.extend(std::iter::repeat_n((line, Event::Tick { dt }), times));
            }
            "leave" => {
                let (client_id, reason) = rest.split_once(' ').unwrap_or((rest, "left"));
                if client_id.is_empty() {
                    return Err(error("leave needs a client id"));
                }
                events.push((
                    line,
                    Event::ClientRemoved {
                        client_id: client_id.to_owned(),
                        reason: reason.trim().to_owned(),
                    },
                ));
            }
            "stop" => events.push((line, Event::Stopping)),
            other => return Err(error(&format!("unknown event {other:?}"))),
        }
    }
    Ok(events)
}

/// Runs the events through the engine, printing to `out`. Returns how many handlers failed.
pub fn run(
    engine: &mut dyn Engine,
    events: &[(usize, Event)],
    user_data: &serde_json::Value,
    config: &serde_json::Value,
    out: &mut impl Write,
) -> std::io::Result<usize> {
    let mut failures = 0;
    for (line, event) in events {
        let event = match event {
            // The manifest's data, as the platform would send it.
            Event::Started {
                qualifier, mode, ..
            } => Event::Started {
                qualifier: *qualifier,
                user_data: user_data.clone(),
                config: config.clone(),
                mode: mode.clone(),
            },
            other => other.clone(),
        };
        writeln!(out, "> {line} {}", describe(&event))?;
        let mut commands: Vec<RuntimeCommand> = Vec::new();
        let result = engine.handle(&event, &mut commands);
        for command in &commands {
            writeln!(
                out,
                "< {}",
                serde_json::to_string(command).expect("commands serialise")
            )?;
        }
        if let Err(error) = result {
            failures += 1;
            writeln!(out, "! {error}")?;
        }
    }
    Ok(failures)
}

fn describe(event: &Event) -> String {
    match event {
        Event::Started {
            qualifier, mode, ..
        } => match mode {
            Some(mode) => format!("start {} {mode}", qualifier.as_str()),
            None => format!("start {}", qualifier.as_str()),
        },
        Event::ClientAssigned { client_id, .. } => format!("join {client_id}"),
        Event::ClientRemoved { client_id, reason } => format!("leave {client_id} {reason}"),
        Event::Message { client_id, payload } => match payload {
            Payload::Text(text) => format!("message {client_id} {text}"),
            Payload::Binary(bytes) => {
                use base64::Engine as _;
                let base64 = base64::engine::general_purpose::STANDARD.encode(bytes);
                format!("binary {client_id} {base64}")
            }
        },
        Event::Tick { dt } => format!("tick {dt}"),
        Event::Stopping => "stop".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_read_into_events() {
        let events = parse(
            "# a session\nstart match duel\njoin c1 user=u1 group=red profile={\"wins\": 2}\n\
             message c1 hello there\nbinary c1 AAEC\ntick 0.5 x3\nleave c1 kicked\nstop\n",
        )
        .unwrap();
        assert_eq!(events.len(), 9);
        assert!(matches!(&events[0].1, Event::Started { mode: Some(mode), .. } if mode == "duel"));
        assert!(
            matches!(&events[1].1, Event::ClientAssigned { group: Some(group), profile, .. } if group == "red" && profile["wins"] == 2)
        );
        assert!(
            matches!(&events[2].1, Event::Message { payload: Payload::Text(text), .. } if text == "hello there")
        );
        assert!(matches!(&events[4].1, Event::Tick { dt } if *dt == 0.5));
        assert_eq!(events[6].0, 6, "line numbers are kept");
    }

    #[test]
    fn bad_lines_name_their_number() {
        let error = parse("start lobby\njump c1\n").unwrap_err();
        assert_eq!(error.line, 2);
        assert!(parse("tick soon").is_err());
        assert!(parse("binary c1 not*base64").is_err());
        assert!(parse("join c1 profile={not json").is_err());
    }
}
