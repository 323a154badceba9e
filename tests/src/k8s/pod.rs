//! One pod on the stand-in node: turning a container spec into a local process (which binary the
//! image stands for, `$(VAR)` expansion, env from values, fields, ConfigMaps and Secrets, volume
//! mounts mapped to host dirs, the wildcard and loopback addresses mapped to the pod's own
//! address), running and restarting it, and probing it (HTTP; HTTPS the kubelet's way, with curl,
//! verifying nothing and presenting no certificate; TCP; exec).
//!
//! This module decides nothing about scheduling or pod lifecycle (that is [`super::node`]); it
//! never sends traffic anywhere but the pod's own loopback address.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Probe, Secret};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::expand;
use super::process;
use crate::server::ServerKind;

/// The `PATH` processes of pods get.
const POD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Which server an image stands for: a repository whose last path component starts with `etcd` is
/// the real etcd (tag `v3.4.*` is etcd 3.4.23, anything else etcd 3.5.16); any other image is
/// concord.
pub(crate) fn image_kind(image: &str) -> ServerKind {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let (repo, tag) = match last.split_once(':') {
        Some((r, t)) => (r, t),
        None => (last, "latest"),
    };
    if repo.starts_with("etcd") {
        let tag = tag.trim_start_matches('v');
        if tag.starts_with("3.4") {
            ServerKind::Etcd34
        } else {
            ServerKind::Etcd35
        }
    } else {
        ServerKind::Concord
    }
}

/// The program and arguments for a container: a server command (`etcd`, `concord`, or none) runs
/// the image's server binary, `etcdctl` the etcdctl matching it; any other command runs as
/// written on this machine (for shell init scripts).
pub(crate) fn resolve_program(
    kind: ServerKind,
    command: &[String],
    args: &[String],
) -> Result<(PathBuf, Vec<String>)> {
    let etcdctl = || match kind {
        ServerKind::Etcd34 => crate::etcd34_bin_dir().join("etcdctl"),
        _ => crate::etcd35_bin_dir().join("etcdctl"),
    };
    let Some(first) = command.first() else {
        return Ok((kind.binary()?, args.to_vec()));
    };
    let base = Path::new(first)
        .file_name()
        .and_then(|b| b.to_str())
        .unwrap_or(first);
    let rest: Vec<String> = command[1..].iter().chain(args).cloned().collect();
    let program = match base {
        "etcd" | "concord" => kind.binary()?,
        "etcdctl" => etcdctl(),
        _ if first.contains('/') => PathBuf::from(first),
        _ => POD_PATH
            .split(':')
            .map(|d| Path::new(d).join(first))
            .find(|p| p.is_file())
            .with_context(|| format!("command {first:?} not found on this machine"))?,
    };
    Ok((program, rest))
}

/// Everything needed to (re)start one container, resolved once per pod instance.
#[derive(Clone, Debug)]
pub(crate) struct ContainerPlan {
    pub name: String,
    pub image: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub log: PathBuf,
    pub readiness: Option<ProbePlan>,
    pub liveness: Option<ProbePlan>,
}

/// A probe, with its action resolved against the pod's address and ports.
#[derive(Clone, Debug)]
pub(crate) struct ProbePlan {
    pub action: ProbeAction,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
}

#[derive(Clone, Debug)]
pub(crate) enum ProbeAction {
    Http {
        addr: (Ipv4Addr, u16),
        path: String,
        /// `scheme: HTTPS`: TLS without verifying the certificate and without a client
        /// certificate, as the kubelet probes.
        https: bool,
    },
    Tcp {
        addr: (Ipv4Addr, u16),
    },
    Exec {
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
    },
}

/// Longest probe period used: probes run at least this often, so tests do not wait on the
/// 10-second default.
const MAX_PROBE_PERIOD: Duration = Duration::from_secs(2);

impl ProbePlan {
    /// Runs the probe once: `true` on success.
    pub async fn run(&self) -> bool {
        let fut = async {
            match &self.action {
                ProbeAction::Http {
                    addr,
                    path,
                    https: false,
                } => http_probe(*addr, path).await,
                ProbeAction::Http {
                    addr,
                    path,
                    https: true,
                } => https_probe(*addr, path, self.timeout).await,
                ProbeAction::Tcp { addr } => tokio::net::TcpStream::connect(*addr).await.is_ok(),
                ProbeAction::Exec { program, args, env } => {
                    let mut cmd = tokio::process::Command::new(program);
                    cmd.args(args)
                        .env_clear()
                        .env("PATH", POD_PATH)
                        .envs(env.iter().map(|(k, v)| (k, v)))
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .kill_on_drop(true);
                    matches!(cmd.status().await, Ok(s) if s.success())
                }
            }
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .unwrap_or(false)
    }
}

async fn http_probe(addr: (Ipv4Addr, u16), path: &str) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: kube-probe/1.20\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        addr.0, addr.1
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(m) => n += m,
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (200..400).contains(&code)
}

