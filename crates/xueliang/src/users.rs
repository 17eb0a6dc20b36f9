//! `xueliang user add|passwd|disable|enable|list`: console users, managed on the node itself.
//!
//! Passwords come from standard input (one line) or, for scripts, from the environment
//! variable `XUELIANG_USER_PASSWORD`; never from the command line, where `ps` would show them.
//! Every change is written to the audit log with actor `cli`.

use std::io::BufRead;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use xueliang_core::config::{Config, Role};
use xueliang_core::{Clock, EntityId, Error, ErrorKind, SystemClock};
use xueliang_store::{ActorKind, AuditEntry, Store, UserRecord, UserUpdate};

/// The environment variable a script sets instead of typing the password.
pub const PASSWORD_ENV: &str = "XUELIANG_USER_PASSWORD";
/// Shortest password accepted.
const MIN_PASSWORD: usize = 10;

#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(subcommand)]
    pub action: UserAction,
}

#[derive(Debug, Args)]
pub struct Who {
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    #[arg(long, value_name = "NAME")]
    pub username: String,
}

#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Add a user; the password is read from stdin or XUELIANG_USER_PASSWORD.
    Add {
        #[command(flatten)]
        who: Who,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Camera ids the user may see, comma-separated; `*` (default) for all.
        #[arg(long, value_delimiter = ',', default_value = "*")]
        cameras: Vec<String>,
        /// Device ids the user may see, comma-separated; `*` (default) for all.
        #[arg(long, value_delimiter = ',', default_value = "*")]
        devices: Vec<String>,
    },
    /// Change a user's role or scopes.
    Set {
        #[command(flatten)]
        who: Who,
        #[arg(long, value_parser = parse_role)]
        role: Option<Role>,
        #[arg(long, value_delimiter = ',')]
        cameras: Option<Vec<String>>,
        #[arg(long, value_delimiter = ',')]
        devices: Option<Vec<String>>,
    },
    /// Set a new password (from stdin or XUELIANG_USER_PASSWORD); ends the user's sessions.
    Passwd {
        #[command(flatten)]
        who: Who,
    },
    /// Disable a user and end the user's sessions.
    Disable {
        #[command(flatten)]
        who: Who,
    },
    /// Enable a disabled user again.
    Enable {
        #[command(flatten)]
        who: Who,
    },
    /// List users.
    List {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "admin" => Ok(Role::Admin),
        "operator" => Ok(Role::Operator),
        "duty" => Ok(Role::Duty),
        "viewer" => Ok(Role::Viewer),
        other => Err(format!(
            "{other:?} is not a role; use admin, operator, duty or viewer"
        )),
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidArgument, msg)
}

fn check_username(name: &str) -> Result<(), Error> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "username {name:?}: use 1 to 64 letters, digits, '.', '_' or '-'"
        )))
    }
}

fn check_scope(list: &[String], known: &[&str], what: &str) -> Result<(), Error> {
    if list.is_empty() {
        return Err(invalid(format!("--{what}s: give at least one id, or *")));
    }
    for id in list {
        if id != "*" && !known.contains(&id.as_str()) {
            return Err(invalid(format!(
                "--{what}s: no {what} {id:?} in the configuration"
            )));
        }
    }
    Ok(())
}

fn check_scopes(cfg: &Config, cameras: &[String], devices: &[String]) -> Result<(), Error> {
    let cams: Vec<&str> = cfg.cameras.iter().map(|c| c.id.as_str()).collect();
    let devs: Vec<&str> = cfg.devices.iter().map(|d| d.id.as_str()).collect();
    check_scope(cameras, &cams, "camera")?;
    check_scope(devices, &devs, "device")
}

