//! Version bundles: the tar.gz archive of a version's logic and its `rally.toml`. The CLI packs a
//! directory and checks the result before uploading; the server checks the upload again, in
//! memory, before it stores anything.
//!
//! An upload is untrusted input, so [`inspect`] never writes to disk, never follows a link and
//! stops decompressing as soon as the bundle outgrows its limits.

use crate::manifest::{plain_relative_path_problem, Manifest, ManifestSyntaxError, Problem};
use flate2::read::GzDecoder;
use flate2::{Compression, GzBuilder};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use tar::EntryType;

/// The manifest's name; it must sit at the bundle root.
pub const MANIFEST_FILE: &str = "rally.toml";

/// A manifest is a few hundred bytes; anything past this is a mistake or an attack, and it is
/// read into memory whole.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// How big a bundle may be. The server and the CLI use the same defaults so that a bundle the
/// CLI accepts is not refused after a long upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleLimits {
    /// Size of the compressed archive.
    pub max_archive_bytes: u64,
    /// Size of the decompressed tar stream (file contents plus tar headers).
    pub max_unpacked_bytes: u64,
    /// Number of regular files.
    pub max_files: usize,
}

impl Default for BundleLimits {
    fn default() -> Self {
        BundleLimits {
            max_archive_bytes: 64 * 1024 * 1024,
            max_unpacked_bytes: 128 * 1024 * 1024,
            max_files: 2000,
        }
    }
}

/// A bundle that passed every check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bundle {
    pub manifest: Manifest,
    /// `rally.toml` as uploaded, comments included, so that it can be shown back as written.
    pub manifest_text: String,
    /// Lowercase hex SHA-256 of the archive bytes: the same directory always packs to the same
    /// archive, so this identifies the content.
    pub sha256: String,
    pub archive_bytes: u64,
    /// Sum of the sizes of the files (what the bundle takes once unpacked).
    pub unpacked_bytes: u64,
    /// Regular files, sorted by path; directories are not listed.
    pub files: Vec<BundleFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BundleFile {
    /// Relative to the bundle root, `/`-separated, without a leading `./`.
    pub path: String,
    pub size: u64,
}

/// Why a bundle was refused. [`BundleError::code`] is stable; the message tells the developer
/// what to change.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "the bundle is {size} bytes compressed, over the limit of {limit} bytes; leave out files \
         the runtime does not need"
    )]
    ArchiveTooLarge { size: u64, limit: u64 },
    #[error(
        "the bundle unpacks to more than {limit} bytes; leave out files the runtime does not need"
    )]
    UnpackedTooLarge { limit: u64 },
    #[error(
        "the bundle is not a gzip-compressed tar archive ({reason}); let `rally deploy` pack the \
         directory, or use `tar -czf bundle.tar.gz -C <dir> .`"
    )]
    NotArchive { reason: String },
    #[error(
        "{path:?} is a {kind}; a bundle holds only regular files and directories, so put a copy \
         of the target there instead"
    )]
    LinkForbidden { path: String, kind: &'static str },
    #[error("{path:?} is a {kind}; a bundle holds only regular files and directories")]
    EntryForbidden { path: String, kind: &'static str },
    #[error(
        "the path {path:?} {reason}; every path in a bundle is relative to its root and uses \
         '/' between directories"
    )]
    PathEscapes { path: String, reason: &'static str },
    #[error("{path:?} {reason}; each path may appear once in a bundle")]
    DuplicatePath { path: String, reason: &'static str },
    #[error("the bundle holds more than {limit} files; leave out files the runtime does not need")]
    TooManyFiles { limit: usize },
    #[error(
        "the bundle has no {MANIFEST_FILE} at its root; add one next to the entry files (see \
         examples/hello)"
    )]
    ManifestMissing,
    #[error("{MANIFEST_FILE} cannot be read: {reason}")]
    ManifestUnreadable { reason: String },
    #[error("{MANIFEST_FILE} is not a valid manifest: {0}")]
    ManifestSyntax(ManifestSyntaxError),
    #[error("{MANIFEST_FILE} is not a valid manifest: {}", describe_problems(.0))]
    ManifestProblems(Vec<Problem>),
    #[error("{field} names {path:?}, but the bundle has no such file; add it or fix {field}")]
    EntryMissing { field: &'static str, path: String },
    #[error(
        "runtime.program names {path:?}, which is not executable in the bundle; make it \
         executable (chmod +x) and pack it again"
    )]
    ProgramNotExecutable { path: String },
    /// Only [`pack`] reads the file system.
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl BundleError {
    /// The stable, machine-readable reason.
    pub fn code(&self) -> &'static str {
        match self {
            BundleError::ArchiveTooLarge { .. } | BundleError::UnpackedTooLarge { .. } => {
                "bundle_too_large"
            }
            BundleError::NotArchive { .. } => "bundle_not_archive",
            BundleError::LinkForbidden { .. } => "bundle_link_forbidden",
            BundleError::EntryForbidden { .. } => "bundle_entry_forbidden",
            BundleError::PathEscapes { .. } => "bundle_path_escapes",
            BundleError::DuplicatePath { .. } => "bundle_duplicate_path",
            BundleError::TooManyFiles { .. } => "bundle_too_many_files",
            BundleError::ManifestMissing => "manifest_missing",
            BundleError::ManifestUnreadable { .. }
            | BundleError::ManifestSyntax(_)
            | BundleError::ManifestProblems(_) => "manifest_invalid",
            BundleError::EntryMissing { .. } => "entry_missing",
            BundleError::ProgramNotExecutable { .. } => "program_not_executable",
            BundleError::Io { .. } => "bundle_io",
        }
    }

    /// Every broken manifest rule, when that is why the bundle was refused; empty otherwise.
    pub fn problems(&self) -> &[Problem] {
        match self {
            BundleError::ManifestProblems(problems) => problems,
            _ => &[],
        }
    }
}

