//! The requests of each `concord-bench` workload against one etcd v3 endpoint (or a set of
//! connections to several): put, range (linearizable or serializable, of `--range-size` keys),
//! the guarded update, the mixed read/write load, watch fan-out and leases. Each workload checks
//! the answers it gets (a range of prefilled keys must return them all), so a server that
//! answers wrongly fails the run instead of posting a figure. Starting servers is
//! [`super::servers`]' job; this module only sends requests.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use concord_store::proto::etcdserverpb::{
    Compare, LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, WatchCreateRequest, WatchRequest, compare, kv_client::KvClient,
    lease_client::LeaseClient, request_op, watch_client::WatchClient, watch_request,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::Args;
use super::load::{Limit, Progress, Sample, closed_loop, closed_loop_indexed};
use super::report::{Row, Stats};

/// What a workload needs besides its connections: the settings and the server's name (for
/// rows and progress lines).
pub struct Ctx<'a> {
    /// The parsed command line.
    pub args: &'a Args,
    /// Server name in rows (`concord`, `etcd35`, `endpoint`).
    pub server: String,
}

impl Ctx<'_> {
    /// `--duration` when given, else `total` requests.
    pub fn limit(&self, total: usize) -> Limit {
        match self.args.duration {
            Some(d) => Limit::Duration(d),
            None => Limit::Total(total.max(1)),
        }
    }

    /// Progress lines for the run of `what`.
    pub fn progress(&self, what: &str) -> Progress {
        Progress::new(self.args.show_progress(), format!("{} {what}", self.server))
    }

    /// A load row of this server.
    pub fn row(&self, id: &str, title: String, sample: &Sample) -> Row {
        Row::load(id, title, &self.server, sample)
    }
}

/// Key number `n`, zero-padded to `--key-size` bytes (so key order is number order).
/// [`Args::validate`] ensures every key number used fits.
pub fn key(args: &Args, n: usize) -> Vec<u8> {
    format!("{n:0width$}", width = args.key_size).into_bytes()
}

/// Which key of the key space request `i` touches: `i` in order with `--sequential-keys`,
/// else spread over the key space by a multiplicative hash.
pub fn key_index(args: &Args, i: usize) -> usize {
    let space = args.key_space_size.max(1);
    if args.sequential_keys {
        i % space
    } else {
        i.wrapping_mul(2_654_435_761) % space
    }
}

/// Whether request `i` of the mixed workload is a read: the fractional parts of `i` times the
/// golden ratio are evenly spread, so any run of requests has `--read-ratio` reads.
pub fn is_read(read_ratio: f64, i: usize) -> bool {
    let frac = ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
    frac < read_ratio
}

