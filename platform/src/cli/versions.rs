//! `rally version upload|list|show|delete --tenant T --project P`, and the packing, local
//! checking and uploading of a bundle directory that `rally deploy` shares.

use super::args::{IdempotencyArgs, ProjectArgs};
use super::progress::Step;
use super::session::{connect, TargetArgs};
use super::table::{or_dash, print_fields, time, Table};
use super::{print_json, CliError};
use anyhow::Context;
use clap::Subcommand;
use indicatif::HumanBytes;
use rally_sdk::bundle::{inspect, pack, Bundle, BundleError, BundleLimits};
use rally_sdk::runtime::check;
use rally_sdk::wire::{Build, BuildStatus, Version, VersionList};
use rally_sdk::RallyClient;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub enum VersionCommand {
    /// Pack a directory (its rally.toml and logic files), check it and upload it as the
    /// project's next version, without deploying it.
    Upload {
        /// The bundle directory, holding rally.toml.
        directory: PathBuf,
        /// What changed, kept with the version (at most 500 characters).
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        project: ProjectArgs,
        #[command(flatten)]
        idempotency: IdempotencyArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// List the versions of a project, newest first.
    List {
        #[command(flatten)]
        project: ProjectArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Show one version and its manifest.
    Show {
        /// Version number or id.
        version: String,
        #[command(flatten)]
        project: ProjectArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Build the version's runtime image and push it to the studio's registry, showing the
    /// builder's log as it goes; exits non-zero when the build fails.
    Build {
        /// Version number or id.
        version: String,
        /// Start the build and return at once.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        project: ProjectArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Delete a version; refused while a deployment of it is live.
    Delete {
        /// Version number or id.
        version: String,
        #[command(flatten)]
        project: ProjectArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
}

pub async fn run(command: VersionCommand) -> Result<(), CliError> {
    match command {
        VersionCommand::Upload {
            directory,
            note,
            project,
            idempotency,
            target,
        } => {
            // Checked before signing in: a broken bundle is reported even offline.
            let checked = pack_and_check(&directory).await?;
            let client = idempotency.apply(&connect(&target).await?);
            let version = upload(&client, &project, checked, note.as_deref()).await?;
            if target.output.json {
                print_json(&version)?;
            } else {
                print_version(&version);
            }
        }
        VersionCommand::Build {
            version,
            no_wait,
            project,
            target,
        } => {
            let client = connect(&target).await?;
            let build = client
                .start_build(&project.tenant, &project.project, &version)
                .await?;
            let build = if no_wait {
                build
            } else {
                follow_build(&client, &project, build).await?
            };
            if target.output.json {
                print_json(&build)?;
            } else {
                print_fields(&[
                    ("build", build.id.clone()),
                    ("version", build.version.to_string()),
                    ("status", build.status.as_str().to_owned()),
                    ("image", or_dash(build.reference.as_deref())),
                ]);
            }
        }
        VersionCommand::List { project, target } => {
            let versions = connect(&target)
                .await?
                .list_versions(&project.tenant, &project.project)
                .await?;
            if target.output.json {
                print_json(&VersionList { versions })?;
            } else {
                let mut table = Table::new(&["VERSION", "SIZE", "SHA256", "CREATED", "NOTE"]);
                for version in &versions {
                    table.row(vec![
                        version.number.to_string(),
                        HumanBytes(version.bundle_size.max(0) as u64).to_string(),
                        short_sha256(&version.bundle_sha256),
                        time(version.created_at),
                        or_dash(version.note.as_deref()),
                    ]);
                }
                table.print_or("no versions yet; upload one with `rally deploy DIR` or `rally version upload DIR`");
            }
        }
        VersionCommand::Show {
            version,
            project,
            target,
        } => {
            let version = connect(&target)
                .await?
                .get_version(&project.tenant, &project.project, &version)
                .await?;
            if target.output.json {
                print_json(&version)?;
            } else {
                print_version(&version);
                println!(
                    "\nmanifest:\n{}",
                    serde_json::to_string_pretty(&version.manifest).map_err(anyhow::Error::from)?
                );
            }
        }
        VersionCommand::Delete {
            version,
            project,
            target,
        } => {
            connect(&target)
                .await?
                .delete_version(&project.tenant, &project.project, &version)
                .await?;
            if target.output.json {
                print_json(&serde_json::json!({
                    "deleted": true, "tenant": project.tenant, "project": project.project,
                    "version": version,
                }))?;
            } else {
                println!("deleted version {version} of {}", project.path());
            }
        }
    }
    Ok(())
}

/// A bundle directory packed and found valid by the same checks the platform runs.
#[derive(Debug)]
pub struct CheckedBundle {
    pub archive: Vec<u8>,
    pub bundle: Bundle,
}

/// Packs `directory` and checks the archive as the platform will, so that a broken bundle is
/// refused before a possibly long upload. The limits are the platform's defaults; a platform
/// configured tighter still refuses after the upload.
pub async fn pack_and_check(directory: &Path) -> Result<CheckedBundle, CliError> {
    let step = Step::start(format!("packing {}", directory.display()));
    let source = directory.to_owned();
    // Reading files and compressing are blocking work.
    let packed = tokio::task::spawn_blocking(move || {
        let limits = BundleLimits::default();
        let archive = pack(&source, &limits)?;
        let bundle = inspect(&archive, &limits)?;
        Ok::<_, BundleError>(CheckedBundle { archive, bundle })
    })
    .await
    .context("packing the bundle failed")?;
    let checked = match packed {
        Ok(checked) => checked,
        // Broken rules in rally.toml: the scripts are checked too, so that one run reports
        // everything there is to fix.
        Err(BundleError::ManifestProblems(problems)) => {
            drop(step);
            let logic = logic_problems(directory).await;
            return Err(if logic.is_empty() {
                CliError::Bundle(BundleError::ManifestProblems(problems))
            } else {
                CliError::BundleAndLogic {
                    problems: problems
                        .iter()
                        .map(ToString::to_string)
                        .chain(logic)
                        .collect(),
                }
            });
        }
        Err(error) => return Err(CliError::Bundle(error)),
    };
    // A program runtime's logic is its program's: `rally-runtime check` cannot load it.
    if checked.bundle.manifest.runtime.kind != rally_sdk::manifest::RuntimeKind::Program {
        let problems = logic_problems(directory).await;
        if !problems.is_empty() {
            return Err(CliError::Logic(format!(
                "{}; nothing was uploaded",
                problems.join("\n")
            )));
        }
    }
    step.finish(format!(
        "packed and checked {} files from {} into {} (sha256 {})",
        checked.bundle.files.len(),
        directory.display(),
        HumanBytes(checked.bundle.archive_bytes),
        short_sha256(&checked.bundle.sha256)
    ));
    Ok(checked)
}

/// Loads the bundle's logic with `rally-runtime check` when that binary is at hand (next to
/// `rally`, or on `PATH`), so that a Lua syntax error is reported with file and line before the
/// upload rather than when the first runtime starts: what does not load, one line each. Without
/// the binary the platform's own checks still run. The manifest's broken rules, which the check
/// also reports, are left out: the CLI has them already.
async fn logic_problems(directory: &Path) -> Vec<String> {
    let binary = crate::pools::process::default_runtime_binary();
    let output = match tokio::process::Command::new(&binary)
        .arg("check")
        .arg(directory)
        .output()
        .await
    {
        Ok(output) if !output.status.success() => output,
        _ => return Vec::new(),
    };
    let report = String::from_utf8_lossy(&output.stderr);
    check::problems(&report)
        .filter(|problem| !problem.starts_with(check::MANIFEST))
        .map(str::to_owned)
        .collect()
}

/// Uploads a checked bundle as the project's next version.
pub async fn upload(
    client: &RallyClient,
    project: &ProjectArgs,
    checked: CheckedBundle,
    note: Option<&str>,
) -> Result<Version, CliError> {
    let size = HumanBytes(checked.bundle.archive_bytes);
    let (body, bar) = crate::cli::progress::upload_body(
        checked.archive,
        format!("uploading to {}", project.path()),
    );
    let uploaded = client
        .upload_version(&project.tenant, &project.project, body, note)
        .await;
    bar.finish_and_clear();
    let version = uploaded?;
    eprintln!("uploaded {size} as version {}", version.number);
    Ok(version)
}

/// Enough of a SHA-256 to tell bundles apart at a glance; `show` and `--json` give all of it.
/// Shows a build's log on stderr as it grows until the build ends; an error when it failed.
pub async fn follow_build(
    client: &RallyClient,
    project: &ProjectArgs,
    mut build: Build,
) -> Result<Build, CliError> {
    let mut shown = 0;
    eprintln!(
        "building the image of version {} ({})",
        build.version, build.id
    );
    loop {
        // The log keeps its last 64 KiB: a log that was cut is shown from its new start.
        if build.log.len() < shown || !build.log.is_char_boundary(shown) {
            shown = 0;
        }
        for line in build.log[shown..].lines() {
            eprintln!("  {line}");
        }
        shown = build.log.len();
        if build.status.is_finished() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        build = client
            .get_build(&project.tenant, &project.project, &build.id)
            .await?;
    }
    match build.status {
        BuildStatus::Failed => Err(CliError::Other(anyhow::anyhow!(
            "the build of version {} failed: {}",
            build.version,
            build.error.as_deref().unwrap_or("no reason given")
        ))),
        _ => Ok(build),
    }
}

fn short_sha256(sha256: &str) -> String {
    sha256.chars().take(12).collect()
}

fn print_version(version: &Version) {
    let runtime = &version.manifest["runtime"];
    let modes: Vec<&str> = version.manifest["modes"]
        .as_array()
        .map(|modes| {
            modes
                .iter()
                .filter_map(|mode| mode["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    print_fields(&[
        ("version", version.number.to_string()),
        ("id", version.id.clone()),
        ("project", version.project_id.clone()),
        ("sha256", version.bundle_sha256.clone()),
        (
            "size",
            HumanBytes(version.bundle_size.max(0) as u64).to_string(),
        ),
        (
            "runtime",
            runtime["kind"].as_str().unwrap_or("-").to_owned(),
        ),
        ("modes", modes.join(", ")),
        ("note", or_dash(version.note.as_deref())),
        ("created by", version.created_by.clone()),
        ("created", time(version.created_at)),
        (
            "image",
            version.image.as_ref().map_or_else(
                || "- (Docker pools make one from the bundle)".to_owned(),
                |image| {
                    format!(
                        "{} ({} by {})",
                        image.reference,
                        image.source,
                        or_dash(image.pushed_by.as_deref())
                    )
                },
            ),
        ),
    ]);
}
