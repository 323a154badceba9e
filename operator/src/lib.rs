//! concord-operator library: the `EtcdCluster` custom resource and, as the operator grows, its
//! planner, etcd-facing client and reconcile loop. The binaries (`concord-operator`, `crdgen`)
//! are thin wrappers over this crate.

pub mod crd;
