//! The version manifest (`rally.toml` at a bundle's root): the runtime, the modes and the
//! deployment defaults of a version, and the rules that decide whether a manifest can run.
//!
//! The CLI validates before uploading and the server validates again before storing anything,
//! so both must reach the same verdict: the rules live here and nowhere else.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::RangeInclusive;

/// Allowed authoritative loop rates, in ticks per second.
pub const TICK_RATE_RANGE: RangeInclusive<u32> = 1..=128;
pub const DEFAULT_TICK_RATE: u32 = 10;
/// Mode and group names are slugs of this many characters.
pub const NAME_LENGTH_RANGE: RangeInclusive<usize> = 1..=32;

pub const MIN_LOBBIES_RANGE: RangeInclusive<u32> = 0..=1000;
pub const MAX_CLIENTS_PER_LOBBY_RANGE: RangeInclusive<u32> = 1..=100_000;
pub const WARM_MATCHES_RANGE: RangeInclusive<u32> = 0..=100;
pub const RUNTIME_CPU_MILLIS_RANGE: RangeInclusive<u32> = 10..=64_000;
pub const RUNTIME_MEMORY_MB_RANGE: RangeInclusive<u32> = 16..=65_536;
pub const IDLE_TIMEOUT_SECS_RANGE: RangeInclusive<u32> = 10..=86_400;

/// A version's manifest, as written in `rally.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Manifest {
    pub runtime: RuntimeConfig,
    /// Missing modes parse as an empty list so that validation can say `no_modes` in words
    /// instead of a bare "missing field".
    #[serde(default)]
    pub modes: Vec<Mode>,
    /// Free data handed to the game logic as is; always a JSON object.
    #[serde(default = "empty_object")]
    pub user_data: serde_json::Value,
    #[serde(default)]
    pub deployment: DeploymentConfig,
}

/// Which engine runs the logic, and where the logic starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RuntimeConfig {
    pub kind: RuntimeKind,
    /// Entry file of lobby runtimes, relative to the bundle root (Lua and WASM).
    #[serde(default)]
    pub lobby: String,
    /// Entry file of match runtimes, relative to the bundle root; may be the lobby's file (Lua
    /// and WASM).
    #[serde(rename = "match", default)]
    pub match_entry: String,
    /// For `kind = "program"`: the executable in the bundle that is the runtime (a headless
    /// game build speaking the runtime protocol, `docs/protocol.md`), run with the bundle's
    /// files beside it. Optional when `image = "push"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// Where the version's image for Docker pools comes from: `build` (the platform builds it
    /// from the bundle) or `push` (a developer pushes it, tagged with the version).
    #[serde(default, skip_serializing_if = "ImageSource::is_build")]
    pub image: ImageSource,
    /// Ticks per second of the authoritative loop.
    #[serde(default = "default_tick_rate")]
    pub tick_rate: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Lua,
    Wasm,
    /// The bundle carries its own runtime program (`runtime.program`).
    Program,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Lua => "lua",
            RuntimeKind::Wasm => "wasm",
            RuntimeKind::Program => "program",
        }
    }

    /// The file extension every entry file of this kind must have (programs have none).
    pub fn entry_extension(self) -> &'static str {
        match self {
            RuntimeKind::Lua => ".lua",
            RuntimeKind::Wasm => ".wasm",
            RuntimeKind::Program => "",
        }
    }
}

/// Where a version's runtime image comes from (`runtime.image`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ImageSource {
    /// The platform's builder makes it from the bundle.
    #[default]
    Build,
    /// A developer pushes it to the studio's registry, tagged `v<number>`.
    Push,
}

impl ImageSource {
    pub fn is_build(&self) -> bool {
        *self == ImageSource::Build
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A way to play: the matchmaker fills a match of this mode from its groups (teams).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Mode {
    pub name: String,
    pub min_players: u32,
    pub max_players: u32,
    pub groups: Vec<Group>,
}

/// A team within a mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Group {
    pub name: String,
    pub min_players: u32,
    pub max_players: u32,
}

/// How a deployment of the version runs. The manifest gives the defaults; each deployment may
/// override them with [`DeploymentOverrides`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DeploymentConfig {
    /// Lobby runtimes kept running even when empty.
    pub min_lobbies: u32,
    /// A new lobby opens when every lobby holds this many clients.
    pub max_clients_per_lobby: u32,
    /// Idle match runtimes kept started per mode, so matches start without a cold start.
    pub warm_matches: BTreeMap<String, u32>,
    /// CPU limit of each runtime, in thousandths of a core.
    pub runtime_cpu_millis: u32,
    /// Memory limit of each runtime, in MiB.
    pub runtime_memory_mb: u32,
    /// A runtime with no clients for this long is stopped (lobbies above `min_lobbies`,
    /// matches nobody joined).
    pub idle_timeout_secs: u32,
    /// How a Docker pool places the runtimes (ignored by the local-process pool).
    pub docker_placement: DockerPlacement,
}

