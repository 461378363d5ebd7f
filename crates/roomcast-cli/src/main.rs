//! The `roomcast` binary.
//!
//! Configuration is layered: built-in defaults, then the TOML file
//! (`--config` or `ROOMCAST_CONFIG`), then `ROOMCAST_*` environment variables,
//! then command-line flags; later layers win.

mod settings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use roomcast::{Config, Server};

#[derive(Parser)]
#[command(
    name = "roomcast",
    version,
    about = "A real-time messaging server: rooms, presence and server push over WebSocket"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a command, `roomcast [flags]` is `roomcast serve [flags]`.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Print the effective configuration (defaults, file, environment, flags) as TOML.
    Config(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file [env: ROOMCAST_CONFIG]
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8700 (port 0 picks a free port)
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// API key required on /api/* as `Authorization: Bearer <key>`
    #[arg(long)]
    api_key: Option<String>,
    /// Log filter: error, warn, info, debug, trace
    #[arg(long)]
    log: Option<String>,
    /// Join a cluster over Redis, e.g. redis://127.0.0.1:6379/0 (default: in-memory, one node)
    #[arg(long, value_name = "URL")]
    broker: Option<String>,
    /// Accept Socket.IO emitters on Redis: python-socketio, socket.io (comma-separated)
    #[arg(long, value_name = "LIST")]
    emitters: Option<String>,
    /// Authentication mode: open (development), token (JWT), proxy (ask the backend)
    #[arg(long, value_name = "MODE")]
    auth: Option<String>,
    /// Secret of HS256 connection tokens (`--auth token --jwt-secret S`) [env: ROOMCAST_AUTH_JWT_SECRET]
    #[arg(long, value_name = "SECRET")]
    jwt_secret: Option<String>,
    /// Keep the last N publications of every room, for clients that reconnect
    #[arg(long, value_name = "N")]
    history_size: Option<usize>,
    /// Keep publications in room history for this many seconds (default 300)
    #[arg(long, value_name = "SECONDS")]
    history_ttl: Option<u64>,
    /// A URL-per-room WebSocket endpoint in relay mode, e.g. '/room/{room}/'
    /// (repeatable; added to the file's [[endpoints]])
    #[arg(long, value_name = "PATH")]
    endpoint: Vec<String>,
    /// `roomcast config` only: print keys and secrets as given instead of masked
    #[arg(long)]
    show_secrets: bool,
}

impl ServeArgs {
    fn load(&self) -> Result<Config, String> {
        let mut flags = Vec::new();
        if let Some(l) = self.listen {
            flags.push(("listen", l.to_string()));
        }
        if let Some(k) = &self.api_key {
            flags.push(("api.key", k.clone()));
        }
        if let Some(l) = &self.log {
            flags.push(("log", l.clone()));
        }
        if let Some(b) = &self.broker {
            flags.push(("broker.url", b.clone()));
        }
        if let Some(e) = &self.emitters {
            flags.push(("broker.emitters", e.clone()));
        }
        if let Some(a) = &self.auth {
            flags.push(("auth.mode", a.clone()));
        }
        if let Some(s) = &self.jwt_secret {
            flags.push(("auth.jwt.secret", s.clone()));
        }
        if let Some(n) = self.history_size {
            flags.push(("history.size", n.to_string()));
        }
        if let Some(t) = self.history_ttl {
            flags.push(("history.ttl", t.to_string()));
        }
        let file = self
            .config
            .clone()
            .or_else(|| std::env::var_os("ROOMCAST_CONFIG").map(PathBuf::from));
        let mut config = settings::load(file.as_deref(), std::env::vars(), &flags)?;
        if !self.endpoint.is_empty() {
            config.endpoints.extend(
                self.endpoint
                    .iter()
                    .map(|p| roomcast::config::EndpointConfig::relay(p)),
            );
            config.validate()?;
        }
        Ok(config)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve(cli.serve));
    let (Command::Serve(args) | Command::Config(args)) = &command;
    let config = match args.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("roomcast: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Config(_) = command {
        let shown = if args.show_secrets {
            config
        } else {
            config.redacted()
        };
        print!("{}", toml::to_string_pretty(&shown).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) => match roomcast::config::check_log_filter(&f)
            .and_then(|()| tracing_subscriber::EnvFilter::try_new(&f).map_err(|e| e.to_string()))
        {
            Ok(filter) => filter,
            Err(e) => {
                eprintln!("roomcast: configuration error: RUST_LOG: {e}");
                return ExitCode::from(2);
            }
        },
        Err(_) => match tracing_subscriber::EnvFilter::try_new(&config.log) {
            Ok(filter) => filter,
            Err(e) => {
                eprintln!("roomcast: configuration error: log: {e}");
                return ExitCode::from(2);
            }
        },
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("roomcast: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<roomcast::StartError>() => {
            eprintln!("roomcast: configuration error: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("roomcast: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One line on stdout, flushed; errors (nobody reads any more) are ignored.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

async fn serve(config: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let server = Server::try_new(config)?;
    // Tests and scripts wait for this line to learn the port.
    // Written, not `println!`: a reader that went away (a closed pipe) must not stop the server.
    say(format_args!(
        "roomcast listening on http://{addr} (chat page at /, WebSocket at /ws, API at /api/)"
    ));
    tracing::info!(%addr, node = %server.hub().node(), "listening");
    let c = server.config();
    let on = |allowed: bool| if allowed { "on" } else { "off" };
    say(format_args!(
        "auth mode {}: anonymous connections {}, client send {}, client broadcast {}",
        c.auth.mode.as_str(),
        on(c.auth.allows_anonymous()),
        on(c.client.send.allows(c.auth.mode)),
        on(c.client.broadcast.allows(c.auth.mode)),
    ));
    for w in server.config().warnings() {
        tracing::warn!("{w}");
    }
    let router = server.router();
    let signals = signals();
    let mut first = signals.clone();
    let mut second = signals;
    let shutdown = async move {
        let _ = first.wait_for(|&n| n >= 1).await;
    };
    tokio::select! {
        r = server.run(listener, router, shutdown) => r?,
        _ = second.wait_for(|&n| n >= 2) => {
            tracing::warn!("second signal: exiting without waiting for the drain");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Counts SIGTERM and SIGINT: the first starts the graceful shutdown, a
/// second one ends the drain at once.
fn signals() -> tokio::sync::watch::Receiver<u32> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::watch::channel(0u32);
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (term, int) else {
            tracing::warn!("cannot listen for signals; stop with SIGKILL");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tx.send_modify(|n| *n += 1);
        }
    });
    rx
}
