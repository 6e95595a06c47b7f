//! `rally deploy DIR`: the one command a developer runs to ship. It packs the directory, checks
//! it locally exactly as the platform will (a broken bundle fails here, before any upload),
//! uploads it as the project's next version and makes that version the stage's deployment.

use super::args::{IdempotencyArgs, StageArgs};
use super::deployments::ConfigArgs;
use super::progress::Step;
use super::session::{connect, TargetArgs};
use super::table::print_fields;
use super::versions::{follow_build, pack_and_check, upload};
use super::{print_json, CliError};
use clap::Args;
use rally_sdk::runtime::Qualifier;
use rally_sdk::wire::Deployment;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The bundle directory, holding rally.toml and the logic files.
    directory: PathBuf,
    #[command(flatten)]
    stage: StageArgs,
    /// What changed, kept with the new version (at most 500 characters).
    #[arg(long)]
    note: Option<String>,
    #[command(flatten)]
    config: ConfigArgs,
    /// Upload the bundle as a new version even when it is the version the stage runs already.
    #[arg(long)]
    force: bool,
    /// Return once the deployment is made, without waiting for its first lobby to run.
    #[arg(long)]
    no_wait: bool,
    // One key covers both requests: each gets a key derived from it, so that a retried deploy
    // makes neither the version nor the deployment twice.
    #[command(flatten)]
    idempotency: IdempotencyArgs,
    #[command(flatten)]
    target: TargetArgs,
}

pub async fn run(args: DeployArgs) -> Result<(), CliError> {
    // Everything that can be refused without the platform is refused before anything is sent.
    let overrides = args.config.overrides()?;
    let checked = pack_and_check(&args.directory).await?;
    let client = connect(&args.target).await?;
    // A mistyped tenant, project or stage, or a missing grant, is found before the upload
    // rather than after it, when a version would already exist.
    let stage = client
        .get_stage(args.stage.tenant(), args.stage.project(), &args.stage.stage)
        .await?;
    // The same bytes as the version the stage runs: nothing to upload. Without --config there
    // is nothing to do either; with it, that version is deployed again with the new settings.
    let running = match (&stage.current_deployment_id, args.force) {
        (Some(current), false) => Some(running_version(&client, &args.stage, current).await?),
        _ => None,
    };
    let sha256 = checked.bundle.sha256.clone();
    let version = match running.filter(|version| version.bundle_sha256 == sha256) {
        Some(version) if overrides.is_null() => {
            if args.target.output.json {
                print_json(&serde_json::json!({
                    "tenant": args.stage.tenant(),
                    "project": args.stage.project(),
                    "stage": args.stage.stage,
                    "unchanged": true,
                    "version": version,
                    "deployment": stage.current_deployment_id,
                }))?;
            } else {
                println!(
                    "unchanged: {} already runs version {} of this bundle (sha256 {}); nothing \
                     was uploaded or deployed (--force makes a new version anyway)",
                    args.stage.path(),
                    version.number,
                    &sha256[..12]
                );
            }
            return Ok(());
        }
        Some(version) => {
            eprintln!(
                "rally: the bundle is version {} already; deploying it again with the new settings",
                version.number
            );
            version
        }
        None => {
            upload(
                &args.idempotency.apply_to_step(&client, "upload"),
                &args.stage.project,
                checked,
                args.note.as_deref(),
            )
            .await?
        }
    };

    // A stage on a Docker pool gets the version's image built on upload: wait for it.
    let builds = client
        .list_builds(args.stage.tenant(), args.stage.project(), &version.id)
        .await?;
    if let Some(build) = builds.into_iter().find(|build| !build.status.is_finished()) {
        if let Err(error) = follow_build(&client, &args.stage.project, build).await {
            eprintln!(
                "rally: version {} was uploaded to {} but not deployed: its image did not build",
                version.number,
                args.stage.project.path(),
            );
            return Err(error);
        }
    }

    let step = Step::start(format!(
        "deploying version {} to {}",
        version.number,
        args.stage.path()
    ));
    let deployment = match args
        .idempotency
        .apply_to_step(&client, "deploy")
        .deploy(
            args.stage.tenant(),
            args.stage.project(),
            &args.stage.stage,
            &version.id,
            overrides,
        )
        .await
    {
        Ok(deployment) => deployment,
        Err(error) => {
            drop(step);
            // The version exists now; say so, so that nobody uploads it again to retry.
            eprintln!(
                "rally: version {} was uploaded to {} but not deployed; once the cause is fixed, \
                 deploy it with `rally deployment create --version {} --tenant {} --project {} \
                 --stage {}`",
                version.number,
                args.stage.project.path(),
                version.number,
                args.stage.tenant(),
                args.stage.project(),
                args.stage.stage
            );
            return Err(error.into());
        }
    };
    step.finish(format!(
        "deployed version {} to {}",
        version.number,
        args.stage.path()
    ));
    if !args.no_wait {
        lobby_ready(&client, &args.stage, &deployment).await?;
    }

    if args.target.output.json {
        print_json(&serde_json::json!({
            "tenant": args.stage.tenant(),
            "project": args.stage.project(),
            "stage": args.stage.stage,
            "version": version,
            "deployment": deployment,
        }))?;
    } else {
        print_fields(&[
            ("tenant", args.stage.tenant().to_owned()),
            ("project", args.stage.project().to_owned()),
            ("stage", args.stage.stage.clone()),
            ("version", version.number.to_string()),
            ("sha256", version.bundle_sha256.clone()),
            ("deployment", deployment.id.clone()),
            ("status", deployment.status.as_str().to_owned()),
        ]);
    }
    Ok(())
}