/// The new password: the environment variable if set, else one line of standard input.
fn read_password() -> Result<String, Error> {
    let pw = match std::env::var(PASSWORD_ENV) {
        Ok(v) => v,
        Err(_) => {
            eprintln!("password (one line on standard input, or set {PASSWORD_ENV}):");
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| Error::with_source(ErrorKind::InvalidArgument, "read password", e))?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if pw.chars().count() < MIN_PASSWORD {
        return Err(invalid(format!(
            "the password must be at least {MIN_PASSWORD} characters"
        )));
    }
    Ok(pw)
}

async fn audit(
    store: &dyn Store,
    cfg: &Config,
    action: &str,
    username: &str,
    detail: serde_json::Value,
) -> Result<(), Error> {
    let now = SystemClock.now();
    store
        .append_audit(&AuditEntry {
            id: EntityId::new_at(now),
            node_id: cfg.node.id.clone(),
            at: now,
            actor: "cli".into(),
            actor_kind: ActorKind::System,
            action: action.into(),
            target: Some(format!("user:{username}")),
            detail: detail.to_string(),
            remote_addr: None,
        })
        .await
}

/// Runs one `xueliang user` command against the configured database.
#[allow(clippy::print_stdout)]
pub async fn main(cfg: &Config, action: UserAction) -> Result<(), Error> {
    let store = crate::run::open_store(cfg).await?;
    let r = run(cfg, store.as_ref(), action).await;
    store.close().await;
    r
}

#[allow(clippy::print_stdout)]
async fn run(cfg: &Config, store: &dyn Store, action: UserAction) -> Result<(), Error> {
    let now = SystemClock.now();
    match action {
        UserAction::Add {
            who,
            role,
            cameras,
            devices,
        } => {
            check_username(&who.username)?;
            check_scopes(cfg, &cameras, &devices)?;
            if store.get_user_by_name(&who.username).await?.is_some() {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("user {:?} already exists", who.username),
                ));
            }
            let hash = xueliang_api::hash_password_blocking(read_password()?).await?;
            store
                .create_user(&UserRecord {
                    id: EntityId::new_at(now),
                    username: who.username.clone(),
                    password_hash: hash,
                    role,
                    cameras: cameras.clone(),
                    devices: devices.clone(),
                    disabled: false,
                    created_at: now,
                    updated_at: now,
                })
                .await?;
            audit(
                store,
                cfg,
                "user.add",
                &who.username,
                serde_json::json!({ "role": role, "cameras": cameras, "devices": devices }),
            )
            .await?;
            eprintln!("user {} added as {}", who.username, role.as_str());
        }
        UserAction::Set {
            who,
            role,
            cameras,
            devices,
        } => {
            let current = store
                .get_user_by_name(&who.username)
                .await?
                .ok_or_else(|| {
                    Error::new(ErrorKind::NotFound, format!("no user {:?}", who.username))
                })?;
            check_scopes(
                cfg,
                cameras.as_deref().unwrap_or(&current.cameras),
                devices.as_deref().unwrap_or(&current.devices),
            )?;
            let u = store
                .update_user(
                    &who.username,
                    &UserUpdate {
                        role,
                        cameras,
                        devices,
                    },
                    now,
                )
                .await?;
            audit(
                store,
                cfg,
                "user.set",
                &who.username,
                serde_json::json!({ "role": u.role, "cameras": u.cameras, "devices": u.devices }),
            )
            .await?;
            eprintln!("user {} updated", who.username);
        }
        UserAction::Passwd { who } => {
            if store.get_user_by_name(&who.username).await?.is_none() {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("no user {:?}", who.username),
                ));
            }
            let hash = xueliang_api::hash_password_blocking(read_password()?).await?;
            store
                .update_user_password(&who.username, &hash, now)
                .await?;
            audit(
                store,
                cfg,
                "user.passwd",
                &who.username,
                serde_json::json!({}),
            )
            .await?;
            eprintln!("password of {} changed; its sessions ended", who.username);
        }
        UserAction::Disable { who } => {
            store.set_user_disabled(&who.username, true, now).await?;
            audit(
                store,
                cfg,
                "user.disable",
                &who.username,
                serde_json::json!({}),
            )
            .await?;
            eprintln!("user {} disabled; its sessions ended", who.username);
        }
        UserAction::Enable { who } => {
            store.set_user_disabled(&who.username, false, now).await?;
            audit(
                store,
                cfg,
                "user.enable",
                &who.username,
                serde_json::json!({}),
            )
            .await?;
            eprintln!("user {} enabled", who.username);
        }
        UserAction::List { .. } => {
            let users = store.list_users().await?;
            audit(
                store,
                cfg,
                "user.list",
                "*",
                serde_json::json!({ "count": users.len() }),
            )
            .await?;
            println!(
                "{:<24} {:<9} {:<8} {:<24} DEVICES",
                "USERNAME", "ROLE", "STATE", "CAMERAS"
            );
            for u in users {
                println!(
                    "{:<24} {:<9} {:<8} {:<24} {}",
                    u.username,
                    u.role.as_str(),
                    if u.disabled { "disabled" } else { "active" },
                    u.cameras.join(","),
                    u.devices.join(","),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_and_roles_are_checked() {
        assert!(check_username("wang.wei-01").is_ok());
        assert!(check_username("").is_err());
        assert!(check_username("wang wei").is_err());
        assert!(check_username(&"x".repeat(65)).is_err());
        assert_eq!(parse_role("duty"), Ok(Role::Duty));
        assert!(parse_role("root").unwrap_err().contains("not a role"));
    }
}
