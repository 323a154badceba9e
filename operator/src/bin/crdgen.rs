//! `crdgen`: prints the EtcdCluster CustomResourceDefinition as YAML.

use kube::CustomResourceExt;

fn main() -> anyhow::Result<()> {
    print!("{}", yaml_serde::to_string(&concord_operator::crd::EtcdCluster::crd())?);
    Ok(())
}
