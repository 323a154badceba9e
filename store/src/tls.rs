//! Client and peer TLS, with etcd 3.5's flags and behaviour, on rustls with ring as the only
//! crypto provider.
//!
//! Owns: turning one side's [`TlsConfig`] (`--cert-file`... or `--peer-cert-file`...) into
//! rustls server and client configs ([`Tls::new`]), the self-signed certificates of
//! `--auto-tls` / `--peer-auto-tls` ([`self_cert`], written to `<data-dir>/fixtures/client` and
//! `<data-dir>/fixtures/peer` as etcd's `transport.SelfCert` does, and reused on restart), the
//! accept side ([`Tls::accept`]: handshake, etcd's peer SAN check, the verified client
//! certificate's common name), the connect side for the peer transport ([`PeerConnector`] for
//! gRPC, [`Tls::connect_raft`] for raft streams, told apart by ALPN: [`RAFT_ALPN`]), and
//! [`ClientCertCommonName`], the request extension handlers read the common name from.
//!
//! etcd's rules, as in its `client/pkg/transport/listener.go`:
//! - a server asks for and verifies client certificates when `--client-cert-auth` is on *or*
//!   a trusted CA file is given; without a CA file the system roots verify them;
//! - `--peer-cert-allowed-cn` / `--peer-cert-allowed-hostname` constrain the other side's
//!   certificate in both directions (etcd sets `VerifyPeerCertificate` on the shared base config);
//! - a peer listener with client certificates checks that the certificate's SANs name the
//!   connecting address (etcd's `checkSAN`), unless `--experimental-peer-skip-client-san-verification`;
//! - a member using an auto-TLS certificate does not verify the certificates of the members it
//!   connects to (etcd's `InsecureSkipVerify` for self-signed certs);
//! - TLS 1.2 is the default minimum; `--cipher-suites` (Go's names) restricts the TLS 1.2 suites
//!   (TLS 1.3's are not configurable, as in Go).
//!
//! This module never logs secrets and never falls back to plaintext: an `https` URL without
//! usable certificates is a start-up error.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::TlsConfig;
use crate::error::{Error, Result};

/// The common name of the client certificate a TLS client connection presented and the server
/// verified (`--client-cert-auth` or `--trusted-ca-file`). Every request on such a connection
/// carries it as an extension (`request.extensions().get::<ClientCertCommonName>()` in a tonic
/// handler): etcd uses it as the user name when auth is enabled. Absent on plaintext
/// connections, and when the certificate has no common name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertCommonName(pub String);

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// ring: the only crypto provider concord uses.
fn ring() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// One side's TLS (client-facing or peer), ready to accept and to connect.
#[derive(Clone)]
pub struct Tls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    /// `client` offering [`RAFT_ALPN`] only: the peer transport's raft message streams.
    raft_client: Arc<rustls::ClientConfig>,
    /// Whether accepted connections must present a (verified) certificate.
    client_certs: bool,
    /// etcd's `checkSAN` on accepted connections (peer listeners with client certificates).
    check_san: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("client_certs", &self.client_certs)
            .field("check_san", &self.check_san)
            .finish_non_exhaustive()
    }
}

/// Which side a [`Tls`] serves: peers get etcd's SAN check and ALPN `h2` only; client
/// listeners offer `h2` and `http/1.1` (gRPC and the HTTP endpoints share the port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Peer,
}