/// An HTTPS probe with curl: no certificate check, no client certificate (the kubelet's way).
async fn https_probe(addr: (Ipv4Addr, u16), path: &str, timeout: Duration) -> bool {
    let url = format!("https://{}:{}{path}", addr.0, addr.1);
    let out = tokio::process::Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time"])
        .arg(timeout.as_secs().max(1).to_string())
        .args(["-A", "kube-probe/1.20"])
        .arg(&url)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    let Ok(out) = out else { return false };
    let code: u16 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (200..400).contains(&code)
}

/// The per-instance context a container spec is resolved in.
pub(crate) struct PodContext<'a> {
    pub pod: &'a Pod,
    pub ip: Ipv4Addr,
    pub node_name: &'a str,
    pub hostname: String,
    /// Volume name -> host dir.
    pub volumes: HashMap<String, PathBuf>,
    pub pod_dir: PathBuf,
    pub log_dir: PathBuf,
}

fn field_ref(ctx: &PodContext<'_>, path: &str) -> Option<String> {
    let meta = &ctx.pod.metadata;
    let spec = ctx.pod.spec.as_ref();
    let map_key = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        map.and_then(|m| m.get(key).cloned())
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => Some(ctx.node_name.to_owned()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" | "status.podIPs" => Some(ctx.ip.to_string()),
        "status.hostIP" | "status.hostIPs" => Some("127.0.0.1".to_owned()),
        p if p.starts_with("metadata.labels['") => {
            map_key("metadata.labels['", meta.labels.as_ref())
        }
        p if p.starts_with("metadata.annotations['") => {
            map_key("metadata.annotations['", meta.annotations.as_ref())
        }
        _ => None,
    }
}

/// Makes the process-level rewrites for a value: mount paths to host dirs, then the wildcard and
/// loopback addresses to the pod's address.
fn rewrite(value: &str, mounts: &[(String, String)], ip: Ipv4Addr) -> String {
    let ip = ip.to_string();
    let v = expand::rewrite_mount_paths(value, mounts);
    let v = expand::rewrite_any_address(&v, &ip);
    v.replace("://127.0.0.1:", &format!("://{ip}:"))
        .replace("://localhost:", &format!("://{ip}:"))
}

