//! The rules the API enforces on text, each stated once as the pattern the OpenAPI document
//! publishes (`openapi::constrain`). The checks the routes run (`check_name`, `check_alias`,
//! `check_username`, ...) say the same thing in code; `tests/it/rules.rs` holds each check to
//! its pattern, character by character, with the regex engine a JSON Schema validator uses.
//!
//! Patterns are written in the part of ECMA-262 (JSON Schema's dialect) that Rust's `regex`
//! and Python's `re` (schemathesis) read alike: anchors, classes, bounded repeats, `\uXXXX`
//! escapes; a character beyond U+FFFF is written `\UXXXXXXXX`, which both of those read.

use crate::permissions::is_hidden_char;
use std::sync::OnceLock;

/// Names (tenants, projects, stages): 1–100 characters.
pub const NAME_MAX_CHARS: usize = 100;
pub use crate::auth::password::{PASSWORD_MAX_CHARS, PASSWORD_MIN_CHARS};
/// Device ids come from the platform SDKs (a vendor id, a generated UUID): 8–256 characters.
pub const DEVICE_ID_MIN_CHARS: usize = 8;
pub const DEVICE_ID_MAX_CHARS: usize = 256;
/// A version's note.
pub const NOTE_MAX_CHARS: usize = 500;

/// Slugs (pool and server names, and aliases): 1–63 of `a-z 0-9 -`, starting with a letter,
/// not ending with `-`.
pub const SLUG: &str = "^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$";
/// What an alias must not look like: an id (a UUID, with or without hyphens), so that a path
/// segment is always one or the other.
pub const ID_SHAPED: &str =
    "^(?:[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$";
/// Developer and staff usernames.
pub const USERNAME: &str = "^[a-z0-9][a-z0-9._-]{2,63}$";
/// An `Idempotency-Key`: 1–255 visible ASCII characters.
pub const IDEMPOTENCY_KEY: &str = "^[!-~]{1,255}$";

/// Free text shown to people: no control or format character, not only white space.
pub fn name() -> &'static str {
    static PATTERN: OnceLock<String> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let hidden = class_of(is_hidden_char);
        let blank = class_of(|c| is_hidden_char(c) || c.is_whitespace());
        format!("^[^{hidden}]*[^{blank}][^{hidden}]*$")
    })
}

/// A version's note: as [`name`] allows, and line breaks, and may be blank.
pub fn note() -> &'static str {
    static PATTERN: OnceLock<String> = OnceLock::new();
    PATTERN.get_or_init(|| format!("^[^{}]*$", class_of(|c| c != '\n' && is_hidden_char(c))))
}

/// Passwords and device ids: anything but control characters.
pub fn no_control() -> &'static str {
    static PATTERN: OnceLock<String> = OnceLock::new();
    PATTERN.get_or_init(|| format!("^[^{}]*$", class_of(char::is_control)))
}

/// The body of a regex class holding exactly the characters `member` is true for, as ranges
/// of escapes.
fn class_of(member: impl Fn(char) -> bool) -> String {
    let mut class = String::new();
    let mut run: Option<(char, char)> = None;
    let close = |run: Option<(char, char)>, class: &mut String| {
        if let Some((first, last)) = run {
            class.push_str(&escape(first));
            if last != first {
                class.push('-');
                class.push_str(&escape(last));
            }
        }
    };
    for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
        run = match run {
            _ if !member(c) => {
                close(run.take(), &mut class);
                None
            }
            // Surrogates are not characters: a run goes on across them.
            Some((first, _)) => Some((first, c)),
            None => Some((c, c)),
        };
    }
    close(run, &mut class);
    class
}

fn escape(c: char) -> String {
    match u32::from(c) {
        bmp @ ..=0xffff => format!("\\u{bmp:04x}"),
        astral => format!("\\U{astral:08x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_lists_ranges() {
        assert_eq!(
            class_of(|c| ('a'..='c').contains(&c) || c == 'x'),
            "\\u0061-\\u0063\\u0078"
        );
    }
}