impl Tls {
    /// Builds one side's TLS from its flags. `None` when the side has no certificate (plain
    /// `http` only). `auto_dir` and `hosts` are used for `--auto-tls`/`--peer-auto-tls` when no
    /// certificate is given: a self-signed certificate for `hosts` is made (or reused) there.
    pub fn from_config(
        cfg: &TlsConfig,
        side: Side,
        auto_dir: &Path,
        hosts: &[String],
    ) -> Result<Option<Tls>> {
        let mut cfg = cfg.clone();
        let mut self_signed = false;
        if cfg.auto_tls {
            if cfg.cert_file.is_some() || cfg.key_file.is_some() {
                tracing::warn!(
                    "ignoring {} auto TLS since certs given",
                    match side {
                        Side::Client => "client",
                        Side::Peer => "peer",
                    }
                );
            } else {
                let (cert, key) = self_cert(auto_dir, hosts, cfg.self_signed_cert_validity)?;
                // etcd replaces the whole TLS info with the self-signed one: no CA, no client
                // certificate requirement, no CN constraints.
                cfg = TlsConfig {
                    cert_file: Some(cert),
                    key_file: Some(key),
                    cipher_suites: cfg.cipher_suites.clone(),
                    min_version: cfg.min_version,
                    max_version: cfg.max_version,
                    ..TlsConfig::default()
                };
                self_signed = true;
            }
        }
        if cfg.cert_file.is_none() && cfg.key_file.is_none() {
            return Ok(None);
        }
        Tls::new(&cfg, side, self_signed).map(Some)
    }

    /// Builds TLS from explicit settings (no auto-TLS). `self_signed`: the certificate was made
    /// by [`self_cert`], so the other side's certificate is not verified when connecting.
    pub fn new(cfg: &TlsConfig, side: Side, self_signed: bool) -> Result<Tls> {
        let (Some(cert_file), Some(key_file)) = (&cfg.cert_file, &cfg.key_file) else {
            return Err(tls_error(format!(
                "KeyFile and CertFile must both be present[key: {}, cert: {}]",
                cfg.key_file
                    .as_deref()
                    .map(Path::display)
                    .map(|d| d.to_string())
                    .unwrap_or_default(),
                cfg.cert_file
                    .as_deref()
                    .map(Path::display)
                    .map(|d| d.to_string())
                    .unwrap_or_default(),
            )));
        };
        let chain = load_certs(cert_file)?;
        let key = load_key(key_file)?;
        let provider = Arc::new(provider_with_suites(&cfg.cipher_suites)?);
        let versions = versions(cfg.min_version, cfg.max_version);
        let allowed = Allowed {
            cns: cfg.allowed_cns.clone(),
            hostnames: cfg.allowed_hostnames.clone(),
        };
        let roots = match &cfg.trusted_ca_file {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in load_certs(ca)? {
                    roots.add(c).map_err(|e| {
                        tls_error(format!("cannot use CA certificate {}: {e}", ca.display()))
                    })?;
                }
                roots
            }
            None => system_roots(),
        };
        let roots = Arc::new(roots);
        let client_certs = cfg.client_cert_auth || cfg.trusted_ca_file.is_some();