/// Resolves one container of `ctx.pod` into a [`ContainerPlan`] (reads ConfigMaps and Secrets).
pub(crate) async fn plan_container(
    client: &kube::Client,
    ctx: &PodContext<'_>,
    c: &Container,
) -> Result<ContainerPlan> {
    let ns = ctx.pod.metadata.namespace.clone().unwrap_or_default();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

    // envFrom first, then env in order (each value expanded against earlier ones).
    let mut base = Vec::new();
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match cms.get_opt(&r.name).await? {
                Some(cm) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        base.push((format!("{prefix}{k}"), v));
                    }
                }
                None if r.optional == Some(true) => {}
                None => bail!("envFrom ConfigMap {ns}/{} not found", r.name),
            }
        }
        if let Some(r) = &from.secret_ref {
            match secrets.get_opt(&r.name).await? {
                Some(s) => {
                    for (k, v) in s.data.unwrap_or_default() {
                        base.push((
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        ));
                    }
                }
                None if r.optional == Some(true) => {}
                None => bail!("envFrom Secret {ns}/{} not found", r.name),
            }
        }
    }
    let mut env = Vec::new();
    for e in c.env.iter().flatten() {
        let value = if let Some(src) = &e.value_from {
            if let Some(f) = &src.field_ref {
                field_ref(ctx, &f.field_path)
                    .with_context(|| format!("unsupported fieldRef {}", f.field_path))?
            } else if let Some(r) = &src.config_map_key_ref {
                let v = cms
                    .get_opt(&r.name)
                    .await?
                    .and_then(|cm| cm.data.and_then(|d| d.get(&r.key).cloned()));
                match v {
                    Some(v) => v,
                    None if r.optional == Some(true) => continue,
                    None => bail!(
                        "env {}: ConfigMap key {ns}/{}[{}] not found",
                        e.name,
                        r.name,
                        r.key
                    ),
                }
            } else if let Some(r) = &src.secret_key_ref {
                let v = secrets.get_opt(&r.name).await?.and_then(|s| {
                    s.data.and_then(|d| {
                        d.get(&r.key)
                            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    })
                });
                match v {
                    Some(v) => v,
                    None if r.optional == Some(true) => continue,
                    None => bail!(
                        "env {}: Secret key {ns}/{}[{}] not found",
                        e.name,
                        r.name,
                        r.key
                    ),
                }
            } else {
                // resourceFieldRef: no resources here; leave the variable unset.
                continue;
            }
        } else {
            e.value.clone().unwrap_or_default()
        };
        env.push((e.name.clone(), value));
    }
    let env = expand::build_env(base, env);
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };

    // Mounts: container path -> host dir.
    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let dir = ctx
            .volumes
            .get(&m.name)
            .with_context(|| format!("volumeMount {} names no volume of the pod", m.name))?;
        let sub = m
            .sub_path_expr
            .as_deref()
            .map(|s| expand::expand_vars(s, lookup))
            .or_else(|| m.sub_path.clone())
            .unwrap_or_default();
        let host = if sub.is_empty() {
            dir.clone()
        } else {
            dir.join(sub)
        };
        std::fs::create_dir_all(&host).with_context(|| format!("creating {}", host.display()))?;
        mounts.push((m.mount_path.clone(), host.display().to_string()));
    }

    let kind = image_kind(c.image.as_deref().unwrap_or_default());
    let expand_all = |v: &Vec<String>| -> Vec<String> {
        v.iter()
            .map(|s| rewrite(&expand::expand_vars(s, lookup), &mounts, ctx.ip))
            .collect()
    };
    let command = expand_all(c.command.as_ref().unwrap_or(&Vec::new()));
    let args = expand_all(c.args.as_ref().unwrap_or(&Vec::new()));
    let (program, args) = resolve_program(kind, &command, &args)?;
    let mut env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.clone(), rewrite(v, &mounts, ctx.ip)))
        .collect();
    env.push(("HOSTNAME".to_owned(), ctx.hostname.clone()));

    let cwd = match &c.working_dir {
        Some(w) => PathBuf::from(expand::rewrite_mount_paths(w, &mounts)),
        None => ctx.pod_dir.join("containers").join(&c.name),
    };
    std::fs::create_dir_all(&cwd).with_context(|| format!("creating {}", cwd.display()))?;

    let probe = |p: &Option<Probe>| -> Result<Option<ProbePlan>> {
        let Some(p) = p else { return Ok(None) };
        let port = |port: &IntOrString| -> Result<u16> {
            match port {
                IntOrString::Int(n) => Ok(*n as u16),
                IntOrString::String(name) => c
                    .ports
                    .iter()
                    .flatten()
                    .find(|cp| cp.name.as_deref() == Some(name))
                    .map(|cp| cp.container_port as u16)
                    .with_context(|| format!("probe names unknown port {name}")),
            }
        };
        let host = |h: &Option<String>| -> Ipv4Addr {
            // Any host other than the pod's own would leave the pod: always probe the pod.
            let _ = h;
            ctx.ip
        };
        let action = if let Some(h) = &p.http_get {
            ProbeAction::Http {
                addr: (host(&h.host), port(&h.port)?),
                path: h.path.clone().unwrap_or_else(|| "/".to_owned()),
                https: match h.scheme.as_deref() {
                    None | Some("HTTP") => false,
                    Some("HTTPS") => true,
                    Some(other) => bail!("probe scheme {other} in container {}", c.name),
                },
            }
        } else if let Some(t) = &p.tcp_socket {
            ProbeAction::Tcp {
                addr: (host(&t.host), port(&t.port)?),
            }
        } else if let Some(e) = &p.exec {
            let cmd = expand_all(e.command.as_ref().unwrap_or(&Vec::new()));
            let (program, args) = resolve_program(kind, &cmd, &[])?;
            ProbeAction::Exec {
                program,
                args,
                env: env.clone(),
            }
        } else {
            bail!("unsupported probe (grpc?) in container {}", c.name);
        };
        let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
        Ok(Some(ProbePlan {
            action,
            initial_delay: secs(p.initial_delay_seconds, 0),
            period: secs(p.period_seconds, 10).min(MAX_PROBE_PERIOD),
            timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        }))
    };

    let readiness = probe(&c.readiness_probe)?;
    let liveness = probe(&c.liveness_probe)?;
    Ok(ContainerPlan {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        program,
        args,
        env,
        cwd,
        log: ctx.log_dir.join(format!(
            "{ns}_{}_{}.log",
            ctx.pod.metadata.name.as_deref().unwrap_or_default(),
            c.name
        )),
        readiness,
        liveness,
    })
}

