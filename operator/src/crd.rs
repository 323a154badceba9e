//! The `EtcdCluster` custom resource (`concord.dev/v1alpha1`): spec and status types.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of one etcd-compatible cluster.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(group = "concord.dev", version = "v1alpha1", kind = "EtcdCluster", namespaced)]
#[serde(rename_all = "camelCase")]
pub struct EtcdClusterSpec {
    /// Number of voting members.
    pub replicas: i32,
}
