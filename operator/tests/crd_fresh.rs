//! The checked-in `crds/etcdcluster.yaml` is exactly what `crdgen` writes today.

#[test]
fn checked_in_crd_is_fresh() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/etcdcluster.yaml");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    let generated = concord_operator::crd_yaml().unwrap();
    assert!(
        checked_in == generated,
        "crds/etcdcluster.yaml is stale: run `cargo run -p concord-operator --bin crdgen -- crds/etcdcluster.yaml`"
    );
}