/// One running (or restarting) container.
pub(crate) struct ContainerRun {
    pub plan: ContainerPlan,
    pub child: Option<tokio::process::Child>,
    pub pid: Option<u32>,
    pub started_at: Option<String>,
    pub started: Option<Instant>,
    pub restart_count: i32,
    pub last_exit: Option<(i32, String)>,
    /// Not before this instant (restart back-off).
    pub next_start: Instant,
    pub ready: bool,
    pub readiness_failures: u32,
    pub liveness_failures: u32,
    pub next_readiness: Instant,
    pub next_liveness: Instant,
    /// Whether this is an init container that exited 0.
    pub completed: bool,
}

impl ContainerRun {
    pub fn new(plan: ContainerPlan) -> ContainerRun {
        let now = Instant::now();
        ContainerRun {
            plan,
            child: None,
            pid: None,
            started_at: None,
            started: None,
            restart_count: 0,
            last_exit: None,
            next_start: now,
            ready: false,
            readiness_failures: 0,
            liveness_failures: 0,
            next_readiness: now,
            next_liveness: now,
            completed: false,
        }
    }

    /// Starts the process.
    pub fn start(&mut self) -> Result<()> {
        let p = &self.plan;
        process::log_line(
            &p.log,
            &format!("starting {} {}", p.program.display(), p.args.join(" ")),
        );
        let mut cmd = process::command(&p.program, &p.log)?;
        cmd.args(&p.args)
            .env_clear()
            .env("PATH", POD_PATH)
            .envs(p.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&p.cwd);
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", p.program.display()))?;
        self.pid = child.id();
        self.child = Some(child);
        self.started_at = Some(now_rfc3339());
        let now = Instant::now();
        self.started = Some(now);
        self.ready = false;
        self.readiness_failures = 0;
        self.liveness_failures = 0;
        self.next_readiness = now
            + self
                .plan
                .readiness
                .as_ref()
                .map_or(Duration::ZERO, |r| r.initial_delay);
        self.next_liveness = now
            + self
                .plan
                .liveness
                .as_ref()
                .map_or(Duration::ZERO, |l| l.initial_delay);
        Ok(())
    }

    /// If the process exited, records it and returns its exit code.
    pub fn reap(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                let code = status.code().unwrap_or(128 + 9);
                self.child = None;
                self.pid = None;
                self.ready = false;
                self.last_exit = Some((code, now_rfc3339()));
                process::log_line(&self.plan.log, &format!("exited: {status}"));
                Some(code)
            }
            _ => None,
        }
    }

    /// SIGTERM to the process group, then SIGKILL after `grace`; reaps it.
    pub async fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = self.pid.take() {
            process::signal_group(pid, Signal::SIGTERM);
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                process::signal_group(pid, Signal::SIGKILL);
            }
        }
        let _ = child.kill().await;
        self.ready = false;
        process::log_line(&self.plan.log, "stopped");
    }

    /// Restart back-off after the n-th restart: 1 s doubling up to 10 s (the kubelet's is
    /// 10 s up to 5 min; shorter here so tests do not wait).
    pub fn backoff(&self) -> Duration {
        Duration::from_secs(1u64 << self.restart_count.clamp(0, 3)).min(Duration::from_secs(10))
    }
}

/// The current UTC time as RFC 3339 (seconds), as Kubernetes timestamps are written.
pub(crate) fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_map_to_servers() {
        let cases = [
            ("concord:dev", ServerKind::Concord),
            ("ghcr.io/x/concord:0.1.0", ServerKind::Concord),
            ("quay.io/coreos/etcd:v3.5.16", ServerKind::Etcd35),
            ("gcr.io/etcd-development/etcd:v3.4.23", ServerKind::Etcd34),
            ("etcd:3.4.13-0", ServerKind::Etcd34),
            ("registry.k8s.io/etcd:3.5.9-0", ServerKind::Etcd35),
            ("bitnami/etcd", ServerKind::Etcd35),
            ("localhost:5000/etcd:v3.5.1@sha256:abc", ServerKind::Etcd35),
            ("localhost:5000/concord", ServerKind::Concord),
        ];
        for (image, want) in cases {
            assert_eq!(image_kind(image), want, "{image}");
        }
    }

    #[test]
    fn rewrites_addresses_and_paths() {
        let mounts = vec![("/var/lib/etcd".to_owned(), "/tmp/pvc".to_owned())];
        let ip = Ipv4Addr::new(127, 5, 6, 7);
        assert_eq!(
            rewrite(
                "--listen-client-urls=http://0.0.0.0:2379,http://127.0.0.1:2379",
                &mounts,
                ip
            ),
            "--listen-client-urls=http://127.5.6.7:2379,http://127.5.6.7:2379"
        );
        assert_eq!(
            rewrite("--data-dir=/var/lib/etcd/x", &mounts, ip),
            "--data-dir=/tmp/pvc/x"
        );
        assert_eq!(
            rewrite("http://localhost:2381", &mounts, ip),
            "http://127.5.6.7:2381"
        );
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
