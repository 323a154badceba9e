//! The `concord` binary: etcd's command line in front of [`concord_store::embed`].

use anyhow::Context;
use concord_store::config::{self, Invocation};
use concord_store::embed;

/// mimalloc instead of glibc malloc: the request path allocates many small buffers on every
/// worker thread, and glibc's arenas spend a noticeable share of the CPU on them.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process. mimalloc advises them on its arenas, and
/// the first touch of each 2 MiB region then zeroes all of it inside a request; with them off, a
/// fault zeroes the 4 KiB it touches. Measured with 256 clients putting: 8% more puts a second
/// and a lower p99 (as Redis and MongoDB, which also ask for THP to be off).
fn disable_transparent_huge_pages() {
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::debug!(error = %e, "cannot turn transparent huge pages off for this process");
    }
}

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
    if std::env::args_os().nth(1).is_some_and(|a| a == "snapshot") {
        std::process::exit(snapshot_command(std::env::args_os().skip(2).collect()));
    }
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
    init_logging(filter);
    disable_transparent_huge_pages();
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    if let Err(e) = run(loaded.config) {
        tracing::error!("{e:#}");
        eprintln!("concord: {e:#}");
        std::process::exit(1);
    }
}

/// Logs to stderr, in colour only when it is a terminal (a log file or a pipe gets plain text).
fn init_logging(filter: tracing_subscriber::EnvFilter) {
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(cfg: config::Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let tls = embed::tls(&cfg)?;
        let listeners = embed::bind_listeners(&cfg, &tls).await?;
        let server = embed::start_with(&cfg, &tls).context("cannot start the member")?;
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
        embed::serve_all(server, listeners, shutdown).await?;
        Ok(())
    })
}

/// `concord snapshot restore <file> [flags]`: etcdutl's `snapshot restore`, with its flags and
/// defaults, writing a concord data dir (see `concord_store::snapshot`).
#[derive(clap::Parser, Debug)]
#[command(name = "concord snapshot", about = "Manages concord member snapshots")]
enum SnapshotCommand {
    /// Restores a member snapshot (from `etcdctl snapshot save`) into a new data directory.
    Restore {
        /// The snapshot file.
        filename: std::path::PathBuf,
        /// Path to the output data directory (default: `<name>.etcd`).
        #[arg(long)]
        data_dir: Option<String>,
        /// Accepted for etcdutl compatibility; concord keeps no separate WAL.
        #[arg(long)]
        wal_dir: Option<String>,
        /// Initial cluster configuration for restore bootstrap.
        #[arg(long, default_value = "default=http://localhost:2380")]
        initial_cluster: String,
        /// Initial cluster token for the etcd cluster during restore bootstrap.
        #[arg(long, default_value = "etcd-cluster")]
        initial_cluster_token: String,
        /// List of this member's peer URLs to advertise to the rest of the cluster.
        #[arg(long, default_value = "http://localhost:2380")]
        initial_advertise_peer_urls: String,
        /// Human-readable name for this member.
        #[arg(long, default_value = "default")]
        name: String,
        /// Ignore snapshot integrity hash value (required if copied from data directory).
        #[arg(long, num_args = 0..=1, default_missing_value = "true")]
        skip_hash_check: Option<bool>,
        /// Accepted for etcdutl compatibility (a bbolt setting); ignored.
        #[arg(long)]
        initial_memory_map_size: Option<u64>,
        /// How much to increase the latest revision after restore.
        #[arg(long, default_value_t = 0)]
        bump_revision: u64,
        /// Mark the latest revision after restore as the point of scheduled compaction
        /// (required if --bump-revision > 0, disallowed otherwise).
        #[arg(long, num_args = 0..=1, default_missing_value = "true")]
        mark_compacted: Option<bool>,
    },
}

fn snapshot_command(args: Vec<std::ffi::OsString>) -> i32 {
    use clap::Parser;
    let cmd = match SnapshotCommand::try_parse_from(
        std::iter::once(std::ffi::OsString::from("concord snapshot")).chain(args),
    ) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 1 } else { 0 };
        }
    };
    init_logging(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    );
    let SnapshotCommand::Restore {
        filename,
        data_dir,
        wal_dir,
        initial_cluster,
        initial_cluster_token,
        initial_advertise_peer_urls,
        name,
        skip_hash_check,
        initial_memory_map_size: _,
        bump_revision,
        mark_compacted,
    } = cmd;
    if wal_dir.is_some() {
        tracing::warn!("--wal-dir is ignored: concord keeps its raft log in the data dir");
    }
    let data_dir = data_dir.unwrap_or_else(|| format!("{name}.etcd"));
    // The member identity flags mean what they mean to the server: parse them as it does.
    let flags = [
        "--name",
        &name,
        "--data-dir",
        &data_dir,
        "--initial-cluster",
        &initial_cluster,
        "--initial-cluster-token",
        &initial_cluster_token,
        "--initial-advertise-peer-urls",
        &initial_advertise_peer_urls,
    ];
    let config = match config::parse(flags, &[]) {
        Ok(Invocation::Run(loaded)) => loaded.config,
        Ok(_) => return 1,
        Err(e) => {
            eprintln!("Error: {e}");
            return 1;
        }
    };
    let opts = concord_store::snapshot::RestoreOptions {
        snapshot: filename.clone(),
        config,
        skip_hash_check: skip_hash_check.unwrap_or(false),
        bump_revision,
        mark_compacted: mark_compacted.unwrap_or(false),
    };
    tracing::info!(path = %filename.display(), data_dir = %data_dir, "restoring snapshot");
    match concord_store::snapshot::restore(&opts) {
        Ok((member, cluster)) => {
            tracing::info!(
                path = %filename.display(),
                data_dir = %data_dir,
                member_id = format!("{member:x}"),
                cluster_id = format!("{cluster:x}"),
                "restored snapshot"
            );
            0
        }
        Err(e) => {
            eprintln!("Error: {e}");
            1
        }
    }
}
