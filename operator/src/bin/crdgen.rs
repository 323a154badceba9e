//! `crdgen`: writes the EtcdCluster CustomResourceDefinition as YAML, to the path given as the
//! only argument (the repo keeps it at `crds/etcdcluster.yaml`) or to stdout.

fn main() -> anyhow::Result<()> {
    let yaml = concord_operator::crd_yaml()?;
    match std::env::args_os().nth(1) {
        Some(path) => std::fs::write(path, yaml)?,
        None => print!("{yaml}"),
    }
    Ok(())
}
