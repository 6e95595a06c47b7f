//! From a bundle on disk to a running engine: read the bundle (a directory or a tar.gz) with
//! the same checks the platform made at upload, then load its lobby or match entry into the
//! engine its manifest names.

use crate::engine::{Engine, Limits};
use rally_sdk::bundle::{pack, unpack, unpack_for_check, BundleLimits};
use rally_sdk::manifest::{Manifest, Problem, RuntimeKind};
use rally_sdk::runtime::Qualifier;
use std::collections::BTreeMap;
use std::path::Path;

/// A bundle's logic, ready to take events.
pub struct Loaded {
    pub engine: Box<dyn Engine>,
    pub manifest: Manifest,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("manifest", &self.manifest)
            .finish_non_exhaustive()
    }
}

/// A bundle's manifest, and its files by path.
pub type ReadBundle = (Manifest, BTreeMap<String, Vec<u8>>);

/// The bundle's files by path, and its manifest.
pub fn read_bundle(path: &Path) -> Result<ReadBundle, String> {
    let archive = archive_of(path)?;
    let (bundle, files) = unpack(&archive, &BundleLimits::default())
        .map_err(|error| format!("{}: {error}", path.display()))?;
    Ok((bundle.manifest, files))
}

/// [`read_bundle`] for `rally-runtime check`: a manifest that breaks its rules is read anyway,
/// its problems returned beside it, so that the logic can be loaded and reported on too.
pub fn read_bundle_for_check(path: &Path) -> Result<(ReadBundle, Vec<Problem>), String> {
    let archive = archive_of(path)?;
    let (bundle, files, problems) = unpack_for_check(&archive, &BundleLimits::default())
        .map_err(|error| format!("{}: {error}", path.display()))?;
    Ok(((bundle.manifest, files), problems))
}

/// A directory packed as the CLI packs it, or a tar.gz read as it is.
fn archive_of(path: &Path) -> Result<Vec<u8>, String> {
    if path.is_dir() {
        pack(path, &BundleLimits::default()).map_err(|error| format!("{}: {error}", path.display()))
    } else {
        std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))
    }
}

/// Loads the entry of `qualifier` into the engine the manifest names.
pub fn load(path: &Path, qualifier: Qualifier, limits: Limits) -> Result<Loaded, String> {
    let (manifest, files) = read_bundle(path)?;
    load_files(manifest, files, qualifier, limits)
}

/// [`load`] for a bundle already read with [`read_bundle`].
pub fn load_files(
    manifest: Manifest,
    files: BTreeMap<String, Vec<u8>>,
    qualifier: Qualifier,
    limits: Limits,
) -> Result<Loaded, String> {
    let entry = match qualifier {
        Qualifier::Lobby => manifest.runtime.lobby.clone(),
        Qualifier::Match => manifest.runtime.match_entry.clone(),
    };
    let engine: Box<dyn Engine> = match manifest.runtime.kind {
        RuntimeKind::Program => {
            return Err(format!(
                "a program runtime runs its own program ({}), not rally-runtime",
                manifest
                    .runtime
                    .program
                    .as_deref()
                    .unwrap_or("pushed as an image")
            ))
        }
        RuntimeKind::Lua => {
            let bundle = crate::lua::LuaBundle::from_files(files);
            Box::new(
                crate::lua::LuaEngine::load(&bundle, &entry, limits)
                    .map_err(|error| error.to_string())?,
            )
        }
        RuntimeKind::Wasm => {
            let bytes = files
                .get(&entry)
                .ok_or_else(|| format!("the bundle has no {entry}"))?;
            let module = crate::wasm::WasmModule::compile(bytes)
                .map_err(|error| format!("{entry}: {error}"))?;
            Box::new(
                crate::wasm::WasmEngine::instantiate(&module, limits)
                    .map_err(|error| format!("{entry}: {error}"))?,
            )
        }
    };
    Ok(Loaded { engine, manifest })
}
