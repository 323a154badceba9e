//! Key material for one control plane, made with the `openssl` command: a CA, the apiserver's
//! serving certificate signed by it (for `127.0.0.1`, `localhost` and the in-cluster names), and
//! the RSA key pair that signs and verifies ServiceAccount tokens. Nothing here is reused across
//! control planes.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Paths of the files [`generate`] wrote.
#[derive(Clone, Debug)]
pub(crate) struct Certs {
    /// CA certificate (PEM): kubeconfigs trust it; the controller-manager puts it in token secrets.
    pub ca_crt: PathBuf,
    /// Apiserver serving certificate (PEM).
    pub server_crt: PathBuf,
    /// Apiserver serving key (PEM).
    pub server_key: PathBuf,
    /// ServiceAccount token signing key (PEM, RSA).
    pub sa_key: PathBuf,
    /// ServiceAccount token verification key (PEM, public).
    pub sa_pub: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (is it installed? scripts/install-test-deps.sh installs it)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Writes a fresh CA, serving certificate and ServiceAccount key pair into `dir`.
pub(crate) fn generate(dir: &Path) -> Result<Certs> {
    std::fs::create_dir_all(dir)?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "30",
        "-subj",
        "/CN=concord-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca)?;
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "apiserver.key",
        "-out",
        "apiserver.csr",
        "-subj",
        "/CN=kube-apiserver",
    ]);
    openssl(dir, &csr)?;
    std::fs::write(
        dir.join("apiserver.ext"),
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,\
         DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.240.0.1\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "apiserver.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "apiserver.crt",
            "-days",
            "30",
            "-extfile",
            "apiserver.ext",
        ],
    )?;
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "sa.key",
        ],
    )?;
    openssl(dir, &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
    Ok(Certs {
        ca_crt: dir.join("ca.crt"),
        server_crt: dir.join("apiserver.crt"),
        server_key: dir.join("apiserver.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
    })
}
