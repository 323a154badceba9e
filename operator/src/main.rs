//! `concord-operator`: reconciles `EtcdCluster` resources into StatefulSets and Services.
//!
//! Not built yet: the operator issue fills this crate in. Until then the binary says so and
//! exits non-zero rather than pretending to reconcile anything.

fn main() {
    eprintln!(
        "concord-operator {}: the operator is not implemented yet; see the project's open issues",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
