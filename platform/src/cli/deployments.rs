//! `rally deployment create|list|show|stop --tenant T --project P [--stage S]`, and the
//! `--config KEY=VALUE` settings that override a version's deployment defaults.

use super::args::{IdempotencyArgs, StageArgs};
use super::session::{connect, TargetArgs};
use super::table::{print_fields, time, Table};
use super::{print_json, CliError};
use clap::Subcommand;
use rally_sdk::wire::{Deployment, DeploymentList};
use serde_json::{Map, Value};

#[derive(Debug, Subcommand)]
pub enum DeploymentCommand {
    /// Deploy an uploaded version to the stage; the stage's previous deployment drains.
    Create {
        /// Version number or id.
        #[arg(long)]
        version: String,
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        stage: StageArgs,
        #[command(flatten)]
        idempotency: IdempotencyArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// List the deployments of the stage, newest first.
    List {
        #[command(flatten)]
        stage: StageArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Show one deployment and its effective config.
    Show {
        /// Deployment id.
        deployment: String,
        #[command(flatten)]
        stage: StageArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Stop a deployment: it drains (running matches finish) and then closes; the stage has no
    /// current deployment until the next one.
    Stop {
        /// Deployment id.
        deployment: String,
        #[command(flatten)]
        stage: StageArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
}

#[derive(Debug, clap::Args, Clone)]
pub struct ConfigArgs {
    /// Overrides one deployment setting of the version's rally.toml, e.g. `min_lobbies=2` or
    /// `warm_matches.duel=1`; repeat for several. Numbers and true/false are sent as such.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_setting)]
    pub settings: Vec<Setting>,
}

/// One `--config KEY=VALUE`: the dotted key split into its parts.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    key: Vec<String>,
    value: Value,
}

fn parse_setting(text: &str) -> Result<Setting, String> {
    let Some((key, raw)) = text.split_once('=') else {
        return Err(format!(
            "{text:?} is not KEY=VALUE (e.g. min_lobbies=2 or warm_matches.duel=1)"
        ));
    };
    let key: Vec<String> = key.trim().split('.').map(str::to_owned).collect();
    if key.iter().any(String::is_empty) {
        return Err(format!(
            "{text:?} has an empty key part; keys are names joined by dots"
        ));
    }
    let value = match serde_json::from_str::<Value>(raw.trim()) {
        Ok(value @ (Value::Number(_) | Value::Bool(_))) => value,
        _ => Value::String(raw.to_owned()),
    };
    Ok(Setting { key, value })
}

impl ConfigArgs {
    /// The overrides object the platform expects, or `null` when nothing is overridden.
    pub fn overrides(&self) -> Result<Value, CliError> {
        if self.settings.is_empty() {
            return Ok(Value::Null);
        }
        let mut root = Map::new();
        for setting in &self.settings {
            let conflict = || {
                CliError::Usage(format!(
                    "--config {} is given twice or clashes with another --config",
                    setting.key.join(".")
                ))
            };
            let (leaf, parents) = setting.key.split_last().expect("keys are never empty");
            let mut object = &mut root;
            for parent in parents {
                object = match object
                    .entry(parent.clone())
                    .or_insert_with(|| Value::Object(Map::new()))
                {
                    Value::Object(child) => child,
                    _ => return Err(conflict()),
                };
            }
            if object.insert(leaf.clone(), setting.value.clone()).is_some() {
                return Err(conflict());
            }
        }
        Ok(Value::Object(root))
    }
}

pub async fn run(command: DeploymentCommand) -> Result<(), CliError> {
    match command {
        DeploymentCommand::Create {
            version,
            config,
            stage,
            idempotency,
            target,
        } => {
            let overrides = config.overrides()?;
            let client = idempotency.apply(&connect(&target).await?);
            let deployment = client
                .deploy(
                    stage.tenant(),
                    stage.project(),
                    &stage.stage,
                    &version,
                    overrides,
                )
                .await?;
            if target.output.json {
                print_json(&deployment)?;
            } else {
                print_deployment(&deployment);
            }
        }
        DeploymentCommand::List { stage, target } => {
            let deployments = connect(&target)
                .await?
                .list_deployments(stage.tenant(), stage.project(), &stage.stage)
                .await?;
            if target.output.json {
                print_json(&DeploymentList { deployments })?;
            } else {
                let mut table = Table::new(&["ID", "VERSION", "STATUS", "CREATED"]);
                for deployment in &deployments {
                    table.row(vec![
                        deployment.id.clone(),
                        deployment.version_number.to_string(),
                        deployment.status.as_str().to_owned(),
                        time(deployment.created_at),
                    ]);
                }
                table.print_or(&format!(
                    "nothing deployed to {} yet; deploy with `rally deploy DIR`",
                    stage.path()
                ));
            }
        }
        DeploymentCommand::Show {
            deployment,
            stage,
            target,
        } => {
            let deployment = connect(&target)
                .await?
                .get_deployment(stage.tenant(), stage.project(), &stage.stage, &deployment)
                .await?;
            if target.output.json {
                print_json(&deployment)?;
            } else {
                print_deployment(&deployment);
            }
        }
        DeploymentCommand::Stop {
            deployment,
            stage,
            target,
        } => {
            let deployment = connect(&target)
                .await?
                .stop_deployment(stage.tenant(), stage.project(), &stage.stage, &deployment)
                .await?;
            if target.output.json {
                print_json(&deployment)?;
            } else {
                print_deployment(&deployment);
            }
        }
    }
    Ok(())
}

pub fn print_deployment(deployment: &Deployment) {
    let mut fields = vec![
        ("id", deployment.id.clone()),
        ("stage", deployment.stage_id.clone()),
        ("version", deployment.version_number.to_string()),
        ("status", deployment.status.as_str().to_owned()),
        (
            "config",
            serde_json::to_string(&deployment.config).expect("a config serialises"),
        ),
        ("created by", deployment.created_by.clone()),
        ("created", time(deployment.created_at)),
    ];
    if let Some(at) = deployment.draining_at {
        fields.push(("draining since", time(at)));
    }
    if let Some(at) = deployment.closed_at {
        fields.push(("closed", time(at)));
    }
    print_fields(&fields);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overrides(settings: &[&str]) -> Result<Value, CliError> {
        ConfigArgs {
            settings: settings
                .iter()
                .map(|text| parse_setting(text).unwrap())
                .collect(),
        }
        .overrides()
    }

    #[test]
    fn dotted_keys_nest_and_numbers_stay_numbers() {
        let value =
            overrides(&["min_lobbies=2", "warm_matches.duel=1", "warm_matches.ffa=0"]).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"min_lobbies": 2, "warm_matches": {"duel": 1, "ffa": 0}})
        );
    }

    #[test]
    fn no_settings_send_null() {
        assert_eq!(overrides(&[]).unwrap(), Value::Null);
    }

    #[test]
    fn text_stays_text() {
        assert_eq!(
            overrides(&["region=eu-west", "flag=true"]).unwrap(),
            serde_json::json!({"region": "eu-west", "flag": true})
        );
    }

    #[test]
    fn clashing_settings_are_refused() {
        assert!(matches!(
            overrides(&["min_lobbies=1", "min_lobbies=2"]),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(
            overrides(&["warm_matches=1", "warm_matches.duel=1"]),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn malformed_settings_are_refused() {
        assert!(parse_setting("min_lobbies").is_err());
        assert!(parse_setting("warm_matches..duel=1").is_err());
        assert!(parse_setting("=1").is_err());
    }
}
