//! `concord-bench`: runs the same workloads against concord and etcd side by side on this
//! machine and prints the figures and their ratio, in the spirit of etcd's `benchmark` tool.
//!
//! Each server is started fresh (on its own loopback address, data dir in a temp dir) by the test
//! harness and, with `--pin`, pinned to CPU 0 while the load generator runs on CPU 1, so the two
//! don't compete for a core. All servers start at once and take turns at each workload, so
//! both see the same machine state (`--alternate=false`: one after the other, each through every
//! workload). The workloads:
//!
//! - `put` (`--clients` clients) and `put1` (one client), to keys of `--key-space-size` keys,
//!   spread by a hash or in order (`--sequential-keys`);
//! - `range` (linearizable) and `range-s` (serializable) of `--range-size` keys over a prefilled
//!   key space; `txn-put`, a guarded update in Kubernetes' shape (read, then a txn comparing the
//!   key's mod revision: put, else get); `mixed`, `--read-ratio` linearizable ranges and puts
//!   (the JSON also has the reads and the writes apart);
//! - `watch` (fan-out: events per second and put-to-event latency) and `lease` (grants, then
//!   keep-alives);
//! - then the server's peak resident memory and data dir size (the `footprint` row);
//! - `mem`: a fresh server loaded with `--mem-keys` keys of `--val-size` bytes: its resident
//!   memory, data dir size, db size (`Status`), and the time from `kill -9` and a restart on the same data dir until a
//!   linearizable read answers;
//! - `put3`: a fresh 3-member cluster of each server on loopback (same flags; with `--pin` every
//!   member on CPU 0), all running at once, puts with `--clients` clients and with one, against
//!   the leader (`--target-leader`, on by default) or spread over all members.
//!
//! The servers take turns at every load; the one-client put loads (`put1`, and `put3`'s) run in
//! four rounds, in the order A B, B A, A B, B A, each server's rounds merged into its row.
//!
//! Every load runs `--total` requests (the one-client and lease-grant loads a tenth of it) or,
//! with `--duration`, for that long. `--endpoints` drives servers that are already running (e.g.
//! one under `perf record`) with the single-member workloads instead. A progress line a second
//! goes to stderr when it is a terminal (or with `--progress`); `--json FILE` writes every figure.
//! Figures are noisy: compare servers within one run only. This module never asserts on speed.

pub mod load;
pub mod report;
pub mod servers;
pub mod workloads;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{ArgAction, Parser};
use serde_json::json;

use crate::ServerKind;
use load::{channels, parse_duration};
use report::Report;
use workloads::{Ctx, run_workloads};

/// Every workload, in the order they run for one server.
pub const WORKLOADS: &[&str] = &[
    "put", "put1", "range", "range-s", "txn-put", "mixed", "watch", "lease", "mem", "put3",
];

