//! The `switchboard` command.
// A command line reports its errors on stderr; everything else logs through `tracing`.
#![allow(clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use switchboard_server::config::{Config, DEFAULT_TOML, LogFormat};
use switchboard_server::{app, http};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Switchboard: a SIP/WebRTC media and signalling server with a REST control plane.
#[derive(Parser)]
#[command(name = "switchboard", version, propagate_version = true)]
#[command(
    after_help = "Run `switchboard serve` to start with the embedded defaults (SQLite under ./data).\n\
Every configuration key can be set in a TOML file (--config) or as SWITCHBOARD_<SECTION>__<KEY>."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server until SIGINT or SIGTERM.
    ///
    /// With no configuration it keeps its data in ./data (SQLite), listens for HTTP on
    /// 0.0.0.0:8080 and, on first start, creates a superadmin (admin@localhost) whose password
    /// is taken from SWITCHBOARD_ADMIN_PASSWORD or generated and printed once.
    Serve(ConfigArg),
    /// Print the default configuration, or check a configuration.
    Config(ConfigCommand),
    /// Print the OpenAPI 3 document of the HTTP API.
    Openapi,
}

#[derive(Args)]
struct ConfigArg {
    /// TOML configuration file; every key is optional.
    #[arg(short, long, env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct ConfigMode {
    /// Print every key with its default value and documentation.
    #[arg(long)]
    print_default: bool,
    /// Load the configuration (file and SWITCHBOARD_* variables), report errors, and print the
    /// effective values with secrets redacted.
    #[arg(long)]
    check: bool,
}

#[derive(Args)]
struct ConfigCommand {
    #[command(flatten)]
    mode: ConfigMode,
    #[command(flatten)]
    file: ConfigArg,
}

fn load(arg: &ConfigArg) -> Result<Config, ExitCode> {
    Config::load(arg.config.as_deref(), std::env::vars()).map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::from(2)
    })
}

fn init_tracing(config: &Config) {
    let filter = EnvFilter::try_new(&config.log.level).unwrap_or_else(|error| {
        eprintln!("warning: config key `log.level`: {error}; using `info`");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(arg) => {
            let config = match load(&arg) {
                Ok(config) => config,
                Err(code) => return code,
            };
            init_tracing(&config);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("error: starting the runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let admin_password = std::env::var("SWITCHBOARD_ADMIN_PASSWORD")
                .ok()
                .filter(|p| !p.is_empty());
            let result = runtime.block_on(async {
                let shutdown = CancellationToken::new();
                let signal = shutdown.clone();
                tokio::spawn(async move {
                    app::shutdown_signal().await;
                    signal.cancel();
                });
                app::serve(config, admin_password, shutdown).await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    eprintln!("error: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Config(command) => {
            if command.mode.print_default {
                print!("{DEFAULT_TOML}");
                return ExitCode::SUCCESS;
            }
            match load(&command.file) {
                Ok(config) => {
                    print!("{}", config.to_redacted_toml());
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        Command::Openapi => match http::openapi().to_pretty_json() {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
    }
}
