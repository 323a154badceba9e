//! The `EtcdCluster` custom resource (`concord.dev/v1alpha1`, namespaced): its spec (what the
//! user asks for), its status (what the operator observed and is doing), defaults and schema
//! validation. `crdgen` turns these types into `crds/etcdcluster.yaml`.
//!
//! The schema must stay acceptable to the oldest apiserver we support (1.20): no CEL rules, no
//! selectable fields, only structural `default`s and `minimum`s.

// kube's `printcolumn(...)` lists repeat keys such as `type_` by design.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the resource.
pub const GROUP: &str = "concord.dev";
/// The image used when the spec names none.
pub const DEFAULT_IMAGE: &str = concat!("concord:", env!("CARGO_PKG_VERSION"));

/// Desired state of one etcd-compatible cluster: how many voting members, which server image,
/// where members keep their data and how they are scheduled.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "concord.dev",
    version = "v1alpha1",
    kind = "EtcdCluster",
    plural = "etcdclusters",
    shortname = "etcd",
    namespaced,
    status = "EtcdClusterStatus",
    derive = "PartialEq",
    doc = "An etcd-compatible cluster (concord or upstream etcd) run by concord-operator.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.readyMembers"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyMembers",
        description = "members whose server reports healthy"
    ),
    printcolumn(
        name = "Members",
        type_ = "integer",
        json_path = ".status.votingMembers",
        description = "voting members in the etcd member list"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".spec.replicas",
        priority = "1"
    ),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct EtcdClusterSpec {
    /// Number of voting members. The operator changes membership one member at a time, adding
    /// a learner and promoting it when growing, removing the highest ordinal when shrinking.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1))]
    pub replicas: i32,

    /// etcd API version the image provides (shown in `kubectl get`; also the image tag when
    /// `image` is empty and the default repository is used).
    #[serde(default = "default_version")]
    pub version: String,

    /// Container image of the members: a concord image or an upstream etcd 3.5 image. Both are
    /// started with etcd's flags only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Image pull policy (`Always`, `IfNotPresent`, `Never`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,

    /// Where members keep their data.
    #[serde(default)]
    pub storage: StorageSpec,

    /// CPU and memory of each member's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels a member's node must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Taints the members tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// Affinity rules of the member pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// TLS secrets (`tls.crt`, `tls.key`, `ca.crt`) for client and peer traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// Extra etcd flags for every member (`--quota-backend-bytes=...`, ...). Flags the operator
    /// sets itself (names, URLs, data dir, initial cluster) must not be repeated here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,

    /// What happens to a member's PersistentVolumeClaim when the member goes away.
    #[serde(default)]
    pub pvc_retention_policy: PvcRetentionPolicy,

    /// DNS domain of the Kubernetes cluster. Members advertise, and the operator dials, pod DNS
    /// names `<pod>.<cluster>.<namespace>.svc.<clusterDomain>`; empty for names ending in
    /// `.svc`. Set it before the cluster is created: members keep the peer URLs they joined
    /// with.
    #[serde(default = "default_cluster_domain")]
    pub cluster_domain: String,

    /// A member whose pod has not been ready for this long while the member itself is
    /// unreachable is repaired: removed from the cluster, wiped and added again.
    #[serde(default = "default_repair_after")]
    #[schemars(range(min = 30))]
    pub repair_after_seconds: i64,
}

/// Member storage. With `emptyDir: true` data lives only as long as the pod (tests, caches).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each member's volume claim.
    #[serde(default = "default_storage_size")]
    pub size: Quantity,
    /// StorageClass of the claims; the cluster default when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Keep data in an emptyDir instead of a PersistentVolumeClaim.
    #[serde(default)]
    pub empty_dir: bool,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
            empty_dir: false,
        }
    }
}

/// Names of Secrets with TLS material (`tls.crt`, `tls.key`, `ca.crt`). Certificates must name
/// the members' DNS names (`*.<cluster>.<namespace>.svc.<clusterDomain>` covers them).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Secret for the client listener: members serve `https` with its `tls.crt` and `tls.key`
    /// and require client certificates signed by its `ca.crt`; the operator verifies members
    /// with `ca.crt` and presents `tls.crt` as its client certificate (so `tls.crt` must allow
    /// client authentication too). Switching it on or off under running members restarts them
    /// one at a time with the new flags (a StatefulSet rolling update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_name: Option<String>,
    /// Secret for peer traffic between members (`https`, mutually authenticated: the
    /// certificate serves as both server and client certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_secret_name: Option<String>,
}

/// When the operator deletes member PVCs.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcRetentionPolicy {
    /// After a scale-down removed the member: `Retain` (default) or `Delete`.
    #[serde(default)]
    pub when_scaled: PvcPolicy,
    /// After the EtcdCluster is deleted: `Retain` (default) or `Delete`.
    #[serde(default)]
    pub when_deleted: PvcPolicy,
}