/// The command line of `concord-bench`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "concord-bench",
    about = "Side-by-side benchmark of concord and etcd on this machine (or of running endpoints)"
)]
pub struct Args {
    /// Servers to start and compare, in order (the ratio is first/second): concord, etcd35,
    /// etcd34.
    #[arg(long, value_delimiter = ',', default_value = "concord,etcd35")]
    pub servers: Vec<String>,
    /// Workloads: put, put1, range, range-s, txn-put, mixed, watch, lease, mem (memory, disk
    /// and restart with --mem-keys keys), put3 (3-member cluster).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "put,put1,range,range-s,txn-put,mixed,watch,lease,mem,put3"
    )]
    pub workloads: Vec<String>,
    /// Drive these running servers (comma list of URLs, e.g. `http://127.0.0.1:2379`) instead
    /// of starting fresh ones: the single-member workloads only (no mem, footprint or put3
    /// rows). With several and --target-leader, only their leader gets the load.
    #[arg(long, alias = "endpoint", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 256)]
    pub clients: usize,
    /// gRPC connections shared by the clients.
    #[arg(long, default_value_t = 16)]
    pub conns: usize,
    /// Requests per load (the one-client put and lease grants run a tenth of it).
    #[arg(long, default_value_t = 100_000)]
    pub total: usize,
    /// Run each load for this long instead of --total requests (e.g. 30s, 500ms, 2m). The
    /// prefill, watch and memory loads still run their fixed counts.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Key length in bytes (keys are zero-padded numbers).
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value length in bytes.
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Distinct keys the put, range, txn-put and mixed loads touch.
    #[arg(long, default_value_t = 100_000)]
    pub key_space_size: usize,
    /// Touch keys in order (0, 1, 2, ...) instead of spread over the key space.
    #[arg(long)]
    pub sequential_keys: bool,
    /// Keys per range request of the range, range-s and mixed loads.
    #[arg(long, default_value_t = 1)]
    pub range_size: usize,
    /// Share of linearizable ranges in the mixed load (the rest are puts).
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Send a cluster's load (put3, or several --endpoints) to its leader only
    /// (`--target-leader=false`: spread it over all members).
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true")]
    pub target_leader: bool,
    /// Start the servers at once and run each workload on every one in turn, so all see the
    /// same machine state (`--alternate=false`: one server after the other, each through every
    /// workload).
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true")]
    pub alternate: bool,
    /// Watchers for the watch load.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Puts observed by the watchers.
    #[arg(long, default_value_t = 2000)]
    pub watch_puts: usize,
    /// Keys loaded for the memory, disk and restart rows.
    #[arg(long, default_value_t = 1_000_000)]
    pub mem_keys: usize,
    /// Pin the servers to CPU 0 and this tool to CPU 1.
    #[arg(long)]
    pub pin: bool,
    /// Print progress once a second on stderr even when it is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// Write every result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl Args {
    /// Whether `--workloads` names `w`.
    pub fn wants(&self, w: &str) -> bool {
        self.workloads.iter().any(|x| x == w)
    }

    /// Whether progress lines are printed.
    pub fn show_progress(&self) -> bool {
        self.progress || std::io::stderr().is_terminal()
    }

    /// Checks the flags against each other.
    pub fn validate(&self) -> Result<()> {
        for w in &self.workloads {
            if !WORKLOADS.contains(&w.as_str()) {
                bail!("unknown workload {w:?}: use {}", WORKLOADS.join(", "));
            }
        }
        if self.clients == 0 || self.conns == 0 {
            bail!("--clients and --conns must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            bail!("--read-ratio must be between 0 and 1");
        }
        if self.range_size == 0 || self.key_space_size == 0 || self.mem_keys == 0 {
            bail!("--range-size, --key-space-size and --mem-keys must be at least 1");
        }
        let widest = if self.wants("mem") {
            self.key_space_size.max(self.mem_keys)
        } else {
            self.key_space_size
        };
        if widest.to_string().len() > self.key_size {
            bail!(
                "--key-size {} cannot hold {widest} distinct keys (keys are zero-padded numbers)",
                self.key_size
            );
        }
        Ok(())
    }

    fn summary(&self) -> String {
        let amount = match self.duration {
            Some(d) => format!("{d:?} per load"),
            None => format!("{} requests", self.total),
        };
        let order = if self.sequential_keys {
            "sequential"
        } else {
            "spread"
        };
        let mut parts = vec![
            format!("{} clients over {} connections", self.clients, self.conns),
            amount,
            format!("{}-byte keys, {}-byte values", self.key_size, self.val_size),
            format!("{} keys ({order})", self.key_space_size),
            format!(
                "ranges of {} key{}",
                self.range_size,
                if self.range_size == 1 { "" } else { "s" }
            ),
        ];
        if self.wants("mixed") {
            parts.push(format!("mixed {:.0}% reads", self.read_ratio * 100.0));
        }
        if self.wants("mem") {
            parts.push(format!("{} keys for the memory rows", self.mem_keys));
        }
        let pinned = if self.pin {
            "servers pinned to CPU 0, load generator to CPU 1"
        } else {
            "not pinned"
        };
        format!("concord-bench: {}; {pinned}", parts.join(", "))
    }

    fn settings_json(&self) -> serde_json::Value {
        json!({
            "servers": self.servers,
            "workloads": self.workloads,
            "endpoints": self.endpoints,
            "clients": self.clients,
            "conns": self.conns,
            "total": self.total,
            "duration_secs": self.duration.map(|d| d.as_secs_f64()),
            "key_size": self.key_size,
            "val_size": self.val_size,
            "key_space_size": self.key_space_size,
            "sequential_keys": self.sequential_keys,
            "range_size": self.range_size,
            "read_ratio": self.read_ratio,
            "target_leader": self.target_leader,
            "alternate": self.alternate,
            "watchers": self.watchers,
            "watch_puts": self.watch_puts,
            "mem_keys": self.mem_keys,
            "pin": self.pin,
        })
    }
}

fn kind(name: &str) -> Result<ServerKind> {
    Ok(match name {
        "concord" => ServerKind::Concord,
        "etcd35" => ServerKind::Etcd35,
        "etcd34" => ServerKind::Etcd34,
        other => bail!("unknown server {other:?}: use concord, etcd35 or etcd34"),
    })
}

