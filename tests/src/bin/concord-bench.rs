//! `concord-bench`: runs the same workloads against concord and etcd side by side on this
//! machine and prints the figures and their ratio, like etcd's `benchmark` tool.
//!
//! Each server is started fresh (on its own loopback address, data dir in a temp dir) by the test
//! harness and, with `--pin`, pinned to CPU 0 while the load generator runs on CPU 1, so the two
//! don't compete for a core. Workloads: `put` (with `--clients` clients and with one client),
//! `range` (linearizable) and `range-s` (serializable) over a prefilled key space, `txn-put`
//! (a guarded update: read, then a txn on the key's mod revision), `watch` (fan-out: events per
//! second and put-to-event latency) and `lease` (grants and keep-alives). After the workloads,
//! the server's peak resident memory and data dir size are read. `put3` then starts a fresh
//! 3-member cluster of the same server on loopback (same flags; with `--pin` every member on
//! CPU 0) and runs the put workload, with `--clients` clients and with one, against its leader
//! (etcd benchmark's `--target-leader`). Figures are noisy: compare servers within one run only.
//! `--endpoint URL` drives a server that is already running (e.g. one under `perf record`)
//! with the single-member workloads instead.
//!
//! Build optimised binaries first: `cargo build --release -p concord-store --bin concord -p
//! concord-tests --bin concord-bench`, then `target/release/concord-bench --pin` (it uses
//! `target/release/concord` when present).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use concord_store::proto::etcdserverpb::{
    Compare, LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, WatchCreateRequest, WatchRequest, compare, kv_client::KvClient,
    lease_client::LeaseClient, request_op, watch_client::WatchClient, watch_request,
};
use concord_tests::{Cluster, Server, ServerKind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser, Debug, Clone)]
#[command(about = "Side-by-side benchmark of concord and etcd on this machine")]
struct Args {
    /// Servers to compare, in order: concord, etcd35, etcd34.
    #[arg(long, value_delimiter = ',', default_value = "concord,etcd35")]
    servers: Vec<String>,
    /// Workloads: put, put1, range, range-s, txn-put, watch, lease, put3 (3-member cluster).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "put,put1,range,range-s,txn-put,watch,lease,put3"
    )]
    workloads: Vec<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 256)]
    clients: usize,
    /// gRPC connections shared by the clients.
    #[arg(long, default_value_t = 16)]
    conns: usize,
    /// Requests per workload (the one-client put runs a tenth of it).
    #[arg(long, default_value_t = 100_000)]
    total: usize,
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    #[arg(long, default_value_t = 256)]
    val_size: usize,
    #[arg(long, default_value_t = 100_000)]
    key_space_size: usize,
    /// Watchers for the watch workload.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Puts observed by the watchers.
    #[arg(long, default_value_t = 2000)]
    watch_puts: usize,
    /// Pin the server to CPU 0 and this tool to CPU 1.
    #[arg(long)]
    pin: bool,
    /// Drive this running server (e.g. `http://127.0.0.1:2379`) instead of starting fresh
    /// ones: for profiling a server started by hand. No memory row, no `put3`; the
    /// key-space of the range workloads is written first, as against a fresh server.
    #[arg(long)]
    endpoint: Option<String>,
}

/// Latency samples of one workload run.
struct Sample {
    ops: usize,
    elapsed: Duration,
    lat_us: Vec<u64>,
}

impl Sample {
    fn qps(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return 0.0;
        }
        let i = ((self.lat_us.len() as f64 * p).ceil() as usize).clamp(1, self.lat_us.len()) - 1;
        self.lat_us[i] as f64 / 1000.0
    }
}

fn key(args: &Args, n: usize) -> Vec<u8> {
    let mut k = format!("{n:0width$}", width = args.key_size).into_bytes();
    k.truncate(args.key_size.max(1));
    k
}