async fn put(args: &Args, ch: Channel, n: usize, value: Vec<u8>) -> Result<()> {
    KvClient::new(ch)
        .put(PutRequest {
            key: key(args, n),
            value,
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// A range of `--range-size` prefilled keys from key number `n` (fewer at the key space's end);
/// fails unless all of them come back.
async fn range(args: &Args, ch: Channel, n: usize, serializable: bool) -> Result<()> {
    let size = args.range_size.max(1);
    let end = (n + size).min(args.key_space_size);
    let r = KvClient::new(ch)
        .range(RangeRequest {
            key: key(args, n),
            range_end: if size > 1 { key(args, end) } else { vec![] },
            serializable,
            ..Default::default()
        })
        .await?
        .into_inner();
    if r.kvs.len() != end - n {
        bail!(
            "a range of {} prefilled keys from key {n} returned {}",
            end - n,
            r.kvs.len()
        );
    }
    Ok(())
}

/// Puts with `clients` clients over `chans` to keys of the key space.
pub async fn put_load(
    ctx: &Ctx<'_>,
    chans: &[Channel],
    clients: usize,
    limit: Limit,
    what: &str,
) -> Result<Sample> {
    let a = Arc::new(ctx.args.clone());
    let value = vec![b'v'; a.val_size];
    closed_loop(chans, clients, limit, &ctx.progress(what), move |ch, i| {
        let a = a.clone();
        let value = value.clone();
        async move { put(&a, ch, key_index(&a, i), value).await }
    })
    .await
}

/// The one-client put loads run in this many rounds per server, the servers taking turns in the
/// order A B, B A, A B, B A: such a load is latency-bound and swings with the disk's state by
/// more than the difference it measures, and neither server should always go first.
pub const ONE_CLIENT_ROUNDS: usize = 4;

/// The one-client put load (`total` requests, or `--duration`) on every target (a server and its
/// connection) in [`ONE_CLIENT_ROUNDS`] rounds; one merged sample per target.
pub async fn one_client_rounds(
    targets: &[(&Ctx<'_>, &Channel)],
    total: usize,
    what: &str,
) -> Result<Vec<Sample>> {
    let mut merged = vec![Sample::default(); targets.len()];
    for round in 0..ONE_CLIENT_ROUNDS {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (ctx, chan) = targets[i];
            let Some(limit) = ctx.limit(total).part(ONE_CLIENT_ROUNDS, round) else {
                continue;
            };
            if targets.len() > 1 {
                eprintln!(
                    "{} {what}, round {} of {ONE_CLIENT_ROUNDS}...",
                    ctx.server,
                    round + 1
                );
            }
            let s = put_load(ctx, std::slice::from_ref(chan), 1, limit, what).await?;
            merged[i] = Sample::merge(std::mem::take(&mut merged[i]), s);
        }
    }
    Ok(merged)
}

/// Writes keys `0..count` once each (the range workloads' key space, or the memory load).
pub async fn prefill(ctx: &Ctx<'_>, chans: &[Channel], count: usize, what: &str) -> Result<Sample> {
    let a = Arc::new(ctx.args.clone());
    let value = vec![b'v'; a.val_size];
    closed_loop(
        chans,
        ctx.args.clients,
        Limit::Total(count),
        &ctx.progress(what),
        move |ch, i| {
            let a = a.clone();
            let value = value.clone();
            async move { put(&a, ch, i, value).await }
        },
    )
    .await
}

/// Ranges over the prefilled key space.
pub async fn range_load(ctx: &Ctx<'_>, chans: &[Channel], serializable: bool) -> Result<Sample> {
    let a = Arc::new(ctx.args.clone());
    let what = if serializable { "range-s" } else { "range" };
    closed_loop(
        chans,
        a.clients,
        ctx.limit(a.total),
        &ctx.progress(what),
        move |ch, i| {
            let a = a.clone();
            async move { range(&a, ch, key_index(&a, i), serializable).await }
        },
    )
    .await
}

/// `--read-ratio` linearizable ranges (as the range workload), the rest puts to the key space.
/// Returns (all requests, the reads, the writes).
pub async fn mixed_load(ctx: &Ctx<'_>, chans: &[Channel]) -> Result<(Sample, Sample, Sample)> {
    let a = Arc::new(ctx.args.clone());
    let ratio = a.read_ratio;
    let value = vec![b'm'; a.val_size];
    let (elapsed, lat) = closed_loop_indexed(
        chans,
        a.clients,
        ctx.limit(a.total),
        &ctx.progress("mixed"),
        move |ch, i| {
            let a = a.clone();
            let value = value.clone();
            async move {
                let n = key_index(&a, i);
                if is_read(a.read_ratio, i) {
                    range(&a, ch, n, false).await
                } else {
                    put(&a, ch, n, value).await
                }
            }
        },
    )
    .await?;
    let (reads, writes): (Vec<_>, Vec<_>) = lat.iter().partition(|(i, _)| is_read(ratio, *i));
    let sample =
        |v: Vec<&(usize, u64)>| Sample::new(v.len(), elapsed, v.iter().map(|l| l.1).collect());
    Ok((sample(lat.iter().collect()), sample(reads), sample(writes)))
}

/// A guarded update in Kubernetes' shape: read the key, then a txn that puts only if its mod
/// revision is unchanged, else reads it.
pub async fn txn_put_load(ctx: &Ctx<'_>, chans: &[Channel]) -> Result<Sample> {
    let a = Arc::new(ctx.args.clone());
    let value = vec![b'u'; a.val_size];
    closed_loop(
        chans,
        a.clients,
        ctx.limit(a.total),
        &ctx.progress("txn-put"),
        move |ch, i| {
            let a = a.clone();
            let value = value.clone();
            async move {
                let k = key(&a, key_index(&a, i));
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
                            key: k.clone(),
                            value,
                            ..Default::default()
                        })),
                    }],
                    failure: vec![RequestOp {
                        request: Some(request_op::Request::RequestRange(RangeRequest {
                            key: k,
                            ..Default::default()
                        })),
                    }],
                };
                kv.txn(txn).await?;
                Ok(())
            }
        },
    )
    .await
}

