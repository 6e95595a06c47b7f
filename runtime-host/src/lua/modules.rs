//! The Lua files of a bundle and `require`: every file is compiled when the engine loads (so a
//! syntax error anywhere in the bundle is reported at once, with file and line), and `require`
//! runs a module from the bundle, once, and nothing else.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::Path;
use std::sync::Arc;

use mlua::chunk::ChunkMode;
use mlua::{Function, Lua, Value};

use super::api::caller_location;
use super::LoadError;

/// The Lua sources of a bundle, by path relative to the bundle's root with `/` separators
/// (`lobby.lua`, `lib/util.lua`). Built from a directory, an unpacked archive or a test's map
/// alike; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LuaBundle {
    files: Arc<BTreeMap<String, Vec<u8>>>,
}

impl LuaBundle {
    /// A bundle from file contents by path. Paths may start with `./` and use `\`; files that
    /// are not `.lua` are ignored.
    pub fn from_files(files: BTreeMap<String, Vec<u8>>) -> Self {
        let files = files
            .into_iter()
            .map(|(path, source)| (normalize(&path), source))
            .filter(|(path, _)| path.ends_with(".lua"))
            .collect();
        Self {
            files: Arc::new(files),
        }
    }

    /// Every `.lua` file below `dir`, symbolic links excepted (a bundle never contains them).
    pub fn from_dir(dir: &Path) -> io::Result<Self> {
        let mut files = BTreeMap::new();
        read_lua_files(dir, "", &mut files)?;
        Ok(Self {
            files: Arc::new(files),
        })
    }

    /// The paths of the bundle's Lua files, sorted.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    fn source(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(Vec::as_slice)
    }
}

fn normalize(path: &str) -> String {
    let path = path.replace('\\', "/");
    let mut path = path.as_str();
    while let Some(rest) = path.strip_prefix("./") {
        path = rest;
    }
    path.trim_start_matches('/').to_owned()
}

fn read_lua_files(
    dir: &Path,
    prefix: &str,
    files: &mut BTreeMap<String, Vec<u8>>,
) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = format!("{prefix}{name}");
        let kind = entry.file_type()?;
        if kind.is_dir() {
            read_lua_files(&entry.path(), &format!("{path}/"), files)?;
        } else if kind.is_file() && name.ends_with(".lua") {
            files.insert(path, std::fs::read(entry.path())?);
        }
    }
    Ok(())
}

/// The path of module `name`: names of letters, digits, `_` and `-` separated by dots (Lua's
/// convention) or slashes. Anything else, `..` in particular, names no module.
fn module_path(name: &str) -> Option<String> {
    let segments: Vec<&str> = name.split(['.', '/']).collect();
    let valid = segments.iter().all(|segment| {
        !segment.is_empty()
            && segment
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
    });
    valid.then(|| segments.join("/"))
}

/// The compiled files of a bundle and the modules already run.
#[derive(Default)]
pub(super) struct Modules {
    compiled: RefCell<HashMap<String, Function>>,
    /// Results of modules that ran to completion, by path.
    loaded: RefCell<HashMap<String, Value>>,
    /// Paths whose top-level code is running, outermost first: a module that requires one of
    /// them is a cycle.
    loading: RefCell<Vec<String>>,
}

impl Modules {
    /// Compiles every file of `bundle` as text (bytecode is refused) in the current, sandboxed,
    /// global environment.
    pub(super) fn compile(&self, lua: &Lua, bundle: &LuaBundle) -> Result<(), LoadError> {
        let mut compiled = self.compiled.borrow_mut();
        for path in bundle.paths() {
            let source = bundle.source(path).unwrap_or_default();
            let function = lua
                .load(source)
                .set_name(format!("@{path}"))
                .set_mode(ChunkMode::Text)
                .into_function()
                .map_err(|err| compile_error(path, err))?;
            compiled.insert(path.to_owned(), function);
        }
        Ok(())
    }

    /// `require(name)`.
    pub(super) fn require(&self, lua: &Lua, name: &str) -> mlua::Result<Value> {
        let Some(base) = module_path(name) else {
            return Err(mlua::Error::runtime(format!(
                "{}require: '{name}' is not a module name: use names of letters, digits, '_' and '-' \
                 separated by dots, relative to the bundle's root",
                caller_location(lua)
            )));
        };
        let candidates = [format!("{base}.lua"), format!("{base}/init.lua")];
        let found = {
            let compiled = self.compiled.borrow();
            candidates
                .iter()
                .find(|path| compiled.contains_key(path.as_str()))
                .cloned()
        };
        match found {
            Some(path) => self.run(lua, &path, name),
            None => Err(mlua::Error::runtime(format!(
                "{}require: module '{name}' not found in the bundle (looked for {} and {})",
                caller_location(lua),
                candidates[0],
                candidates[1]
            ))),
        }
    }

    /// Runs the file at `path` (once) and returns what it returned (`true` for nothing).
    pub(super) fn run(&self, lua: &Lua, path: &str, name: &str) -> mlua::Result<Value> {
        if let Some(value) = self.loaded.borrow().get(path) {
            return Ok(value.clone());
        }
        if self.loading.borrow().iter().any(|loading| loading == path) {
            let mut chain = self.loading.borrow().join(" -> ");
            chain.push_str(" -> ");
            chain.push_str(path);
            return Err(mlua::Error::runtime(format!(
                "{}require: cycle between modules: {chain}",
                caller_location(lua)
            )));
        }
        let Some(chunk) = self.compiled.borrow().get(path).cloned() else {
            return Err(mlua::Error::runtime(format!(
                "{}require: no file {path} in the bundle",
                caller_location(lua)
            )));
        };
        self.loading.borrow_mut().push(path.to_owned());
        let result = chunk.call::<Value>(name);
        self.loading.borrow_mut().pop();
        let value = match result? {
            Value::Nil => Value::Boolean(true),
            value => value,
        };
        self.loaded
            .borrow_mut()
            .insert(path.to_owned(), value.clone());
        Ok(value)
    }
}

/// A compiler message looks like `lib/util.lua:3: Expected 'end' ...`.
fn compile_error(path: &str, err: mlua::Error) -> LoadError {
    let message = match err {
        mlua::Error::SyntaxError { message, .. } => message,
        other => other.to_string(),
    };
    let line = message
        .strip_prefix(path)
        .and_then(|rest| rest.strip_prefix(':'))
        .and_then(|rest| rest.split(':').next())
        .and_then(|line| line.parse().ok());
    LoadError::Compile {
        file: path.to_owned(),
        line,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_map_to_paths_inside_the_bundle() {
        assert_eq!(module_path("util").as_deref(), Some("util"));
        assert_eq!(module_path("lib.util").as_deref(), Some("lib/util"));
        assert_eq!(module_path("lib/util").as_deref(), Some("lib/util"));
        assert_eq!(module_path("my-lib.v2_x").as_deref(), Some("my-lib/v2_x"));
        for outside in [
            "../x",
            "..x",
            "/etc/passwd",
            "a..b",
            "",
            ".",
            "a/",
            "a b",
            "~/x",
            "c:\\x",
        ] {
            assert_eq!(module_path(outside), None, "{outside}");
        }
    }

    #[test]
    fn paths_are_normalized() {
        assert_eq!(normalize("./lib\\util.lua"), "lib/util.lua");
        assert_eq!(normalize("/lobby.lua"), "lobby.lua");
    }
}
