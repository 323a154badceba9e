//! The child objects of an `EtcdCluster`, built as pure values for server-side apply: the
//! headless Service (peer DNS), the client Service, the ConfigMap holding
//! `ETCD_INITIAL_CLUSTER`/`ETCD_INITIAL_CLUSTER_STATE`, the StatefulSet, and the
//! PodDisruptionBudget (as JSON, for whichever `policy` version discovery found).
//!
//! Every object carries an owner reference to the cluster and the common labels. Nothing here
//! talks to the API server, and nothing here sets a field that a 1.20 apiserver rejects (no
//! `persistentVolumeClaimRetentionPolicy`, `minReadySeconds`, `internalTrafficPolicy`,
//! `unhealthyPodEvictionPolicy`, ...).
//!
//! Naming, for a cluster `c` in namespace `ns` with cluster domain `d`: StatefulSet `c`, headless
//! Service `c` (so member `k` is `c-k.c.ns.svc.d`), client Service `c-client`, ConfigMap
//! `c-members`, PDB `c`, claims `data-c-k`.
//!
//! Probes: every member serves `/metrics`, `/livez` and `/readyz` on a plain-HTTP metrics
//! listener (`--listen-metrics-urls=http://0.0.0.0:2381`, container port `metrics`), TLS or not;
//! the liveness and readiness probes use it, so they never depend on the client listener.
//!
//! TLS: with `spec.tls.clientSecretName` members serve clients on `https` with the Secret's
//! `tls.crt`/`tls.key` (etcd's `--cert-file`/`--key-file`) and require client certificates
//! signed by its `ca.crt` (`--client-cert-auth --trusted-ca-file`); the kubelet's probes, which
//! present none, go to the metrics listener. With `spec.tls.peerSecretName` peers use `https`
//! with mutual authentication (`--peer-client-cert-auth`).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource,
    EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe, SecretVolumeSource, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::EtcdCluster;

/// Field manager of every server-side apply.
pub const MANAGER: &str = "concord-operator";
/// Client port of every member.
pub const CLIENT_PORT: u16 = 2379;
/// Peer port of every member.
pub const PEER_PORT: u16 = 2380;
/// Plain-HTTP metrics and health port of every member (the probes' port).
pub const METRICS_PORT: u16 = 2381;
/// Name of the metrics container port, which the probes name.
const METRICS_PORT_NAME: &str = "metrics";
/// Mount point of the member's data volume.
const DATA_MOUNT: &str = "/var/lib/etcd";
/// Name of the data volume (and of the claim template: claims are `data-<sts>-<k>`).
pub const DATA_VOLUME: &str = "data";
/// Mount point of the peer TLS secret.
const PEER_TLS_MOUNT: &str = "/etc/etcd/peer-tls";
/// Mount point of the client TLS secret.
const CLIENT_TLS_MOUNT: &str = "/etc/etcd/client-tls";

/// Names of a cluster's children and member addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// Cluster (and StatefulSet, headless Service, PDB) name.
    pub cluster: String,
    /// Namespace.
    pub namespace: String,
    /// DNS domain of the Kubernetes cluster (`spec.clusterDomain`); empty: names end in `.svc`.
    pub domain: String,
    /// Whether members serve clients over TLS (`https` client URLs).
    pub client_tls: bool,
    /// Whether members talk to each other over TLS (`https` peer URLs).
    pub peer_tls: bool,
}