/// Watch fan-out: `--watchers` streams on one prefix, then `--watch-puts` puts stamped with
/// their send time (microseconds since `t0`). The sample's ops are events delivered, its
/// latencies put-to-event, its rate events per second.
pub async fn watch_load(ctx: &Ctx<'_>, chans: &[Channel], t0: Instant) -> Result<Sample> {
    let args = ctx.args;
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
    closed_loop(
        chans,
        args.clients.min(args.watch_puts),
        Limit::Total(args.watch_puts),
        &ctx.progress("watch puts"),
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
    )
    .await?;
    for r in ready {
        r.await??;
    }
    let elapsed = start.elapsed();
    let mut lat_us = Vec::new();
    while let Some(l) = lat_rx.recv().await {
        lat_us.push(l);
    }
    Ok(Sample::new(lat_us.len(), elapsed, lat_us))
}

/// Lease grants from many clients (a tenth of `--total`, or `--duration`), then one keep-alive
/// per granted lease over one stream per connection. Returns (grants, keep-alives).
pub async fn lease_load(ctx: &Ctx<'_>, chans: &[Channel]) -> Result<(Sample, Sample)> {
    let args = ctx.args;
    let ids = Arc::new(Mutex::new(Vec::new()));
    let sink = ids.clone();
    let grants = closed_loop(
        chans,
        args.clients,
        ctx.limit(args.total / 10),
        &ctx.progress("lease grant"),
        move |ch, _| {
            let sink = sink.clone();
            async move {
                let r = LeaseClient::new(ch)
                    .lease_grant(LeaseGrantRequest { ttl: 600, id: 0 })
                    .await?;
                sink.lock()
                    .map_err(|_| anyhow!("poisoned"))?
                    .push(r.into_inner().id);
                Ok(())
            }
        },
    )
    .await?;
    let ids: Vec<i64> = ids.lock().map_err(|_| anyhow!("poisoned"))?.clone();
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
    let keepalives = Sample::new(lat_us.len(), start.elapsed(), lat_us);
    Ok((grants, keepalives))
}

/// One step of the single-member workloads (`Debug` names it in the progress lines); a server runs them in [`steps`]' order, and with
/// several servers alive at once each step runs on every server before the next step starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Put,
    Put1,
    /// Writes the key space the range, txn-put and mixed loads read.
    Prefill,
    Range,
    RangeS,
    TxnPut,
    Mixed,
    Watch,
    Lease,
}

/// The steps `--workloads` selects, in order.
pub fn steps(args: &Args) -> Vec<Step> {
    let mut out = Vec::new();
    let mut add = |w: &str, step| {
        if args.wants(w) {
            out.push(step);
        }
    };
    add("put", Step::Put);
    add("put1", Step::Put1);
    if ["range", "range-s", "txn-put", "mixed"]
        .iter()
        .any(|w| args.wants(w))
    {
        out.push(Step::Prefill);
    }
    let mut add = |w: &str, step| {
        if args.wants(w) {
            out.push(step);
        }
    };
    add("range", Step::Range);
    add("range-s", Step::RangeS);
    add("txn-put", Step::TxnPut);
    add("mixed", Step::Mixed);
    add("watch", Step::Watch);
    add("lease", Step::Lease);
    out
}

