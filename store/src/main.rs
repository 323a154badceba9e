//! The `concord` binary: etcd's command line in front of [`concord_store::embed`].

use anyhow::Context;
use concord_store::config::{self, Invocation};
use concord_store::embed;

fn print_version() {
    println!("etcd Version: {}", concord_store::ETCD_VERSION);
    println!("Git SHA: concord-{}", env!("CARGO_PKG_VERSION"));
    println!("Go Version: none (concord is written in Rust)");
    println!("Go OS/Arch: {}/{}", std::env::consts::OS, go_arch());
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// etcd's log levels in tracing's terms (tracing has no panic/fatal levels).
fn tracing_level(etcd_level: &str) -> &str {
    match etcd_level {
        "dpanic" | "panic" | "fatal" => "error",
        other => other,
    }
}

fn main() {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let loaded = match config::parse(std::env::args_os().skip(1), &env) {
        Ok(Invocation::Run(loaded)) => loaded,
        Ok(Invocation::Version) => {
            print_version();
            return;
        }
        Ok(Invocation::Help(text)) => {
            println!("{text}");
            return;
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(e.exit_code());
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(tracing_level(&loaded.config.log_level))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    if let Err(e) = run(loaded.config) {
        tracing::error!("{e:#}");
        eprintln!("concord: {e:#}");
        std::process::exit(1);
    }
}

fn run(cfg: config::Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listeners = embed::bind_client_listeners(&cfg).await?;
        let server = embed::start(&cfg).context("cannot start the member")?;
        let peer_listeners = embed::bind_peer_listeners(&cfg).await?;
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("received signal; shutting down");
        };
        embed::serve_all(server, listeners, peer_listeners, shutdown).await?;
        Ok(())
    })
}
