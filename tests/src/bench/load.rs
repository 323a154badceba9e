//! The closed-loop load generator of `concord-bench`: a fixed number of client tasks, each
//! sending its next request as soon as the previous one is answered, until a request count or a
//! duration is reached; latency samples, their percentiles, and the once-a-second progress line.
//! It never decides what a request is (that is [`super::workloads`]) and never prints results.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tonic::transport::{Channel, Endpoint};

/// When a closed loop stops.
#[derive(Clone, Copy, Debug)]
pub enum Limit {
    /// After this many requests.
    Total(usize),
    /// When this much time has passed since the loop began: no request starts after it, and
    /// the requests in flight then finish and count.
    Duration(Duration),
}

impl Limit {
    /// Round `round` of this limit split into `rounds` (0-based): an equal share of the
    /// requests (the first ones take the remainder; `None` for a share of none) or of the time.
    pub fn part(self, rounds: usize, round: usize) -> Option<Limit> {
        let rounds = rounds.max(1);
        match self {
            Limit::Total(n) => {
                let share = n / rounds + usize::from(round < n % rounds);
                (share > 0).then_some(Limit::Total(share))
            }
            Limit::Duration(d) => Some(Limit::Duration(d / rounds as u32)),
        }
    }
}

/// Latency samples of one run, sorted ascending (the default: no run at all).
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Requests completed.
    pub ops: usize,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// One latency per request, microseconds, ascending.
    pub lat_us: Vec<u64>,
}

impl Sample {
    /// A sample from unsorted latencies.
    pub fn new(ops: usize, elapsed: Duration, mut lat_us: Vec<u64>) -> Sample {
        lat_us.sort_unstable();
        Sample {
            ops,
            elapsed,
            lat_us,
        }
    }

    /// The runs `a` and `b` as one: their requests, wall times and latencies added up.
    pub fn merge(a: Sample, b: Sample) -> Sample {
        let mut lat_us = a.lat_us;
        lat_us.extend(b.lat_us);
        Sample::new(a.ops + b.ops, a.elapsed + b.elapsed, lat_us)
    }

    /// Completed requests per second.
    pub fn qps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ops as f64 / secs
        } else {
            0.0
        }
    }

    /// The `p` quantile (0 < p <= 1) of the latencies in milliseconds, nearest-rank.
    pub fn pct(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return 0.0;
        }
        let i = ((self.lat_us.len() as f64 * p).ceil() as usize).clamp(1, self.lat_us.len()) - 1;
        self.lat_us[i] as f64 / 1000.0
    }

    /// The largest latency in milliseconds.
    pub fn max(&self) -> f64 {
        self.lat_us.last().map_or(0.0, |&l| l as f64 / 1000.0)
    }
}

/// Prints a line a second on stderr with the requests done so far while a run is going on.
#[derive(Clone, Debug)]
pub struct Progress {
    enabled: bool,
    label: String,
}

impl Progress {
    /// Progress for a run named `label`; silent unless `enabled`.
    pub fn new(enabled: bool, label: impl Into<String>) -> Progress {
        Progress {
            enabled,
            label: label.into(),
        }
    }

    /// Starts reporting the count in `done`; reporting ends when the guard is dropped.
    pub fn start(&self, done: Arc<AtomicUsize>, limit: Limit) -> ProgressGuard {
        let stop = Arc::new(AtomicBool::new(false));
        if self.enabled {
            let label = self.label.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.tick().await;
                let mut last = 0;
                loop {
                    tick.tick().await;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let now = done.load(Ordering::Relaxed);
                    let of = match limit {
                        Limit::Total(n) => format!("{now}/{n} ops"),
                        Limit::Duration(d) => format!(
                            "{now} ops, {:.0}/{:.0}s",
                            start.elapsed().as_secs_f64(),
                            d.as_secs_f64()
                        ),
                    };
                    eprintln!(
                        "  {label}: {of}, {} ops/s in the last second",
                        now.saturating_sub(last)
                    );
                    last = now;
                }
            });
        }
        ProgressGuard { stop }
    }
}

/// Ends a progress report when dropped.
pub struct ProgressGuard {
    stop: Arc<AtomicBool>,
}

impl Drop for ProgressGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `n` gRPC connections to `endpoints`, spread round-robin over them.
pub async fn channels(endpoints: &[String], n: usize) -> Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n.max(1) {
        let endpoint = &endpoints[i % endpoints.len()];
        let ep = Endpoint::from_shared(endpoint.clone())?.tcp_nodelay(true);
        out.push(
            ep.connect()
                .await
                .with_context(|| format!("connecting to {endpoint}"))?,
        );
    }
    Ok(out)
}