/// Runs the benchmark `args` describes, prints the table on stdout, writes `--json`, and
/// returns the report.
pub fn run(args: Args) -> Result<Report> {
    args.validate()?;
    let kinds = args
        .servers
        .iter()
        .map(|s| kind(s))
        .collect::<Result<Vec<_>>>()?;
    if args.pin {
        servers::pin(0, 1)?;
    }
    // Pinned to one CPU, the load runs on one thread: a multi-thread runtime's worker and
    // `block_on` thread would share that CPU, and its cross-thread wakeups cost about a fifth
    // more CPU per request (measured with range-s). This tool's CPU caps what it can measure.
    let rt = if args.pin {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
    };
    let mut rows = Vec::new();
    if !args.endpoints.is_empty() {
        for w in ["mem", "put3"].iter().filter(|w| args.wants(w)) {
            eprintln!("--endpoints: skipping {w} (it needs servers this tool starts)");
        }
        let ctx = Ctx {
            args: &args,
            server: "endpoint".to_owned(),
        };
        rt.block_on(async {
            let targets = if args.target_leader && args.endpoints.len() > 1 {
                vec![servers::leader_of(&args.endpoints).await?]
            } else {
                args.endpoints.clone()
            };
            eprintln!("benchmarking {}...", targets.join(","));
            let chans = channels(&targets, args.conns).await?;
            run_workloads(&ctx, &chans, &mut rows).await
        })?;
    } else {
        if args.servers.iter().any(|s| s == "concord") {
            eprintln!("using concord at {}", crate::concord_bin()?.display());
        }
        let ctxs: Vec<Ctx> = args
            .servers
            .iter()
            .map(|name| Ctx {
                args: &args,
                server: name.clone(),
            })
            .collect();
        let single = args.workloads.iter().any(|w| w != "put3" && w != "mem");
        // With --alternate every server takes its turn at each workload; without, each server
        // runs all of them before the next one starts.
        let batches: Vec<(usize, usize)> = if args.alternate {
            vec![(0, kinds.len())]
        } else {
            (0..kinds.len()).map(|i| (i, i + 1)).collect()
        };
        for (from, to) in batches {
            let (ctxs, kinds) = (&ctxs[from..to], &kinds[from..to]);
            if single {
                rt.block_on(servers::run_servers(ctxs, kinds, &mut rows))?;
            }
            if args.wants("mem") {
                for (ctx, &kind) in ctxs.iter().zip(kinds) {
                    eprintln!(
                        "loading {} keys into a fresh {}...",
                        args.mem_keys, ctx.server
                    );
                    rt.block_on(servers::run_memory(ctx, kind, &mut rows))?;
                }
            }
            if args.wants("put3") {
                rt.block_on(servers::run_clusters(ctxs, kinds, &mut rows))?;
            }
        }
    }
    let report = Report {
        summary: args.summary(),
        settings: args.settings_json(),
        rows,
    };
    print!("{}", report.table());
    if let Some(path) = &args.json {
        report.write_json(path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("concord-bench").chain(argv.iter().copied()))
            .expect("parses")
    }

    #[test]
    fn flags_parse_like_etcd_benchmark() {
        let a = parse(&[]);
        assert!(a.target_leader && !a.sequential_keys && a.duration.is_none());
        assert_eq!(a.workloads, WORKLOADS);
        a.validate().expect("defaults are valid");
        let a = parse(&[
            "--endpoint",
            "http://127.0.0.1:2379",
            "--target-leader=false",
            "--duration",
            "2s",
            "--sequential-keys",
            "--read-ratio",
            "0.5",
        ]);
        assert_eq!(a.endpoints, ["http://127.0.0.1:2379"]);
        assert!(!a.target_leader && a.sequential_keys);
        assert_eq!(a.duration, Some(Duration::from_secs(2)));
        let a = parse(&[
            "--endpoints",
            "http://a:2379,http://b:2379",
            "--target-leader",
        ]);
        assert_eq!(a.endpoints.len(), 2);
        assert!(a.target_leader);
    }

    #[test]
    fn bad_flag_combinations_are_refused() {
        for argv in [
            &["--workloads", "put,nope"][..],
            &["--read-ratio", "1.5"],
            &["--key-size", "4"],
            &["--key-size", "6", "--workloads", "mem"],
            &["--range-size", "0"],
        ] {
            assert!(parse(argv).validate().is_err(), "{argv:?}");
        }
        parse(&["--key-size", "6", "--workloads", "put"])
            .validate()
            .expect("1M keys need 7 digits only for mem");
    }
}