fn describe_problems(problems: &[Problem]) -> String {
    let described: Vec<String> = problems.iter().map(Problem::to_string).collect();
    described.join("; ")
}

/// Checks an uploaded bundle and describes it.
///
/// The archive is read as a stream from memory: nothing touches the disk, and decompression
/// stops one byte past `max_unpacked_bytes`, so a small archive that inflates to gigabytes
/// costs no more than the limit.
pub fn inspect(archive: &[u8], limits: &BundleLimits) -> Result<Bundle, BundleError> {
    read_bundle(archive, limits, Keep::Sizes, Rules::Enforced).map(|(bundle, _, _)| bundle)
}

/// [`inspect`], also returning every file's bytes by path: what a runtime loads its logic from.
pub fn unpack(
    archive: &[u8],
    limits: &BundleLimits,
) -> Result<(Bundle, BTreeMap<String, Vec<u8>>), BundleError> {
    read_bundle(archive, limits, Keep::Contents, Rules::Enforced)
        .map(|(bundle, files, _)| (bundle, files))
}

/// [`unpack`] for a check that reports everything wrong at once: a manifest that parses but
/// breaks its rules is read anyway, and the broken rules come back beside the files, so that
/// a script that does not load can be reported with them. Every other refusal is as
/// [`unpack`]'s.
pub fn unpack_for_check(
    archive: &[u8],
    limits: &BundleLimits,
) -> Result<CheckedBundle, BundleError> {
    read_bundle(archive, limits, Keep::Contents, Rules::Reported)
}

/// A bundle read for a check: its description, its files' bytes by path, and the manifest's
/// broken rules.
pub type CheckedBundle = (Bundle, BTreeMap<String, Vec<u8>>, Vec<Problem>);

/// Whether a manifest's broken rules refuse the bundle or are only reported.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rules {
    Enforced,
    Reported,
}

/// Whether reading a bundle keeps the files' bytes or only their sizes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    Sizes,
    Contents,
}

fn read_bundle(
    archive: &[u8],
    limits: &BundleLimits,
    keep: Keep,
    rules: Rules,
) -> Result<CheckedBundle, BundleError> {
    let archive_bytes = archive.len() as u64;
    if archive_bytes > limits.max_archive_bytes {
        return Err(BundleError::ArchiveTooLarge {
            size: archive_bytes,
            limit: limits.max_archive_bytes,
        });
    }

    let inflated = Cell::new(0);
    let meter = InflateMeter {
        inner: GzDecoder::new(archive),
        inflated: &inflated,
        limit: limits.max_unpacked_bytes,
    };
    // An I/O error means either that the meter cut the stream or that the bytes are not
    // gzip/tar; the meter's count tells which.
    let classify = |error: io::Error| {
        if inflated.get() > limits.max_unpacked_bytes {
            BundleError::UnpackedTooLarge {
                limit: limits.max_unpacked_bytes,
            }
        } else {
            BundleError::NotArchive {
                reason: error.to_string(),
            }
        }
    };
    let mut tar = tar::Archive::new(meter);
    let mut contents = read_entries(&mut tar, limits, &inflated, &classify, keep)?;
    // Reading to the end checks the gzip trailer (CRC and length): a corrupted upload is
    // refused here rather than found out when it is unpacked.
    io::copy(&mut tar.into_inner(), &mut io::sink()).map_err(classify)?;
    check_file_directory_clashes(&contents)?;

    let manifest_text = contents.manifest_text.ok_or(BundleError::ManifestMissing)?;
    let manifest = Manifest::from_toml(&manifest_text).map_err(BundleError::ManifestSyntax)?;
    let problems = match manifest.validate() {
        Ok(()) => Vec::new(),
        Err(problems) if rules == Rules::Reported => problems,
        Err(problems) => return Err(BundleError::ManifestProblems(problems)),
    };
    for (field, path) in manifest.entry_files() {
        if !contents.files.contains_key(path) {
            return Err(BundleError::EntryMissing {
                field,
                path: path.to_owned(),
            });
        }
    }
    if manifest.runtime.kind == crate::manifest::RuntimeKind::Program {
        if let Some(program) = &manifest.runtime.program {
            if !contents.executables.contains(program) {
                return Err(BundleError::ProgramNotExecutable {
                    path: program.clone(),
                });
            }
        }
    }

    let data = std::mem::take(&mut contents.data);
    let bundle = Bundle {
        manifest,
        manifest_text,
        sha256: sha256_hex(archive),
        archive_bytes,
        unpacked_bytes: contents.files.values().sum(),
        files: contents
            .files
            .into_iter()
            .map(|(path, size)| BundleFile { path, size })
            .collect(),
    };
    Ok((bundle, data, problems))
}