/// Runs requests from `clients` concurrent tasks until `limit`; `op(channel, i)` does request
/// `i` (numbered from 0 across all clients). Any failed request fails the run.
pub async fn closed_loop<F, Fut>(
    chans: &[Channel],
    clients: usize,
    limit: Limit,
    progress: &Progress,
    op: F,
) -> Result<Sample>
where
    F: Fn(Channel, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let (elapsed, lat) = closed_loop_indexed(chans, clients, limit, progress, op).await?;
    Ok(Sample::new(
        lat.len(),
        elapsed,
        lat.into_iter().map(|(_, l)| l).collect(),
    ))
}

/// [`closed_loop`], returning the wall time and each request's (number, latency in µs), for
/// loads that mix kinds of requests by their number.
pub async fn closed_loop_indexed<F, Fut>(
    chans: &[Channel],
    clients: usize,
    limit: Limit,
    progress: &Progress,
    op: F,
) -> Result<(Duration, Vec<(usize, u64)>)>
where
    F: Fn(Channel, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let _progress = progress.start(done.clone(), limit);
    let op = Arc::new(op);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients.max(1) {
        let ch = chans[c % chans.len()].clone();
        let next = next.clone();
        let done = done.clone();
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let more = match limit {
                    Limit::Total(n) => i < n,
                    Limit::Duration(d) => start.elapsed() < d,
                };
                if !more {
                    break;
                }
                let t = Instant::now();
                op(ch.clone(), i).await?;
                lat.push((i, t.elapsed().as_micros() as u64));
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    Ok((start.elapsed(), lat))
}

/// Parses a duration: `30s`, `500ms`, `2m`, `1h` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 500ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?} (use ms, s, m or h)"
            ));
        }
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!("{s:?} must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let s = Sample::new(1000, Duration::from_secs(2), (1..=1000).rev().collect());
        assert_eq!(s.qps(), 500.0);
        assert_eq!(s.pct(0.5), 0.5);
        assert_eq!(s.pct(0.9), 0.9);
        assert_eq!(s.pct(0.99), 0.99);
        assert_eq!(s.pct(0.999), 0.999);
        assert_eq!(s.max(), 1.0);
        let empty = Sample::new(0, Duration::ZERO, vec![]);
        assert_eq!((empty.qps(), empty.pct(0.5), empty.max()), (0.0, 0.0, 0.0));
    }

    #[test]
    fn limits_split_into_rounds_and_samples_merge() {
        let parts: Vec<_> = (0..4).map(|r| Limit::Total(30).part(4, r)).collect();
        let totals: Vec<usize> = parts
            .iter()
            .map(|p| match p {
                Some(Limit::Total(n)) => *n,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(totals, [8, 8, 7, 7]);
        assert!(Limit::Total(2).part(4, 2).is_none());
        assert!(matches!(
            Limit::Duration(Duration::from_secs(2)).part(4, 3),
            Some(Limit::Duration(d)) if d == Duration::from_millis(500)
        ));
        let a = Sample::new(2, Duration::from_secs(1), vec![3000, 1000]);
        let b = Sample::new(2, Duration::from_secs(3), vec![2000, 4000]);
        let m = Sample::merge(a, b);
        assert_eq!(
            (m.ops, m.elapsed, m.qps()),
            (4, Duration::from_secs(4), 1.0)
        );
        assert_eq!(m.lat_us, [1000, 2000, 3000, 4000]);
    }

    #[test]
    fn durations_parse() {
        struct TestCase {
            input: &'static str,
            want: Option<Duration>,
        }
        let cases = [
            TestCase {
                input: "30s",
                want: Some(Duration::from_secs(30)),
            },
            TestCase {
                input: "30",
                want: Some(Duration::from_secs(30)),
            },
            TestCase {
                input: "500ms",
                want: Some(Duration::from_millis(500)),
            },
            TestCase {
                input: "2m",
                want: Some(Duration::from_secs(120)),
            },
            TestCase {
                input: "1.5s",
                want: Some(Duration::from_millis(1500)),
            },
            TestCase {
                input: "0s",
                want: None,
            },
            TestCase {
                input: "s",
                want: None,
            },
            TestCase {
                input: "3d",
                want: None,
            },
        ];
        for c in cases {
            assert_eq!(parse_duration(c.input).ok(), c.want, "{}", c.input);
        }
    }
}