/// How a Docker pool places a deployment's runtimes (`docs/pools.md` weighs the two).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DockerPlacement {
    /// Each lobby and match in a container of its own, with its own limits: the strongest
    /// isolation, and a container start (hundreds of milliseconds) for each runtime.
    #[default]
    Container,
    /// One long-lived container per server and version runs `rally-runtime launcher`, which
    /// forks each runtime inside it: starts take milliseconds; the runtimes of a version on a
    /// server share its container.
    Launcher,
}

impl DockerPlacement {
    pub fn as_str(self) -> &'static str {
        match self {
            DockerPlacement::Container => "container",
            DockerPlacement::Launcher => "launcher",
        }
    }
}

impl Default for DeploymentConfig {
    fn default() -> Self {
        DeploymentConfig {
            min_lobbies: 1,
            max_clients_per_lobby: 100,
            warm_matches: BTreeMap::new(),
            runtime_cpu_millis: 1000,
            runtime_memory_mb: 128,
            idle_timeout_secs: 300,
            docker_placement: DockerPlacement::Container,
        }
    }
}

/// Per-deployment changes to a version's [`DeploymentConfig`]; an absent field keeps the
/// version's value. Unknown fields are refused so that a misspelt setting is not silently
/// ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct DeploymentOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_lobbies: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_clients_per_lobby: Option<u32>,
    /// Merged into the version's map mode by mode: naming one mode leaves the others as they
    /// are, and a count of 0 turns a mode's warm matches off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warm_matches: Option<BTreeMap<String, u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_cpu_millis: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_memory_mb: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_placement: Option<DockerPlacement>,
}

impl DeploymentOverrides {
    /// The configuration a deployment runs with. The result still needs
    /// [`DeploymentConfig::validate`]: overrides are checked as a whole, against the modes.
    pub fn apply(&self, base: &DeploymentConfig) -> DeploymentConfig {
        let mut warm_matches = base.warm_matches.clone();
        if let Some(overrides) = &self.warm_matches {
            warm_matches.extend(overrides.iter().map(|(mode, count)| (mode.clone(), *count)));
        }
        DeploymentConfig {
            min_lobbies: self.min_lobbies.unwrap_or(base.min_lobbies),
            max_clients_per_lobby: self
                .max_clients_per_lobby
                .unwrap_or(base.max_clients_per_lobby),
            warm_matches,
            runtime_cpu_millis: self.runtime_cpu_millis.unwrap_or(base.runtime_cpu_millis),
            runtime_memory_mb: self.runtime_memory_mb.unwrap_or(base.runtime_memory_mb),
            idle_timeout_secs: self.idle_timeout_secs.unwrap_or(base.idle_timeout_secs),
            docker_placement: self.docker_placement.unwrap_or(base.docker_placement),
        }
    }
}

/// One reason a manifest or a deployment config cannot be used.
///
/// `code` is stable and meant for programs: `no_modes`, `invalid_mode`, `invalid_group`,
/// `invalid_runtime`, `invalid_user_data` or `invalid_deployment_config`. `field` is the path of
/// the offending value in the manifest (`modes[0].groups[1].max_players`); `message` says what
/// is wrong in words and may change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    pub code: String,
    pub field: String,
    pub message: String,
}

impl Problem {
    fn new(code: &str, field: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            code: code.to_owned(),
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// `rally.toml` is not TOML, or not shaped like a manifest (wrong type, unknown field, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct ManifestSyntaxError {
    /// 1-based position of the error, when the parser knows it.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The parser's explanation, without the position.
    pub message: String,
}

impl ManifestSyntaxError {
    fn describe(&self) -> String {
        match (self.line, self.column) {
            (Some(line), Some(column)) => {
                format!("line {line}, column {column}: {}", self.message)
            }
            _ => self.message.clone(),
        }
    }
}

impl Manifest {
    /// Parses `rally.toml`. This only checks the shape; call [`Manifest::validate`] for the
    /// rules.
    #[cfg(feature = "bundle")]
    pub fn from_toml(text: &str) -> Result<Manifest, ManifestSyntaxError> {
        let at = |span: Option<std::ops::Range<usize>>, message: String| {
            let position = span.map(|span| line_and_column(text, span.start));
            ManifestSyntaxError {
                line: position.map(|(line, _)| line),
                column: position.map(|(_, column)| column),
                message,
            }
        };
        // The types read unknown fields as absent (a runtime reading a newer platform's
        // manifest in `runtime_created` must not fail); in `rally.toml` a misspelt key is an
        // error, found here.
        let mut unknown = Vec::new();
        let parsed: Result<Manifest, toml::de::Error> =
            serde_ignored::deserialize(toml::Deserializer::new(text), |path| {
                unknown.push(segments(&path))
            });
        let mut manifest =
            parsed.map_err(|error| at(error.span(), error.message().trim_end().to_owned()))?;
        if let Some(path) = unknown.first() {
            return Err(at(
                key_span(text, path),
                format!("unknown field `{}`", describe_path(path)),
            ));
        }
        toml_dates_as_strings(&mut manifest.user_data);
        Ok(manifest)
    }