impl Default for PvcRetentionPolicy {
    fn default() -> Self {
        PvcRetentionPolicy {
            when_scaled: PvcPolicy::Retain,
            when_deleted: PvcPolicy::Retain,
        }
    }
}

/// Keep or delete a claim.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum PvcPolicy {
    /// Leave the claim (and its data) in place.
    #[default]
    Retain,
    /// Delete the claim.
    Delete,
}

fn default_replicas() -> i32 {
    3
}
fn default_version() -> String {
    "3.5.16".to_owned()
}
fn default_cluster_domain() -> String {
    "cluster.local".to_owned()
}
fn default_repair_after() -> i64 {
    300
}
fn default_storage_size() -> Quantity {
    Quantity("1Gi".to_owned())
}

/// What the operator observed and what it is doing.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Available`, `Progressing` and `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The etcd member list as last observed, with per-member health.
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    /// etcd cluster ID (hex); set once the cluster has bootstrapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Name of the leader member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Members whose server answered a status request.
    #[serde(default)]
    pub ready_members: i32,
    /// Voting (non-learner) members.
    #[serde(default)]
    pub voting_members: i32,
    /// Replicas of the StatefulSet, as set by the operator.
    #[serde(default)]
    pub replicas: i32,
    /// The membership step in flight, recorded before the call that performs it, so that a
    /// restarted operator resumes instead of repeating it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_operation: Option<Operation>,
}

/// A condition in the usual Kubernetes shape.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Available`, `Progressing` or `Degraded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable detail (omitted when empty: a 1.20 apiserver turns `""` into `null`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// RFC 3339 time of the last status change.
    pub last_transition_time: String,
    /// Generation the condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One etcd member as the operator sees it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Member ID (hex, as etcdctl prints it).
    pub id: String,
    /// Member name (the pod name); omitted for a learner that has not started yet.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// First peer URL.
    #[serde(rename = "peerURL")]
    pub peer_url: String,
    /// Whether the member is a learner.
    pub learner: bool,
    /// Whether the member answered a status request.
    pub healthy: bool,
    /// Whether the member is the raft leader.
    pub leader: bool,
}

/// Kind of a membership step.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Action {
    /// Create the first member.
    Bootstrap,
    /// `MemberAdd` as learner.
    AddLearner,
    /// Change the StatefulSet's replicas.
    SetReplicas,
    /// `MemberPromote`.
    Promote,
    /// `MoveLeader`.
    MoveLeader,
    /// `MemberRemove` for a scale-down (or a member outside the spec).
    Remove,
    /// `MemberRemove` of a broken member that will be wiped and added again.
    RemoveForRepair,
    /// Delete a removed member's pod (and claim) so it restarts with an empty data dir.
    Wipe,
    /// Delete the claim of a member that scaled away.
    DeletePvc,
}

/// A recorded membership step (see [`EtcdClusterStatus::pending_operation`]).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// What is being done.
    pub action: Action,
    /// Ordinal of the member concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordinal: Option<i32>,
    /// Member ID (hex) concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
    /// Target member ID (hex) of a leader move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_id: Option<String>,
    /// New StatefulSet replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// UID of the pod a wipe deletes (a different UID at that ordinal means the wipe is done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// RFC 3339 time the step was recorded.
    pub started_at: String,
}

impl EtcdCluster {
    /// Image of the member containers.
    pub fn image(&self) -> String {
        self.spec
            .image
            .clone()
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| DEFAULT_IMAGE.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn defaults_fill_an_empty_spec() {
        let spec: EtcdClusterSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec.replicas, 3);
        assert_eq!(spec.cluster_domain, "cluster.local");
        assert_eq!(spec.storage.size, Quantity("1Gi".into()));
        assert!(!spec.storage.empty_dir);
        assert_eq!(spec.pvc_retention_policy.when_scaled, PvcPolicy::Retain);
    }

    #[test]
    fn schema_validates_replicas_and_has_scale_and_columns() {
        let crd = serde_json::to_value(EtcdCluster::crd()).unwrap();
        let v = &crd["spec"]["versions"][0];
        let replicas =
            &v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["replicas"];
        assert_eq!(replicas["minimum"].as_f64(), Some(1.0), "{replicas}");
        assert_eq!(replicas["default"], 3, "{replicas}");
        assert_eq!(
            v["subresources"]["scale"]["specReplicasPath"],
            ".spec.replicas"
        );
        assert_eq!(
            v["subresources"]["scale"]["statusReplicasPath"],
            ".status.readyMembers"
        );
        let cols: Vec<&str> = v["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(cols, ["Ready", "Members", "Desired", "Version", "Age"]);
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        // Nothing a 1.20 apiserver does not know.
        let text = crd.to_string();
        assert!(!text.contains("x-kubernetes-validations"), "CEL rules");
        assert!(!text.contains("selectableFields"));
    }
}