/// What the tar stream holds, once every entry has been checked.
struct Contents {
    files: BTreeMap<String, u64>,
    /// Files with an execute bit.
    executables: BTreeSet<String>,
    directories: BTreeSet<String>,
    manifest_text: Option<String>,
    /// The files' bytes, when asked for.
    data: BTreeMap<String, Vec<u8>>,
}

fn read_entries<R: Read>(
    tar: &mut tar::Archive<R>,
    limits: &BundleLimits,
    inflated: &Cell<u64>,
    classify: &dyn Fn(io::Error) -> BundleError,
    keep: Keep,
) -> Result<Contents, BundleError> {
    let mut contents = Contents {
        files: BTreeMap::new(),
        executables: BTreeSet::new(),
        directories: BTreeSet::new(),
        manifest_text: None,
        data: BTreeMap::new(),
    };
    for entry in tar.entries().map_err(classify)? {
        let mut entry = entry.map_err(classify)?;
        let entry_type = entry.header().entry_type();
        // `git archive` starts with a global pax header (the commit id); it describes the
        // archive, not a file.
        if entry_type == EntryType::XGlobalHeader {
            continue;
        }
        let Some(path) = bundle_path(&entry.path_bytes(), entry_type == EntryType::Directory)?
        else {
            continue; // the root directory itself (`./`)
        };
        if contents.files.contains_key(&path) || contents.directories.contains(&path) {
            return Err(BundleError::DuplicatePath {
                path,
                reason: "appears more than once",
            });
        }
        match entry_type {
            EntryType::Directory => {
                contents.directories.insert(path);
            }
            EntryType::Regular | EntryType::Continuous => {
                if contents.files.len() >= limits.max_files {
                    return Err(BundleError::TooManyFiles {
                        limit: limits.max_files,
                    });
                }
                let size = entry.size();
                // The header announces the size: refuse without inflating what is announced.
                if inflated.get().saturating_add(size) > limits.max_unpacked_bytes {
                    return Err(BundleError::UnpackedTooLarge {
                        limit: limits.max_unpacked_bytes,
                    });
                }
                if path == MANIFEST_FILE {
                    let text = read_manifest(&mut entry, size, classify)?;
                    if keep == Keep::Contents {
                        contents
                            .data
                            .insert(path.clone(), text.clone().into_bytes());
                    }
                    contents.manifest_text = Some(text);
                } else if keep == Keep::Contents {
                    let mut bytes = Vec::with_capacity(size as usize);
                    entry.read_to_end(&mut bytes).map_err(classify)?;
                    contents.data.insert(path.clone(), bytes);
                }
                if entry.header().mode().is_ok_and(|mode| mode & 0o111 != 0) {
                    contents.executables.insert(path.clone());
                }
                contents.files.insert(path, size);
            }
            EntryType::Symlink => {
                return Err(BundleError::LinkForbidden {
                    path,
                    kind: "symbolic link",
                })
            }
            EntryType::Link => {
                return Err(BundleError::LinkForbidden {
                    path,
                    kind: "hard link",
                })
            }
            other => {
                return Err(BundleError::EntryForbidden {
                    path,
                    kind: entry_kind_name(other),
                })
            }
        }
    }
    Ok(contents)
}

fn read_manifest(
    entry: &mut impl Read,
    size: u64,
    classify: &dyn Fn(io::Error) -> BundleError,
) -> Result<String, BundleError> {
    if size > MAX_MANIFEST_BYTES {
        return Err(BundleError::ManifestUnreadable {
            reason: format!("it is {size} bytes; a manifest may be at most {MAX_MANIFEST_BYTES}"),
        });
    }
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes).map_err(classify)?;
    String::from_utf8(bytes).map_err(|_| BundleError::ManifestUnreadable {
        reason: "it is not UTF-8 text".to_owned(),
    })
}

