//! Runtime images as files, without a Docker daemon: the layers (tars of the `rally-runtime`
//! program and its libraries, of a version's bundle, or of a program runtime's files), the
//! image configuration and the manifest, all made deterministically, so that the same program
//! and bundle always give the same digest; and the registry API calls that push them
//! (distribution's HTTP API v2: blobs by digest, then the manifest by tag).

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the runtime program sits in a runtime image.
pub const PROGRAM_PATH: &str = "/rally-runtime";
/// Where the bundle sits in a runtime image.
pub const BUNDLE_PATH: &str = "/bundle.tar.gz";
/// Where a program runtime's files sit in its image.
pub const APP_DIR: &str = "/app";
/// The user runtimes run as in their containers (nobody).
pub const RUNTIME_USER: &str = "65534:65534";

pub const MANIFEST_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
const CONFIG_TYPE: &str = "application/vnd.docker.container.image.v1+json";
const LAYER_TYPE: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// `sha256:<hex>` of `bytes`, as registries name content.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

pub fn file_digest(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

/// A tar being made the same way every time: owner root, time zero, files in the order given.
struct Archive(tar::Builder<Vec<u8>>);

impl Archive {
    fn new() -> Archive {
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(tar::HeaderMode::Deterministic);
        Archive(builder)
    }

    fn file(&mut self, path: &str, mode: u32, content: &[u8]) -> std::io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        self.0
            .append_data(&mut header, path.trim_start_matches('/'), content)
    }

    fn directory(&mut self, path: &str) -> std::io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(0);
        header.set_mode(0o755);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Directory);
        header.set_cksum();
        let path = format!("{}/", path.trim_start_matches('/').trim_end_matches('/'));
        self.0.append_data(&mut header, path, std::io::empty())
    }

    fn finish(self) -> std::io::Result<Vec<u8>> {
        self.0.into_inner()
    }
}

/// The runtime program's layer: the program at [`PROGRAM_PATH`], and the shared libraries and
/// loader `ldd` lists for it (none for a static build), at the paths it names.
pub fn program_layer(program: &Path) -> std::io::Result<Vec<u8>> {
    let mut archive = Archive::new();
    archive.file(PROGRAM_PATH, 0o755, &std::fs::read(program)?)?;
    for library in shared_libraries(program) {
        // Libraries are often symbolic links: the file they lead to goes in under the name.
        archive.file(&library.to_string_lossy(), 0o755, &std::fs::read(&library)?)?;
    }
    archive.finish()
}

/// The absolute paths of the shared libraries and loader a program needs, as `ldd` lists them.
fn shared_libraries(program: &Path) -> Vec<PathBuf> {
    let Ok(output) = std::process::Command::new("ldd").arg(program).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            // "libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = match line.split_once("=>") {
                Some((_, target)) => target.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The bundle's layer: the archive at [`BUNDLE_PATH`], readable by the runtime's user.
pub fn bundle_layer(bundle: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut archive = Archive::new();
    archive.file(BUNDLE_PATH, 0o444, bundle)?;
    archive.finish()
}

/// A program runtime's layer: the bundle's files under [`APP_DIR`], with their modes (an
/// executable stays executable), owned by root and not writable by the runtime's user.
pub fn app_layer(bundle: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut files: BTreeMap<String, (u32, Vec<u8>)> = BTreeMap::new();
    let mut entries = tar::Archive::new(flate2::read::GzDecoder::new(bundle));
    for entry in entries.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path()?.to_string_lossy().into_owned();
        let mode = entry.header().mode()? & 0o555;
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut content)?;
        files.insert(path.trim_start_matches("./").to_owned(), (mode, content));
    }
    let mut archive = Archive::new();
    archive.directory(APP_DIR)?;
    let mut directories = std::collections::BTreeSet::new();
    for path in files.keys() {
        let mut parent = Path::new(path).parent();
        while let Some(directory) = parent.filter(|d| !d.as_os_str().is_empty()) {
            directories.insert(directory.to_string_lossy().into_owned());
            parent = directory.parent();
        }
    }
    for directory in &directories {
        archive.directory(&format!("{APP_DIR}/{directory}"))?;
    }
    for (path, (mode, content)) in &files {
        archive.file(&format!("{APP_DIR}/{path}"), *mode, content)?;
    }
    archive.finish()
}