    /// Checks every rule and reports every broken one, so a developer fixes the manifest in one
    /// go rather than one error per upload.
    pub fn validate(&self) -> Result<(), Vec<Problem>> {
        let mut problems = Vec::new();
        self.runtime.check(&mut problems);
        check_modes(&self.modes, &mut problems);
        if !self.user_data.is_object() {
            problems.push(Problem::new(
                "invalid_user_data",
                "user_data",
                "user_data must be a table ([user_data] with keys under it)",
            ));
        }
        if let Err(deployment_problems) = self.deployment.validate(&self.modes) {
            problems.extend(deployment_problems);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The files the manifest names, with the field naming each: the lobby and match entries
    /// (which may name the same file), or a program runtime's program.
    pub fn entry_files(&self) -> Vec<(&'static str, &str)> {
        match self.runtime.kind {
            RuntimeKind::Program => self
                .runtime
                .program
                .iter()
                .map(|program| ("runtime.program", program.as_str()))
                .collect(),
            RuntimeKind::Lua | RuntimeKind::Wasm => vec![
                ("runtime.lobby", self.runtime.lobby.as_str()),
                ("runtime.match", self.runtime.match_entry.as_str()),
            ],
        }
    }
}

/// TOML dates reach serde as a one-key table with a private key name; the logic should see the
/// date as written, an RFC 3339 string, rather than that implementation detail.
#[cfg(feature = "bundle")]
fn toml_dates_as_strings(value: &mut serde_json::Value) {
    const TOML_DATETIME_KEY: &str = "$__toml_private_datetime";
    match value {
        serde_json::Value::Object(table) => {
            if let (1, Some(serde_json::Value::String(date))) =
                (table.len(), table.get(TOML_DATETIME_KEY))
            {
                *value = serde_json::Value::String(date.clone());
            } else {
                table.values_mut().for_each(toml_dates_as_strings);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(toml_dates_as_strings),
        _ => {}
    }
}

/// Turns a byte offset into a 1-based line and column (in characters).
#[cfg(feature = "bundle")]
/// One step of the way to a value in `rally.toml`: a key, or a place in an array.
#[cfg(feature = "bundle")]
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

#[cfg(feature = "bundle")]
fn segments(path: &serde_ignored::Path) -> Vec<Segment> {
    use serde_ignored::Path;
    let mut segments = match path {
        Path::Root => return Vec::new(),
        Path::Seq { parent, .. }
        | Path::Map { parent, .. }
        | Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => segments(parent),
    };
    match path {
        Path::Seq { index, .. } => segments.push(Segment::Index(*index)),
        Path::Map { key, .. } => segments.push(Segment::Key(key.clone())),
        _ => {}
    }
    segments
}

/// `modes[0].max_playres`
#[cfg(feature = "bundle")]
fn describe_path(path: &[Segment]) -> String {
    let mut described = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) if described.is_empty() => described.push_str(key),
            Segment::Key(key) => {
                described.push('.');
                described.push_str(key);
            }
            Segment::Index(index) => described.push_str(&format!("[{index}]")),
        }
    }
    described
}

/// Where the last key of `path` is written in `text`.
#[cfg(feature = "bundle")]
fn key_span(text: &str, path: &[Segment]) -> Option<std::ops::Range<usize>> {
    use toml_edit::{Item, TableLike, Value};
    let document = toml_edit::ImDocument::parse(text).ok()?;
    let mut table: &dyn TableLike = document.as_table();
    let mut span = None;
    let mut steps = path.iter().peekable();
    while let Some(step) = steps.next() {
        let Segment::Key(key) = step else {
            return span;
        };
        let (key, item) = table.get_key_value(key)?;
        span = key.span();
        table = match steps.peek() {
            None => break,
            Some(Segment::Key(_)) => item.as_table_like()?,
            Some(Segment::Index(index)) => {
                steps.next();
                match item {
                    Item::ArrayOfTables(tables) => tables.get(*index)?,
                    Item::Value(Value::Array(values)) => values.get(*index)?.as_inline_table()?,
                    _ => return span,
                }
            }
        };
    }
    span
}

#[cfg(feature = "bundle")]
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

impl RuntimeConfig {
    fn check(&self, problems: &mut Vec<Problem>) {
        if !TICK_RATE_RANGE.contains(&self.tick_rate) {
            problems.push(Problem::new(
                "invalid_runtime",
                "runtime.tick_rate",
                format!(
                    "tick_rate must be between {} and {} ticks per second, not {}",
                    TICK_RATE_RANGE.start(),
                    TICK_RATE_RANGE.end(),
                    self.tick_rate
                ),
            ));
        }
        if self.kind == RuntimeKind::Program {
            self.check_program(problems);
            return;
        }
        if let Some(program) = &self.program {
            problems.push(Problem::new(
                "invalid_runtime",
                "runtime.program",
                format!(
                    "program {program:?} is for kind = \"program\"; a {} runtime starts at its lobby and match files",
                    self.kind.as_str()
                ),
            ));
        }
        for (field, path) in [
            ("runtime.lobby", &self.lobby),
            ("runtime.match", &self.match_entry),
        ] {
            if let Some(reason) = plain_relative_path_problem(path) {
                problems.push(Problem::new(
                    "invalid_runtime",
                    field,
                    format!("entry file {path:?} {reason}"),
                ));
            } else if !path.ends_with(self.kind.entry_extension()) {
                problems.push(Problem::new(
                    "invalid_runtime",
                    field,
                    format!(
                        "entry file {path:?} must end in {:?} because runtime.kind is {:?}",
                        self.kind.entry_extension(),
                        self.kind.as_str()
                    ),
                ));
            }
        }
    }
}

impl RuntimeConfig {
    /// A program runtime names its program (unless its image is pushed) and no entry files.
    fn check_program(&self, problems: &mut Vec<Problem>) {
        match &self.program {
            Some(program) => {
                if let Some(reason) = plain_relative_path_problem(program) {
                    problems.push(Problem::new(
                        "invalid_runtime",
                        "runtime.program",
                        format!("program {program:?} {reason}"),
                    ));
                }
            }
            None if self.image == ImageSource::Push => {}
            None => problems.push(Problem::new(
                "invalid_runtime",
                "runtime.program",
                "a program runtime names its executable (program = \"bin/server\"), unless its \
                 image is pushed (image = \"push\")",
            )),
        }
        for (field, path) in [
            ("runtime.lobby", &self.lobby),
            ("runtime.match", &self.match_entry),
        ] {
            if !path.is_empty() {
                problems.push(Problem::new(
                    "invalid_runtime",
                    field,
                    format!("{field} is for Lua and WASM runtimes; a program runtime starts at runtime.program"),
                ));
            }
        }
    }
}

/// Why `path` is not a plain relative path inside a bundle (`dir/file.lua`), or `None` when it
/// is one. Shared with the bundle reader so that manifest entries and archive entries obey the
/// same rule and compare equal byte for byte.
pub(crate) fn plain_relative_path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("is empty");
    }
    if path.contains('\0') {
        return Some("contains a NUL character");
    }
    if path.contains('\\') {
        return Some("contains a backslash (separate directories with '/')");
    }
    if path.starts_with('/') {
        return Some("is absolute (give it relative to the bundle root)");
    }
    for segment in path.split('/') {
        match segment {
            ".." => return Some("contains '..' (a path must stay inside the bundle)"),
            "." => return Some("contains a '.' segment (write the path without it)"),
            "" => return Some("contains an empty segment ('//' or a trailing '/')"),
            _ => {}
        }
    }
    None
}