async fn channels(endpoint: &str, n: usize) -> Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let ep = Endpoint::from_shared(endpoint.to_owned())?.tcp_nodelay(true);
        out.push(ep.connect().await.context("connect")?);
    }
    Ok(out)
}

/// Runs `total` requests from `clients` concurrent tasks; `op(client, i)` does request `i`.
async fn closed_loop<F, Fut>(
    chans: &[Channel],
    clients: usize,
    total: usize,
    op: F,
) -> Result<Sample>
where
    F: Fn(Channel, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let op = Arc::new(op);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let ch = chans[c % chans.len()].clone();
        let next = next.clone();
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                op(ch.clone(), i).await?;
                lat.push(t.elapsed().as_micros() as u64);
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut lat_us = Vec::with_capacity(total);
    for t in tasks {
        lat_us.extend(t.await??);
    }
    let elapsed = start.elapsed();
    lat_us.sort_unstable();
    Ok(Sample {
        ops: total,
        elapsed,
        lat_us,
    })
}

async fn put_load(args: &Args, chans: &[Channel], clients: usize, total: usize) -> Result<Sample> {
    let a = Arc::new(args.clone());
    let value = vec![b'v'; args.val_size];
    closed_loop(chans, clients, total, move |ch, i| {
        let a = a.clone();
        let value = value.clone();
        async move {
            let k = key(&a, (i.wrapping_mul(2_654_435_761)) % a.key_space_size);
            KvClient::new(ch)
                .put(PutRequest {
                    key: k,
                    value,
                    ..Default::default()
                })
                .await?;
            Ok(())
        }
    })
    .await
}

async fn prefill(args: &Args, chans: &[Channel]) -> Result<()> {
    let a = Arc::new(args.clone());
    let value = vec![b'v'; args.val_size];
    closed_loop(chans, args.clients, args.key_space_size, move |ch, i| {
        let a = a.clone();
        let value = value.clone();
        async move {
            KvClient::new(ch)
                .put(PutRequest {
                    key: key(&a, i),
                    value,
                    ..Default::default()
                })
                .await?;
            Ok(())
        }
    })
    .await?;
    Ok(())
}

async fn range_load(args: &Args, chans: &[Channel], serializable: bool) -> Result<Sample> {
    let a = Arc::new(args.clone());
    closed_loop(chans, args.clients, args.total, move |ch, i| {
        let a = a.clone();
        async move {
            let k = key(&a, (i.wrapping_mul(2_654_435_761)) % a.key_space_size);
            let r = KvClient::new(ch)
                .range(RangeRequest {
                    key: k,
                    serializable,
                    ..Default::default()
                })
                .await?;
            if r.into_inner().kvs.is_empty() {
                bail!("a prefilled key is missing");
            }
            Ok(())
        }
    })
    .await
}

