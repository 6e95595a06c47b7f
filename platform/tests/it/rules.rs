//! Each rule the OpenAPI document publishes (`platform/src/rules.rs`) says exactly what the
//! route's own check says: the same strings pass, character by character, judged with the
//! regex engine JSON Schema validators (and schemathesis) use.

use rally_platform::accounts::check_username;
use rally_platform::auth::password::check_password;
use rally_platform::permissions::{check_alias, check_name};
use rally_platform::rules::*;
use regex::Regex;

/// Strings made of characters near every rule's edges, deterministic.
fn samples() -> Vec<String> {
    let alphabet: Vec<char> = "aAzZ09-_. \t\n\u{0}\u{1f}\u{7f}\u{85}\u{a0}\u{ad}\u{200b}\u{200e}\u{202e}\u{2028}\u{3000}\u{feff}\u{fffb}é中😀\u{e0001}\u{1d173}f3"
        .chars()
        .collect();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound as u64) as usize
    };
    let mut samples: Vec<String> = vec![
        String::new(),
        "a".into(),
        "a".repeat(63),
        "a".repeat(64),
        "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
        "abcdef0123456789abcdef0123456789".into(),
        "abcdef01-2345-6789-abcd-ef0123456789".into(),
    ];
    for _ in 0..20_000 {
        let length = next(12);
        samples.push(
            (0..length)
                .map(|_| alphabet[next(alphabet.len())])
                .collect(),
        );
    }
    samples
}

/// The pattern with the lengths published beside it says yes exactly when `check` does.
fn agree(pattern: &str, chars: std::ops::RangeInclusive<usize>, check: impl Fn(&str) -> bool) {
    let regex = Regex::new(pattern).unwrap();
    for sample in samples() {
        let published = regex.is_match(&sample) && chars.contains(&sample.chars().count());
        assert_eq!(
            published,
            check(&sample),
            "{sample:?}: the pattern and the check disagree"
        );
    }
}

#[test]
fn names_are_what_their_pattern_says() {
    agree(name(), 1..=NAME_MAX_CHARS, |s| check_name(s).is_ok());
}

#[test]
fn aliases_are_slugs_not_shaped_like_ids() {
    agree(SLUG, 1..=63, rally_platform::catalog::is_slug);
    let (slug, id_shaped) = (Regex::new(SLUG).unwrap(), Regex::new(ID_SHAPED).unwrap());
    for sample in samples() {
        let published = slug.is_match(&sample) && !id_shaped.is_match(&sample);
        assert_eq!(published, check_alias(&sample).is_ok(), "{sample:?}");
    }
}

#[test]
fn usernames_passwords_device_ids_and_notes_are_what_their_patterns_say() {
    agree(USERNAME, 3..=64, |s| check_username(s).is_ok());
    agree(no_control(), PASSWORD_MIN_CHARS..=PASSWORD_MAX_CHARS, |s| {
        check_password(s).is_ok()
    });
    agree(
        no_control(),
        DEVICE_ID_MIN_CHARS..=DEVICE_ID_MAX_CHARS,
        |s| rally_platform::users::check_device_id(s).is_ok(),
    );
    agree(note(), 0..=NOTE_MAX_CHARS, |s| {
        rally_platform::versions::check_note(s).is_ok()
    });
}

#[test]
fn every_rule_lands_on_a_part_of_the_document() {
    use rally_platform::openapi::{constrain, NO_NUL};
    let config = rally_platform::config::Config::default();
    let (_, document) = rally_platform::server::api_router(&config).split_for_parts();
    let mut document = serde_json::to_value(&document).unwrap();
    assert_eq!(constrain(&mut document, &config), Vec::<String>::new());
    let tenant_name = &document["components"]["schemas"]["CreateTenant"]["properties"]["name"];
    assert_eq!(tenant_name["maxLength"], 100);
    assert_eq!(tenant_name["pattern"], name());
    let key = document["paths"]["/api/v1/tenants"]["post"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|parameter| parameter["name"] == "Idempotency-Key")
        .unwrap();
    assert_eq!(key["schema"]["pattern"], IDEMPOTENCY_KEY);
    // Free text without a narrower rule still may not hold NUL.
    let developer = &document["components"]["schemas"]["GrantRequest"]["properties"]["developer"];
    assert_eq!(developer["pattern"], NO_NUL);
}