fn check_modes(modes: &[Mode], problems: &mut Vec<Problem>) {
    if modes.is_empty() {
        problems.push(Problem::new(
            "no_modes",
            "modes",
            "the manifest declares no mode: add at least one [[modes]] table",
        ));
        return;
    }
    let mut seen_mode_names = HashSet::new();
    for (mode_index, mode) in modes.iter().enumerate() {
        let at = format!("modes[{mode_index}]");
        if let Some(reason) = slug_problem(&mode.name) {
            problems.push(Problem::new(
                "invalid_mode",
                format!("{at}.name"),
                format!("mode name {:?} {reason}", mode.name),
            ));
        } else if !seen_mode_names.insert(mode.name.as_str()) {
            problems.push(Problem::new(
                "invalid_mode",
                format!("{at}.name"),
                format!("mode name {:?} is used by another mode", mode.name),
            ));
        }
        check_counts(
            "invalid_mode",
            &at,
            mode.min_players,
            mode.max_players,
            problems,
        );
        check_groups(mode, &at, problems);
    }
}

fn check_groups(mode: &Mode, at: &str, problems: &mut Vec<Problem>) {
    if mode.groups.is_empty() {
        problems.push(Problem::new(
            "invalid_mode",
            format!("{at}.groups"),
            format!(
                "mode {:?} has no group: add at least one [[modes.groups]] table",
                mode.name
            ),
        ));
        return;
    }
    let mut seen_group_names = HashSet::new();
    for (group_index, group) in mode.groups.iter().enumerate() {
        let group_at = format!("{at}.groups[{group_index}]");
        if let Some(reason) = slug_problem(&group.name) {
            problems.push(Problem::new(
                "invalid_group",
                format!("{group_at}.name"),
                format!("group name {:?} {reason}", group.name),
            ));
        } else if !seen_group_names.insert(group.name.as_str()) {
            problems.push(Problem::new(
                "invalid_group",
                format!("{group_at}.name"),
                format!(
                    "group name {:?} is used by another group of mode {:?}",
                    group.name, mode.name
                ),
            ));
        }
        check_counts(
            "invalid_group",
            &group_at,
            group.min_players,
            group.max_players,
            problems,
        );
        if group.max_players > mode.max_players {
            problems.push(Problem::new(
                "invalid_group",
                format!("{group_at}.max_players"),
                format!(
                    "group {:?} takes up to {} players, more than its mode's max_players ({})",
                    group.name, group.max_players, mode.max_players
                ),
            ));
        }
    }
    // Sums in u64: a u32 sum of many large counts could overflow.
    let sum_of_minimums: u64 = mode.groups.iter().map(|g| u64::from(g.min_players)).sum();
    let sum_of_maximums: u64 = mode.groups.iter().map(|g| u64::from(g.max_players)).sum();
    if sum_of_minimums > u64::from(mode.max_players) {
        problems.push(Problem::new(
            "invalid_mode",
            format!("{at}.groups"),
            format!(
                "the groups of mode {:?} need at least {sum_of_minimums} players together, more \
                 than its max_players ({}): no match could ever start",
                mode.name, mode.max_players
            ),
        ));
    }
    if sum_of_maximums < u64::from(mode.min_players) {
        problems.push(Problem::new(
            "invalid_mode",
            format!("{at}.groups"),
            format!(
                "the groups of mode {:?} hold at most {sum_of_maximums} players together, fewer \
                 than its min_players ({}): no match could ever fill",
                mode.name, mode.min_players
            ),
        ));
    }
}

