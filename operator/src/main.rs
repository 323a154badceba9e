//! `concord-operator`: reconciles `EtcdCluster` resources (`concord.dev/v1alpha1`) into a
//! headless Service, a client Service, a members ConfigMap, one StatefulSet and a
//! PodDisruptionBudget, and drives etcd membership one step at a time (see the library's
//! `controller` and `planner` modules).
//!
//! It runs in a cluster (in-cluster config, as the chart deploys it) or as a local process with a
//! kubeconfig. Members are reached by their pod DNS names `<pod>.<cluster>.<ns>.svc:2379`, so a
//! local process needs those names to resolve (cluster DNS, or `/etc/hosts` entries).
//!
//! Flags (each also read from the environment variable named in brackets):
//!
//! | flag | default | meaning |
//! |---|---|---|
//! | `--kubeconfig PATH` | `KUBECONFIG` (kube's rules), in-cluster, `~/.kube/config` | kubeconfig to use (its current context) |
//! | `--namespace NS` [`CONCORD_OPERATOR_NAMESPACE`] | all namespaces | watch only this namespace |
//! | `--metrics-addr ADDR` [`CONCORD_OPERATOR_METRICS_ADDR`] | `0.0.0.0:8080` | `/metrics` and `/healthz`; port 0 picks one (logged) |
//! | `--leader-election` [`CONCORD_OPERATOR_LEADER_ELECTION`] | off | hold a `coordination.k8s.io/v1` Lease before reconciling |
//! | `--leader-election-namespace NS` [`POD_NAMESPACE`] | `--namespace`, else `default` | namespace of the Lease |
//! | `--leader-election-id NAME` | `concord-operator` | name of the Lease |
//! | `--lease-duration-seconds N` | 15 | how long a silent holder keeps the Lease |
//! | `--identity ID` [`POD_NAME`] | host name + pid | this replica's holder identity |
//! | `--log-format text\|json` [`CONCORD_OPERATOR_LOG_FORMAT`] | `text` | log output; `RUST_LOG` filters (default `info`) |
//!
//! SIGTERM or SIGINT stops it gracefully: in-flight reconciliations finish, the Lease is
//! released, the metrics server stops. Exit codes: 0 after a signal, 1 on a start-up error or a
//! lost Lease.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use concord_operator::controller::{self, Context};
use concord_operator::leader::LeaderElector;
use concord_operator::metrics::{self, Metrics};
use kube::config::{KubeConfigOptions, Kubeconfig};

#[derive(Parser, Debug)]
#[command(
    name = "concord-operator",
    version,
    about = "Runs EtcdCluster resources"
)]
struct Args {
    /// Kubeconfig file (default: `KUBECONFIG`, which may list several files, else the in-cluster
    /// config, else ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "CONCORD_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Address of the metrics and health endpoint.
    #[arg(
        long,
        env = "CONCORD_OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    metrics_addr: SocketAddr,
    /// Hold a Lease before reconciling (for more than one replica).
    #[arg(long, env = "CONCORD_OPERATOR_LEADER_ELECTION")]
    leader_election: bool,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, default_value = "concord-operator")]
    leader_election_id: String,
    /// Lease duration in seconds.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Holder identity (default: host name and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log format.
    #[arg(long, env = "CONCORD_OPERATOR_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn client(args: &Args) -> anyhow::Result<kube::Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// Resolves on SIGTERM or SIGINT.
async fn signalled() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(&args.log_format);
    let client = client(&args).await?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "concord-operator".into());
        format!("{host}-{}", std::process::id())
    });

    let metrics = Arc::new(Metrics::default());
    let listener = metrics::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding --metrics-addr {}", args.metrics_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let metrics_server = tokio::spawn(metrics::serve(listener, metrics.clone(), stopped()));
    let signal = tokio::spawn(async move {
        signalled().await;
        let _ = stop_tx.send(true);
    });

    let mut elector = None;
    if args.leader_election {
        let ns = args
            .leader_election_namespace
            .clone()
            .or_else(|| args.namespace.clone())
            .unwrap_or_else(|| "default".into());
        let duration = Duration::from_secs(args.lease_duration_seconds.max(2));
        let mut e = LeaderElector::new(
            client.clone(),
            &ns,
            &args.leader_election_id,
            &identity,
            duration,
        );
        tracing::info!(lease = %args.leader_election_id, namespace = %ns, identity = %identity, "waiting for the leader lease");
        tokio::select! {
            _ = e.acquire(duration / 4) => {}
            _ = stopped() => return Ok(()),
        }
        tracing::info!(identity = %identity, "acquired the leader lease");
        elector = Some((e, duration));
    }
    metrics.leader.set(1);

    let pdb = controller::discover_pdb(&client).await;
    match &pdb {
        Some(ar) => tracing::info!(api_version = %ar.api_version, "PodDisruptionBudget API"),
        None => tracing::warn!("no PodDisruptionBudget API served; budgets are skipped"),
    }
    let ctx = Arc::new(Context::new(client, metrics.clone(), pdb, Some(identity)));
    let run = controller::run(ctx, args.namespace.clone(), stopped());

    let lost = match &mut elector {
        Some((e, d)) => {
            let renew = *d / 3;
            tokio::select! {
                _ = run => false,
                _ = e.hold(renew) => true,
            }
        }
        None => {
            run.await;
            false
        }
    };
    metrics.leader.set(0);
    if let Some((mut e, _)) = elector {
        if lost {
            tracing::error!("lost the leader lease; exiting");
            std::process::exit(1);
        }
        if let Err(err) = e.release().await {
            tracing::warn!(error = %err, "releasing the leader lease");
        }
    }
    signal.abort();
    let _ = metrics_server.await;
    tracing::info!("stopped");
    Ok(())
}
