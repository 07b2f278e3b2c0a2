//! The `portcullis` binary: parses the command line and hands over to the library.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use portcullis::app::App;
use portcullis::config::{self, Config, LogFormat, RawSettings};
use portcullis::crypto::SecretKey;
use portcullis::registry::Status;
use portcullis::store::Store;
use std::path::PathBuf;

// The request path allocates many small, short-lived buffers; mimalloc serves them faster
// than the system allocator (measured with `portcullis bench`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "portcullis", version, about = "MCP gateway and governance control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the store and key are; shared by every subcommand that touches the store.
#[derive(Args, Clone, Default)]
struct StoreArgs {
    /// Directory of the SQLite store and of a generated secret key.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Use PostgreSQL (postgres://…) instead of SQLite.
    #[arg(long)]
    database_url: Option<String>,
    /// File with the secret key (or set PORTCULLIS_SECRET_KEY).
    #[arg(long)]
    secret_key_file: Option<PathBuf>,
    /// TOML configuration file (or set PORTCULLIS_CONFIG).
    #[arg(long)]
    config: Option<PathBuf>,
}

impl StoreArgs {
    fn settings(&self) -> RawSettings {
        let mut settings = RawSettings::new();
        if let Some(value) = &self.data_dir {
            settings.insert("data_dir", value.display().to_string());
        }
        if let Some(value) = &self.database_url {
            settings.insert("database_url", value.clone());
        }
        if let Some(value) = &self.secret_key_file {
            settings.insert("secret_key_file", value.display().to_string());
        }
        settings
    }