        // Server side.
        let client_verifier: Arc<dyn ClientCertVerifier> = if client_certs {
            let mut b =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
            if let Some(crl) = &cfg.crl_file {
                b = b
                    .with_crls(load_crls(crl)?)
                    .only_check_end_entity_revocation()
                    .allow_unknown_revocation_status();
            }
            let inner = b
                .build()
                .map_err(|e| tls_error(format!("cannot verify client certificates: {e}")))?;
            Arc::new(AllowedClient {
                inner,
                allowed: allowed.clone(),
            })
        } else {
            WebPkiClientVerifier::no_client_auth()
        };
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| tls_error(format!("unusable TLS settings: {e}")))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                tls_error(format!(
                    "tls: cannot use certificate {} with key {}: {e}",
                    cert_file.display(),
                    key_file.display()
                ))
            })?;
        server.alpn_protocols = match side {
            Side::Client => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Side::Peer => vec![b"h2".to_vec(), RAFT_ALPN.to_vec()],
        };

        // Client side (the peer transport; the same certificate authenticates this member).
        let server_verifier: Arc<dyn ServerCertVerifier> = if self_signed {
            Arc::new(NoVerify(provider.signature_verification_algorithms))
        } else {
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| tls_error(format!("cannot verify server certificates: {e}")))?;
            Arc::new(AllowedServer { inner, allowed })
        };
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .map_err(|e| tls_error(format!("unusable TLS settings: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(server_verifier)
            .with_client_auth_cert(chain, key)
            .map_err(|e| tls_error(format!("tls: cannot use client certificate: {e}")))?;
        client.alpn_protocols = vec![b"h2".to_vec()];
        let mut raft_client = client.clone();
        raft_client.alpn_protocols = vec![RAFT_ALPN.to_vec()];

        Ok(Tls {
            server: Arc::new(server),
            client: Arc::new(client),
            raft_client: Arc::new(raft_client),
            client_certs,
            check_san: side == Side::Peer && client_certs && !cfg.skip_client_san_verify,
        })
    }

    /// The rustls server config (for tests and custom listeners).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// The rustls client config this member connects to others with.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client.clone()
    }

    /// Connects to `host:port` over TCP and runs the client handshake for a raft message
    /// stream ([`RAFT_ALPN`]), verifying the member's certificate as the gRPC peer calls do.
    pub async fn connect_raft(
        &self,
        host: &str,
        port: u16,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        connect_tls(self.raft_client.clone(), host, port).await
    }

    /// Runs the server handshake on an accepted connection (bounded by a timeout), then etcd's
    /// peer SAN check when it applies. Returns the stream and, when client certificates are
    /// required, the verified certificate's common name.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> io::Result<(
        tokio_rustls::server::TlsStream<TcpStream>,
        Option<ClientCertCommonName>,
    )> {
        let remote = tcp.peer_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server.clone());
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec());
        let Some(leaf) = leaf else {
            return Ok((stream, None));
        };
        if self.check_san {
            check_san(&leaf, remote).await?;
        }
        let cn = if self.client_certs {
            parse_cert(&leaf)
                .and_then(|c| c.common_name)
                .filter(|cn| !cn.is_empty())
                .map(ClientCertCommonName)
        } else {
            None
        };
        Ok((stream, cn))
    }
}

fn tls_error(msg: String) -> Error {
    Error::DataDir(msg)
}

/// Go's `os.Open` error text: `open <path>: no such file or directory`.
fn open_error(path: &Path, e: &io::Error) -> Error {
    let what = match e.kind() {
        io::ErrorKind::NotFound => "no such file or directory".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    };
    tls_error(format!("open {}: {what}", path.display()))
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| open_error(path, &e))
}