fn entry_kind_name(entry_type: EntryType) -> &'static str {
    match entry_type {
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "named pipe",
        EntryType::GNUSparse => "sparse file",
        _ => "special tar entry",
    }
}

/// The entry's path in the form the bundle lists it (no `./`, no trailing `/`), `None` for the
/// root directory, or why the path is refused.
fn bundle_path(raw: &[u8], is_directory: bool) -> Result<Option<String>, BundleError> {
    let Ok(text) = std::str::from_utf8(raw) else {
        return Err(BundleError::PathEscapes {
            path: String::from_utf8_lossy(raw).into_owned(),
            reason: "is not UTF-8",
        });
    };
    // `tar -C dir .` names everything `./...`; that prefix means the same as none.
    let mut path = text.strip_prefix("./").unwrap_or(text);
    if is_directory {
        path = path.strip_suffix('/').unwrap_or(path);
        if path.is_empty() || path == "." {
            return Ok(None);
        }
    }
    match plain_relative_path_problem(path) {
        Some(reason) => Err(BundleError::PathEscapes {
            path: text.to_owned(),
            reason,
        }),
        None => Ok(Some(path.to_owned())),
    }
}

/// A file `a` and an entry `a/b` cannot both be unpacked; tar would let the second silently
/// replace or fail on the first.
fn check_file_directory_clashes(contents: &Contents) -> Result<(), BundleError> {
    let all_paths: BTreeSet<&str> = contents
        .files
        .keys()
        .chain(&contents.directories)
        .map(String::as_str)
        .collect();
    for file in contents.files.keys() {
        let as_directory = format!("{file}/");
        let first_after = all_paths.range(as_directory.as_str()..).next();
        if first_after.is_some_and(|path| path.starts_with(&as_directory)) {
            return Err(BundleError::DuplicatePath {
                path: file.clone(),
                reason: "is both a file and a directory",
            });
        }
    }
    Ok(())
}

/// Counts what the decompressor produces and never asks it for more than one byte past the
/// limit: that byte proves the limit is exceeded, and the error ends the tar stream.
struct InflateMeter<'a, R> {
    inner: R,
    inflated: &'a Cell<u64>,
    limit: u64,
}

impl<R: Read> Read for InflateMeter<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let allowance = self
            .limit
            .saturating_sub(self.inflated.get())
            .saturating_add(1);
        let wanted = buf
            .len()
            .min(usize::try_from(allowance).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..wanted])?;
        let inflated = self.inflated.get() + read as u64;
        self.inflated.set(inflated);
        if inflated > self.limit {
            return Err(io::Error::other(format!(
                "decompressed data exceeds {} bytes",
                self.limit
            )));
        }
        Ok(read)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Packs `dir` into a bundle. The same directory always packs to the same bytes (sorted
/// entries, mtime 0, owner 0, modes 0644/0755, fixed gzip header), so an unchanged directory
/// gives the same SHA-256 and the platform can tell that nothing changed.
///
/// Hidden entries (names starting with `.`) and a top-level `target/` are left out: they are
/// version control, editor state and build output. Links are refused rather than followed, as
/// [`inspect`] would refuse them. The result still needs [`inspect`] for the manifest checks.
pub fn pack(dir: &Path, limits: &BundleLimits) -> Result<Vec<u8>, BundleError> {
    let mut entries = Vec::new();
    collect_entries(dir, "", &mut entries)?;

    let file_count = entries
        .iter()
        .filter(|entry| matches!(entry.kind, PackKind::File { .. }))
        .count();
    if file_count > limits.max_files {
        return Err(BundleError::TooManyFiles {
            limit: limits.max_files,
        });
    }

    let encoder = GzBuilder::new().write(Vec::new(), Compression::default());
    let mut builder = tar::Builder::new(encoder);
    let mut unpacked: u64 = 0;
    for entry in &entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        let written = match entry.kind {
            PackKind::Directory => {
                header.set_entry_type(EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, format!("{}/", entry.path), io::empty())
            }
            PackKind::File { executable } => {
                // Read whole, so the header's size is the size of what is written even if the
                // file changes meanwhile; the limit bounds the memory this takes.
                let data = fs::read(&entry.source).map_err(|source| BundleError::Io {
                    path: entry.source.clone(),
                    source,
                })?;
                unpacked += data.len() as u64;
                if unpacked > limits.max_unpacked_bytes {
                    return Err(BundleError::UnpackedTooLarge {
                        limit: limits.max_unpacked_bytes,
                    });
                }
                header.set_entry_type(EntryType::Regular);
                header.set_mode(if executable { 0o755 } else { 0o644 });
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, &entry.path, data.as_slice())
            }
        };
        written.map_err(|source| BundleError::Io {
            path: entry.source.clone(),
            source,
        })?;
    }
    let archive = builder
        .into_inner()
        .and_then(|encoder| encoder.finish())
        .map_err(|source| BundleError::Io {
            path: dir.to_owned(),
            source,
        })?;
    if archive.len() as u64 > limits.max_archive_bytes {
        return Err(BundleError::ArchiveTooLarge {
            size: archive.len() as u64,
            limit: limits.max_archive_bytes,
        });
    }
    Ok(archive)
}