/// How long `rally deploy` waits for the new deployment's first lobby.
const LOBBY_WAIT: Duration = Duration::from_secs(60);

/// Waits until a lobby of `deployment` runs: the deployment then takes players. A lobby that
/// fails, or none within [`LOBBY_WAIT`], is an error (the deployment stays made).
async fn lobby_ready(
    client: &rally_sdk::RallyClient,
    stage: &StageArgs,
    deployment: &Deployment,
) -> Result<(), CliError> {
    if deployment.config.min_lobbies == 0 {
        eprintln!("no lobby starts before the first player (min_lobbies = 0)");
        return Ok(());
    }
    let step = Step::start(format!(
        "starting a lobby of version {}",
        deployment.version_number
    ));
    let started = Instant::now();
    let logs_hint = |runtime: &str| {
        format!(
            "`rally runtime logs {runtime} --tenant {} --project {} --stage {}` shows its log",
            stage.tenant(),
            stage.project(),
            stage.stage
        )
    };
    loop {
        let runtimes = client
            .list_runtimes(
                stage.tenant(),
                stage.project(),
                &stage.stage,
                &deployment.id,
            )
            .await?;
        let mut lobbies = runtimes
            .iter()
            .filter(|runtime| runtime.qualifier == Qualifier::Lobby);
        if let Some(lobby) = lobbies.clone().find(|runtime| runtime.status == "running") {
            step.finish(format!(
                "lobby ready in {:.1}s (runtime {})",
                started.elapsed().as_secs_f64(),
                lobby.id
            ));
            return Ok(());
        }
        if let Some(failed) = lobbies.find(|runtime| runtime.status == "failed") {
            drop(step);
            return Err(CliError::Other(anyhow::anyhow!(
                "version {} is deployed to {}, but its lobby failed: {}; {}",
                deployment.version_number,
                stage.path(),
                failed.failure.as_deref().unwrap_or("no reason given"),
                logs_hint(&failed.id)
            )));
        }
        if started.elapsed() > LOBBY_WAIT {
            drop(step);
            let hint = runtimes
                .first()
                .map(|runtime| logs_hint(&runtime.id))
                .unwrap_or_else(|| "`rally runtime list` shows its runtimes".to_owned());
            return Err(CliError::Other(anyhow::anyhow!(
                "version {} is deployed to {}, but no lobby of it runs after {}s; {hint}",
                deployment.version_number,
                stage.path(),
                LOBBY_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The version the stage's deployment `deployment` runs.
async fn running_version(
    client: &rally_sdk::RallyClient,
    stage: &StageArgs,
    deployment: &str,
) -> Result<rally_sdk::wire::Version, CliError> {
    let deployment = client
        .get_deployment(stage.tenant(), stage.project(), &stage.stage, deployment)
        .await?;
    Ok(client
        .get_version(
            stage.tenant(),
            stage.project(),
            &deployment.version_number.to_string(),
        )
        .await?)
}
