//! `chokepoint`: the daemon and its CLI.

use clap::Parser;

use chokepoint_agent::{
    cli::{self, Cli, Command, LogFormat},
    daemon,
};

fn main() {
    let cli = Cli::parse();
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
        Command::Daemon(args) => match args.resolve() {
            Ok((opts, format)) => {
                init_logs(format);
                rt.block_on(daemon::run(opts))
            }
            Err(e) => Err(e),
        },
        other => rt.block_on(cli::run_client(other)),
    };
    if let Err(e) = result {
        let msg = format!("{e:#}");
        eprintln!("chokepoint: {msg}");
        std::process::exit(1);
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHOKEPOINT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}
