//! `chokepoint`: the daemon and its CLI.
//!
//! Exit codes (docs/cli.md): 0 ok, 1 failure (and `policy diff` with changes, `audit verify` on
//! tampering), 2 usage error.

#![warn(missing_docs)]

use chokepoint_agent::{
    cli::{self, Cli, Command, DEFAULT_SOCKET, Exit, LogFormat, Usage},
    daemon,
};
use clap::{CommandFactory, Parser};

/// How long the process waits, after its orderly stop, for blocking tasks still running.
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn main() {
    let cli = Cli::parse();
    let socket = cli.socket.clone().unwrap_or_else(|| DEFAULT_SOCKET.into());
    match cli.cmd {
        Command::Completion { shell } => {
            let mut cmd = Cli::command();
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, "chokepoint", &mut buf);
            // A closed stdout (`| head`) is not an error.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &buf);
            return;
        }
        Command::Man { dir } => {
            if let Err(e) = cli::man::write(dir.as_deref())
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                eprintln!("chokepoint: writing the man page: {e}");
                std::process::exit(1);
            }
            return;
        }
        _ => {}
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chokepoint: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = match cli.cmd {
        Command::Daemon(mut args) => {
            args.socket = cli.socket;
            match args.resolve() {
                Ok((opts, format)) => {
                    init_logs(format);
                    rt.block_on(daemon::run(opts))
                }
                Err(e) => Err(e),
            }
        }
        other => rt.block_on(cli::run_client(other, &socket)),
    };
    // Dropping a runtime waits for every blocking task still running (a DNS refresh against a
    // resolver that does not answer, a cgroup walk): a SIGTERM'd daemon would outlive its stop.
    // The orderly stop is done by now; what is left is abandoned after a bounded wait.
    rt.shutdown_timeout(SHUTDOWN_WAIT);
    if let Err(e) = result {
        if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
            std::process::exit(*code);
        }
        eprintln!("chokepoint: {e:#}");
        std::process::exit(if e.downcast_ref::<Usage>().is_some() {
            2
        } else {
            1
        });
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHOKEPOINT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // No colour codes when stderr is not a terminal or NO_COLOR is set.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}