impl Names {
    /// Names for `cluster`.
    pub fn of(cluster: &EtcdCluster) -> Names {
        let tls = cluster.spec.tls.as_ref();
        Names {
            cluster: cluster.name_any(),
            namespace: cluster.namespace().unwrap_or_else(|| "default".to_owned()),
            domain: cluster.spec.cluster_domain.trim_matches('.').to_owned(),
            client_tls: tls.is_some_and(|t| t.client_secret_name.is_some()),
            peer_tls: tls.is_some_and(|t| t.peer_secret_name.is_some()),
        }
    }
    /// The StatefulSet.
    pub fn statefulset(&self) -> &str {
        &self.cluster
    }
    /// The headless Service giving members their DNS names.
    pub fn headless(&self) -> &str {
        &self.cluster
    }
    /// The client Service.
    pub fn client_service(&self) -> String {
        format!("{}-client", self.cluster)
    }
    /// The ConfigMap with the initial-cluster variables.
    pub fn configmap(&self) -> String {
        format!("{}-members", self.cluster)
    }
    /// The PodDisruptionBudget.
    pub fn pdb(&self) -> &str {
        &self.cluster
    }
    /// Pod (and etcd member) name of ordinal `k`.
    pub fn pod(&self, k: u32) -> String {
        format!("{}-{k}", self.cluster)
    }
    /// The data claim of ordinal `k`.
    pub fn pvc(&self, k: u32) -> String {
        format!("{DATA_VOLUME}-{}-{k}", self.cluster)
    }
    /// Ordinal of a claim name, if it is one of this cluster's data claims.
    pub fn pvc_ordinal(&self, name: &str) -> Option<u32> {
        let rest = name.strip_prefix(&format!("{DATA_VOLUME}-{}-", self.cluster))?;
        parse_ordinal(rest)
    }
    /// Ordinal of a pod name, if it is one of this cluster's member pods.
    pub fn pod_ordinal(&self, name: &str) -> Option<u32> {
        parse_ordinal(name.strip_prefix(&format!("{}-", self.cluster))?)
    }
    /// DNS name of the pod named `pod` through the headless Service:
    /// `<pod>.<headless>.<ns>.svc.<domain>` (`$(POD_NAME)` in member flags).
    fn host_of(&self, pod: &str) -> String {
        let mut h = format!("{pod}.{}.{}.svc", self.headless(), self.namespace);
        if !self.domain.is_empty() {
            h.push('.');
            h.push_str(&self.domain);
        }
        h
    }
    /// DNS name of member `k` through the headless Service: `<pod>.<headless>.<ns>.svc.<domain>`.
    pub fn host(&self, k: u32) -> String {
        self.host_of(&self.pod(k))
    }
    /// Peer URL of member `k` (`https` with peer TLS).
    pub fn peer_url(&self, k: u32) -> String {
        let scheme = if self.peer_tls { "https" } else { "http" };
        format!("{scheme}://{}:{PEER_PORT}", self.host(k))
    }
    /// Client URL of member `k`, what the operator dials (`https` with client TLS).
    pub fn client_url(&self, k: u32) -> String {
        let scheme = if self.client_tls { "https" } else { "http" };
        format!("{scheme}://{}:{CLIENT_PORT}", self.host(k))
    }
    /// Ordinal of a peer URL, if its host is one of this cluster's member names (with or
    /// without a cluster domain suffix).
    pub fn peer_url_ordinal(&self, url: &str) -> Option<u32> {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let host = rest.split(['/', ':']).next()?;
        let suffix = format!(".{}.{}.svc", self.headless(), self.namespace);
        let idx = host.find(&suffix)?;
        let tail = &host[idx + suffix.len()..];
        if !(tail.is_empty() || tail.starts_with('.')) {
            return None;
        }
        self.pod_ordinal(&host[..idx])
    }
    /// `ETCD_INITIAL_CLUSTER` for the given ordinals.
    pub fn initial_cluster(&self, ordinals: &[u32]) -> String {
        ordinals
            .iter()
            .map(|&k| format!("{}={}", self.pod(k), self.peer_url(k)))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn parse_ordinal(s: &str) -> Option<u32> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

/// Labels of every child; the first two select the member pods.
pub fn labels(cluster: &EtcdCluster) -> BTreeMap<String, String> {
    let mut l = selector_labels(cluster);
    l.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    l
}

/// Labels selecting the member pods.
pub fn selector_labels(cluster: &EtcdCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "etcd".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), cluster.name_any()),
    ])
}

/// The selector as a label-selector string for list calls.
pub fn selector_string(cluster: &EtcdCluster) -> String {
    selector_labels(cluster)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn meta(cluster: &EtcdCluster, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: cluster.namespace(),
        labels: Some(labels(cluster)),
        owner_references: cluster.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

fn ports() -> Vec<ServicePort> {
    // Server-side apply on 1.20 needs the list key (`protocol`) spelled out.
    [("client", CLIENT_PORT), ("peer", PEER_PORT)]
        .into_iter()
        .map(|(name, port)| ServicePort {
            name: Some(name.into()),
            port: port.into(),
            target_port: Some(IntOrString::Int(port.into())),
            protocol: Some("TCP".into()),
            ..Default::default()
        })
        .collect()
}

/// The headless Service: every member gets `<pod>.<svc>.<ns>.svc`, ready or not (a member must
/// be reachable by its peers before it can become ready).
pub fn headless_service(cluster: &EtcdCluster) -> Service {
    let names = Names::of(cluster);
    Service {
        metadata: meta(cluster, names.headless()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(cluster)),
            ports: Some(ports()),
            ..Default::default()
        }),
        status: None,
    }
}

