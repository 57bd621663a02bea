//! The `bellhop` command: parse the CLI, load config, set up logs, run.

use std::path::PathBuf;

use anyhow::Context;
use bellhop::config::{Config, EnvSource, LogFormat, ENV_VARS};
use clap::{Parser, Subcommand};

fn env_help() -> String {
    let mut s = String::from("Environment variables (override the config file):\n");
    for (name, what) in ENV_VARS {
        s.push_str(&format!("  {name:<30} {what}\n"));
    }
    s.push_str("\nWith no config at all, bellhop serves one app (id 1, key app-key, secret app-secret)\non 127.0.0.1:6001 with no external service.");
    s
}

#[derive(Parser)]
#[command(
    name = "bellhop",
    version,
    about = "Self-hosted Pusher-compatible realtime server",
    long_about = "Self-hosted Pusher-compatible realtime server: pusher-js and the official Pusher \
                  server SDKs connect to it unchanged (protocol 7 at /app/{key}, signed HTTP API at \
                  /apps/{id}/...).",
    after_help = env_help()
)]
struct Cli {
    /// TOML config file (also BELLHOP_CONFIG). Unknown keys are an error.
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    Serve,
    /// Load and validate the configuration, print a summary, and exit.
    CheckConfig,
    /// Create or update the store's tables (the server also does this at start-up).
    Migrate,
    /// Sign and send an event to a running server through its HTTP API.
    Trigger {
        /// Channel to publish on.
        channel: String,
        /// Event name.
        event: String,
        /// Event data (a string; JSON is passed through as text).
        #[arg(default_value = "{}")]
        data: String,
        /// Server base URL; default: the configured host and port.
        #[arg(long)]
        url: Option<String>,
        /// App id; default: the first configured app (with its key and secret).
        #[arg(long)]
        app_id: Option<String>,
        /// Socket id to exclude from delivery.
        #[arg(long)]
        socket_id: Option<String>,
    },
    /// Inspect and manage the durable job queue (webhooks, notifications).
    Jobs {
        #[command(subcommand)]
        action: JobsAction,
    },
}

#[derive(Subcommand)]
enum JobsAction {
    /// List jobs, newest first, with counts per state.
    List {
        /// pending, running, done or dead
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Show one job and every attempt made.
    Show { id: i64 },
    /// Put a dead job back in the queue.
    Retry { id: i64 },
    /// Delete a dead job.
    Drop { id: i64 },
}

async fn trigger(
    config: Config,
    channel: String,
    event: String,
    data: String,
    url: Option<String>,
    app_id: Option<String>,
    socket_id: Option<String>,
) -> anyhow::Result<()> {
    use bellhop_protocol::{signing, AppKey, Secret};
    let app = match &app_id {
        Some(id) => config.apps.iter().find(|a| &a.id == id),
        None => config.apps.first(),
    }
    .ok_or_else(|| anyhow::anyhow!("no configured app {}", app_id.unwrap_or_default()))?;
    let base =
        url.unwrap_or_else(|| format!("http://{}:{}", config.server.host, config.server.port));
    let mut body = serde_json::json!({"name": event, "channel": channel, "data": data});
    if let Some(s) = socket_id {
        body["socket_id"] = s.into();
    }
    let body = body.to_string();
    let path = format!("/apps/{}/events", app.id);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let query = signing::signed_query(
        &AppKey::parse(&app.key)?,
        &Secret::parse(&app.secret)?,
        "POST",
        &path,
        &[],
        body.as_bytes(),
        now,
    );
    let full = format!("{base}{path}?{query}");
    let resp = reqwest::Client::new()
        .post(&full)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    anyhow::ensure!(status.is_success(), "{status}: {text}");
    println!("{status} {text}");
    Ok(())
}

async fn jobs(config: Config, action: Option<JobsAction>) -> anyhow::Result<()> {
    use bellhop::store::Store;
    let store = Store::connect(&config.server.database_url()).await?;
    store.migrate().await?;
    let Some(action) = action else {
        println!("migrations applied to {}", store.url());
        return Ok(());
    };
    match action {
        JobsAction::List { state, limit } => {
            for (state, n) in store.job_counts().await? {
                println!("{state}: {n}");
            }
            for job in store.jobs(state.as_deref(), limit).await? {
                println!("{}", serde_json::to_string(&job)?);
            }
        }
        JobsAction::Show { id } => match store.job(id).await? {
            Some((job, attempts)) => println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"job": job, "attempts": attempts})
                )?
            ),
            None => anyhow::bail!("no job {id}"),
        },
        JobsAction::Retry { id } => {
            anyhow::ensure!(
                store
                    .retry_dead(id, bellhop::webhooks::WEBHOOK_EXPIRY)
                    .await?,
                "job {id} is not dead (or does not exist)"
            );
            println!("job {id} queued again");
        }
        JobsAction::Drop { id } => {
            anyhow::ensure!(
                store.drop_dead(id).await?,
                "job {id} is not dead (or does not exist)"
            );
            println!("job {id} dropped");
        }
    }
    Ok(())
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BELLHOP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config =
        Config::load(cli.config.as_deref(), &EnvSource).context("invalid configuration")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            println!(
                "configuration is valid: listen {}:{}, {} app(s): {}",
                config.server.host,
                config.server.port,
                config.apps.len(),
                config
                    .apps
                    .iter()
                    .map(|a| format!("{} (key {})", a.id, a.key))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(())
        }
        Command::Trigger {
            channel,
            event,
            data,
            url,
            app_id,
            socket_id,
        } => actix_web::rt::System::new().block_on(trigger(
            config, channel, event, data, url, app_id, socket_id,
        )),
        Command::Migrate => actix_web::rt::System::new().block_on(jobs(config, None)),
        Command::Jobs { action } => {
            actix_web::rt::System::new().block_on(jobs(config, Some(action)))
        }
        Command::Serve => {
            init_logs(config.server.log_format);
            actix_web::rt::System::new()
                .block_on(bellhop::app::run(config))
                .context("bellhop failed")
        }
    }
}