/// A guarded update: read the key, then put only if its mod revision is unchanged.
async fn txn_put_load(args: &Args, chans: &[Channel]) -> Result<Sample> {
    let a = Arc::new(args.clone());
    let value = vec![b'u'; args.val_size];
    closed_loop(chans, args.clients, args.total, move |ch, i| {
        let a = a.clone();
        let value = value.clone();
        async move {
            let k = key(&a, (i.wrapping_mul(2_654_435_761)) % a.key_space_size);
            let mut kv = KvClient::new(ch);
            let got = kv
                .range(RangeRequest {
                    key: k.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let rev = got.kvs.first().map_or(0, |kv| kv.mod_revision);
            let txn = TxnRequest {
                compare: vec![Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Mod as i32,
                    key: k.clone(),
                    range_end: vec![],
                    target_union: Some(compare::TargetUnion::ModRevision(rev)),
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: k,
                        value,
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            };
            kv.txn(txn).await?;
            Ok(())
        }
    })
    .await
}

/// Watch fan-out: `watchers` streams on one prefix, then puts stamped with their send time.
/// Returns (events per second delivered, put-to-event latency sample).
async fn watch_load(args: &Args, chans: &[Channel], t0: Instant) -> Result<(f64, Sample)> {
    let (lat_tx, mut lat_rx) = mpsc::unbounded_channel::<u64>();
    let mut ready = Vec::new();
    for w in 0..args.watchers {
        let ch = chans[w % chans.len()].clone();
        let (tx, rx) = mpsc::channel(4);
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: b"bench-w/".to_vec(),
                    range_end: b"bench-w0".to_vec(),
                    ..Default::default()
                },
            )),
        })
        .await?;
        let mut stream = WatchClient::new(ch)
            .watch(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = stream.message().await?.context("watch stream closed")?;
        if !first.created {
            bail!("watch not created: {first:?}");
        }
        let lat_tx = lat_tx.clone();
        let want = args.watch_puts;
        ready.push(tokio::spawn(async move {
            let _keep = tx;
            let mut seen = 0;
            while seen < want {
                let Some(r) = stream.message().await? else {
                    bail!("watch stream ended")
                };
                for e in r.events {
                    let v = e.kv.map(|kv| kv.value).unwrap_or_default();
                    let sent = u64::from_le_bytes(
                        v.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8]),
                    );
                    let _ = lat_tx.send((t0.elapsed().as_micros() as u64).saturating_sub(sent));
                    seen += 1;
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    drop(lat_tx);
    let start = Instant::now();
    let val_size = args.val_size.max(8);
    let puts = closed_loop(
        chans,
        args.clients.min(args.watch_puts),
        args.watch_puts,
        move |ch, i| async move {
            let mut value = (t0.elapsed().as_micros() as u64).to_le_bytes().to_vec();
            value.resize(val_size, b'w');
            KvClient::new(ch)
                .put(PutRequest {
                    key: format!("bench-w/{i}").into_bytes(),
                    value,
                    ..Default::default()
                })
                .await?;
            Ok(())
        },
    );
    puts.await?;
    for r in ready {
        r.await??;
    }
    let elapsed = start.elapsed();
    let mut lat_us = Vec::new();
    while let Some(l) = lat_rx.recv().await {
        lat_us.push(l);
    }
    lat_us.sort_unstable();
    let events = lat_us.len();
    Ok((
        events as f64 / elapsed.as_secs_f64(),
        Sample {
            ops: events,
            elapsed,
            lat_us,
        },
    ))
}

/// Lease grants from many clients, then keep-alives over one stream per connection.
async fn lease_load(args: &Args, chans: &[Channel]) -> Result<(Sample, Sample)> {
    let total = (args.total / 10).max(1);
    let ids = Arc::new(std::sync::Mutex::new(Vec::with_capacity(total)));
    let sink = ids.clone();
    let grants = closed_loop(chans, args.clients, total, move |ch, _| {
        let sink = sink.clone();
        async move {
            let r = LeaseClient::new(ch)
                .lease_grant(LeaseGrantRequest { ttl: 600, id: 0 })
                .await?;
            sink.lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .push(r.into_inner().id);
            Ok(())
        }
    })
    .await?;
    let ids: Vec<i64> = ids.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    let start = Instant::now();
    let mut tasks = Vec::new();
    let per = ids.len().div_ceil(chans.len());
    for (c, chunk) in ids.chunks(per.max(1)).enumerate() {
        let ch = chans[c % chans.len()].clone();
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(64);
            // gRPC-Go servers send response headers with the first response, so the first
            // request must be queued before the call can complete.
            let mut t = Instant::now();
            tx.send(LeaseKeepAliveRequest { id: chunk[0] }).await?;
            let mut stream = LeaseClient::new(ch)
                .lease_keep_alive(ReceiverStream::new(rx))
                .await?
                .into_inner();
            let mut lat = Vec::with_capacity(chunk.len());
            for (n, id) in chunk.iter().enumerate() {
                if n > 0 {
                    t = Instant::now();
                    tx.send(LeaseKeepAliveRequest { id: *id }).await?;
                }
                let r = stream
                    .message()
                    .await?
                    .context("keep-alive stream closed")?;
                if r.ttl <= 0 {
                    bail!("keep-alive of a live lease answered TTL {}", r.ttl);
                }
                lat.push(t.elapsed().as_micros() as u64);
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut lat_us = Vec::new();
    for t in tasks {
        lat_us.extend(t.await??);
    }
    lat_us.sort_unstable();
    let keepalives = Sample {
        ops: lat_us.len(),
        elapsed: start.elapsed(),
        lat_us,
    };
    Ok((grants, keepalives))
}

fn proc_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn pin(pid: i32, cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid), &set)?;
    Ok(())
}

/// One row of the report: workload, server, figures.
type Row = (String, String, String);

/// Flags every benchmarked server (and cluster member) gets: a quota the runs cannot reach.
const SERVER_FLAGS: &[&str] = &["--quota-backend-bytes=8589934592"];

fn fmt_sample(s: &Sample) -> String {
    format!(
        "{:>9.0} ops/s  p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  ({} ops in {:.1}s)",
        s.qps(),
        s.pct(0.50),
        s.pct(0.90),
        s.pct(0.99),
        s.ops,
        s.elapsed.as_secs_f64()
    )
}

/// The `put3` rows: a fresh 3-member cluster of `kind`, puts against its leader.
async fn run_cluster(args: &Args, kind: ServerKind, rows: &mut Vec<Row>) -> Result<()> {
    let cluster = Cluster::start_with(kind, 3, SERVER_FLAGS)?;
    if args.pin {
        for m in &cluster.members {
            pin(m.pid().context("member pid")? as i32, 0)?;
        }
    }
    let leader = cluster.agreed_leader(&[0, 1, 2]).await?;
    let chans = channels(&cluster.members[leader].endpoint(), args.conns).await?;
    let name = format!("{kind:?}");
    let s = put_load(args, &chans, args.clients, args.total).await?;
    rows.push((
        format!("put, 3 members, to the leader ({} clients)", args.clients),
        name.clone(),
        fmt_sample(&s),
    ));
    let s = put_load(args, &chans[..1], 1, (args.total / 10).max(1)).await?;
    rows.push((
        "put, 3 members, to the leader (1 client)".to_string(),
        name,
        fmt_sample(&s),
    ));
    Ok(())
}

async fn run_server(args: &Args, kind: ServerKind, rows: &mut Vec<Row>) -> Result<()> {
    let server = Server::builder(kind).args(SERVER_FLAGS).start()?;
    let pid = server.pid().context("server pid")?;
    if args.pin {
        pin(pid as i32, 0)?;
    }
    let name = format!("{kind:?}");
    let chans = channels(&server.endpoint(), args.conns).await?;
    run_workloads(args, &name, &chans, rows).await?;
    rows.push((
        "memory and disk".to_string(),
        name,
        format!(
            "peak RSS {} MB, RSS now {} MB, data dir {} MB",
            proc_kb(pid, "VmHWM:") / 1024,
            proc_kb(pid, "VmRSS:") / 1024,
            dir_bytes(server.data_dir()) >> 20
        ),
    ));
    Ok(())
}

/// The single-member workloads of `args` over `chans`, recorded under server `name`.
async fn run_workloads(
    args: &Args,
    name: &str,
    chans: &[Channel],
    rows: &mut Vec<Row>,
) -> Result<()> {
    let chans = chans.to_vec();
    let t0 = Instant::now();
    let mut record = |w: &str, s: String| rows.push((w.to_string(), name.to_string(), s));
    let fmt = fmt_sample;
    let want = |w: &str| args.workloads.iter().any(|x| x == w);
    if want("put") {
        let s = put_load(args, &chans, args.clients, args.total).await?;
        record(&format!("put ({} clients)", args.clients), fmt(&s));
    }
    if want("put1") {
        let s = put_load(args, &chans[..1], 1, (args.total / 10).max(1)).await?;
        record("put (1 client)", fmt(&s));
    }
    if want("range") || want("range-s") || want("txn-put") {
        prefill(args, &chans).await?;
    }
    if want("range") {
        let s = range_load(args, &chans, false).await?;
        record("range (linearizable)", fmt(&s));
    }
    if want("range-s") {
        let s = range_load(args, &chans, true).await?;
        record("range (serializable)", fmt(&s));
    }
    if want("txn-put") {
        let s = txn_put_load(args, &chans).await?;
        record("guarded update (range + txn)", fmt(&s));
    }
    if want("watch") {
        let (eps, s) = watch_load(args, &chans, t0).await?;
        record(
            &format!("watch fan-out ({} watchers)", args.watchers),
            format!(
                "{eps:>9.0} events/s  put-to-event p50 {:>7.2} ms  p99 {:>7.2} ms",
                s.pct(0.5),
                s.pct(0.99)
            ),
        );
    }
    if want("lease") {
        let (g, k) = lease_load(args, &chans).await?;
        record("lease grant", fmt(&g));
        record("lease keep-alive", fmt(&k));
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    // The harness finds concord next to this binary (target/release when built with --release),
    // or takes CONCORD_BIN.
    if args.endpoint.is_none() {
        eprintln!(
            "using concord at {}",
            concord_tests::concord_bin()?.display()
        );
    }
    run(args)
}

fn run(args: Args) -> Result<()> {
    if args.pin {
        pin(0, 1)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(if args.pin { 1 } else { 2 })
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    if let Some(ep) = &args.endpoint {
        eprintln!("benchmarking {ep}...");
        let name = "endpoint";
        rt.block_on(async {
            let chans = channels(ep, args.conns).await?;
            run_workloads(&args, name, &chans, &mut rows).await
        })?;
    }
    for s in args.servers.iter().filter(|_| args.endpoint.is_none()) {
        let kind = match s.as_str() {
            "concord" => ServerKind::Concord,
            "etcd35" => ServerKind::Etcd35,
            "etcd34" => ServerKind::Etcd34,
            other => bail!("unknown server {other:?}: use concord, etcd35 or etcd34"),
        };
        if args.workloads.iter().any(|w| w != "put3") {
            eprintln!("benchmarking {kind:?}...");
            rt.block_on(run_server(&args, kind, &mut rows))?;
        }
        if args.workloads.iter().any(|w| w == "put3") {
            eprintln!("benchmarking a 3-member {kind:?} cluster...");
            rt.block_on(run_cluster(&args, kind, &mut rows))?;
        }
    }
    println!(
        "concord-bench: {} clients over {} connections, {} requests, {}-byte keys, {}-byte values, {} keys; {}",
        args.clients,
        args.conns,
        args.total,
        args.key_size,
        args.val_size,
        args.key_space_size,
        if args.pin {
            "server pinned to CPU 0, load generator to CPU 1"
        } else {
            "not pinned"
        }
    );
    let mut by_workload: Vec<String> = Vec::new();
    let mut table: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for (w, server, fig) in rows {
        if !by_workload.contains(&w) {
            by_workload.push(w.clone());
        }
        table.entry(w).or_default().push((server, fig));
    }
    for w in by_workload {
        println!("\n{w}");
        let entries = &table[&w];
        for (server, fig) in entries {
            println!("  {server:<8} {fig}");
        }
        let qps: Vec<f64> = entries
            .iter()
            .filter_map(|(_, f)| f.split_whitespace().next().and_then(|v| v.parse().ok()))
            .collect();
        if qps.len() >= 2 && qps[1] > 0.0 {
            println!(
                "  ratio    {:.2}x ({} / {})",
                qps[0] / qps[1],
                entries[0].0,
                entries[1].0
            );
        }
    }
    Ok(())
}