/// The client Service (for applications; the operator never uses it).
pub fn client_service(cluster: &EtcdCluster) -> Service {
    let names = Names::of(cluster);
    Service {
        metadata: meta(cluster, &names.client_service()),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(cluster)),
            ports: Some(ports()[..1].to_vec()),
            ..Default::default()
        }),
        status: None,
    }
}

/// The ConfigMap read by members at start (etcd ignores both variables once its data dir
/// exists): the members to join and whether the cluster is `new` or `existing`.
pub fn members_configmap(cluster: &EtcdCluster, ordinals: &[u32], new: bool) -> ConfigMap {
    let names = Names::of(cluster);
    ConfigMap {
        metadata: meta(cluster, &names.configmap()),
        data: Some(BTreeMap::from([
            (
                "ETCD_INITIAL_CLUSTER".to_owned(),
                names.initial_cluster(ordinals),
            ),
            (
                "ETCD_INITIAL_CLUSTER_STATE".to_owned(),
                if new { "new" } else { "existing" }.to_owned(),
            ),
        ])),
        ..Default::default()
    }
}

/// Whether the image is upstream etcd (its binary is `etcd`; otherwise `concord`).
pub fn is_upstream_etcd(image: &str) -> bool {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last).starts_with("etcd")
}

/// The member container's arguments: etcd's flags only, with the pod's own name from the
/// downward API (`$(POD_NAME)`), so the same template serves every ordinal.
pub fn member_args(cluster: &EtcdCluster) -> Vec<String> {
    let names = Names::of(cluster);
    let peer_scheme = if names.peer_tls { "https" } else { "http" };
    let client_scheme = if names.client_tls { "https" } else { "http" };
    let host = names.host_of("$(POD_NAME)");
    let uid = cluster.uid().unwrap_or_default();
    let token = format!(
        "{}-{}-{}",
        names.namespace,
        names.cluster,
        uid.split('-').next().unwrap_or("")
    );
    let mut args = vec![
        "--name=$(POD_NAME)".to_owned(),
        format!("--data-dir={DATA_MOUNT}/data"),
        format!("--listen-client-urls={client_scheme}://0.0.0.0:{CLIENT_PORT}"),
        format!("--advertise-client-urls={client_scheme}://{host}:{CLIENT_PORT}"),
        format!("--listen-peer-urls={peer_scheme}://0.0.0.0:{PEER_PORT}"),
        format!("--initial-advertise-peer-urls={peer_scheme}://{host}:{PEER_PORT}"),
        format!("--initial-cluster-token={token}"),
        format!("--listen-metrics-urls=http://0.0.0.0:{METRICS_PORT}"),
    ];
    if names.client_tls {
        args.extend([
            format!("--cert-file={CLIENT_TLS_MOUNT}/tls.crt"),
            format!("--key-file={CLIENT_TLS_MOUNT}/tls.key"),
            format!("--trusted-ca-file={CLIENT_TLS_MOUNT}/ca.crt"),
            "--client-cert-auth=true".to_owned(),
        ]);
    }
    if names.peer_tls {
        args.extend([
            format!("--peer-cert-file={PEER_TLS_MOUNT}/tls.crt"),
            format!("--peer-key-file={PEER_TLS_MOUNT}/tls.key"),
            format!("--peer-trusted-ca-file={PEER_TLS_MOUNT}/ca.crt"),
            "--peer-client-cert-auth=true".to_owned(),
        ]);
    }
    args.extend(cluster.spec.extra_args.iter().cloned());
    args
}