struct PackEntry {
    /// Path inside the bundle.
    path: String,
    /// Where it is on disk.
    source: PathBuf,
    kind: PackKind,
}

enum PackKind {
    Directory,
    File { executable: bool },
}

/// Appends the entries of `dir` (bundle path `prefix`) and everything below it, sorted by name
/// so that the archive does not depend on the order the file system lists them in.
fn collect_entries(
    dir: &Path,
    prefix: &str,
    entries: &mut Vec<PackEntry>,
) -> Result<(), BundleError> {
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| BundleError::Io { path, source }
    };
    let mut children = fs::read_dir(dir)
        .map_err(io_error(dir))?
        .map(|child| child.map(|child| (child.file_name(), child.path())))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_error(dir))?;
    children.sort();

    for (name, source) in children {
        let Some(name) = name.to_str() else {
            return Err(BundleError::PathEscapes {
                path: source.display().to_string(),
                reason: "is not UTF-8",
            });
        };
        if name.starts_with('.') {
            continue;
        }
        let path = format!("{prefix}{name}");
        if let Some(reason) = plain_relative_path_problem(&path) {
            return Err(BundleError::PathEscapes { path, reason });
        }
        let metadata = fs::symlink_metadata(&source).map_err(io_error(&source))?;
        let file_type = metadata.file_type();
        if file_type.is_symlink() {
            return Err(BundleError::LinkForbidden {
                path,
                kind: "symbolic link",
            });
        } else if file_type.is_dir() {
            if prefix.is_empty() && name == "target" {
                continue;
            }
            let child_prefix = format!("{path}/");
            entries.push(PackEntry {
                path,
                source: source.clone(),
                kind: PackKind::Directory,
            });
            collect_entries(&source, &child_prefix, entries)?;
        } else if file_type.is_file() {
            entries.push(PackEntry {
                path,
                source,
                kind: PackKind::File {
                    executable: is_executable(&metadata),
                },
            });
        } else {
            return Err(BundleError::EntryForbidden {
                path,
                kind: "special file (socket, pipe or device)",
            });
        }
    }
    Ok(())
}

#[cfg(unix)]
fn is_executable(metadata: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    metadata.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_metadata: &fs::Metadata) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;
    use std::time::{Duration, Instant};

    const MANIFEST: &str = r#"