/// The rules shared by modes and groups: both counts at least 1, and min not above max.
fn check_counts(code: &str, at: &str, min: u32, max: u32, problems: &mut Vec<Problem>) {
    if min < 1 {
        problems.push(Problem::new(
            code,
            format!("{at}.min_players"),
            "min_players must be at least 1",
        ));
    }
    if max < 1 {
        problems.push(Problem::new(
            code,
            format!("{at}.max_players"),
            "max_players must be at least 1",
        ));
    }
    if min > max {
        problems.push(Problem::new(
            code,
            format!("{at}.max_players"),
            format!("max_players ({max}) is below min_players ({min})"),
        ));
    }
}

fn slug_problem(name: &str) -> Option<&'static str> {
    if !NAME_LENGTH_RANGE.contains(&name.len()) {
        return Some("must be 1 to 32 characters long");
    }
    let is_slug_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if !name.chars().all(is_slug_char) {
        return Some("may only contain a-z, 0-9, '_' and '-'");
    }
    None
}

impl DeploymentConfig {
    /// Checks the ranges and that every `warm_matches` key is one of `modes`. Runs for the
    /// manifest's defaults and again for each deployment's overridden config.
    pub fn validate(&self, modes: &[Mode]) -> Result<(), Vec<Problem>> {
        let mut problems = Vec::new();
        let ranges = [
            ("min_lobbies", self.min_lobbies, MIN_LOBBIES_RANGE),
            (
                "max_clients_per_lobby",
                self.max_clients_per_lobby,
                MAX_CLIENTS_PER_LOBBY_RANGE,
            ),
            (
                "runtime_cpu_millis",
                self.runtime_cpu_millis,
                RUNTIME_CPU_MILLIS_RANGE,
            ),
            (
                "runtime_memory_mb",
                self.runtime_memory_mb,
                RUNTIME_MEMORY_MB_RANGE,
            ),
            (
                "idle_timeout_secs",
                self.idle_timeout_secs,
                IDLE_TIMEOUT_SECS_RANGE,
            ),
        ];
        for (name, value, range) in ranges {
            if !range.contains(&value) {
                problems.push(Problem::new(
                    "invalid_deployment_config",
                    format!("deployment.{name}"),
                    format!(
                        "{name} must be between {} and {}, not {value}",
                        range.start(),
                        range.end()
                    ),
                ));
            }
        }
        for (mode_name, &count) in &self.warm_matches {
            let field = format!("deployment.warm_matches.{mode_name}");
            if !modes.iter().any(|mode| &mode.name == mode_name) {
                let known: Vec<&str> = modes.iter().map(|mode| mode.name.as_str()).collect();
                problems.push(Problem::new(
                    "invalid_deployment_config",
                    field,
                    format!(
                        "warm_matches names mode {mode_name:?}, which is not declared (the \
                         modes are {known:?})"
                    ),
                ));
            } else if !WARM_MATCHES_RANGE.contains(&count) {
                problems.push(Problem::new(
                    "invalid_deployment_config",
                    field,
                    format!(
                        "warm_matches for {mode_name:?} must be between {} and {}, not {count}",
                        WARM_MATCHES_RANGE.start(),
                        WARM_MATCHES_RANGE.end()
                    ),
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

fn default_tick_rate() -> u32 {
    DEFAULT_TICK_RATE
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str, min_players: u32, max_players: u32) -> Group {
        Group {
            name: name.to_owned(),
            min_players,
            max_players,
        }
    }

    /// A duel between two teams of one: the smallest manifest that passes every rule.
    fn good() -> Manifest {
        Manifest {
            runtime: RuntimeConfig {
                kind: RuntimeKind::Lua,
                lobby: "lobby.lua".to_owned(),
                match_entry: "logic/match.lua".to_owned(),
                program: None,
                image: ImageSource::Build,
                tick_rate: 10,
            },
            modes: vec![Mode {
                name: "duel".to_owned(),
                min_players: 2,
                max_players: 2,
                groups: vec![group("red", 1, 1), group("blue", 1, 1)],
            }],
            user_data: serde_json::json!({ "greeting": "hi" }),
            deployment: DeploymentConfig::default(),
        }
    }

    /// Asserts that validation fails with exactly one problem, of this code, on this field.
    #[track_caller]
    fn assert_single_problem(manifest: &Manifest, code: &str, field: &str) {
        let problems = manifest
            .validate()
            .expect_err("the manifest should be refused");
        let found: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.code.as_str(), p.field.as_str()))
            .collect();
        assert_eq!(found, [(code, field)], "problems: {problems:#?}");
    }

    #[test]
    fn good_manifest_passes() {
        assert_eq!(good().validate(), Ok(()));
    }

    #[test]
    fn no_modes_is_refused() {
        let mut manifest = good();
        manifest.modes.clear();
        assert_single_problem(&manifest, "no_modes", "modes");
    }

    #[test]
    fn mode_names_must_be_unique_slugs() {
        for bad_name in ["", "Duel", "duel mode", "é", &"x".repeat(33)] {
            let mut manifest = good();
            manifest.modes[0].name = bad_name.to_owned();
            assert_single_problem(&manifest, "invalid_mode", "modes[0].name");
        }
        let mut manifest = good();
        manifest.modes[0].name = "a_z-09".repeat(5) + "ab";
        assert_eq!(manifest.validate(), Ok(()));

        let mut manifest = good();
        manifest.modes.push(manifest.modes[0].clone());
        assert_single_problem(&manifest, "invalid_mode", "modes[1].name");
    }

    #[test]
    fn mode_counts_must_be_positive_and_ordered() {
        let mut manifest = good();
        manifest.modes[0].min_players = 0;
        manifest.modes[0].groups = vec![group("all", 1, 2)];
        assert_single_problem(&manifest, "invalid_mode", "modes[0].min_players");

        let mut manifest = good();
        manifest.modes[0].min_players = 3;
        manifest.modes[0].max_players = 2;
        manifest.modes[0].groups = vec![group("all", 1, 2), group("more", 1, 2)];
        assert_single_problem(&manifest, "invalid_mode", "modes[0].max_players");
    }

    #[test]
    fn a_mode_needs_groups() {
        let mut manifest = good();
        manifest.modes[0].groups.clear();
        assert_single_problem(&manifest, "invalid_mode", "modes[0].groups");
    }

    #[test]
    fn group_names_must_be_unique_slugs_within_a_mode() {
        let mut manifest = good();
        manifest.modes[0].groups[1].name = "Blue".to_owned();
        assert_single_problem(&manifest, "invalid_group", "modes[0].groups[1].name");

        let mut manifest = good();
        manifest.modes[0].groups[1].name = "red".to_owned();
        assert_single_problem(&manifest, "invalid_group", "modes[0].groups[1].name");

        // The same group name in two modes is fine.
        let mut manifest = good();
        let mut second = manifest.modes[0].clone();
        second.name = "rematch".to_owned();
        manifest.modes.push(second);
        assert_eq!(manifest.validate(), Ok(()));
    }

    #[test]
    fn group_counts_must_be_positive_ordered_and_fit_the_mode() {
        let mut manifest = good();
        manifest.modes[0].groups[0].min_players = 0;
        assert_single_problem(&manifest, "invalid_group", "modes[0].groups[0].min_players");

        let mut manifest = good();
        manifest.modes[0].max_players = 4;
        manifest.modes[0].groups[1] = group("blue", 2, 1);
        assert_single_problem(&manifest, "invalid_group", "modes[0].groups[1].max_players");

        let mut manifest = good();
        manifest.modes[0].max_players = 3;
        manifest.modes[0].groups[1] = group("blue", 1, 4);
        assert_single_problem(&manifest, "invalid_group", "modes[0].groups[1].max_players");
    }

    #[test]
    fn group_minimums_must_fit_the_mode_maximum() {
        let mut manifest = good();
        manifest.modes[0].max_players = 3;
        manifest.modes[0].groups = vec![group("red", 2, 3), group("blue", 2, 3)];
        assert_single_problem(&manifest, "invalid_mode", "modes[0].groups");
    }

    #[test]
    fn group_maximums_must_reach_the_mode_minimum() {
        let mut manifest = good();
        manifest.modes[0].min_players = 4;
        manifest.modes[0].max_players = 4;
        manifest.modes[0].groups = vec![group("red", 1, 1), group("blue", 1, 2)];
        assert_single_problem(&manifest, "invalid_mode", "modes[0].groups");
    }

    #[test]
    fn tick_rate_must_be_in_range() {
        for tick_rate in [0, 129] {
            let mut manifest = good();
            manifest.runtime.tick_rate = tick_rate;
            assert_single_problem(&manifest, "invalid_runtime", "runtime.tick_rate");
        }
        for tick_rate in [1, 128] {
            let mut manifest = good();
            manifest.runtime.tick_rate = tick_rate;
            assert_eq!(manifest.validate(), Ok(()));
        }
    }

    #[test]
    fn entry_paths_must_be_plain_relative_paths() {
        for bad_path in [
            "",
            "/lobby.lua",
            "../lobby.lua",
            "logic/../../lobby.lua",
            "./lobby.lua",
            "logic//lobby.lua",
            "logic\\lobby.lua",
            "lobby\0.lua",
        ] {
            let mut manifest = good();
            manifest.runtime.lobby = bad_path.to_owned();
            assert_single_problem(&manifest, "invalid_runtime", "runtime.lobby");
        }
        let mut manifest = good();
        manifest.runtime.match_entry = "/match.lua".to_owned();
        assert_single_problem(&manifest, "invalid_runtime", "runtime.match");
    }

    #[test]
    fn a_program_runtime_names_its_program_and_no_entry_files() {
        let program = |program: Option<&str>, image: ImageSource| {
            let mut manifest = good();
            manifest.runtime.kind = RuntimeKind::Program;
            manifest.runtime.lobby = String::new();
            manifest.runtime.match_entry = String::new();
            manifest.runtime.program = program.map(str::to_owned);
            manifest.runtime.image = image;
            manifest
        };
        assert_eq!(
            program(Some("bin/server"), ImageSource::Build).validate(),
            Ok(())
        );
        assert_eq!(program(None, ImageSource::Push).validate(), Ok(()));
        assert_single_problem(
            &program(None, ImageSource::Build),
            "invalid_runtime",
            "runtime.program",
        );
        assert_single_problem(
            &program(Some("../server"), ImageSource::Build),
            "invalid_runtime",
            "runtime.program",
        );
        let mut with_lobby = program(Some("server"), ImageSource::Build);
        with_lobby.runtime.lobby = "lobby.lua".to_owned();
        assert_single_problem(&with_lobby, "invalid_runtime", "runtime.lobby");
        let mut lua_with_program = good();
        lua_with_program.runtime.program = Some("server".to_owned());
        assert_single_problem(&lua_with_program, "invalid_runtime", "runtime.program");
    }

    #[test]
    fn entry_extension_follows_the_runtime_kind() {
        let mut manifest = good();
        manifest.runtime.match_entry = "match.wasm".to_owned();
        assert_single_problem(&manifest, "invalid_runtime", "runtime.match");

        let mut manifest = good();
        manifest.runtime.kind = RuntimeKind::Wasm;
        manifest.runtime.lobby = "game.wasm".to_owned();
        manifest.runtime.match_entry = "game.wasm".to_owned();
        assert_eq!(manifest.validate(), Ok(()));
        manifest.runtime.lobby = "lobby.lua".to_owned();
        assert_single_problem(&manifest, "invalid_runtime", "runtime.lobby");
    }

    #[test]
    fn user_data_must_be_an_object() {
        let mut manifest = good();
        manifest.user_data = serde_json::json!(5);
        assert_single_problem(&manifest, "invalid_user_data", "user_data");
    }

    #[test]
    fn deployment_ranges_are_checked() {
        type BreakIt = fn(&mut DeploymentConfig);
        let cases: [(BreakIt, &str); 10] = [
            (|d| d.min_lobbies = 1001, "deployment.min_lobbies"),
            (
                |d| d.max_clients_per_lobby = 0,
                "deployment.max_clients_per_lobby",
            ),
            (
                |d| d.max_clients_per_lobby = 100_001,
                "deployment.max_clients_per_lobby",
            ),
            (
                |d| d.runtime_cpu_millis = 9,
                "deployment.runtime_cpu_millis",
            ),
            (
                |d| d.runtime_cpu_millis = 64_001,
                "deployment.runtime_cpu_millis",
            ),
            (|d| d.runtime_memory_mb = 15, "deployment.runtime_memory_mb"),
            (
                |d| d.runtime_memory_mb = 65_537,
                "deployment.runtime_memory_mb",
            ),
            (|d| d.idle_timeout_secs = 9, "deployment.idle_timeout_secs"),
            (
                |d| d.idle_timeout_secs = 86_401,
                "deployment.idle_timeout_secs",
            ),
            (
                |d| {
                    d.warm_matches.insert("duel".to_owned(), 101);
                },
                "deployment.warm_matches.duel",
            ),
        ];
        for (break_it, field) in cases {
            let mut manifest = good();
            break_it(&mut manifest.deployment);
            assert_single_problem(&manifest, "invalid_deployment_config", field);
        }

        let mut manifest = good();
        manifest.deployment.min_lobbies = 0;
        manifest
            .deployment
            .warm_matches
            .insert("duel".to_owned(), 100);
        assert_eq!(manifest.validate(), Ok(()));
    }

    #[test]
    fn warm_matches_must_name_declared_modes() {
        let mut manifest = good();
        manifest
            .deployment
            .warm_matches
            .insert("squad".to_owned(), 1);
        assert_single_problem(
            &manifest,
            "invalid_deployment_config",
            "deployment.warm_matches.squad",
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut manifest = good();
        manifest.runtime.tick_rate = 0;
        manifest.modes[0].groups[1].name = "red".to_owned();
        manifest.deployment.min_lobbies = 5000;
        let problems = manifest.validate().unwrap_err();
        let codes: Vec<&str> = problems.iter().map(|p| p.code.as_str()).collect();
        assert_eq!(
            codes,
            [
                "invalid_runtime",
                "invalid_group",
                "invalid_deployment_config"
            ]
        );
        assert!(
            problems[1].message.contains("\"red\""),
            "the message names the value: {}",
            problems[1]
        );
    }

    #[test]
    fn overrides_replace_only_what_they_name() {
        let mut base = DeploymentConfig::default();
        base.warm_matches.insert("duel".to_owned(), 2);
        base.warm_matches.insert("squad".to_owned(), 1);
        let overrides: DeploymentOverrides =
            serde_json::from_str(r#"{"min_lobbies": 3, "warm_matches": {"squad": 0}}"#).unwrap();

        let config = overrides.apply(&base);

        assert_eq!(config.min_lobbies, 3);
        assert_eq!(config.warm_matches["duel"], 2);
        assert_eq!(config.warm_matches["squad"], 0);
        assert_eq!(config.max_clients_per_lobby, base.max_clients_per_lobby);
        assert_eq!(DeploymentOverrides::default().apply(&base), base);
    }

    #[test]
    fn overrides_refuse_unknown_fields() {
        let misspelt = serde_json::from_str::<DeploymentOverrides>(r#"{"min_lobby": 3}"#);
        assert!(misspelt.is_err());
    }

    #[cfg(feature = "bundle")]
    mod toml_parsing {
        use super::*;

        const HELLO: &str = r#"
[runtime]
kind = "lua"
lobby = "lobby.lua"
match = "match.lua"

[[modes]]
name = "duel"
min_players = 2
max_players = 2
  [[modes.groups]]
  name = "red"
  min_players = 1
  max_players = 1
  [[modes.groups]]
  name = "blue"
  min_players = 1
  max_players = 1

[user_data]
greeting = "hello"
levels = [1, 2]

[deployment]
warm_matches = { duel = 2 }
"#;

        #[test]
        fn a_manifest_parses_with_defaults() {
            let manifest = Manifest::from_toml(HELLO).unwrap();
            assert_eq!(manifest.runtime.match_entry, "match.lua");
            assert_eq!(manifest.runtime.tick_rate, DEFAULT_TICK_RATE);
            assert_eq!(manifest.modes[0].groups[1].name, "blue");
            assert_eq!(
                manifest.user_data,
                serde_json::json!({ "greeting": "hello", "levels": [1, 2] })
            );
            assert_eq!(manifest.deployment.warm_matches["duel"], 2);
            assert_eq!(manifest.deployment.min_lobbies, 1);
            assert_eq!(manifest.validate(), Ok(()));
        }

        #[test]
        fn user_data_defaults_to_an_empty_object() {
            let text = HELLO.replace("[user_data]\ngreeting = \"hello\"\nlevels = [1, 2]\n", "");
            let manifest = Manifest::from_toml(&text).unwrap();
            assert_eq!(manifest.user_data, serde_json::json!({}));
        }

        #[test]
        fn user_data_dates_become_strings() {
            let text = HELLO.replace(
                "levels = [1, 2]",
                "launch = 2026-05-27T07:32:00Z\nseasons = [{ start = 2026-06-01 }]",
            );
            let manifest = Manifest::from_toml(&text).unwrap();
            assert_eq!(manifest.user_data["launch"], "2026-05-27T07:32:00Z");
            assert_eq!(manifest.user_data["seasons"][0]["start"], "2026-06-01");
        }

        #[test]
        fn unknown_fields_are_refused_with_their_line() {
            let text = HELLO.replace("max_players = 2\n", "max_players = 2\nmax_playres = 3\n");
            let error = Manifest::from_toml(&text).unwrap_err();
            assert!(error.message.contains("max_playres"), "{error}");
            assert!(error.line.is_some(), "{error:?}");
            assert!(error.to_string().starts_with("line "), "{error}");
        }

        #[test]
        fn unknown_keys_are_named_with_their_path_and_line() {
            // Line 1 is the empty line the constant starts with.
            let text = HELLO.replace("  name = \"blue\"\n", "  name = \"blue\"\n  colour = 3\n");
            let error = Manifest::from_toml(&text).unwrap_err();
            assert_eq!(error.message, "unknown field `modes[0].groups[1].colour`");
            assert_eq!((error.line, error.column), (Some(17), Some(3)), "{error}");

            let text = format!("{HELLO}min_lobies = 2\n");
            let error = Manifest::from_toml(&text).unwrap_err();
            assert_eq!(error.message, "unknown field `deployment.min_lobies`");
            assert_eq!(error.line, Some(26), "{error}");

            let text = HELLO.replace("[runtime]\n", "[runtime]\nengine = \"x\"\n");
            let error = Manifest::from_toml(&text).unwrap_err();
            assert_eq!(error.message, "unknown field `runtime.engine`");
            assert_eq!(error.line, Some(3), "{error}");
        }

        #[test]
        fn wrong_types_and_kinds_are_refused() {
            let text = HELLO.replace("min_players = 2", "min_players = \"two\"");
            let error = Manifest::from_toml(&text).unwrap_err();
            assert_eq!(error.line, Some(9), "{error}");

            let text = HELLO.replace("kind = \"lua\"", "kind = \"python\"");
            let error = Manifest::from_toml(&text).unwrap_err();
            assert_eq!(error.line, Some(3), "{error}");
        }
    }
}