/// A probe of `path` on the plain-HTTP metrics port.
fn http_probe(path: &str, period: i32, failures: i32, initial_delay: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(METRICS_PORT_NAME.into()),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

/// The member StatefulSet with `replicas` pods. Pods start in parallel (a member must not wait
/// for a lower ordinal to be ready: a member without quorum is never ready).
pub fn statefulset(cluster: &EtcdCluster, replicas: u32) -> StatefulSet {
    let names = Names::of(cluster);
    let spec = &cluster.spec;
    let image = cluster.image();
    let binary = if is_upstream_etcd(&image) {
        "/usr/local/bin/etcd"
    } else {
        "/usr/local/bin/concord"
    };
    let mut volume_mounts = vec![VolumeMount {
        name: DATA_VOLUME.into(),
        mount_path: DATA_MOUNT.into(),
        ..Default::default()
    }];
    let mut volumes = vec![];
    if spec.storage.empty_dir {
        volumes.push(Volume {
            name: DATA_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
    }
    let tls = spec.tls.clone().unwrap_or_default();
    for (volume, mount, secret) in [
        ("client-tls", CLIENT_TLS_MOUNT, tls.client_secret_name),
        ("peer-tls", PEER_TLS_MOUNT, tls.peer_secret_name),
    ] {
        let Some(secret) = secret else { continue };
        volume_mounts.push(VolumeMount {
            name: volume.into(),
            mount_path: mount.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: volume.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let claims = (!spec.storage.empty_dir).then(|| {
        vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(DATA_VOLUME.into()),
                labels: Some(labels(cluster)),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: spec.storage.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_owned(),
                        spec.storage.size.clone(),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        }]
    });
    let container = Container {
        name: "etcd".into(),
        image: Some(image),
        image_pull_policy: spec.image_pull_policy.clone(),
        command: Some(vec![binary.to_owned()]),
        args: Some(member_args(cluster)),
        env: Some(vec![EnvVar {
            name: "POD_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: names.configmap(),
                optional: Some(false),
            }),
            ..Default::default()
        }]),
        ports: Some(
            [
                ("client", CLIENT_PORT),
                ("peer", PEER_PORT),
                (METRICS_PORT_NAME, METRICS_PORT),
            ]
            .into_iter()
            .map(|(name, port)| ContainerPort {
                name: Some(name.into()),
                container_port: port.into(),
                protocol: Some("TCP".into()),
                ..Default::default()
            })
            .collect(),
        ),
        readiness_probe: Some(http_probe("/readyz", 5, 3, 1)),
        liveness_probe: Some(http_probe("/livez", 10, 6, 15)),
        resources: spec.resources.clone(),
        volume_mounts: Some(volume_mounts),
        ..Default::default()
    };
    StatefulSet {
        metadata: meta(cluster, names.statefulset()),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas as i32),
            service_name: Some(names.headless().to_owned()),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(cluster)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(cluster)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    node_selector: spec.node_selector.clone(),
                    tolerations: spec.tolerations.clone(),
                    affinity: spec.affinity.clone(),
                    termination_grace_period_seconds: Some(30),
                    ..Default::default()
                }),
            },
            volume_claim_templates: claims,
            ..Default::default()
        }),
        status: None,
    }
}