[runtime]
kind = "lua"
lobby = "lobby.lua"
match = "logic/match.lua"

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
"#;

    const LOBBY: &[u8] = b"return {}\n";
    const MATCH: &[u8] = b"return { on_tick = function(ctx, dt) end }\n";

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    /// A tar.gz with whatever `add` writes into it.
    fn archive(add: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        add(&mut builder);
        gzip(&builder.into_inner().unwrap())
    }

    fn file(builder: &mut tar::Builder<impl Write>, path: &str, data: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, path, data).unwrap();
    }

    /// Writes a header with the name bytes exactly as given: `append_data` refuses `..` and
    /// absolute paths, which is what the tests need to send.
    fn raw_entry(
        builder: &mut tar::Builder<Vec<u8>>,
        name: &[u8],
        entry_type: EntryType,
        data: &[u8],
    ) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_entry_type(entry_type);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, data).unwrap();
        header
    }

    fn good_files(builder: &mut tar::Builder<impl Write>) {
        file(builder, "rally.toml", MANIFEST.as_bytes());
        file(builder, "lobby.lua", LOBBY);
        file(builder, "logic/match.lua", MATCH);
    }

    /// The good bundle plus whatever `add` writes after it.
    fn good_archive_and(add: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        archive(|builder| {
            good_files(builder);
            add(builder);
        })
    }

    #[track_caller]
    fn refused(archive: &[u8], limits: &BundleLimits) -> BundleError {
        match inspect(archive, limits) {
            Ok(bundle) => panic!("the bundle should be refused: {bundle:#?}"),
            Err(error) => error,
        }
    }

    #[track_caller]
    fn assert_code(archive: &[u8], code: &str) -> BundleError {
        let error = refused(archive, &BundleLimits::default());
        assert_eq!(error.code(), code, "{error}");
        error
    }

    fn write(dir: &Path, path: &str, data: &[u8]) {
        let path = dir.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }

    fn good_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "rally.toml", MANIFEST.as_bytes());
        write(dir.path(), "lobby.lua", LOBBY);
        write(dir.path(), "logic/match.lua", MATCH);
        dir
    }

    #[test]
    fn a_packed_directory_inspects_and_packs_to_the_same_bytes_every_time() {
        let dir = good_dir();
        write(dir.path(), ".git/HEAD", b"ref: refs/heads/main\n");
        write(dir.path(), ".env", b"SECRET=1\n");
        write(dir.path(), "target/debug/huge", b"build output");
        write(dir.path(), "assets/target/level.json", b"{}");

        let limits = BundleLimits::default();
        let first = pack(dir.path(), &limits).unwrap();
        let second = pack(dir.path(), &limits).unwrap();
        assert_eq!(first, second);
        // A copy made later (other mtimes, other inode order) packs to the same bytes too.
        let copy = good_dir();
        write(copy.path(), "assets/target/level.json", b"{}");
        assert_eq!(pack(copy.path(), &limits).unwrap(), first);

        let bundle = inspect(&first, &limits).unwrap();
        let paths: Vec<&str> = bundle.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "assets/target/level.json",
                "lobby.lua",
                "logic/match.lua",
                "rally.toml"
            ]
        );
        assert_eq!(bundle.sha256, sha256_hex(&first));
        assert_eq!(bundle.sha256.len(), 64);
        assert_eq!(inspect(&second, &limits).unwrap().sha256, bundle.sha256);
        assert_eq!(bundle.archive_bytes, first.len() as u64);
        assert_eq!(
            bundle.unpacked_bytes,
            (MANIFEST.len() + LOBBY.len() + MATCH.len() + 2) as u64
        );
        assert_eq!(bundle.manifest_text, MANIFEST);
        assert_eq!(bundle.manifest.modes[0].name, "duel");
    }

    #[cfg(unix)]
    #[test]
    fn packing_keeps_the_executable_bit_and_nothing_else() {
        use std::os::unix::fs::PermissionsExt;
        let dir = good_dir();
        write(dir.path(), "tools/build.sh", b"#!/bin/sh\n");
        let script = dir.path().join("tools/build.sh");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o700)).unwrap();

        let packed = pack(dir.path(), &BundleLimits::default()).unwrap();
        let mut tar = tar::Archive::new(GzDecoder::new(packed.as_slice()));
        for entry in tar.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            let path = entry.path().unwrap().display().to_string();
            let expected_mode = if path == "tools/build.sh" || path.ends_with('/') {
                0o755
            } else {
                0o644
            };
            assert_eq!(header.mode().unwrap(), expected_mode, "{path}");
            assert_eq!(header.mtime().unwrap(), 0, "{path}");
            assert_eq!(header.uid().unwrap(), 0, "{path}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn packing_refuses_symlinks() {
        let dir = good_dir();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd")).unwrap();
        let error = pack(dir.path(), &BundleLimits::default()).unwrap_err();
        assert_eq!(error.code(), "bundle_link_forbidden", "{error}");
        assert!(error.to_string().contains("\"passwd\""), "{error}");
    }

    #[test]
    fn packing_enforces_the_limits() {
        let dir = good_dir();
        let limits = BundleLimits {
            max_files: 2,
            ..BundleLimits::default()
        };
        assert_eq!(
            pack(dir.path(), &limits).unwrap_err().code(),
            "bundle_too_many_files"
        );
        let limits = BundleLimits {
            max_unpacked_bytes: 100,
            ..BundleLimits::default()
        };
        assert_eq!(
            pack(dir.path(), &limits).unwrap_err().code(),
            "bundle_too_large"
        );
    }

    #[test]
    fn the_hello_example_is_a_valid_bundle() {
        let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello");
        let limits = BundleLimits::default();
        let bundle = inspect(&pack(&hello, &limits).unwrap(), &limits).unwrap();
        let paths: Vec<&str> = bundle.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["lobby.lua", "match.lua", "rally.toml", "session.txt"]
        );
        assert_eq!(bundle.manifest.modes[0].groups.len(), 2);
        assert!(bundle.manifest.user_data["greeting"].is_string());
    }

    #[test]
    fn dot_slash_names_directories_and_git_archive_headers_are_accepted() {
        let archive = archive(|builder| {
            // What `git archive` writes first.
            raw_entry(
                builder,
                b"pax_global_header",
                EntryType::XGlobalHeader,
                b"52 comment=0123456789012345678901234567890123456789\n",
            );
            raw_entry(builder, b"./", EntryType::Directory, b"");
            file(builder, "./rally.toml", MANIFEST.as_bytes());
            file(builder, "./lobby.lua", LOBBY);
            raw_entry(builder, b"./logic/", EntryType::Directory, b"");
            file(builder, "./logic/match.lua", MATCH);
        });
        let bundle = inspect(&archive, &BundleLimits::default()).unwrap();
        let paths: Vec<&str> = bundle.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["lobby.lua", "logic/match.lua", "rally.toml"]);
    }

    #[test]
    fn paths_that_leave_the_bundle_are_refused() {
        let names: [&[u8]; 6] = [
            b"../evil",
            b"logic/../../evil",
            b"/etc/passwd",
            b"logic\\match.lua",
            b"bad\xffname",
            b"a//b",
        ];
        for name in names {
            let bundle = good_archive_and(|builder| {
                raw_entry(builder, name, EntryType::Regular, b"x");
            });
            let error = assert_code(&bundle, "bundle_path_escapes");
            assert!(
                error.to_string().contains("relative to its root"),
                "{error}"
            );
        }
    }

    #[test]
    fn links_and_special_files_are_refused() {
        let symlink = good_archive_and(|builder| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(EntryType::Symlink);
            header.set_size(0);
            header.set_link_name_literal("/etc/passwd").unwrap();
            builder
                .append_data(&mut header, "passwd", io::empty())
                .unwrap();
        });
        assert_code(&symlink, "bundle_link_forbidden");

        let hard_link = good_archive_and(|builder| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(EntryType::Link);
            header.set_size(0);
            header.set_link_name_literal("lobby.lua").unwrap();
            builder
                .append_data(&mut header, "copy.lua", io::empty())
                .unwrap();
        });
        let error = assert_code(&hard_link, "bundle_link_forbidden");
        assert!(error.to_string().contains("hard link"), "{error}");

        for entry_type in [EntryType::Fifo, EntryType::Char, EntryType::Block] {
            let special = good_archive_and(|builder| {
                raw_entry(builder, b"device", entry_type, b"");
            });
            assert_code(&special, "bundle_entry_forbidden");
        }
    }

    #[test]
    fn bytes_that_are_not_a_tar_gz_are_refused() {
        let random: Vec<u8> = (0u32..4096)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert_code(&random, "bundle_not_archive");
        assert_code(b"", "bundle_not_archive");
        assert_code(&gzip(&[b'x'; 2048]), "bundle_not_archive");
        assert_code(&gzip(b"hello"), "bundle_not_archive");

        // A tar that is not compressed.
        let mut builder = tar::Builder::new(Vec::new());
        good_files(&mut builder);
        assert_code(&builder.into_inner().unwrap(), "bundle_not_archive");

        // A good archive whose gzip trailer was damaged.
        let mut damaged = good_archive_and(|_| {});
        let crc_at = damaged.len() - 8;
        damaged[crc_at] ^= 0xff;
        assert_code(&damaged, "bundle_not_archive");
    }

    /// 200 MiB of zeros compress to a few hundred KiB, well under the archive limit.
    #[test]
    fn a_decompression_bomb_is_refused_without_being_inflated() {
        let limits = BundleLimits::default();
        let size: u64 = 200 * 1024 * 1024;
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
        good_files(&mut builder);
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, "zeros.bin", io::repeat(0).take(size))
            .unwrap();
        let bomb = builder.into_inner().unwrap().finish().unwrap();
        assert!((bomb.len() as u64) < limits.max_archive_bytes);

        let started = Instant::now();
        let error = refused(&bomb, &limits);
        assert_eq!(error.code(), "bundle_too_large", "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// Bombs whose size no file header announces: a giant GNU long-name record (which the tar
    /// reader loads into memory) and zeros after the end of the archive. Only the meter on
    /// the decompressor stops these.
    #[test]
    fn bombs_hidden_from_the_file_headers_are_refused() {
        let limits = BundleLimits {
            max_unpacked_bytes: 1024 * 1024,
            ..BundleLimits::default()
        };
        let long_name = archive(|builder| {
            good_files(builder);
            let name = vec![b'a'; 2 * 1024 * 1024];
            raw_entry(builder, b"././@LongLink", EntryType::GNULongName, &name);
            file(builder, "after", b"");
        });
        let error = refused(&long_name, &limits);
        assert_eq!(error.code(), "bundle_too_large", "{error}");

        let mut builder = tar::Builder::new(Vec::new());
        good_files(&mut builder);
        let mut stream = builder.into_inner().unwrap();
        stream.resize(stream.len() + 2 * 1024 * 1024, 0);
        let error = refused(&gzip(&stream), &limits);
        assert_eq!(error.code(), "bundle_too_large", "{error}");
    }

    #[test]
    fn the_meter_never_reads_past_the_limit() {
        let inflated = Cell::new(0);
        let mut meter = InflateMeter {
            inner: io::repeat(0),
            inflated: &inflated,
            limit: 10_000,
        };
        let error = io::copy(&mut meter, &mut io::sink()).unwrap_err();
        assert!(error.to_string().contains("10000"), "{error}");
        assert_eq!(inflated.get(), 10_001);
    }

    #[test]
    fn size_limits_are_enforced() {
        let good = good_archive_and(|_| {});
        let limits = BundleLimits {
            max_archive_bytes: good.len() as u64 - 1,
            ..BundleLimits::default()
        };
        assert_eq!(refused(&good, &limits).code(), "bundle_too_large");

        let limits = BundleLimits {
            max_unpacked_bytes: 2048,
            ..BundleLimits::default()
        };
        assert_eq!(refused(&good, &limits).code(), "bundle_too_large");
    }

    #[test]
    fn too_many_files_are_refused() {
        let limits = BundleLimits {
            max_files: 3,
            ..BundleLimits::default()
        };
        let three = good_archive_and(|_| {});
        inspect(&three, &limits).unwrap();
        let four = good_archive_and(|builder| file(builder, "extra.lua", b""));
        assert_eq!(refused(&four, &limits).code(), "bundle_too_many_files");
    }

    #[test]
    fn duplicate_paths_are_refused() {
        let twice = good_archive_and(|builder| file(builder, "lobby.lua", b"return 2"));
        assert_code(&twice, "bundle_duplicate_path");

        let with_and_without_dot = good_archive_and(|builder| file(builder, "./lobby.lua", b""));
        assert_code(&with_and_without_dot, "bundle_duplicate_path");

        let file_and_directory =
            good_archive_and(|builder| file(builder, "lobby.lua/inner.lua", b""));
        let error = assert_code(&file_and_directory, "bundle_duplicate_path");
        assert!(error.to_string().contains("both a file and a directory"));
    }

    #[test]
    fn a_bundle_without_a_root_manifest_is_refused() {
        let none = archive(|builder| {
            file(builder, "lobby.lua", LOBBY);
            file(builder, "logic/match.lua", MATCH);
        });
        assert_code(&none, "manifest_missing");

        let nested = archive(|builder| {
            file(builder, "game/rally.toml", MANIFEST.as_bytes());
            file(builder, "lobby.lua", LOBBY);
        });
        assert_code(&nested, "manifest_missing");
    }

    #[test]
    fn a_manifest_that_is_not_toml_is_refused_with_its_line() {
        let broken = archive(|builder| {
            file(
                builder,
                "rally.toml",
                b"[runtime]\nkind = \"lua\"\nlobby = \n",
            );
            file(builder, "lobby.lua", LOBBY);
        });
        let error = assert_code(&broken, "manifest_invalid");
        assert!(error.to_string().contains("line 3"), "{error}");
        assert!(error.problems().is_empty());

        let unknown_field = archive(|builder| {
            let text = MANIFEST.replace("[runtime]\n", "[runtime]\nentry = \"main.lua\"\n");
            file(builder, "rally.toml", text.as_bytes());
        });
        let error = assert_code(&unknown_field, "manifest_invalid");
        assert!(error.to_string().contains("entry"), "{error}");
        assert!(error.to_string().contains("line 3"), "{error}");

        let not_utf8 = archive(|builder| file(builder, "rally.toml", b"kind = \"\xff\"\n"));
        assert_code(&not_utf8, "manifest_invalid");
    }

    #[test]
    fn manifest_rule_problems_are_all_carried() {
        let invalid = archive(|builder| {
            let text = MANIFEST
                .replace("name = \"blue\"", "name = \"red\"")
                .replace("max_players = 2", "max_players = 1");
            file(builder, "rally.toml", text.as_bytes());
            file(builder, "lobby.lua", LOBBY);
            file(builder, "logic/match.lua", MATCH);
        });
        let error = assert_code(&invalid, "manifest_invalid");
        let found: Vec<(&str, &str)> = error
            .problems()
            .iter()
            .map(|p| (p.code.as_str(), p.field.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("invalid_mode", "modes[0].max_players"),
                ("invalid_group", "modes[0].groups[1].name"),
                ("invalid_mode", "modes[0].groups"),
            ]
        );
        assert!(
            error.to_string().contains("modes[0].groups[1].name"),
            "{error}"
        );
    }

    #[test]
    fn an_entry_file_the_manifest_names_must_be_present() {
        let missing = archive(|builder| {
            file(builder, "rally.toml", MANIFEST.as_bytes());
            file(builder, "lobby.lua", LOBBY);
            // A directory of that name is not a file.
            raw_entry(builder, b"logic/match.lua/", EntryType::Directory, b"");
        });
        let error = assert_code(&missing, "entry_missing");
        assert!(error.to_string().contains("runtime.match"), "{error}");
        assert!(error.to_string().contains("logic/match.lua"), "{error}");
    }

    #[test]
    fn unpack_returns_every_file_as_packed() {
        let directory = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/hello"));
        let archive = pack(directory, &BundleLimits::default()).unwrap();
        let (bundle, files) = unpack(&archive, &BundleLimits::default()).unwrap();
        assert_eq!(files.len(), bundle.files.len());
        for name in ["rally.toml", "lobby.lua", "match.lua"] {
            assert_eq!(
                files[name],
                std::fs::read(directory.join(name)).unwrap(),
                "{name}"
            );
        }
    }
}