/// The `put1` rows of every target (a server and its first connection), taking turns in rounds.
pub async fn put1_rows(targets: &[(&Ctx<'_>, &Channel)], rows: &mut Vec<Row>) -> Result<()> {
    let Some(args) = targets.first().map(|(c, _)| c.args) else {
        return Ok(());
    };
    let samples = one_client_rounds(targets, args.total / 10, "put1").await?;
    for ((ctx, _), s) in targets.iter().zip(samples) {
        rows.push(ctx.row("put1", "put (1 client)".to_owned(), &s));
    }
    Ok(())
}

/// Runs `step` over `chans`, appending its rows. `t0` is the watch load's clock.
pub async fn run_step(
    ctx: &Ctx<'_>,
    chans: &[Channel],
    step: Step,
    t0: Instant,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let args = ctx.args;
    let range_what = if args.range_size > 1 {
        format!("{} keys", args.range_size)
    } else {
        "1 key".to_owned()
    };
    match step {
        Step::Put => {
            let s = put_load(ctx, chans, args.clients, ctx.limit(args.total), "put").await?;
            rows.push(ctx.row("put", format!("put ({} clients)", args.clients), &s));
        }
        Step::Put1 => put1_rows(&[(ctx, &chans[0])], rows).await?,
        Step::Prefill => {
            prefill(ctx, chans, args.key_space_size, "prefill").await?;
        }
        Step::Range => {
            let s = range_load(ctx, chans, false).await?;
            rows.push(ctx.row("range", format!("range, linearizable ({range_what})"), &s));
        }
        Step::RangeS => {
            let s = range_load(ctx, chans, true).await?;
            rows.push(ctx.row("range-s", format!("range, serializable ({range_what})"), &s));
        }
        Step::TxnPut => {
            let s = txn_put_load(ctx, chans).await?;
            rows.push(ctx.row("txn-put", "guarded update (range + txn)".to_owned(), &s));
        }
        Step::Mixed => {
            let (all, reads, writes) = mixed_load(ctx, chans).await?;
            let title = format!(
                "mixed: {:.0}% linearizable ranges ({range_what}), the rest puts",
                args.read_ratio * 100.0
            );
            let mut row = ctx.row("mixed", title, &all);
            row.extra
                .insert("reads".to_owned(), Stats::from(&reads).json());
            row.extra
                .insert("writes".to_owned(), Stats::from(&writes).json());
            rows.push(row);
        }
        Step::Watch => {
            let s = watch_load(ctx, chans, t0).await?;
            let title = format!(
                "watch fan-out ({} watchers): events/s, put-to-event latency",
                args.watchers
            );
            rows.push(ctx.row("watch", title, &s));
        }
        Step::Lease => {
            let (g, k) = lease_load(ctx, chans).await?;
            rows.push(ctx.row("lease-grant", "lease grant".to_owned(), &g));
            rows.push(ctx.row("lease-keepalive", "lease keep-alive".to_owned(), &k));
        }
    }
    Ok(())
}

/// The single-member workloads selected by `--workloads` over `chans`, appended to `rows`.
pub async fn run_workloads(ctx: &Ctx<'_>, chans: &[Channel], rows: &mut Vec<Row>) -> Result<()> {
    let t0 = Instant::now();
    for step in steps(ctx.args) {
        run_step(ctx, chans, step, t0, rows).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_ratio_holds_over_any_window() {
        for ratio in [0.0, 0.5, 0.9, 1.0] {
            let reads = (1000..3000).filter(|&i| is_read(ratio, i)).count();
            let want = (2000.0 * ratio) as usize;
            assert!(
                reads.abs_diff(want) <= 20,
                "ratio {ratio}: {reads} reads of 2000"
            );
        }
    }
}