/// The PodDisruptionBudget as JSON for `api_version` (`policy/v1` or `policy/v1beta1`, same
/// shape): at most the members beyond a quorum of `voters` may be disrupted at once.
pub fn pdb(cluster: &EtcdCluster, api_version: &str, voters: u32) -> serde_json::Value {
    let names = Names::of(cluster);
    let min_available = crate::planner::quorum(voters.max(1) as usize);
    serde_json::json!({
        "apiVersion": api_version,
        "kind": "PodDisruptionBudget",
        "metadata": meta(cluster, names.pdb()),
        "spec": {
            "minAvailable": min_available,
            "selector": { "matchLabels": selector_labels(cluster) },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::EtcdClusterSpec;

    fn cluster(spec: &str) -> EtcdCluster {
        let mut c = EtcdCluster::new("c", serde_json::from_str::<EtcdClusterSpec>(spec).unwrap());
        c.metadata.namespace = Some("ns".into());
        c.metadata.uid = Some("1234abcd-0000".into());
        c
    }

    /// The container's arguments.
    fn args_of(ctr: &serde_json::Value) -> Vec<&str> {
        ctr["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect()
    }

    /// Readiness on `/readyz` and liveness on `/livez`, both plain HTTP on the container port
    /// named `metrics`, which is 2381.
    fn assert_probes_on_metrics_port(ctr: &serde_json::Value) {
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/livez")] {
            let get = &ctr[probe]["httpGet"];
            assert_eq!(get["path"], path, "{probe}");
            assert_eq!(get["scheme"], "HTTP", "{probe}");
            assert_eq!(get["port"], "metrics", "{probe}");
        }
        let ports = ctr["ports"].as_array().unwrap();
        assert!(
            ports
                .iter()
                .any(|p| p["name"] == "metrics" && p["containerPort"] == 2381),
            "{ports:?}"
        );
    }

    #[test]
    fn names_and_ordinals() {
        let n = Names::of(&cluster(r#"{"clusterDomain": ""}"#));
        assert_eq!(n.host(2), "c-2.c.ns.svc");
        assert_eq!(n.peer_url(0), "http://c-0.c.ns.svc:2380");
        assert_eq!(n.peer_url_ordinal("http://c-3.c.ns.svc:2380"), Some(3));
        assert_eq!(
            n.peer_url_ordinal("https://c-3.c.ns.svc.cluster.local:2380"),
            Some(3)
        );
        assert_eq!(n.peer_url_ordinal("http://c-03.c.ns.svc:2380"), None);
        assert_eq!(n.peer_url_ordinal("http://d-3.c.ns.svc:2380"), None);
        assert_eq!(n.peer_url_ordinal("http://c-3.c.other.svc:2380"), None);
        assert_eq!(n.peer_url_ordinal("http://127.0.0.1:2380"), None);
        assert_eq!(n.pvc_ordinal("data-c-12"), Some(12));
        assert_eq!(n.pvc_ordinal("data-cc-1"), None);
        assert_eq!(
            n.initial_cluster(&[0, 1]),
            "c-0=http://c-0.c.ns.svc:2380,c-1=http://c-1.c.ns.svc:2380"
        );
    }

    #[test]
    fn cluster_domain_ends_every_member_name() {
        let n = Names::of(&cluster("{}"));
        assert_eq!(n.host(2), "c-2.c.ns.svc.cluster.local");
        assert_eq!(n.client_url(1), "http://c-1.c.ns.svc.cluster.local:2379");
        assert_eq!(n.peer_url_ordinal(&n.peer_url(4)), Some(4));
        let n = Names::of(&cluster(r#"{"clusterDomain": "k8s.example."}"#));
        assert_eq!(n.peer_url(0), "http://c-0.c.ns.svc.k8s.example:2380");
        let args = member_args(&cluster(r#"{"clusterDomain": "k8s.example"}"#));
        assert!(
            args.contains(
                &"--initial-advertise-peer-urls=http://$(POD_NAME).c.ns.svc.k8s.example:2380"
                    .to_owned()
            )
        );
        assert!(args.contains(
            &"--advertise-client-urls=http://$(POD_NAME).c.ns.svc.k8s.example:2379".to_owned()
        ));
    }

    #[test]
    fn client_and_peer_tls_use_https_the_secrets_and_require_client_certificates() {
        let c = cluster(
            r#"{"clusterDomain": "", "tls": {"clientSecretName": "cli", "peerSecretName": "peer"}}"#,
        );
        let n = Names::of(&c);
        assert_eq!(n.client_url(0), "https://c-0.c.ns.svc:2379");
        assert_eq!(n.peer_url(0), "https://c-0.c.ns.svc:2380");
        let sts = serde_json::to_value(statefulset(&c, 3)).unwrap();
        let pod = &sts["spec"]["template"]["spec"];
        let ctr = &pod["containers"][0];
        let args = args_of(ctr);
        for want in [
            "--listen-client-urls=https://0.0.0.0:2379",
            "--advertise-client-urls=https://$(POD_NAME).c.ns.svc:2379",
            "--cert-file=/etc/etcd/client-tls/tls.crt",
            "--key-file=/etc/etcd/client-tls/tls.key",
            "--trusted-ca-file=/etc/etcd/client-tls/ca.crt",
            "--client-cert-auth=true",
            "--listen-metrics-urls=http://0.0.0.0:2381",
            "--listen-peer-urls=https://0.0.0.0:2380",
            "--peer-cert-file=/etc/etcd/peer-tls/tls.crt",
            "--peer-trusted-ca-file=/etc/etcd/peer-tls/ca.crt",
            "--peer-client-cert-auth=true",
        ] {
            assert!(args.contains(&want), "{want} not in {args:?}");
        }
        // Probes present no client certificate: they go to the plain metrics listener.
        assert_probes_on_metrics_port(ctr);
        let secrets: Vec<(&str, &str)> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().unwrap(),
                    v["secret"]["secretName"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(secrets, [("client-tls", "cli"), ("peer-tls", "peer")]);
        let mounts = ctr["volumeMounts"].as_array().unwrap();
        assert!(mounts.iter().any(|m| m["name"] == "client-tls"
            && m["mountPath"] == "/etc/etcd/client-tls"
            && m["readOnly"] == true));
        let cm = members_configmap(&c, &[0, 1], false);
        assert_eq!(
            cm.data.unwrap()["ETCD_INITIAL_CLUSTER"],
            "c-0=https://c-0.c.ns.svc:2380,c-1=https://c-1.c.ns.svc:2380"
        );
    }

    #[test]
    fn statefulset_uses_etcd_flags_and_downward_api() {
        let c = cluster(
            r#"{"image": "gcr.io/etcd-development/etcd:v3.5.16", "extraArgs": ["--quota-backend-bytes=1000000"]}"#,
        );
        let sts = serde_json::to_value(statefulset(&c, 3)).unwrap();
        let ctr = &sts["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(ctr["command"][0], "/usr/local/bin/etcd");
        let args = args_of(ctr);
        assert!(args.contains(&"--name=$(POD_NAME)"));
        assert!(args.contains(
            &"--initial-advertise-peer-urls=http://$(POD_NAME).c.ns.svc.cluster.local:2380"
        ));
        assert!(args.contains(&"--initial-cluster-token=ns-c-1234abcd"));
        assert!(args.contains(&"--listen-metrics-urls=http://0.0.0.0:2381"));
        assert!(!args.iter().any(|a| a.starts_with("--client-cert-auth")));
        assert!(!args.iter().any(|a| a.starts_with("--trusted-ca-file")));
        assert_probes_on_metrics_port(ctr);
        assert_eq!(args.last(), Some(&"--quota-backend-bytes=1000000"));
        assert_eq!(
            ctr["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
        assert_eq!(ctr["envFrom"][0]["configMapRef"]["name"], "c-members");
        assert_eq!(sts["spec"]["replicas"], 3);
        assert_eq!(sts["spec"]["serviceName"], "c");
        assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
        assert_eq!(
            sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
            "data"
        );
        assert_eq!(sts["metadata"]["ownerReferences"][0]["kind"], "EtcdCluster");
        // Fields a 1.20 apiserver does not know are never set.
        let text = sts.to_string();
        for f in [
            "persistentVolumeClaimRetentionPolicy",
            "minReadySeconds",
            "ordinals",
        ] {
            assert!(!text.contains(f), "{f} in {text}");
        }
    }

    #[test]
    fn empty_dir_and_concord_image() {
        let c = cluster(r#"{"image": "concord:0.1.0", "storage": {"emptyDir": true}}"#);
        let sts = serde_json::to_value(statefulset(&c, 1)).unwrap();
        assert!(sts["spec"].get("volumeClaimTemplates").is_none());
        assert_eq!(
            sts["spec"]["template"]["spec"]["volumes"][0]["emptyDir"],
            serde_json::json!({})
        );
        assert_eq!(
            sts["spec"]["template"]["spec"]["containers"][0]["command"][0],
            "/usr/local/bin/concord"
        );
    }

    #[test]
    fn services_configmap_and_pdb() {
        let c = cluster("{}");
        let h = serde_json::to_value(headless_service(&c)).unwrap();
        assert_eq!(h["spec"]["clusterIP"], "None");
        assert_eq!(h["spec"]["publishNotReadyAddresses"], true);
        let cs = serde_json::to_value(client_service(&c)).unwrap();
        assert_eq!(cs["metadata"]["name"], "c-client");
        assert!(cs["spec"].get("clusterIP").is_none());
        let cm = members_configmap(&c, &[0], true);
        let data = cm.data.unwrap();
        assert_eq!(
            data["ETCD_INITIAL_CLUSTER"],
            "c-0=http://c-0.c.ns.svc.cluster.local:2380"
        );
        assert_eq!(data["ETCD_INITIAL_CLUSTER_STATE"], "new");
        let p = pdb(&c, "policy/v1beta1", 5);
        assert_eq!(p["apiVersion"], "policy/v1beta1");
        assert_eq!(p["spec"]["minAvailable"], 3);
        assert_eq!(pdb(&c, "policy/v1", 1)["spec"]["minAvailable"], 1);
    }
}
