//! Command line: `run`, `check-config`, `migrate`, `fsck`, `user`, `sim` and `demo`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use xueliang_core::config::{self, Config, ProcessEnv};
use xueliang_core::{Error, ErrorKind};

/// Ingest and alarm service for village Sharp Eyes surveillance networks.
#[derive(Debug, Parser)]
#[command(name = "xueliang", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Run {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a configuration file and list every problem in it.
    CheckConfig {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Create or upgrade the database schema, then exit.
    Migrate {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Compare recordings on disk with the index; exit 1 if they disagree.
    Fsck {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Fix what is found: index orphan files (truncated to their last complete fragment),
        /// remove empty files, replace rows of missing files by gaps. Stop the service first.
        #[arg(long)]
        repair: bool,
    },
    /// Manage console users: add, set, passwd, disable, enable, list.
    User(crate::users::UserArgs),
    /// Run the camera and panic-button simulator until Ctrl-C.
    Sim {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run the service on its built-in demo configuration in a fresh data directory, with
    /// the simulator's cameras and panic buttons.
    Demo {
        /// Keep data here instead of a new temporary directory.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// API address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// Score the motion detector and a Frigate baseline on the simulator's labelled scenes.
    MotionEval(crate::motion_eval::MotionEvalArgs),
}

/// Exit codes: 0 ok, 1 failure at run time, 2 bad configuration or usage.
pub fn main(cli: Cli) -> ExitCode {
    if let Command::CheckConfig { config } = &cli.command {
        return check_config(config);
    }
    if let Command::MotionEval(args) = &cli.command {
        return crate::motion_eval::main(args);
    }
    if let Err(e) = crate::logging::init() {
        eprintln!("xueliang: {e}");
        return ExitCode::from(2);
    }
    crate::logging::install_panic_hook();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("xueliang")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xueliang: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Run { config } => {
                let cfg = load(&config)?;
                crate::run::run(Arc::new(cfg), crate::run::RunOptions::default()).await
            }
            Command::Migrate { config } => {
                let cfg = load(&config)?;
                crate::run::migrate_only(&cfg).await
            }
            Command::User(args) => {
                let config = match &args.action {
                    crate::users::UserAction::Add { who, .. }
                    | crate::users::UserAction::Set { who, .. }
                    | crate::users::UserAction::Passwd { who }
                    | crate::users::UserAction::Disable { who }
                    | crate::users::UserAction::Enable { who } => who.config.clone(),
                    crate::users::UserAction::List { config } => config.clone(),
                };
                let cfg = load(&config)?;
                crate::users::main(&cfg, args.action).await
            }
            Command::Demo { data_dir, listen } => crate::run::demo(data_dir, &listen).await,
            Command::Sim { config } => crate::run::sim(&config).await,
            Command::Fsck { config, repair } => {
                let cfg = load(&config)?;
                if crate::run::fsck(&cfg, repair).await? || repair {
                    Ok(())
                } else {
                    Err(Error::new(
                        ErrorKind::DataLoss,
                        "recordings and index disagree; run with --repair",
                    ))
                }
            }
            Command::CheckConfig { .. } | Command::MotionEval(_) => unreachable!("handled above"),
        }
    });
    // Blocking tasks (e.g. a stuck disk write) must not keep the process alive past shutdown.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(kind = %e.kind(), err = %e.chain(), "exiting on error");
            if e.kind() == ErrorKind::InvalidArgument {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn load(path: &Path) -> Result<Config, Error> {
    config::load_file(path, &ProcessEnv).map_err(|errs| {
        // Each problem on its own line, then one summary error for the log.
        for line in errs.to_string().lines() {
            eprintln!("{line}");
        }
        Error::with_source(
            ErrorKind::InvalidArgument,
            format!("{} problem(s) in {}", errs.errors.len(), path.display()),
            errs,
        )
    })
}

#[allow(clippy::print_stdout)]
fn check_config(path: &Path) -> ExitCode {
    match config::load_file(path, &ProcessEnv) {
        Ok(cfg) => {
            for w in cfg.warnings() {
                eprintln!("{}: warning: {w}", path.display());
            }
            let db = match cfg.database_target() {
                config::DatabaseTarget::Sqlite { path } => format!("sqlite {}", path.display()),
                config::DatabaseTarget::Postgres { url } => {
                    format!("postgres {}", xueliang_store::redact_url(&url))
                }
            };
            println!(
                "{}: ok: node {}, {} camera(s), {} device(s), {} token(s), database {db}, mqtt {}",
                path.display(),
                cfg.node.id,
                cfg.cameras.len(),
                cfg.devices.len(),
                cfg.api.tokens.len(),
                cfg.mqtt.mode.as_str(),
            );
            ExitCode::SUCCESS
        }
        Err(errs) => {
            eprintln!("{errs}");
            eprintln!("{}: {} problem(s) found", path.display(), errs.errors.len());
            ExitCode::from(2)
        }
    }
}