    fn load(&self, extra: RawSettings) -> anyhow::Result<Config> {
        let mut settings = self.settings();
        settings.extend(extra);
        Ok(config::load(self.config.as_deref(), settings)?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[command(flatten)]
        store: StoreArgs,
        /// ADDR:PORT to listen on (port 0 picks a free port).
        #[arg(long)]
        listen: Option<String>,
        /// External base URL, e.g. https://mcp.example.com.
        #[arg(long)]
        public_url: Option<String>,
        /// Comma-separated CIDRs whose X-Forwarded-For is believed.
        #[arg(long)]
        trusted_proxies: Option<String>,
        /// text or json.
        #[arg(long)]
        log_format: Option<String>,
        /// Register the built-in demo server and a demo user, and print how to connect.
        #[arg(long)]
        demo: bool,
    },
    /// Apply a TOML file of servers, groups, users, grants and access rules.
    Apply {
        #[command(flatten)]
        store: StoreArgs,
        /// The file to apply.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Also delete what the file does not list.
        #[arg(long)]
        prune: bool,
        /// Show what would change without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check access rules: run a table of cases against the rules in the store.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Manage API keys.
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// Manage the bearer tokens identity providers use for SCIM (`/scim/v2`).
    ScimToken {
        #[command(subcommand)]
        command: ScimTokenCommand,
    },
    /// Suspend or reactivate people.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Bridge a stdio-only MCP client to a gateway URL.
    Connect {
        /// The gateway URL, e.g. http://127.0.0.1:8080/mcp/github.
        url: String,
        /// API key (or set PORTCULLIS_API_KEY).
        #[arg(long, env = "PORTCULLIS_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
    },
    /// Secret key helpers.
    SecretKey {
        #[command(subcommand)]
        command: SecretKeyCommand,
    },
    /// Measure the gateway's overhead against the same upstream called directly.
    Bench {
        /// Seconds measured per run (after warm-up).
        #[arg(long, default_value_t = 5)]
        duration: u64,
        /// Seconds of warm-up per run.
        #[arg(long, default_value_t = 1)]
        warmup: u64,
        /// Comma-separated concurrency levels.
        #[arg(long, default_value = "1,32", value_delimiter = ',')]
        concurrency: Vec<usize>,
        /// Instead, measure how fast a suspension reaches another replica, on a scratch
        /// database created (and dropped) on this PostgreSQL server.
        #[arg(long, value_name = "POSTGRES_URL")]
        revocation: Option<String>,
        /// Instead, measure access decisions: the fast evaluator and Cedar side by side with
        /// 10, 1,000 and 10,000 rules, and tools/list filtering of 500 tools.
        #[arg(long)]
        policy: bool,
    },
    /// The built-in demo MCP server on stdio (started by the gateway for `--demo`).
    #[command(hide = true)]
    DemoServer,
    /// The built-in echo MCP server over Streamable HTTP (a benchmark upstream).
    #[command(hide = true)]
    EchoUpstream {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
    /// A bare pass-through proxy on the gateway's HTTP stack (the benchmark's baseline).
    #[command(hide = true)]
    PassThrough {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// The Streamable HTTP endpoint every POST is forwarded to.
        #[arg(long)]
        upstream: String,
    },
}

#[derive(Subcommand)]
enum ScimTokenCommand {
    /// Create a token; it is printed once, alone on the last line.
    Create {
        #[command(flatten)]
        store: StoreArgs,
        /// What the token is for, e.g. okta.
        #[arg(long)]
        name: String,
    },
    /// List tokens (never the tokens themselves).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a token by id or name; the identity provider's next request is refused.
    Revoke {
        #[command(flatten)]
        store: StoreArgs,
        /// The token's id or name.
        token: String,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Decide each `[[cases]]` entry of a TOML file as the gateway would, print one line per
    /// case and a last line "N passed, M failed"; exit non-zero when a case fails. A case:
    /// user = "ann@example.com" (or agent = "ci-bot"), server = "db", tool = "query" (or
    /// resource / prompt; none = connecting), payload = { table = "orders" }, ip = "10.1.2.3",
    /// client = "cursor", user_agent, client_version, oauth = true, expect = "allow" or "deny".
    Test {
        #[command(flatten)]
        store: StoreArgs,
        /// The file of cases.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Suspend a user: their next call is refused on every replica, and their identity
    /// provider cannot lift it.
    Suspend {
        #[command(flatten)]
        store: StoreArgs,
        /// The user's email.
        #[arg(long)]
        user: String,
    },
    /// Lift a suspension (or an identity provider's deactivation).
    Activate {
        #[command(flatten)]
        store: StoreArgs,
        /// The user's email.
        #[arg(long)]
        user: String,
    },
    /// Set a user's console password (read from the first line of standard input), for small
    /// installs and break-glass access.
    SetPassword {
        #[command(flatten)]
        store: StoreArgs,
        /// The user's email.
        #[arg(long)]
        user: String,
    },
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Create a key for a user; the key is printed once, alone on the last line.
    Create {
        #[command(flatten)]
        store: StoreArgs,
        /// The user's email.
        #[arg(long)]
        user: String,
        /// A name to recognise the key by.
        #[arg(long, default_value = "")]
        name: String,
    },
}

#[derive(Subcommand)]
enum SecretKeyCommand {
    /// Print a new random secret key.
    Generate,
}

fn init_logging(config: Option<&Config>) {
    let filter = config.map_or("warn".to_owned(), |config| config.log_filter.clone());
    let filter =
        tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if config.is_some_and(|config| config.log_format == LogFormat::Json) {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// A line for whoever started `serve`. The gateway keeps serving when nobody reads its
/// standard output any more (a closed pipe is not a reason to stop).
fn say(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The runtime's size is a setting of `serve`; a bad configuration is reported by `run`.
    let worker_threads = match &cli.command {
        Command::Serve { store, .. } => store.load(RawSettings::new()).ok().and_then(|config| config.worker_threads),
        _ => None,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = worker_threads {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The whole chain of causes, without a backtrace: these are messages for people.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { store, listen, public_url, trusted_proxies, log_format, demo } => {
            let mut flags = RawSettings::new();
            for (key, value) in [
                ("listen", listen),
                ("public_url", public_url),
                ("trusted_proxies", trusted_proxies),
                ("log_format", log_format),
            ] {
                if let Some(value) = value {
                    flags.insert(key, value);
                }
            }
            let config = store.load(flags)?;
            init_logging(Some(&config));
            let demo_key = if demo {
                let keys = config.secret_key()?.derive();
                let store = Store::open(&config.store).await?;
                let key = portcullis::cli::set_up_demo(&store, &keys).await?;
                store.close().await;
                Some(key)
            } else {
                None
            };
            let public_url = config.public_url.clone();
            let app = App::build(config).await?;
            let address = app.address();
            say(&format!("listening on http://{address}"));
            if let Some(key) = demo_key {
                print_demo_instructions(address, &key);
            }
            let base = public_url.unwrap_or_else(|| {
                let host =
                    if address.ip().is_unspecified() { "127.0.0.1".to_owned() } else { address.ip().to_string() };
                format!("http://{host}:{}", address.port())
            });
            if let Some(link) = portcullis::console::first_run_link(&app.state().store, &base).await? {
                say("");
                say("First run: no super admin can sign in yet. Open this link to create one");
                say("(it works once, for 24 hours; restart for a new one):");
                say(&format!("  {link}"));
            }
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Apply { store, file, prune, dry_run } => {
            let config = store.load(RawSettings::new())?;
            init_logging(None);
            let keys = config.secret_key()?.derive();
            let opened = Store::open(&config.store).await?;
            let options = portcullis::apply::Options { prune, dry_run };
            let report = portcullis::apply::apply_file(&opened, &keys, &file, options).await?;
            opened.close().await;
            for change in &report.changes {
                println!("{change}");
            }
            for warning in &report.warnings {
                eprintln!("warning: {warning}");
            }
            let verb = if dry_run { "would change" } else { "changed" };
            match report.changes.len() {
                0 => println!("nothing to change"),
                count => println!("{verb} {count} item{}", if count == 1 { "" } else { "s" }),
            }
            Ok(())
        }
        Command::Policy { command: PolicyCommand::Test { store, file } } => {
            let config = store.load(RawSettings::new())?;
            init_logging(None);
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let keys = config.secret_key()?.derive();
            let opened = Store::open(&config.store).await?;
            let snapshot = portcullis::snapshot::Snapshot::load(&opened, &keys).await;
            opened.close().await;
            let outcome = portcullis::policy_test::run(&snapshot?, &text, &file.display().to_string())?;
            for line in &outcome.lines {
                println!("{line}");
            }
            println!("{} passed, {} failed", outcome.passed, outcome.failed);
            if outcome.failed > 0 {
                anyhow::bail!("{} of {} cases failed", outcome.failed, outcome.passed + outcome.failed);
            }
            Ok(())
        }
        Command::ApiKey { command: ApiKeyCommand::Create { store, user, name } } => {
            let config = store.load(RawSettings::new())?;
            init_logging(None);
            let opened = Store::open(&config.store).await?;
            let key = portcullis::cli::create_api_key(&opened, &user, &name).await?;
            opened.close().await;
            eprintln!("API key for {user} (shown only once; store it safely):");
            println!("{key}");
            Ok(())
        }
        Command::ScimToken { command: ScimTokenCommand::Create { store, name } } => {
            let config = store.load(RawSettings::new())?;
            init_logging(None);
            let opened = Store::open(&config.store).await?;
            let token = portcullis::scim::create_token(&opened, &name).await?;
            opened.close().await;
            eprintln!("SCIM token {name:?} (shown only once; give it to the identity provider):");
            println!("{token}");
            Ok(())
        }
        Command::ScimToken { command: ScimTokenCommand::List { store } } => {
            let config = store.load(RawSettings::new())?;
            init_logging(None);
            let opened = Store::open(&config.store).await?;
            let mut connection = opened.pool.acquire().await?;
            let tokens = portcullis::store::directory::list_scim_tokens(&mut connection).await?;
            drop(connection);
            opened.close().await;
            println!("{:<34} {:<20} {:<14} state", "id", "name", "prefix");
            for token in tokens {
                let state = if token.revoked_at.is_some() { "revoked" } else { "live" };
                println!("{:<34} {:<20} {:<14} {state}", token.id, token.name, token.prefix);
            }
            Ok(())
        }
        Command::ScimToken { command: ScimTokenCommand::Revoke { store, token } } => {
            let config = store.load(RawSettings::new())?;
            init_logging(None);
            let opened = Store::open(&config.store).await?;
            portcullis::scim::revoke_token(&opened, "cli", &token).await?;
            opened.close().await;
            println!("revoked SCIM token {token}");
            Ok(())
        }
        Command::User { command: UserCommand::SetPassword { store, user } } => {
            let config = store.load(RawSettings::new())?;
            init_logging(None);
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("cannot read the password from standard input")?;
            let password = line.trim_end_matches(['\r', '\n']);
            let opened = Store::open(&config.store).await?;
            portcullis::cli::set_password(&opened, &user, password).await?;
            opened.close().await;
            println!("{user}: password set");
            Ok(())
        }
        Command::User { command: UserCommand::Suspend { store, user } } => {
            set_status(store, &user, Status::Suspended).await
        }
        Command::User { command: UserCommand::Activate { store, user } } => {
            set_status(store, &user, Status::Active).await
        }
        Command::Connect { url, api_key } => {
            init_logging(None);
            portcullis::cli::connect(&url, api_key.as_deref()).await
        }
        Command::SecretKey { command: SecretKeyCommand::Generate } => {
            println!("{}", SecretKey::generate().encode());
            Ok(())
        }
        Command::Bench { policy: true, duration, .. } => {
            init_logging(None);
            portcullis::bench::policy(duration as f64 / 2.0)
        }
        Command::Bench { revocation: Some(url), .. } => {
            init_logging(None);
            portcullis::bench::revocation(&url, 50).await
        }
        Command::Bench { duration, warmup, concurrency, revocation: None, policy: false } => {
            init_logging(None);
            let settings = portcullis::bench::Settings {
                duration: std::time::Duration::from_secs(duration),
                warmup: std::time::Duration::from_secs(warmup),
                concurrency,
            };
            portcullis::bench::run(settings).await.map(|_| ())
        }
        Command::DemoServer => portcullis::demo::run_stdio().await,
        Command::EchoUpstream { listen } => {
            let (address, serve) =
                portcullis::demo::bind_http(listen).await.context("cannot bind the echo upstream")?;
            println!("listening on http://{address}/mcp");
            serve.await;
            Ok(())
        }
        Command::PassThrough { listen, upstream } => {
            let (address, serve) = portcullis::bench::bind_pass_through(listen, upstream)
                .await
                .context("cannot bind the pass-through proxy")?;
            println!("listening on http://{address}/mcp");
            serve.await;
            Ok(())
        }
    }
}

/// `portcullis user suspend|activate`.
async fn set_status(store: StoreArgs, user: &str, status: Status) -> anyhow::Result<()> {
    let config = store.load(RawSettings::new())?;
    init_logging(None);
    let opened = Store::open(&config.store).await?;
    let before = portcullis::cli::set_user_status(&opened, user, status).await?;
    opened.close().await;
    println!("{user}: {} (was {})", status.as_str(), before.as_str());
    Ok(())
}

fn print_demo_instructions(address: std::net::SocketAddr, key: &str) {
    let url = format!("http://{address}/mcp/demo");
    let config = serde_json::to_string_pretty(&serde_json::json!({
        "mcpServers": {"demo": {"type": "http", "url": url, "headers": {"Authorization": format!("Bearer {key}")}}}
    }))
    .unwrap_or_default();
    say(&format!(
        "\nDemo ready. Server \"demo\" (tools: echo, add) for user {user}.\n  URL:     {url}\n  API key: {key}\n\nTry it:\n  \
         curl -s {url} -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n    \
         -H 'Accept: application/json, text/event-stream' \\\n    \
         -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{{\"protocolVersion\":\"2025-06-18\",\"capabilities\":{{}},\"clientInfo\":{{\"name\":\"curl\",\"version\":\"1\"}}}}}}' -D -\n\n\
         Client configuration (Claude Code, Cursor, VS Code and others that speak Streamable HTTP):\n{config}\n\
         Clients that only speak stdio: portcullis connect {url} --api-key {key}",
        user = portcullis::cli::DEMO_USER
    ));
}