/// Every certificate in a PEM file (Go's `tls.X509KeyPair` wording when there is none).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_file(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| tls_error(format!("tls: cannot parse {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_error(format!(
            "tls: failed to find any PEM data in certificate input ({})",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, SEC1 `EC PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        tls_error(format!(
            "tls: failed to find any PEM data in key input ({})",
            path.display()
        ))
    })
}

fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let pem = read_file(path)?;
    let crls: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| tls_error(format!("cannot parse CRL file {}: {e}", path.display())))?;
    if crls.is_empty() {
        return Err(tls_error(format!(
            "cannot parse CRL file {}: no X509 CRL PEM block found",
            path.display()
        )));
    }
    Ok(crls)
}

/// The system's trusted roots (Go uses them when no CA file is given). Unreadable ones are
/// skipped, as Go does.
fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for c in found.certs {
        let _ = roots.add(c);
    }
    roots
}

/// Go's TLS 1.2 cipher suite names and the rustls (ring) suites they are.
const CIPHER_SUITES: &[(&str, &str)] = &[
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
];

/// Go suites etcd accepts that rustls does not implement (CBC, RC4, 3DES, static RSA).
const UNSUPPORTED_GO_SUITES: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// Checks `--cipher-suites` names as etcd's `tlsutil.GetCipherSuites` does.
pub fn check_cipher_suites(names: &[String]) -> std::result::Result<(), String> {
    for n in names {
        if CIPHER_SUITES.iter().any(|(go, _)| go == n) {
            continue;
        }
        if UNSUPPORTED_GO_SUITES.contains(&n.as_str()) {
            return Err(format!(
                "TLS cipher suite {n:?} is not supported by concord (rustls implements only the \
                 ECDHE AES-GCM and ChaCha20-Poly1305 suites)"
            ));
        }
        return Err(format!("unexpected TLS cipher suite {n:?}"));
    }
    Ok(())
}

/// ring, with its TLS 1.2 suites restricted to `names` (all of them when empty).
fn provider_with_suites(names: &[String]) -> Result<CryptoProvider> {
    check_cipher_suites(names).map_err(tls_error)?;
    let mut provider = ring();
    if names.is_empty() {
        return Ok(provider);
    }
    let wanted: Vec<&str> = names
        .iter()
        .filter_map(|n| {
            CIPHER_SUITES
                .iter()
                .find(|(go, _)| go == n)
                .map(|(_, r)| *r)
        })
        .collect();
    provider.cipher_suites.retain(|s| {
        s.version() == &rustls::version::TLS13
            || wanted.contains(&format!("{:?}", s.suite()).as_str())
    });
    Ok(provider)
}

/// The protocol versions between `min` and `max` (12 or 13; 0: TLS 1.2 and the newest).
fn versions(min: u8, max: u8) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let min = if min == 0 { 12 } else { min };
    let max = if max == 0 { 13 } else { max };
    let mut v = Vec::new();
    if min <= 13 && max >= 13 {
        v.push(&rustls::version::TLS13);
    }
    if min <= 12 && max >= 12 {
        v.push(&rustls::version::TLS12);
    }
    v
}

/// `--peer-cert-allowed-cn` / `--peer-cert-allowed-hostname` (etcd's `AllowedCNs` and
/// `AllowedHostnames`; the config refuses both at once). Empty: anything verified is allowed.
#[derive(Clone, Debug, Default)]
struct Allowed {
    cns: Vec<String>,
    hostnames: Vec<String>,
}

impl Allowed {
    fn check(&self, leaf: &CertificateDer<'_>) -> std::result::Result<(), rustls::Error> {
        if self.cns.is_empty() && self.hostnames.is_empty() {
            return Ok(());
        }
        let ok = if !self.cns.is_empty() {
            let cn = parse_cert(leaf.as_ref()).and_then(|c| c.common_name);
            cn.is_some_and(|cn| self.cns.contains(&cn))
        } else {
            let parsed = rustls::server::ParsedCertificate::try_from(leaf)?;
            self.hostnames.iter().any(|h| {
                ServerName::try_from(h.as_str())
                    .is_ok_and(|name| rustls::client::verify_server_name(&parsed, &name).is_ok())
            })
        };
        if ok {
            Ok(())
        } else {
            Err(rustls::Error::General(
                "client certificate authentication failed".to_owned(),
            ))
        }
    }
}

/// webpki client verification plus [`Allowed`].
#[derive(Debug)]
struct AllowedClient {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Allowed,
}

impl ClientCertVerifier for AllowedClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let v = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.allowed.check(end_entity)?;
        Ok(v)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// webpki server verification plus [`Allowed`].
#[derive(Debug)]
struct AllowedServer {
    inner: Arc<WebPkiServerVerifier>,
    allowed: Allowed,
}

impl ServerCertVerifier for AllowedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let v = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.allowed.check(end_entity)?;
        Ok(v)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// etcd's `InsecureSkipVerify` for members on auto-TLS certificates: the chain is not checked,
/// the handshake signatures still are.
#[derive(Debug)]
struct NoVerify(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// etcd's `checkSAN`: a peer's client certificate with SANs must name the address it connects
/// from, by IP SAN or by a DNS SAN that resolves to it.
async fn check_san(leaf: &[u8], remote: SocketAddr) -> io::Result<()> {
    let Some(cert) = parse_cert(leaf) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "tls: cannot parse the peer's certificate",
        ));
    };
    if cert.ip_sans.is_empty() && cert.dns_sans.is_empty() {
        return Ok(());
    }
    let ip = remote.ip();
    if cert.ip_sans.contains(&ip) {
        return Ok(());
    }
    if cert.dns_sans.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "x509: certificate is valid for {}, not {ip}",
                join_ips(&cert.ip_sans)
            ),
        ));
    }
    for name in &cert.dns_sans {
        if let Ok(addrs) = tokio::net::lookup_host((name.as_str(), 0)).await
            && addrs.into_iter().any(|a| a.ip() == ip)
        {
            return Ok(());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "tls: \"{ip}\" does not match any of DNSNames {:?}",
            cert.dns_sans
        ),
    ))
}

fn join_ips(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What concord reads from an X.509 certificate: the subject's common name and the SANs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CertNames {
    pub common_name: Option<String>,
    pub dns_sans: Vec<String>,
    pub ip_sans: Vec<IpAddr>,
}

/// One DER element: `(tag, contents, rest)`.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

/// Reads the subject common name and SANs of a DER certificate (`None` if it is not one).
/// As Go's `pkix.Name`, the last CN attribute of the subject wins.
pub fn parse_cert(cert: &[u8]) -> Option<CertNames> {
    let (0x30, body, _) = der(cert)? else {
        return None;
    };
    let (0x30, mut tbs, _) = der(body)? else {
        return None;
    };
    let mut next = || -> Option<(u8, &[u8])> {
        let (tag, content, rest) = der(tbs)?;
        tbs = rest;
        Some((tag, content))
    };
    let (mut tag, _) = next()?;
    if tag == 0xa0 {
        (tag, _) = next()?; // version, then serial
    }
    if tag != 0x02 {
        return None;
    }
    next()?; // signature algorithm
    next()?; // issuer
    next()?; // validity
    let (0x30, subject) = next()? else {
        return None;
    };
    let mut names = CertNames::default();
    let mut rdns = subject;
    while let Some((_, set, rest)) = der(rdns) {
        rdns = rest;
        let mut atvs = set;
        while let Some((_, atv, rest)) = der(atvs) {
            atvs = rest;
            if let Some((0x06, oid, value)) = der(atv)
                && oid == OID_CN
                && let Some((_, v, _)) = der(value)
            {
                names.common_name = Some(String::from_utf8_lossy(v).into_owned());
            }
        }
    }
    next()?; // subject public key info
    while let Some((tag, content)) = next() {
        if tag != 0xa3 {
            continue;
        }
        let (0x30, mut exts, _) = der(content)? else {
            return None;
        };
        while let Some((_, ext, rest)) = der(exts) {
            exts = rest;
            let Some((0x06, oid, mut fields)) = der(ext) else {
                continue;
            };
            if oid != OID_SAN {
                continue;
            }
            // Skip the optional `critical` BOOLEAN; the value is an OCTET STRING.
            while let Some((tag, value, rest)) = der(fields) {
                fields = rest;
                if tag != 0x04 {
                    continue;
                }
                let (0x30, mut gns, _) = der(value)? else {
                    return None;
                };
                while let Some((tag, v, rest)) = der(gns) {
                    gns = rest;
                    match (tag, v.len()) {
                        (0x82, _) => names.dns_sans.push(String::from_utf8_lossy(v).into_owned()),
                        (0x87, 4) => {
                            let b: [u8; 4] = v.try_into().ok()?;
                            names.ip_sans.push(IpAddr::from(b));
                        }
                        (0x87, 16) => {
                            let b: [u8; 16] = v.try_into().ok()?;
                            names.ip_sans.push(IpAddr::from(b));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    Some(names)
}

/// etcd's `transport.SelfCert`: an ECDSA P-256 certificate for `hosts` (`host:port` or bare
/// hosts; IPs become IP SANs, names DNS SANs), organization `etcd`, valid for `validity_years`,
/// for server and client authentication, written as `cert.pem` and `key.pem` in `dir`. Files
/// already there are reused. Returns their paths.
pub fn self_cert(dir: &Path, hosts: &[String], validity_years: u64) -> Result<(PathBuf, PathBuf)> {
    if validity_years == 0 {
        return Err(tls_error(
            "selfSignedCertValidity is invalid,it should be greater than 0".to_owned(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        tls_error(format!(
            "cannot create cert directory {}: {e}",
            dir.display()
        ))
    })?;
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let mut sans: Vec<String> = Vec::new();
    for h in hosts {
        let host = match h.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
            _ => h.as_str(),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !host.is_empty() && !sans.contains(&host) {
            sans.push(host);
        }
    }
    let gen_err = |e: rcgen::Error| tls_error(format!("cannot generate cert: {e}"));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut params = rcgen::CertificateParams::new(sans).map_err(gen_err)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "etcd");
    params.distinguished_name = dn;
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = now;
    params.not_after = now + Duration::from_secs(validity_years * 365 * 24 * 3600);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyEncipherment,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.self_signed(&key).map_err(gen_err)?;
    let write = |path: &Path, data: &str, mode: u32| -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .map_err(|e| open_error(path, &e))?;
        f.write_all(data.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| tls_error(format!("cannot write {}: {e}", path.display())))
    };
    write(&key_path, &key.serialize_pem(), 0o600)?;
    write(&cert_path, &cert.pem(), 0o644)?;
    tracing::info!(cert = %cert_path.display(), key = %key_path.display(), "generated self-signed certificate");
    Ok((cert_path, key_path))
}

/// Connects the peer transport's gRPC channels over TLS: a `tower` connector for
/// `Endpoint::connect_with_connector`. It dials the URI's host and port, verifies the member's
/// certificate against the URI's host (IP or name) and presents this member's certificate.
#[derive(Clone)]
pub struct PeerConnector {
    config: Arc<rustls::ClientConfig>,
}

impl PeerConnector {
    pub fn new(tls: &Tls) -> PeerConnector {
        PeerConnector {
            config: tls.client.clone(),
        }
    }
}

impl tower_service::Service<http::Uri> for PeerConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let (host, port) = host_port(&uri, 443)?;
            let stream = connect_tls(config, host, port).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// The host (IPv6 brackets removed) and port of `uri`, `default_port` when it names none.
pub fn host_port(uri: &http::Uri, default_port: u16) -> io::Result<(&str, u16)> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "URL without a host"))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    Ok((host, uri.port_u16().unwrap_or(default_port)))
}

/// A TCP connection to `host:port` (no Nagle delay) after the client handshake with `config`.
async fn connect_tls(
    config: Arc<rustls::ClientConfig>,
    host: &str,
    port: u16,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect((host, port)).await?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The URL tonic is given for a peer URL: an `https` peer URL is dialled as `http` by tonic,
/// with TLS done by [`PeerConnector`] (tonic's own TLS is not compiled in).
pub fn endpoint_url(url: &str) -> String {
    match url.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None => url.to_owned(),
    }
}

/// The ALPN protocol of the peer transport's raft message streams on a TLS peer listener
/// (next to `h2`, the gRPC peer calls).
pub const RAFT_ALPN: &[u8] = b"concord-raft";

/// An accepted peer connection after its TLS handshake, for tonic's server.
pub struct PeerTlsStream(pub tokio_rustls::server::TlsStream<TcpStream>);

impl PeerTlsStream {
    /// Whether the other side negotiated [`RAFT_ALPN`]: a raft message stream, not gRPC.
    pub fn is_raft(&self) -> bool {
        self.0.get_ref().1.alpn_protocol() == Some(RAFT_ALPN)
    }
}

impl tonic::transport::server::Connected for PeerTlsStream {
    type ConnectInfo = Option<SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.peer_addr().ok()
    }
}

impl AsyncRead for PeerTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// The accepted, handshaken connections of a TLS peer listener, as a stream for tonic's
/// `serve_with_incoming`. Handshakes run in their own tasks so that a slow or hostile client
/// never holds up the others; failed handshakes are logged and dropped, as etcd does.
pub fn peer_incoming(
    listener: tokio::net::TcpListener,
    tls: Tls,
) -> impl futures::Stream<Item = io::Result<PeerTlsStream>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<PeerTlsStream>>(64);
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        tracing::warn!(error = %e, "failed to accept a peer connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let tls = tls.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let remote = tcp.peer_addr().ok();
                match tls.accept(tcp).await {
                    Ok((stream, _)) => {
                        let _ = tx.send(Ok(PeerTlsStream(stream))).await;
                    }
                    Err(e) => tracing::warn!(
                        remote_addr = ?remote,
                        error = %e,
                        "rejected connection on peer endpoint"
                    ),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Adds a connection's [`ClientCertCommonName`] to every request served on it.
#[derive(Clone)]
pub struct WithCommonName<S> {
    inner: S,
    cn: Option<ClientCertCommonName>,
}

impl<S> WithCommonName<S> {
    pub fn new(inner: S, cn: Option<ClientCertCommonName>) -> Self {
        WithCommonName { inner, cn }
    }
}

impl<S, B> tower_service::Service<http::Request<B>> for WithCommonName<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(cn) = &self.cn {
            req.extensions_mut().insert(cn.clone());
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(cn: Option<&str>, sans: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "etcd");
        if let Some(cn) = cn {
            dn.push(rcgen::DnType::CommonName, cn);
        }
        params.distinguished_name = dn;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn parses_common_name_and_sans() {
        struct TestCase {
            cn: Option<&'static str>,
            sans: &'static [&'static str],
            want: CertNames,
        }
        let cases = [
            TestCase {
                cn: Some("root"),
                sans: &["127.0.0.1", "localhost", "::1"],
                want: CertNames {
                    common_name: Some("root".into()),
                    dns_sans: vec!["localhost".into()],
                    ip_sans: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
                },
            },
            TestCase {
                cn: None,
                sans: &[],
                want: CertNames::default(),
            },
        ];
        for c in cases {
            assert_eq!(parse_cert(&cert_with(c.cn, c.sans)), Some(c.want));
        }
        assert_eq!(parse_cert(b"not a certificate"), None);
    }

    #[test]
    fn cipher_suite_names_are_checked_like_etcd() {
        assert!(check_cipher_suites(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into()]).is_ok());
        assert_eq!(
            check_cipher_suites(&["nope".into()]).unwrap_err(),
            "unexpected TLS cipher suite \"nope\""
        );
        assert!(
            check_cipher_suites(&["TLS_RSA_WITH_AES_128_CBC_SHA".into()])
                .unwrap_err()
                .contains("not supported by concord")
        );
        let p = provider_with_suites(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into()]).unwrap();
        let tls12: Vec<_> = p
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .collect();
        assert_eq!(tls12.len(), 1);
    }

    #[test]
    fn versions_follow_min_and_max() {
        assert_eq!(versions(0, 0).len(), 2);
        assert_eq!(versions(13, 0), vec![&rustls::version::TLS13]);
        assert_eq!(versions(12, 12), vec![&rustls::version::TLS12]);
    }

    #[test]
    fn self_cert_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("fixtures/client");
        let (c, k) = self_cert(&d, &["127.0.0.1:2379".into(), "localhost:2379".into()], 1).unwrap();
        let first = std::fs::read(&c).unwrap();
        let names = parse_cert(load_certs(&c).unwrap()[0].as_ref()).unwrap();
        assert_eq!(names.ip_sans, vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(names.dns_sans, vec!["localhost".to_owned()]);
        load_key(&k).unwrap();
        self_cert(&d, &["127.0.0.2:2379".into()], 1).unwrap();
        assert_eq!(std::fs::read(&c).unwrap(), first);
        assert!(self_cert(&d, &[], 0).is_err());
    }

    #[test]
    fn missing_files_fail_like_go() {
        let cfg = TlsConfig {
            cert_file: Some("/nonexistent/cert.pem".into()),
            key_file: Some("/nonexistent/key.pem".into()),
            ..TlsConfig::default()
        };
        let e = Tls::new(&cfg, Side::Client, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "open /nonexistent/cert.pem: no such file or directory"
        );
        let cfg = TlsConfig {
            cert_file: Some("/c.pem".into()),
            ..TlsConfig::default()
        };
        assert_eq!(
            Tls::new(&cfg, Side::Client, false).unwrap_err().to_string(),
            "KeyFile and CertFile must both be present[key: , cert: /c.pem]"
        );
    }
}