/// The bundle archive at `archive` (`<dir>/<sha256>.tar.gz`) unpacked beside it, once
/// (`<dir>/<sha256>/`), its files' execute bits kept: where a program runtime runs. The
/// archive passed the upload's checks (regular files and directories only, no path leaves
/// it).
pub async fn unpacked(archive: &Path) -> std::io::Result<PathBuf> {
    let directory = archive.with_extension("").with_extension("");
    if tokio::fs::try_exists(&directory).await.unwrap_or(false) {
        return Ok(directory);
    }
    let archive = archive.to_owned();
    tokio::task::spawn_blocking(move || {
        // Unpacked aside, then renamed: a half-unpacked directory is never taken for one.
        let partial = directory.with_extension(format!("partial-{}", crate::storage::new_id()));
        let _ = std::fs::remove_dir_all(&partial);
        let file = std::fs::File::open(&archive)?;
        let mut entries = tar::Archive::new(flate2::read::GzDecoder::new(file));
        entries.set_preserve_permissions(true);
        entries.unpack(&partial)?;
        match std::fs::rename(&partial, &directory) {
            Ok(()) => Ok(directory),
            // Unpacked by another start meanwhile.
            Err(_) if directory.exists() => {
                let _ = std::fs::remove_dir_all(&partial);
                Ok(directory)
            }
            Err(error) => Err(error),
        }
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The layers (uncompressed tars, bottom first) and environment of `image` on a Docker
/// daemon, read from `docker save`'s archive: the base a program runtime's image is made on.
pub async fn saved_layers(
    docker: &bollard::Docker,
    image: &str,
) -> Result<(Vec<Vec<u8>>, Vec<String>), String> {
    use futures_util::StreamExt;
    let mut saved = Vec::new();
    let mut stream = docker.export_image(image);
    while let Some(chunk) = stream.next().await {
        saved.extend_from_slice(&chunk.map_err(|error| format!("cannot export {image}: {error}"))?);
    }
    let image = image.to_owned();
    tokio::task::spawn_blocking(move || {
        let unreadable =
            |error: std::io::Error| format!("cannot read the export of {image}: {error}");
        let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut archive = tar::Archive::new(saved.as_slice());
        for entry in archive.entries().map_err(unreadable)? {
            let mut entry = entry.map_err(unreadable)?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let path = entry
                .path()
                .map_err(unreadable)?
                .to_string_lossy()
                .into_owned();
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut content).map_err(unreadable)?;
            files.insert(path, content);
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Saved {
            config: String,
            layers: Vec<String>,
        }
        let manifest: Vec<Saved> = files
            .get("manifest.json")
            .and_then(|bytes| serde_json::from_slice(bytes).ok())
            .ok_or_else(|| format!("the export of {image} has no manifest.json"))?;
        let saved = manifest
            .into_iter()
            .next()
            .ok_or_else(|| format!("the export of {image} holds no image"))?;
        let config: serde_json::Value = files
            .get(&saved.config)
            .and_then(|bytes| serde_json::from_slice(bytes).ok())
            .unwrap_or_default();
        let env = config["config"]["Env"]
            .as_array()
            .map(|env| {
                env.iter()
                    .filter_map(|value| value.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let layers = saved
            .layers
            .iter()
            .map(|layer| {
                files
                    .remove(layer)
                    .ok_or_else(|| format!("the export of {image} lacks {layer}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((layers, env))
    })
    .await
    .map_err(|error| error.to_string())?
}

/// Content a registry stores by digest.
#[derive(Debug, Clone)]
pub struct Blob {
    pub media_type: &'static str,
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    fn new(media_type: &'static str, bytes: Vec<u8>) -> Blob {
        Blob {
            media_type,
            digest: digest_of(&bytes),
            bytes,
        }
    }
}

/// How a container of the image runs.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    pub entrypoint: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// An image ready to push: its layers, its configuration and its manifest.
#[derive(Debug, Clone)]
pub struct Image {
    pub layers: Vec<Blob>,
    pub config: Blob,
    pub manifest: Blob,
}

#[derive(Serialize)]
struct ImageConfig<'a> {
    architecture: &'static str,
    os: &'static str,
    config: ContainerConfig<'a>,
    rootfs: RootFs,
    history: Vec<BTreeMap<&'static str, String>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig<'a> {
    entrypoint: &'a [String],
    env: &'a [String],
    user: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    working_dir: Option<&'a str>,
    labels: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    schema_version: u32,
    media_type: &'static str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'static str,
    size: usize,
    digest: &'a str,
}

/// A layer ready to push: its compressed blob, the digest of its uncompressed tar (the
/// image configuration's `diff_id`), and what it holds, in words.
#[derive(Debug, Clone)]
pub struct Layer {
    pub what: String,
    pub diff_id: String,
    pub blob: Blob,
}

/// `tar` compressed as a layer: gzip without name or time, so the same tar always gives the
/// same blob.
pub fn layer(what: &str, tar: &[u8]) -> std::io::Result<Layer> {
    let mut gzip = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    gzip.write_all(tar)?;
    Ok(Layer {
        what: what.to_owned(),
        diff_id: digest_of(tar),
        blob: Blob::new(LAYER_TYPE, gzip.finish()?),
    })
}

/// The image of `layers` (bottom first) run as `run` says. Nothing in it depends on when or
/// where it is made: no times.
pub fn assemble(layers: Vec<Layer>, run: &RunConfig) -> std::io::Result<Image> {
    let diff_ids = layers.iter().map(|layer| layer.diff_id.clone()).collect();
    let history = layers
        .iter()
        .map(|layer| BTreeMap::from([("created_by", format!("rally builder: {}", layer.what))]))
        .collect();
    let blobs: Vec<Blob> = layers.into_iter().map(|layer| layer.blob).collect();
    let config = ImageConfig {
        architecture: "amd64",
        os: "linux",
        config: ContainerConfig {
            entrypoint: &run.entrypoint,
            env: &run.env,
            user: RUNTIME_USER,
            working_dir: run.working_dir.as_deref(),
            labels: &run.labels,
        },
        rootfs: RootFs {
            kind: "layers",
            diff_ids,
        },
        history,
    };
    let config = Blob::new(CONFIG_TYPE, serde_json::to_vec(&config)?);
    let manifest = Manifest {
        schema_version: 2,
        media_type: MANIFEST_TYPE,
        config: Descriptor {
            media_type: CONFIG_TYPE,
            size: config.bytes.len(),
            digest: &config.digest,
        },
        layers: blobs
            .iter()
            .map(|blob| Descriptor {
                media_type: blob.media_type,
                size: blob.bytes.len(),
                digest: &blob.digest,
            })
            .collect(),
    };
    let manifest = Blob::new(MANIFEST_TYPE, serde_json::to_vec(&manifest)?);
    Ok(Image {
        layers: blobs,
        config,
        manifest,
    })
}

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("the registry at {0} cannot be reached: {1}")]
    Unreachable(String, reqwest::Error),
    #[error("the registry refused {what}: HTTP {status}: {body}")]
    Refused {
        what: String,
        status: u16,
        body: String,
    },
}

/// Pushes to one repository of a registry with a bearer token that grants push.
pub struct Pusher {
    http: reqwest::Client,
    base: String,
    repository: String,
    token: String,
}

impl Pusher {
    pub fn new(address: &str, repository: &str, token: String) -> Pusher {
        Pusher {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(120))
                .build()
                .expect("an HTTP client"),
            base: format!("http://{address}"),
            repository: repository.to_owned(),
            token,
        }
    }

    async fn send(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, PushError> {
        let answer = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|error| PushError::Unreachable(self.base.clone(), error))?;
        let status = answer.status();
        if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
            return Ok(answer);
        }
        let body = answer.text().await.unwrap_or_default();
        Err(PushError::Refused {
            what: what.to_owned(),
            status: status.as_u16(),
            body: body.chars().take(500).collect(),
        })
    }

    /// Uploads `blob` unless the repository has it already; whether it was sent.
    pub async fn blob(&self, blob: &Blob) -> Result<bool, PushError> {
        let url = format!("{}/v2/{}/blobs/{}", self.base, self.repository, blob.digest);
        let what = format!("blob {}", blob.digest);
        if self
            .send(&what, self.http.head(&url))
            .await?
            .status()
            .is_success()
        {
            return Ok(false);
        }
        let started = self
            .send(
                &what,
                self.http.post(format!(
                    "{}/v2/{}/blobs/uploads/",
                    self.base, self.repository
                )),
            )
            .await?;
        let location = started
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| PushError::Refused {
                what: what.clone(),
                status: started.status().as_u16(),
                body: "no upload location".to_owned(),
            })?;
        let location = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location.to_owned()
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let done = self
            .send(
                &what,
                self.http
                    .put(format!("{location}{separator}digest={}", blob.digest))
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .body(blob.bytes.clone()),
            )
            .await?;
        if done.status() != reqwest::StatusCode::CREATED {
            return Err(PushError::Refused {
                what,
                status: done.status().as_u16(),
                body: done.text().await.unwrap_or_default(),
            });
        }
        Ok(true)
    }

    /// Puts the manifest under `tag`; the digest the registry gives it.
    pub async fn manifest(&self, tag: &str, manifest: &Blob) -> Result<String, PushError> {
        let what = format!("manifest {}:{tag}", self.repository);
        let answer = self
            .send(
                &what,
                self.http
                    .put(format!(
                        "{}/v2/{}/manifests/{tag}",
                        self.base, self.repository
                    ))
                    .header(reqwest::header::CONTENT_TYPE, manifest.media_type)
                    .body(manifest.bytes.clone()),
            )
            .await?;
        if answer.status() != reqwest::StatusCode::CREATED {
            return Err(PushError::Refused {
                what,
                status: answer.status().as_u16(),
                body: answer.text().await.unwrap_or_default(),
            });
        }
        Ok(answer
            .headers()
            .get("docker-content-digest")
            .and_then(|value| value.to_str().ok())
            .map_or_else(|| manifest.digest.clone(), str::to_owned))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> Vec<u8> {
        let mut archive = tar::Builder::new(Vec::new());
        for (path, mode, content) in [
            ("rally.toml", 0o644, "x"),
            ("bin/server", 0o755, "#!/bin/sh\n"),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(mode);
            header.set_mtime(1_700_000_000);
            header.set_cksum();
            archive
                .append_data(&mut header, path, content.as_bytes())
                .unwrap();
        }
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(&archive.into_inner().unwrap()).unwrap();
        gzip.finish().unwrap()
    }

    #[test]
    fn the_same_input_gives_the_same_digest_and_another_input_another() {
        let run = RunConfig {
            entrypoint: vec!["/app/bin/server".to_owned()],
            ..Default::default()
        };
        let app = || vec![layer("app", &app_layer(&bundle()).unwrap()).unwrap()];
        let one = assemble(app(), &run).unwrap();
        let two = assemble(app(), &run).unwrap();
        assert_eq!(one.manifest.digest, two.manifest.digest);
        let other = RunConfig {
            entrypoint: vec!["/app/rally.toml".to_owned()],
            ..Default::default()
        };
        let three = assemble(app(), &other).unwrap();
        assert_ne!(one.manifest.digest, three.manifest.digest);
    }

    #[test]
    fn program_files_keep_their_execute_bit_and_lose_write() {
        let layer = app_layer(&bundle()).unwrap();
        let mut archive = tar::Archive::new(layer.as_slice());
        let modes: BTreeMap<String, u32> = archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                (
                    entry.path().unwrap().to_string_lossy().into_owned(),
                    entry.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(modes["app/bin/server"], 0o555);
        assert_eq!(modes["app/rally.toml"], 0o444);
        assert!(modes.contains_key("app/bin/"), "{modes:?}");
    }
}
