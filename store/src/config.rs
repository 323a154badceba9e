//! Server configuration: turns the command line, `ETCD_*` environment variables and etcd's
//! `--config-file` YAML into one validated [`Config`].
//!
//! This module owns everything between `argv` and a [`Config`]:
//!
//! * the table of every flag etcd 3.5.16's server accepts ([`FLAGS`]): its kind, its etcd
//!   default, the YAML key that sets it in a config file, and a one-line help text;
//! * a tokenizer that follows Go's `flag` package (`-x v`, `-x=v`, `--x v`, `--x=v`, bare
//!   booleans, `--` ends the flags), with Go's error texts and exit code 2 for parse errors;
//! * `ETCD_<FLAG>` environment variables, applied only when no config file is given (as
//!   etcd's `pkg/flags.SetFlagsFromEnv`: a variable shadowed by a command-line flag is an
//!   error, an unknown `ETCD_*` variable a warning);
//! * the config file: when `--config-file` (or `ETCD_CONFIG_FILE`) names one, it is the only
//!   source, as in etcd 3.5: other flags and environment variables are ignored;
//! * validation in the order and with the texts of etcd's `embed.Config.Validate()`, each
//!   followed by what to do about it;
//! * warnings for flags concord accepts for compatibility but does not act on yet
//!   ([`ACTED_ON`] lists the ones it does act on).
//!
//! It does no I/O besides reading the config file, and it does not log: callers print
//! [`Loaded::warnings`] once logging is set up.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterState {
    /// Bootstrapping a new cluster (`new`, etcd's default).
    #[default]
    New,
    /// Joining a cluster that already runs (`existing`).
    Existing,
}

impl ClusterState {
    /// The flag value etcd uses for this state.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        }
    }
}

/// `--auto-compaction-mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AutoCompactionMode {
    /// Retention is a time span (etcd's default).
    #[default]
    Periodic,
    /// Retention is a number of revisions.
    Revision,
}

/// `--auto-compaction-retention`, interpreted by `--auto-compaction-mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AutoCompactionRetention {
    /// `0` (etcd's default): no automatic compaction.
    #[default]
    Disabled,
    /// Periodic mode: keep this much history (`"1"` is one hour, `"5m"` five minutes).
    Period(Duration),
    /// Revision mode: keep this many revisions.
    Revisions(u64),
}

/// One side's TLS settings (`--cert-file`... for clients, `--peer-cert-file`... for peers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub auto_tls: bool,
    /// `--client-crl-file` / `--peer-crl-file`.
    pub crl_file: Option<PathBuf>,
    /// `--peer-cert-allowed-cn` (peers only).
    pub allowed_cns: Vec<String>,
    /// `--client-cert-allowed-hostname` / `--peer-cert-allowed-hostname`.
    pub allowed_hostnames: Vec<String>,
    /// `--cipher-suites` (Go's names; both sides).
    pub cipher_suites: Vec<String>,
    /// `--tls-min-version`: 12 or 13 (0: TLS 1.2).
    pub min_version: u8,
    /// `--tls-max-version`: 12 or 13 (0: the newest).
    pub max_version: u8,
    /// `--self-signed-cert-validity`, in years, for auto-TLS certificates.
    pub self_signed_cert_validity: u64,
    /// `--experimental-peer-skip-client-san-verification` (peers only).
    pub skip_client_san_verify: bool,
}

impl Default for TlsConfig {
    /// etcd's flag defaults: TLS 1.2 at least, auto-TLS certificates valid for one year.
    fn default() -> TlsConfig {
        TlsConfig {
            cert_file: None,
            key_file: None,
            trusted_ca_file: None,
            client_cert_auth: false,
            auto_tls: false,
            crl_file: None,
            allowed_cns: Vec::new(),
            allowed_hostnames: Vec::new(),
            cipher_suites: Vec::new(),
            min_version: 12,
            max_version: 0,
            self_signed_cert_validity: 1,
            skip_client_san_verify: false,
        }
    }
}

/// The settings a concord member runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<Url>,
    pub advertise_client_urls: Vec<Url>,
    pub listen_peer_urls: Vec<Url>,
    pub initial_advertise_peer_urls: Vec<Url>,
    /// `--initial-cluster` as `(member name, peer URL)` pairs, in the order given; a member
    /// with several peer URLs appears once per URL.
    pub initial_cluster: Vec<(String, Url)>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// `0` means the server's default quota (2 GiB).
    pub quota_backend_bytes: i64,
    pub auto_compaction_mode: AutoCompactionMode,
    pub auto_compaction_retention: AutoCompactionRetention,
    pub snapshot_count: u64,
    /// `--experimental-snapshot-catchup-entries`; 0 means the default (5000), as in etcd.
    pub snapshot_catchup_entries: u64,
    /// `--backend-batch-interval`: the longest applied changes wait before the state is made
    /// durable; zero means the default (100 ms), as in etcd.
    pub backend_batch_interval: Duration,
    /// `--backend-batch-limit`: the most applied entries before the state is made durable; 0
    /// means the default (10000), as in etcd, and a negative limit makes every apply durable.
    pub backend_batch_limit: i64,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    /// One of `debug`, `info`, `warn`, `error`, `dpanic`, `panic`, `fatal` (lower case).
    pub log_level: String,
    pub strict_reconfig_check: bool,
    pub client_tls: TlsConfig,
    pub peer_tls: TlsConfig,
    pub enable_pprof: bool,
    pub listen_metrics_urls: Vec<Url>,
    pub force_new_cluster: bool,
    /// `--cors`: origins whose browsers may read HTTP answers (`*`, or none listed: any).
    pub cors: Vec<String>,
    /// `--host-whitelist`: `Host` names plain-HTTP requests may carry (`*`, or none: any).
    pub host_whitelist: Vec<String>,
    /// `--experimental-watch-progress-notify-interval` (etcd's default 10m).
    pub watch_progress_notify_interval: Duration,
    /// `--experimental-enable-lease-checkpoint`.
    pub lease_checkpoint: bool,
    /// `--experimental-enable-lease-checkpoint-persist` (requires `lease_checkpoint`).
    pub lease_checkpoint_persist: bool,
    /// Interval between lease checkpoints: etcd's embed-only `LeaseCheckpointInterval` (5m).
    /// etcd 3.5 has no flag for it, so neither has concord; the environment variable
    /// [`LEASE_CHECKPOINT_INTERVAL_ENV`] (a Go duration) sets it, for tests and experiments.
    pub lease_checkpoint_interval: Duration,
    /// `--auth-token`: `simple`, or `jwt,pub-key=...,priv-key=...,sign-method=...,ttl=...`
    /// (parsed and its keys loaded when the member starts, by `auth`).
    pub auth_token: String,
    /// `--auth-token-ttl` in seconds (simple tokens).
    pub auth_token_ttl: u64,
    /// `--bcrypt-cost` (out-of-range values fall back to 10 with a warning, as etcd).
    pub bcrypt_cost: u64,
}

impl Default for Config {
    /// etcd 3.5's defaults: member `default` in `./default.etcd`, clients on
    /// `http://localhost:2379`, peers on `http://localhost:2380`.
    fn default() -> Self {
        let peer = static_url(DEFAULT_PEER_URL);
        let client = static_url(DEFAULT_CLIENT_URL);
        Config {
            name: DEFAULT_NAME.to_owned(),
            data_dir: PathBuf::from(format!("{DEFAULT_NAME}.etcd")),
            listen_client_urls: vec![client.clone()],
            advertise_client_urls: vec![client],
            listen_peer_urls: vec![peer.clone()],
            initial_advertise_peer_urls: vec![peer.clone()],
            initial_cluster: vec![(DEFAULT_NAME.to_owned(), peer)],
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "etcd-cluster".to_owned(),
            max_request_bytes: 1_572_864,
            max_txn_ops: 128,
            quota_backend_bytes: 0,
            auto_compaction_mode: AutoCompactionMode::Periodic,
            auto_compaction_retention: AutoCompactionRetention::Disabled,
            snapshot_count: 100_000,
            snapshot_catchup_entries: 5000,
            backend_batch_interval: Duration::ZERO,
            backend_batch_limit: 0,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            log_level: "info".to_owned(),
            strict_reconfig_check: true,
            client_tls: TlsConfig::default(),
            peer_tls: TlsConfig::default(),
            enable_pprof: false,
            listen_metrics_urls: Vec::new(),
            force_new_cluster: false,
            cors: vec!["*".to_owned()],
            host_whitelist: vec!["*".to_owned()],
            watch_progress_notify_interval: Duration::from_secs(600),
            lease_checkpoint: false,
            lease_checkpoint_persist: false,
            lease_checkpoint_interval: Duration::from_secs(300),
            auth_token: "simple".to_owned(),
            auth_token_ttl: 300,
            bcrypt_cost: 10,
        }
    }
}

impl Config {
    /// The socket addresses to bind for `--listen-client-urls`.
    pub fn listen_client_addrs(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        bind_addrs("--listen-client-urls", &self.listen_client_urls)
    }

    /// The socket addresses to bind for `--listen-peer-urls`.
    pub fn listen_peer_addrs(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        bind_addrs("--listen-peer-urls", &self.listen_peer_urls)
    }

    /// The socket addresses to bind for `--listen-metrics-urls`.
    pub fn listen_metrics_addrs(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        bind_addrs("--listen-metrics-urls", &self.listen_metrics_urls)
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    /// Run a member with this configuration.
    Run(Loaded),
    /// `--version`: print the version and exit 0.
    Version,
    /// `-h` / `--help`: print this text and exit 0.
    Help(String),
}

/// A validated configuration and the warnings to log once logging is set up.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Why the configuration was rejected. [`ConfigError::exit_code`] gives the status etcd exits
/// with: 2 for command-line syntax errors (Go's `flag` package), 1 for everything else.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag etcd does not have (Go's exact wording).
    #[error("flag provided but not defined: -{0}")]
    UnknownFlag(String),
    /// An argument like `---x` or `-=x`.
    #[error("bad flag syntax: {0}; write flags as --name=value")]
    BadFlagSyntax(String),
    /// A non-boolean flag at the end of the command line without its value.
    #[error("flag needs an argument: -{0}; write it as --{0}=value")]
    MissingValue(String),
    /// A command-line value the flag cannot take.
    #[error("{}", invalid_flag_value(name, value, reason, *boolean))]
    InvalidFlagValue {
        name: String,
        value: String,
        reason: String,
        boolean: bool,
    },
    /// An argument that is not valid UTF-8.
    #[error("argument {0:?} is not valid UTF-8; concord takes UTF-8 arguments only")]
    NonUnicodeArgument(String),
    /// A positional argument (etcd takes none).
    #[error(
        "'{0}' is not a valid flag; concord takes no positional arguments (write flags as --name=value)"
    )]
    NotAFlag(String),
    /// An `ETCD_*` variable whose value its flag cannot take.
    #[error("invalid value {value:?} for {key}: {reason}; fix or unset {key}")]
    InvalidEnv {
        key: String,
        value: String,
        reason: String,
    },
    /// An `ETCD_*` variable for a flag also given on the command line (etcd refuses this too).
    #[error(
        "conflicting environment variable {0:?} is shadowed by corresponding command-line flag \
         (either unset environment variable or disable flag)"
    )]
    EnvShadowed(String),
    /// The config file cannot be read.
    #[error(
        "cannot read configuration file {path}: {source}; check --config-file / ETCD_CONFIG_FILE"
    )]
    ConfigFileRead {
        path: String,
        source: std::io::Error,
    },
    /// The config file is not YAML of the expected shape.
    #[error(
        "cannot parse configuration file {path}: {message}; it must be a YAML mapping of etcd's config keys"
    )]
    ConfigFileParse { path: String, message: String },
    /// A key in the config file has a value its setting cannot take.
    #[error(
        "invalid value for {key:?} in configuration file {path}: {message}; fix or remove that key"
    )]
    ConfigFileValue {
        path: String,
        key: String,
        message: String,
    },
    /// `--listen-client-urls` without `--advertise-client-urls` (etcd's exact text first).
    #[error(
        "--advertise-client-urls is required when --listen-client-urls is set explicitly; \
         set --advertise-client-urls to the URLs clients should use to reach this member"
    )]
    UnsetAdvertiseClientUrls,
    /// Any other invalid setting; the text says what is wrong and what to do.
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    /// The process exit status for this error, as etcd's: 2 when Go's flag parser rejects the
    /// command line, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::UnknownFlag(_)
            | ConfigError::BadFlagSyntax(_)
            | ConfigError::MissingValue(_)
            | ConfigError::InvalidFlagValue { .. }
            | ConfigError::NonUnicodeArgument(_) => 2,
            _ => 1,
        }
    }
}

fn invalid_flag_value(name: &str, value: &str, reason: &str, boolean: bool) -> String {
    if boolean {
        format!(
            "invalid boolean value {value:?} for -{name}: {reason}; use --{name}, --{name}=true or --{name}=false"
        )
    } else {
        let hint = lookup(name).map_or("", |f| kind_hint(f.kind));
        format!("invalid value {value:?} for flag -{name}: {reason}{hint}")
    }
}

/// What a value of this kind looks like, for error messages.
fn kind_hint(kind: Kind) -> &'static str {
    match kind {
        Kind::Uint | Kind::Uint32 => "; expected a non-negative whole number",
        Kind::Int => "; expected a whole number",
        Kind::Duration => "; expected a duration such as 500ms, 5s or 1h30m",
        Kind::Urls | Kind::Cors => "; expected comma-separated URLs such as http://10.0.0.1:2379",
        _ => "",
    }
}

// ---------------------------------------------------------------------------------------------
// The flag table
// ---------------------------------------------------------------------------------------------

const DEFAULT_NAME: &str = "default";
const DEFAULT_PEER_URL: &str = "http://localhost:2380";
const DEFAULT_CLIENT_URL: &str = "http://localhost:2379";
/// etcd's `--initial-cluster` before the name is known; replaced when `--name` is changed.
const DEFAULT_INITIAL_CLUSTER: &str = "default=http://localhost:2380";
const MAX_ELECTION_MS: u64 = 50_000;
const MIN_RAFT_CONN_TIMEOUT_NS: i64 = 5_000_000_000;
const MAX_TRACING_SAMPLING_RATE: i64 = 1_000_000;

/// Flags concord acts on; every other flag only warns when set to a non-default value.
/// Grow this list as features land.
pub const ACTED_ON: &[&str] = &[
    "config-file",
    "version",
    "name",
    "data-dir",
    "listen-client-urls",
    "listen-metrics-urls",
    "advertise-client-urls",
    "listen-peer-urls",
    "initial-advertise-peer-urls",
    "initial-cluster",
    "initial-cluster-state",
    "initial-cluster-token",
    "max-request-bytes",
    "max-txn-ops",
    "quota-backend-bytes",
    "snapshot-count",
    "experimental-snapshot-catchup-entries",
    "heartbeat-interval",
    "election-timeout",
    "log-level",
    "auto-compaction-mode",
    "auto-compaction-retention",
    "experimental-watch-progress-notify-interval",
    "experimental-enable-lease-checkpoint",
    "experimental-enable-lease-checkpoint-persist",
    "auth-token",
    "auth-token-ttl",
    "bcrypt-cost",
    "cert-file",
    "key-file",
    "trusted-ca-file",
    "client-cert-auth",
    "client-crl-file",
    "client-cert-allowed-hostname",
    "auto-tls",
    "peer-cert-file",
    "peer-key-file",
    "peer-trusted-ca-file",
    "peer-client-cert-auth",
    "peer-crl-file",
    "peer-cert-allowed-cn",
    "peer-cert-allowed-hostname",
    "peer-auto-tls",
    "self-signed-cert-validity",
    "cipher-suites",
    "tls-min-version",
    "tls-max-version",
    "experimental-peer-skip-client-san-verification",
];

/// How a flag's value is written and checked (Go's flag value types, and etcd's own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Any string.
    Str,
    /// `true`/`false` (Go's `strconv.ParseBool`); may be given bare.
    Bool,
    /// Go `uint`/`uint64`: decimal, `0x`, `0o`, `0b` or leading-`0` octal.
    Uint,
    /// Go `int`/`int64`.
    Int,
    /// etcd's `uint32` flag value (reports strconv's own error text).
    Uint32,
    /// Go duration: `100ms`, `1h30m`.
    Duration,
    /// Comma-separated http/https/unix/unixs URLs with a `host:port`; `""` keeps the value.
    Urls,
    /// Comma-separated origins for `--cors`: `*` or URLs.
    Cors,
    /// Comma-separated strings.
    Strings,
    /// Comma-separated strings, deduplicated and sorted.
    UniqueStrings,
    /// One of a fixed set of words.
    Choice(&'static [&'static str]),
    /// A flag etcd accepts and ignores (legacy v2 flags); boolean-like.
    Ignored,
}

impl Kind {
    fn is_bool(self) -> bool {
        matches!(self, Kind::Bool | Kind::Ignored)
    }
}

/// Where a flag lives in etcd's YAML config file.
#[derive(Clone, Copy, Debug)]
enum Yaml {
    /// The key is the flag's name.
    Same,
    /// A different key; nested keys are joined with `.`.
    Key(&'static str),
    /// The config file cannot set it.
    No,
}

#[derive(Debug)]
struct Flag {
    name: &'static str,
    kind: Kind,
    default: &'static str,
    yaml: Yaml,
    help: &'static str,
}

impl Flag {
    fn yaml_key(&self) -> Option<&'static str> {
        match self.yaml {
            Yaml::Same => Some(self.name),
            Yaml::Key(k) => Some(k),
            Yaml::No => None,
        }
    }

    fn env_key(&self) -> String {
        env_key(self.name)
    }
}

const fn flag(name: &'static str, kind: Kind, default: &'static str, help: &'static str) -> Flag {
    Flag {
        name,
        kind,
        default,
        yaml: Yaml::Same,
        help,
    }
}

const fn flag_yaml(
    name: &'static str,
    kind: Kind,
    default: &'static str,
    yaml: Yaml,
    help: &'static str,
) -> Flag {
    Flag {
        name,
        kind,
        default,
        yaml,
        help,
    }
}

const fn ignored(name: &'static str) -> Flag {
    Flag {
        name,
        kind: Kind::Ignored,
        default: "",
        yaml: Yaml::No,
        help: "",
    }
}

const CLUSTER_STATES: &[&str] = &["new", "existing"];
const FALLBACKS: &[&str] = &["proxy", "exit"];
const PROXY_MODES: &[&str] = &["off", "readonly", "on"];
const V2_DEPRECATION: &[&str] = &["not-yet", "write-only", "write-only-drop-data", "gone"];
const LOG_LEVELS: &[&str] = &["debug", "info", "warn", "error", "dpanic", "panic", "fatal"];
const DEFAULT_LOG_ROTATION: &str =
    r#"{"maxsize": 100, "maxage": 0, "maxbackups": 0, "localtime": false, "compress": false}"#;

use Kind::{
    Bool, Choice, Cors, Duration as Dur, Int, Str, Strings, Uint, Uint32, UniqueStrings, Urls,
};

/// Every flag of etcd 3.5.16's server, in etcd's order.
#[rustfmt::skip]
static FLAGS: &[Flag] = &[
    flag_yaml("config-file", Str, "", Yaml::No, "YAML configuration file; when given, other flags and ETCD_* variables are ignored."),
    // member
    flag("data-dir", Str, "", "Directory for the member's data (default <name>.etcd)."),
    flag("wal-dir", Str, "", "Separate directory for the write-ahead log."),
    flag("listen-peer-urls", Urls, DEFAULT_PEER_URL, "URLs to listen on for traffic from other members."),
    flag("listen-client-urls", Urls, DEFAULT_CLIENT_URL, "URLs to listen on for client gRPC and HTTP traffic."),
    flag("listen-client-http-urls", Urls, "", "URLs to listen on for HTTP-only client traffic."),
    flag("listen-metrics-urls", Urls, "", "Extra URLs serving /metrics and /health."),
    flag("max-snapshots", Uint, "5", "Snapshot files to keep (0 keeps all)."),
    flag("max-wals", Uint, "5", "WAL files to keep (0 keeps all)."),
    flag("name", Str, DEFAULT_NAME, "This member's name."),
    flag("snapshot-count", Uint, "100000", "Committed entries between two snapshots."),
    flag("heartbeat-interval", Uint, "100", "Raft heartbeat interval, in milliseconds."),
    flag("election-timeout", Uint, "1000", "Raft election timeout, in milliseconds (at least 5 heartbeats, at most 50000)."),
    flag("initial-election-tick-advance", Bool, "true", "Fast-forward election ticks at start for a quicker first election."),
    flag("quota-backend-bytes", Int, "0", "Database size that raises the NOSPACE alarm (0: 2 GiB)."),
    flag("backend-bbolt-freelist-type", Str, "", "bbolt freelist type (array or map)."),
    flag("backend-batch-interval", Dur, "0s", "Longest time before a backend commit."),
    flag("backend-batch-limit", Int, "0", "Most operations before a backend commit."),
    flag("max-txn-ops", Uint, "128", "Most operations in one transaction."),
    flag("max-request-bytes", Uint, "1572864", "Largest client request accepted, in bytes."),
    flag("grpc-keepalive-min-time", Dur, "5s", "Shortest interval a client may ping the server at."),
    flag("grpc-keepalive-interval", Dur, "2h", "Interval of server-to-client pings (0 disables)."),
    flag("grpc-keepalive-timeout", Dur, "20s", "Wait for a ping answer before closing the connection (0 disables)."),
    flag_yaml("socket-reuse-port", Bool, "false", Yaml::Key("socket-options.reuse-port"), "Set SO_REUSEPORT on listeners."),
    flag_yaml("socket-reuse-address", Bool, "false", Yaml::Key("socket-options.reuse-address"), "Set SO_REUSEADDR on listeners."),
    flag("max-concurrent-streams", Uint32, "4294967295", "Most concurrent gRPC streams per client connection."),
    flag_yaml("raft-read-timeout", Dur, "5s", Yaml::No, "Read timeout on peer connections (at least 5s)."),
    flag_yaml("raft-write-timeout", Dur, "5s", Yaml::No, "Write timeout on peer connections (at least 5s)."),
    // clustering
    flag("initial-advertise-peer-urls", Urls, DEFAULT_PEER_URL, "This member's peer URLs, as the other members reach them."),
    flag("advertise-client-urls", Urls, DEFAULT_CLIENT_URL, "This member's client URLs, as clients reach them."),
    flag("discovery", Str, "", "Discovery service URL to bootstrap the cluster with."),
    flag("discovery-fallback", Choice(FALLBACKS), "proxy", "What to do when discovery fails: exit or proxy."),
    flag("discovery-proxy", Str, "", "HTTP proxy for the discovery service."),
    flag("discovery-srv", Str, "", "DNS domain whose SRV records list the initial cluster."),
    flag("discovery-srv-name", Str, "", "Service name suffix for DNS discovery."),
    flag("initial-cluster", Str, DEFAULT_INITIAL_CLUSTER, "Initial members as name=peerURL,... (default <name>=<initial-advertise-peer-urls>)."),
    flag("initial-cluster-token", Str, "etcd-cluster", "Token that makes cluster and member ids unique to this cluster."),
    flag("initial-cluster-state", Choice(CLUSTER_STATES), "new", "new to bootstrap a cluster, existing to join one."),
    flag("strict-reconfig-check", Bool, "true", "Refuse membership changes that would lose quorum."),
    flag("pre-vote", Bool, "true", "Run raft's pre-vote phase before elections."),
    flag("enable-v2", Bool, "false", "Serve the deprecated v2 API."),
    flag("experimental-enable-v2v3", Str, "", "Prefix for the v2 API emulated on v3 (deprecated)."),
    flag("v2-deprecation", Choice(V2_DEPRECATION), "not-yet", "v2 store deprecation stage."),
    // proxy
    flag("proxy", Choice(PROXY_MODES), "off", "v2 proxy mode: off, readonly or on."),
    flag_yaml("proxy-failure-wait", Uint, "5000", Yaml::Same, "Milliseconds a failed proxy endpoint stays out."),
    flag("proxy-refresh-interval", Uint, "30000", "Milliseconds between proxy endpoint refreshes."),
    flag("proxy-dial-timeout", Uint, "1000", "Proxy dial timeout in milliseconds."),
    flag("proxy-write-timeout", Uint, "5000", "Proxy write timeout in milliseconds."),
    flag("proxy-read-timeout", Uint, "0", "Proxy read timeout in milliseconds."),
    // security
    flag_yaml("cert-file", Str, "", Yaml::Key("client-transport-security.cert-file"), "TLS certificate for client connections."),
    flag_yaml("key-file", Str, "", Yaml::Key("client-transport-security.key-file"), "TLS key for client connections."),
    flag_yaml("client-cert-file", Str, "", Yaml::Key("client-transport-security.client-cert-file"), "Client certificate this member presents, if not --cert-file."),
    flag_yaml("client-key-file", Str, "", Yaml::Key("client-transport-security.client-key-file"), "Key for --client-cert-file."),
    flag_yaml("client-cert-auth", Bool, "false", Yaml::Key("client-transport-security.client-cert-auth"), "Require client certificates."),
    flag_yaml("client-crl-file", Str, "", Yaml::No, "Revocation list for client certificates."),
    flag_yaml("client-cert-allowed-hostname", Strings, "", Yaml::Key("client-transport-security.allowed-hostname"), "Client certificate SAN hostnames to accept."),
    flag_yaml("trusted-ca-file", Str, "", Yaml::Key("client-transport-security.trusted-ca-file"), "CA bundle that signs client certificates."),
    flag_yaml("auto-tls", Bool, "false", Yaml::Key("client-transport-security.auto-tls"), "Serve clients with a generated self-signed certificate."),
    flag_yaml("peer-cert-file", Str, "", Yaml::Key("peer-transport-security.cert-file"), "TLS certificate for peer connections."),
    flag_yaml("peer-key-file", Str, "", Yaml::Key("peer-transport-security.key-file"), "TLS key for peer connections."),
    flag_yaml("peer-client-cert-file", Str, "", Yaml::Key("peer-transport-security.client-cert-file"), "Certificate this member presents to peers, if not --peer-cert-file."),
    flag_yaml("peer-client-key-file", Str, "", Yaml::Key("peer-transport-security.client-key-file"), "Key for --peer-client-cert-file."),
    flag_yaml("peer-client-cert-auth", Bool, "false", Yaml::Key("peer-transport-security.client-cert-auth"), "Require peer certificates."),
    flag_yaml("peer-trusted-ca-file", Str, "", Yaml::Key("peer-transport-security.trusted-ca-file"), "CA bundle that signs peer certificates."),
    flag_yaml("peer-auto-tls", Bool, "false", Yaml::Key("peer-transport-security.auto-tls"), "Talk to peers with a generated self-signed certificate."),
    flag("self-signed-cert-validity", Uint, "1", "Validity of generated certificates, in years."),
    flag_yaml("peer-crl-file", Str, "", Yaml::No, "Revocation list for peer certificates."),
    flag_yaml("peer-cert-allowed-cn", Strings, "", Yaml::Key("peer-transport-security.allowed-cn"), "Peer certificate common names to accept."),
    flag_yaml("peer-cert-allowed-hostname", Strings, "", Yaml::Key("peer-transport-security.allowed-hostname"), "Peer certificate SAN hostnames to accept."),
    flag("cipher-suites", Strings, "", "TLS cipher suites to allow (empty: Go's defaults)."),
    flag_yaml("experimental-peer-skip-client-san-verification", Bool, "false", Yaml::No, "Do not check the SAN of peer client certificates."),
    flag("tls-min-version", Str, "TLS1.2", "Lowest TLS version: TLS1.2 or TLS1.3."),
    flag("tls-max-version", Str, "", "Highest TLS version: TLS1.2, TLS1.3 or empty for the newest."),
    flag("cors", Cors, "*", "Origins allowed for CORS (* allows all)."),
    flag("host-whitelist", UniqueStrings, "*", "Host headers accepted on insecure HTTP (* accepts all)."),
    // logging
    flag("logger", Str, "zap", "Logger implementation; only zap."),
    flag("log-outputs", UniqueStrings, "default", "Where logs go: default, stderr, stdout, systemd/journal or file paths."),
    flag("log-level", Str, "info", "Log level: debug, info, warn, error, panic or fatal."),
    flag("enable-log-rotation", Bool, "false", "Rotate the single log file output."),
    flag("log-rotation-config-json", Str, DEFAULT_LOG_ROTATION, "Log rotation settings as JSON."),
    // version
    flag_yaml("version", Bool, "false", Yaml::No, "Print the version and exit."),
    flag("auto-compaction-retention", Str, "0", "History to keep: hours or a duration (periodic mode), revisions (revision mode); 0 disables."),
    flag("auto-compaction-mode", Str, "periodic", "How to read --auto-compaction-retention: periodic or revision."),
    flag("enable-pprof", Bool, "false", "Serve Go-style profiling under /debug/pprof."),
    flag("metrics", Str, "basic", "Metrics detail: basic or extensive."),
    flag("experimental-enable-distributed-tracing", Bool, "false", "Export OpenTelemetry traces."),
    flag("experimental-distributed-tracing-address", Str, "localhost:4317", "OpenTelemetry collector address."),
    flag("experimental-distributed-tracing-service-name", Str, "etcd", "Service name in exported traces."),
    flag("experimental-distributed-tracing-instance-id", Str, "", "Service instance id in exported traces."),
    flag("experimental-distributed-tracing-sampling-rate", Int, "0", "Spans sampled per million."),
    // auth
    flag("auth-token", Str, "simple", "Auth token type and options (simple or jwt,...)."),
    flag("bcrypt-cost", Uint, "10", "bcrypt cost for password hashes."),
    flag("auth-token-ttl", Uint, "300", "Lifetime of simple auth tokens, in seconds."),
    // gateway
    flag("enable-grpc-gateway", Bool, "true", "Serve the JSON gRPC gateway."),
    // experimental
    flag("experimental-initial-corrupt-check", Bool, "false", "Check data against peers before serving."),
    flag("experimental-corrupt-check-time", Dur, "0s", "Interval between corruption checks."),
    flag("experimental-compact-hash-check-enabled", Bool, "false", "Leader compares followers' compaction hashes."),
    flag("experimental-compact-hash-check-time", Dur, "1m", "Interval between compaction hash checks."),
    flag("experimental-enable-lease-checkpoint", Bool, "false", "Leader checkpoints remaining lease TTLs to followers."),
    flag("experimental-enable-lease-checkpoint-persist", Bool, "false", "Persist lease checkpoints (needs --experimental-enable-lease-checkpoint)."),
    // Not a flag of etcd 3.5's binary (only its embed config's LeaseCheckpointInterval).
    flag("experimental-compaction-batch-limit", Int, "0", "Revisions deleted per compaction batch."),
    flag("experimental-compaction-sleep-interval", Dur, "0s", "Pause between compaction batches."),
    flag("experimental-watch-progress-notify-interval", Dur, "10m0s", "Interval of watch progress notifications."),
    flag("experimental-downgrade-check-time", Dur, "5s", "Interval between downgrade status checks."),
    flag("experimental-warning-apply-duration", Dur, "100ms", "Apply time above which a request is logged as slow."),
    flag("experimental-memory-mlock", Bool, "false", "Lock the database pages in RAM."),
    flag("experimental-txn-mode-write-with-shared-buffer", Bool, "true", "Write transactions read through a shared buffer."),
    flag("experimental-stop-grpc-service-on-defrag", Bool, "false", "Stop serving gRPC while defragmenting."),
    flag("experimental-bootstrap-defrag-threshold-megabytes", Uint, "0", "Defragment at start if that frees at least this many MB."),
    flag_yaml("experimental-snapshot-catchup-entries", Uint, "5000", Yaml::Key("experimental-snapshot-catch-up-entries"), "Entries kept for slow followers after a snapshot."),
    // unsafe
    flag("unsafe-no-fsync", Bool, "false", "Do not fsync (loses data on a crash)."),
    flag("force-new-cluster", Bool, "false", "Restart as a one-member cluster, dropping the others."),
    // accepted and ignored, as etcd does
    ignored("cluster-active-size"),
    ignored("cluster-remove-delay"),
    ignored("cluster-sync-interval"),
    ignored("config"),
    ignored("force"),
    ignored("max-result-buffer"),
    ignored("max-retry-attempts"),
    ignored("peer-heartbeat-interval"),
    ignored("peer-election-timeout"),
    ignored("retry-interval"),
    ignored("snapshot"),
    ignored("v"),
    ignored("vv"),
    ignored("test.coverprofile"),
    ignored("test.outputdir"),
];

fn lookup(name: &str) -> Option<&'static Flag> {
    FLAGS.iter().find(|f| f.name == name)
}

/// `data-dir` -> `ETCD_DATA_DIR`, as etcd's `flags.FlagToEnv`.
fn env_key(name: &str) -> String {
    format!("ETCD_{}", name.replace('-', "_").to_uppercase())
}

// ---------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------

/// A parsed flag value.
#[derive(Clone, Debug, PartialEq)]
enum Val {
    Str(String),
    Bool(bool),
    U64(u64),
    I64(i64),
    /// Nanoseconds, as Go's `time.Duration`.
    Dur(i64),
    Urls(Vec<Url>),
    List(Vec<String>),
}

fn default_val(f: &Flag) -> Val {
    match parse_value(f.kind, f.default) {
        Ok(Some(v)) => v,
        // Defaults are checked by a unit test; an empty URL default means "no URLs".
        _ => match f.kind {
            Kind::Urls => Val::Urls(Vec::new()),
            _ => Val::Str(f.default.to_owned()),
        },
    }
}

/// The flags set so far (command line, environment or file); the rest have their defaults.
#[derive(Debug, Default)]
struct Values {
    set: HashMap<&'static str, Val>,
}

impl Values {
    fn is_set(&self, name: &str) -> bool {
        self.set.contains_key(name)
    }

    fn get(&self, name: &str) -> Val {
        match self.set.get(name) {
            Some(v) => v.clone(),
            None => lookup(name)
                .map(default_val)
                .unwrap_or(Val::Str(String::new())),
        }
    }

    fn string(&self, name: &str) -> String {
        match self.get(name) {
            Val::Str(s) => s,
            Val::List(l) => l.join(","),
            _ => String::new(),
        }
    }

    fn boolean(&self, name: &str) -> bool {
        matches!(self.get(name), Val::Bool(true))
    }

    fn uint(&self, name: &str) -> u64 {
        match self.get(name) {
            Val::U64(n) => n,
            _ => 0,
        }
    }

    fn int(&self, name: &str) -> i64 {
        match self.get(name) {
            Val::I64(n) => n,
            _ => 0,
        }
    }

    fn nanos(&self, name: &str) -> i64 {
        match self.get(name) {
            Val::Dur(n) => n,
            _ => 0,
        }
    }

    fn urls(&self, name: &str) -> Vec<Url> {
        match self.get(name) {
            Val::Urls(u) => u,
            _ => Vec::new(),
        }
    }

    fn list(&self, name: &str) -> Vec<String> {
        match self.get(name) {
            Val::List(l) => l,
            Val::Str(s) if !s.is_empty() => vec![s],
            _ => Vec::new(),
        }
    }

    /// Sets a flag from its textual form, as Go's `FlagSet.Set`; the error is the reason only.
    fn set_text(&mut self, f: &'static Flag, raw: &str) -> Result<(), String> {
        let v = match parse_value(f.kind, raw)? {
            Some(v) => v,
            None => self.get(f.name),
        };
        self.set.insert(f.name, v);
        Ok(())
    }
}

/// Parses a flag's text. `Ok(None)`: accepted but leaves the value as it was (etcd's URL
/// flags take `""` that way).
fn parse_value(kind: Kind, raw: &str) -> Result<Option<Val>, String> {
    let v = match kind {
        Kind::Str => Val::Str(raw.to_owned()),
        Kind::Bool => Val::Bool(go_parse_bool(raw).ok_or("parse error")?),
        Kind::Ignored => Val::Str(raw.to_owned()),
        Kind::Uint => Val::U64(go_parse_uint(raw, 64).map_err(NumError::flag_reason)?),
        Kind::Int => Val::I64(go_parse_int(raw).map_err(NumError::flag_reason)?),
        Kind::Uint32 => {
            Val::U64(go_parse_uint(raw, 32).map_err(|e| e.strconv_text("ParseUint", raw))?)
        }
        Kind::Duration => Val::Dur(go_parse_duration(raw).map_err(|_| "parse error")?),
        Kind::Urls if raw.is_empty() => return Ok(None),
        Kind::Urls => Val::Urls(parse_urls(raw)?),
        Kind::Cors if raw == "*" => Val::List(vec!["*".to_owned()]),
        Kind::Cors => Val::List(parse_urls(raw)?.iter().map(go_url_string).collect()),
        Kind::Strings if raw.is_empty() => Val::List(Vec::new()),
        Kind::Strings => Val::List(raw.split(',').map(str::to_owned).collect()),
        Kind::UniqueStrings => {
            let mut l: Vec<String> = raw.split(',').map(str::to_owned).collect();
            l.sort();
            l.dedup();
            Val::List(l)
        }
        Kind::Choice(valids) if valids.contains(&raw) => Val::Str(raw.to_owned()),
        Kind::Choice(valids) => {
            return Err(format!(
                "invalid value (valid values: {})",
                valids.join(", ")
            ));
        }
    };
    Ok(Some(v))
}

// ---------------------------------------------------------------------------------------------
// Entry point
// ---------------------------------------------------------------------------------------------

/// Reads the configuration from `args` (without `argv[0]`) and the process environment `env`
/// (pass `std::env::vars()` collected), the way etcd 3.5.16 does.
pub fn parse<I, S>(args: I, env: &[(String, String)]) -> Result<Invocation, ConfigError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let args = args
        .into_iter()
        .map(|a| {
            a.into()
                .into_string()
                .map_err(|os| ConfigError::NonUnicodeArgument(os.to_string_lossy().into_owned()))
        })
        .collect::<Result<Vec<String>, _>>()?;

    let mut values = Values::default();
    let rest = match parse_command_line(&args, &mut values)? {
        CommandLine::Help => return Ok(Invocation::Help(help_text())),
        CommandLine::Parsed { rest } => rest,
    };
    if let Some(first) = rest.first() {
        return Err(ConfigError::NotAFlag(first.clone()));
    }
    if values.boolean("version") {
        return Ok(Invocation::Version);
    }

    let mut warnings = Vec::new();
    let mut config_file = values.string("config-file");
    if config_file.is_empty() {
        config_file = getenv(env, "ETCD_CONFIG_FILE")
            .unwrap_or_default()
            .to_owned();
    }
    let (values, mode) = if config_file.is_empty() {
        apply_env(&mut values, env, &mut warnings)?;
        (values, Mode::CommandLine)
    } else {
        let mut others: Vec<&str> = values
            .set
            .keys()
            .copied()
            .filter(|n| *n != "config-file")
            .collect();
        if !others.is_empty() {
            others.sort_unstable();
            warnings.push(format!(
                "configuration file {config_file} is given, so these command-line flags are ignored (as etcd does): --{}",
                others.join(", --")
            ));
        }
        (load_file(&config_file)?, Mode::File)
    };
    let mut config = build(&values, mode, &mut warnings)?;
    if let Some(raw) = getenv(env, LEASE_CHECKPOINT_INTERVAL_ENV) {
        let nanos = go_parse_duration(raw).map_err(|_| {
            invalid(format!(
                "{LEASE_CHECKPOINT_INTERVAL_ENV}={raw:?} is not a duration; use e.g. 30s or 5m"
            ))
        })?;
        if nanos > 0 {
            config.lease_checkpoint_interval = Duration::from_nanos(nanos as u64);
        }
    }
    Ok(Invocation::Run(Loaded { config, warnings }))
}

/// Environment variable for the lease checkpoint interval (etcd has no flag for it).
pub const LEASE_CHECKPOINT_INTERVAL_ENV: &str = "CONCORD_LEASE_CHECKPOINT_INTERVAL";

/// Where the values came from; etcd post-processes the two differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    CommandLine,
    File,
}

enum CommandLine {
    Help,
    Parsed { rest: Vec<String> },
}

/// Go's `flag.FlagSet.Parse`: stops at the first non-flag argument or after `--`.
fn parse_command_line(args: &[String], values: &mut Values) -> Result<CommandLine, ConfigError> {
    let mut i = 0;
    while i < args.len() {
        let s = &args[i];
        if s.len() < 2 || !s.starts_with('-') {
            break;
        }
        let minuses = if s.starts_with("--") { 2 } else { 1 };
        if s == "--" {
            i += 1;
            break;
        }
        let body = &s[minuses..];
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            return Err(ConfigError::BadFlagSyntax(s.clone()));
        }
        i += 1;
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let Some(flag) = lookup(name) else {
            if name == "help" || name == "h" {
                return Ok(CommandLine::Help);
            }
            return Err(ConfigError::UnknownFlag(name.to_owned()));
        };
        let (value, boolean) = if flag.kind.is_bool() {
            (inline.unwrap_or("true").to_owned(), true)
        } else if let Some(v) = inline {
            (v.to_owned(), false)
        } else if let Some(next) = args.get(i) {
            i += 1;
            (next.clone(), false)
        } else {
            return Err(ConfigError::MissingValue(name.to_owned()));
        };
        values
            .set_text(flag, &value)
            .map_err(|reason| ConfigError::InvalidFlagValue {
                name: name.to_owned(),
                value: value.clone(),
                reason,
                boolean,
            })?;
    }
    Ok(CommandLine::Parsed {
        rest: args[i..].to_vec(),
    })
}

/// `os.Getenv`: the first definition; empty counts as unset by the callers.
fn getenv<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// etcd's `SetFlagsFromEnv` and `verifyEnv`.
fn apply_env(
    values: &mut Values,
    env: &[(String, String)],
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let mut env: Vec<(String, String)> = env.to_vec();
    // etcd refuses ETCD_VERSION (it would print the version and exit).
    if let Some(v) = getenv(&env, "ETCD_VERSION").filter(|v| !v.is_empty()) {
        warnings.push(format!(
            "cannot set special environment variable ETCD_VERSION={v}; it is ignored (use --version to print the version)"
        ));
        env.retain(|(k, _)| k != "ETCD_VERSION");
    }
    let already_set: HashSet<String> = values.set.keys().map(|n| env_key(n)).collect();
    let mut used: HashSet<String> = HashSet::new();
    let mut sorted: Vec<&'static Flag> = FLAGS.iter().collect();
    sorted.sort_by_key(|f| f.name);
    let mut error = None;
    for f in sorted {
        let key = f.env_key();
        if already_set.contains(&key) {
            continue;
        }
        let Some(raw) = getenv(&env, &key).filter(|v| !v.is_empty()) else {
            continue;
        };
        used.insert(key.clone());
        if let Err(reason) = values.set_text(f, raw) {
            error = Some(ConfigError::InvalidEnv {
                key,
                value: raw.to_owned(),
                reason: format!("{reason}{}", kind_hint(f.kind)),
            });
        }
    }
    for (k, v) in &env {
        if used.contains(k) {
            continue;
        }
        if already_set.contains(k) {
            return Err(ConfigError::EnvShadowed(k.clone()));
        }
        if !k.starts_with("ETCD_") {
            continue;
        }
        if v.is_empty() && FLAGS.iter().any(|f| f.env_key() == *k) {
            // etcd calls this "unrecognized" too; say why it was not used.
            warnings.push(format!(
                "environment variable {k} is empty, so it is ignored; unset it or give it a value"
            ));
        } else {
            warnings.push(format!(
                "unrecognized environment variable {k}={v}; concord ignores it (ETCD_* variables name etcd flags, e.g. ETCD_DATA_DIR)"
            ));
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Config file
// ---------------------------------------------------------------------------------------------

fn load_file(path: &str) -> Result<Values, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ConfigFileRead {
        path: path.to_owned(),
        source,
    })?;
    let doc: yaml_serde::Value =
        yaml_serde::from_str(&text).map_err(|e| ConfigError::ConfigFileParse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    let root = match doc {
        yaml_serde::Value::Mapping(m) => m,
        yaml_serde::Value::Null => yaml_serde::Mapping::new(),
        _ => {
            return Err(ConfigError::ConfigFileParse {
                path: path.to_owned(),
                message: "the document is not a mapping".to_owned(),
            });
        }
    };
    let mut values = Values::default();
    for f in FLAGS {
        let Some(key) = f.yaml_key() else { continue };
        let Some(v) = yaml_lookup(&root, key) else {
            continue;
        };
        set_from_yaml(&mut values, f, v).map_err(|message| ConfigError::ConfigFileValue {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        })?;
    }
    Ok(values)
}

/// Finds `a.b` in the document; keys match case-insensitively, as Go's JSON decoding does.
fn yaml_lookup<'a>(root: &'a yaml_serde::Mapping, key: &str) -> Option<&'a yaml_serde::Value> {
    let mut map = root;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let found = map
            .iter()
            .filter(|(k, _)| k.as_str().is_some_and(|k| k.eq_ignore_ascii_case(part)))
            .map(|(_, v)| v)
            .last()?;
        if parts.peek().is_none() {
            return match found {
                yaml_serde::Value::Null => None,
                v => Some(v),
            };
        }
        match found {
            yaml_serde::Value::Mapping(m) => map = m,
            _ => return None,
        }
    }
    None
}

fn yaml_scalar(v: &yaml_serde::Value) -> Result<String, String> {
    match v {
        yaml_serde::Value::String(s) => Ok(s.clone()),
        yaml_serde::Value::Bool(b) => Ok(b.to_string()),
        yaml_serde::Value::Number(n) => Ok(n.to_string()),
        yaml_serde::Value::Tagged(t) => yaml_scalar(&t.value),
        yaml_serde::Value::Sequence(_) => Err("expected a single value, found a list".to_owned()),
        yaml_serde::Value::Mapping(_) => Err("expected a single value, found a mapping".to_owned()),
        yaml_serde::Value::Null => Ok(String::new()),
    }
}

/// A value from the file, with the YAML types etcd's Go structs take: numbers, booleans,
/// durations in nanoseconds, lists as sequences; URL lists as comma-separated strings.
fn set_from_yaml(
    values: &mut Values,
    f: &'static Flag,
    v: &yaml_serde::Value,
) -> Result<(), String> {
    let val = match (f.kind, v) {
        (Kind::Bool, yaml_serde::Value::Bool(b)) => Val::Bool(*b),
        (Kind::Bool, _) => {
            let s = yaml_scalar(v)?;
            let b = go_parse_bool(&s).or(match s.to_ascii_lowercase().as_str() {
                "yes" | "on" | "y" => Some(true),
                "no" | "off" | "n" => Some(false),
                _ => None,
            });
            Val::Bool(b.ok_or_else(|| format!("expected true or false, found {s:?}"))?)
        }
        (Kind::Duration, yaml_serde::Value::Number(n)) => Val::Dur(
            n.as_i64()
                .ok_or_else(|| format!("expected a duration in nanoseconds, found {n}"))?,
        ),
        (Kind::Duration, _) => {
            let s = yaml_scalar(v)?;
            Val::Dur(
                go_parse_duration(&s)
                    .map_err(|e| format!("{e}; give nanoseconds or a duration such as 100ms"))?,
            )
        }
        (Kind::Strings | Kind::UniqueStrings, yaml_serde::Value::Sequence(seq)) => {
            let mut l = seq.iter().map(yaml_scalar).collect::<Result<Vec<_>, _>>()?;
            if f.kind == Kind::UniqueStrings {
                l.sort();
                l.dedup();
            }
            Val::List(l)
        }
        _ => {
            let s = yaml_scalar(v)?;
            // etcd checks these words in Validate() (after the file is read), not while reading.
            if let Kind::Choice(_) = f.kind {
                if !s.is_empty() {
                    values.set.insert(f.name, Val::Str(s));
                }
                return Ok(());
            }
            // etcd only takes these from the file when they are not empty.
            if s.is_empty()
                && matches!(
                    f.kind,
                    Kind::Urls | Kind::Cors | Kind::UniqueStrings | Kind::Choice(_)
                )
            {
                return Ok(());
            }
            match parse_value(f.kind, &s)? {
                Some(v) => v,
                None => return Ok(()),
            }
        }
    };
    values.set.insert(f.name, val);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Post-processing and validation
// ---------------------------------------------------------------------------------------------

fn invalid(msg: String) -> ConfigError {
    ConfigError::Invalid(msg)
}

fn build(values: &Values, mode: Mode, warnings: &mut Vec<String>) -> Result<Config, ConfigError> {
    let mut values_adj: HashMap<&'static str, Val> = HashMap::new();
    let name = values.string("name");
    let listen_peer_urls = values.urls("listen-peer-urls");
    let listen_client_urls = values.urls("listen-client-urls");
    let listen_client_http_urls = values.urls("listen-client-http-urls");
    let listen_metrics_urls = values.urls("listen-metrics-urls");
    let initial_advertise_peer_urls = values.urls("initial-advertise-peer-urls");
    let mut advertise_client_urls = values.urls("advertise-client-urls");
    let mut initial_cluster = values.string("initial-cluster");
    let discovery = values.string("discovery");
    let discovery_srv = values.string("discovery-srv");
    let may_be_proxy = values.string("proxy") != "off"
        || (!discovery.is_empty() && values.string("discovery-fallback") == "proxy");
    let mut unset_advertise = false;

    match mode {
        Mode::CommandLine => {
            for timeout in ["raft-read-timeout", "raft-write-timeout"] {
                if values.nanos(timeout) < MIN_RAFT_CONN_TIMEOUT_NS {
                    values_adj.insert(timeout, Val::Dur(MIN_RAFT_CONN_TIMEOUT_NS));
                    warnings.push(format!("--{timeout} raised to its minimum, 5s"));
                }
            }
            if values.is_set("listen-client-urls")
                && !values.is_set("advertise-client-urls")
                && !may_be_proxy
            {
                advertise_client_urls.clear();
                unset_advertise = true;
            }
            let dns_name = values.string("discovery-srv-name");
            if (!discovery.is_empty() || !discovery_srv.is_empty() || !dns_name.is_empty())
                && !values.is_set("initial-cluster")
            {
                initial_cluster.clear();
            }
        }
        Mode::File => {
            if (!discovery.is_empty() || !discovery_srv.is_empty())
                && initial_cluster == DEFAULT_INITIAL_CLUSTER
            {
                initial_cluster.clear();
            }
        }
    }

    // embed.Config.Validate(), in etcd's order.
    let logger = values.string("logger");
    match logger.as_str() {
        "zap" => {}
        "capnslog" => {
            return Err(invalid(
                "--logger=capnslog is removed in v3.5; use --logger=zap".to_owned(),
            ));
        }
        other => {
            return Err(invalid(format!(
                "unknown logger option {other:?}; the only logger is zap"
            )));
        }
    }
    let log_outputs = values.list("log-outputs");
    if log_outputs.len() > 1 && log_outputs.iter().any(|o| o == "default") {
        return Err(invalid(
            "multi logoutput for \"default\" is not supported yet; list explicit outputs (stderr, stdout, file paths) in --log-outputs".to_owned(),
        ));
    }
    let log_level = values.string("log-level").to_ascii_lowercase();
    let log_level = if log_level.is_empty() {
        "info".to_owned()
    } else {
        log_level
    };
    if !LOG_LEVELS.contains(&log_level.as_str()) {
        return Err(invalid(format!(
            "invalid --log-level {:?}; use one of debug, info, warn, error, panic, fatal",
            values.string("log-level")
        )));
    }
    check_bind_urls("--listen-peer-urls", &listen_peer_urls)?;
    check_bind_urls("--listen-client-urls", &listen_client_urls)?;
    check_bind_urls("--listen-client-http-urls", &listen_client_http_urls)?;
    check_bind_urls("--listen-metrics-urls", &listen_metrics_urls)?;
    check_host_urls(
        "--initial-advertise-peer-urls",
        &initial_advertise_peer_urls,
    )?;
    check_host_urls("--advertise-client-urls", &advertise_client_urls)?;

    let initial_cluster_state = match values.string("initial-cluster-state").as_str() {
        "new" => ClusterState::New,
        "existing" => ClusterState::Existing,
        "" if mode == Mode::File => ClusterState::New,
        other => {
            return Err(invalid(format!(
                "unexpected clusterState {other:?}; --initial-cluster-state must be new or existing"
            )));
        }
    };
    for f in FLAGS {
        if let Kind::Choice(valids) = f.kind
            && f.name != "initial-cluster-state"
        {
            let v = values.string(f.name);
            if !valids.contains(&v.as_str()) {
                return Err(invalid(format!(
                    "invalid {} {v:?}; use one of: {}",
                    f.name,
                    valids.join(", ")
                )));
            }
        }
    }
    let bootstrap_sources = [
        !discovery.is_empty(),
        !initial_cluster.is_empty(),
        !discovery_srv.is_empty(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if bootstrap_sources > 1 {
        return Err(invalid(
            "multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\""
                .to_owned(),
        ));
    }
    let tick_ms = values.uint("heartbeat-interval");
    let election_ms = values.uint("election-timeout");
    if tick_ms == 0 {
        return Err(invalid(format!(
            "--heartbeat-interval must be >0 (set to {tick_ms}ms); the default is 100"
        )));
    }
    if election_ms == 0 {
        return Err(invalid(format!(
            "--election-timeout must be >0 (set to {election_ms}ms); the default is 1000"
        )));
    }
    if tick_ms.saturating_mul(5) > election_ms {
        return Err(invalid(format!(
            "--election-timeout[{election_ms}ms] should be at least as 5 times as --heartbeat-interval[{tick_ms}ms]; \
             raise --election-timeout or lower --heartbeat-interval"
        )));
    }
    if election_ms > MAX_ELECTION_MS {
        return Err(invalid(format!(
            "--election-timeout[{election_ms}ms] is too long, and should be set less than {MAX_ELECTION_MS}ms"
        )));
    }
    if unset_advertise {
        return Err(ConfigError::UnsetAdvertiseClientUrls);
    }
    let auto_compaction_mode = match values.string("auto-compaction-mode").as_str() {
        "periodic" | "" => AutoCompactionMode::Periodic,
        "revision" => AutoCompactionMode::Revision,
        other => {
            return Err(invalid(format!(
                "unknown auto-compaction-mode {other:?}; use --auto-compaction-mode=periodic or revision"
            )));
        }
    };
    if values.boolean("experimental-enable-lease-checkpoint-persist")
        && !values.boolean("experimental-enable-lease-checkpoint")
    {
        return Err(invalid(
            "setting experimental-enable-lease-checkpoint-persist requires experimental-enable-lease-checkpoint; \
             set both or neither"
                .to_owned(),
        ));
    }
    let hash_check = values.nanos("experimental-compact-hash-check-time");
    if hash_check <= 0 {
        return Err(invalid(format!(
            "--experimental-compact-hash-check-time must be >0 (set to {}); the default is 1m",
            go_format_duration(hash_check)
        )));
    }
    let min_tls = tls_version(&values.string("tls-min-version"))?;
    let max_tls = tls_version(&values.string("tls-max-version"))?;
    if max_tls != 0 && min_tls > max_tls {
        return Err(invalid(format!(
            "min version ({}) is greater than max version ({}); lower --tls-min-version or raise --tls-max-version",
            values.string("tls-min-version"),
            values.string("tls-max-version")
        )));
    }
    if min_tls == 13 && !values.list("cipher-suites").is_empty() {
        return Err(invalid(
            "cipher suites cannot be configured when only TLS1.3 is enabled; drop --cipher-suites or lower --tls-min-version"
                .to_owned(),
        ));
    }
    crate::tls::check_cipher_suites(&values.list("cipher-suites")).map_err(invalid)?;
    if !values.list("peer-cert-allowed-cn").is_empty()
        && !values.list("peer-cert-allowed-hostname").is_empty()
    {
        return Err(invalid(format!(
            "AllowedCNs and AllowedHostnames are mutually exclusive (cns={:?}, hostnames={:?}); give only one of --peer-cert-allowed-cn and --peer-cert-allowed-hostname",
            values.list("peer-cert-allowed-cn"),
            values.list("peer-cert-allowed-hostname")
        )));
    }
    if values.boolean("experimental-enable-distributed-tracing") {
        let rate = values.int("experimental-distributed-tracing-sampling-rate");
        if rate < 0 {
            return Err(invalid(
                "distributed tracing configurition is not valid: (tracing sampling rate must be positive)".to_owned(),
            ));
        }
        if rate > MAX_TRACING_SAMPLING_RATE {
            return Err(invalid(format!(
                "distributed tracing configurition is not valid: (tracing sampling rate must be less than {MAX_TRACING_SAMPLING_RATE})"
            )));
        }
    }

    // etcdmain after validation: a renamed member gets its own default initial cluster.
    let initial_cluster = if name != DEFAULT_NAME && initial_cluster == DEFAULT_INITIAL_CLUSTER {
        let member = if name.is_empty() {
            DEFAULT_NAME
        } else {
            name.as_str()
        };
        initial_advertise_peer_urls
            .iter()
            .map(|u| (member.to_owned(), u.clone()))
            .collect()
    } else {
        parse_initial_cluster(&initial_cluster)?
    };
    let retention = parse_retention(
        auto_compaction_mode,
        &values.string("auto-compaction-retention"),
    )
    .map_err(invalid)?;
    let mut data_dir = values.string("data-dir");
    if data_dir.is_empty() {
        data_dir = format!("{name}.etcd");
    }

    for f in FLAGS {
        if ACTED_ON.contains(&f.name) {
            continue;
        }
        let Some(v) = values_adj.get(f.name).or_else(|| values.set.get(f.name)) else {
            continue;
        };
        if f.kind == Kind::Ignored {
            warnings.push(format!(
                "flag --{} is no longer supported and is ignored, as etcd does",
                f.name
            ));
        } else if *v != default_val(f) {
            warnings.push(format!(
                "flag --{} is accepted for compatibility but concord does not act on it yet",
                f.name
            ));
        }
    }

    let path = |name: &str| {
        Some(values.string(name))
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    };
    Ok(Config {
        data_dir: PathBuf::from(data_dir),
        listen_client_urls,
        advertise_client_urls,
        listen_peer_urls,
        initial_advertise_peer_urls,
        initial_cluster,
        initial_cluster_state,
        initial_cluster_token: values.string("initial-cluster-token"),
        max_request_bytes: to_usize("--max-request-bytes", values.uint("max-request-bytes"))?,
        max_txn_ops: to_usize("--max-txn-ops", values.uint("max-txn-ops"))?,
        quota_backend_bytes: values.int("quota-backend-bytes"),
        auto_compaction_mode,
        auto_compaction_retention: retention,
        snapshot_count: values.uint("snapshot-count"),
        snapshot_catchup_entries: values.uint("experimental-snapshot-catchup-entries"),
        backend_batch_interval: Duration::from_nanos(
            values.nanos("backend-batch-interval").max(0) as u64
        ),
        backend_batch_limit: values.int("backend-batch-limit"),
        heartbeat_interval: Duration::from_millis(tick_ms),
        election_timeout: Duration::from_millis(election_ms),
        log_level,
        strict_reconfig_check: values.boolean("strict-reconfig-check"),
        client_tls: TlsConfig {
            cert_file: path("cert-file"),
            key_file: path("key-file"),
            trusted_ca_file: path("trusted-ca-file"),
            client_cert_auth: values.boolean("client-cert-auth"),
            auto_tls: values.boolean("auto-tls"),
            crl_file: path("client-crl-file"),
            allowed_cns: Vec::new(),
            allowed_hostnames: values.list("client-cert-allowed-hostname"),
            cipher_suites: values.list("cipher-suites"),
            min_version: min_tls,
            max_version: max_tls,
            self_signed_cert_validity: values.uint("self-signed-cert-validity"),
            skip_client_san_verify: false,
        },
        peer_tls: TlsConfig {
            cert_file: path("peer-cert-file"),
            key_file: path("peer-key-file"),
            trusted_ca_file: path("peer-trusted-ca-file"),
            client_cert_auth: values.boolean("peer-client-cert-auth"),
            auto_tls: values.boolean("peer-auto-tls"),
            crl_file: path("peer-crl-file"),
            allowed_cns: values.list("peer-cert-allowed-cn"),
            allowed_hostnames: values.list("peer-cert-allowed-hostname"),
            cipher_suites: values.list("cipher-suites"),
            min_version: min_tls,
            max_version: max_tls,
            self_signed_cert_validity: values.uint("self-signed-cert-validity"),
            skip_client_san_verify: values
                .boolean("experimental-peer-skip-client-san-verification"),
        },
        enable_pprof: values.boolean("enable-pprof"),
        auth_token: values.string("auth-token"),
        auth_token_ttl: values.uint("auth-token-ttl"),
        bcrypt_cost: values.uint("bcrypt-cost"),
        listen_metrics_urls,
        force_new_cluster: values.boolean("force-new-cluster"),
        cors: values.list("cors"),
        host_whitelist: values.list("host-whitelist"),
        watch_progress_notify_interval: Duration::from_nanos(
            values
                .nanos("experimental-watch-progress-notify-interval")
                .max(0) as u64,
        ),
        lease_checkpoint: values.boolean("experimental-enable-lease-checkpoint"),
        lease_checkpoint_persist: values.boolean("experimental-enable-lease-checkpoint-persist"),
        lease_checkpoint_interval: Duration::from_secs(300),
        name,
    })
}

fn to_usize(flag: &str, n: u64) -> Result<usize, ConfigError> {
    usize::try_from(n).map_err(|_| {
        invalid(format!(
            "{flag}={n} is too large for this platform; use a smaller value"
        ))
    })
}

/// `tlsutil.GetTLSVersion`: 0 means "newest Go supports".
fn tls_version(v: &str) -> Result<u8, ConfigError> {
    match v {
        "" => Ok(0),
        "TLS1.2" => Ok(12),
        "TLS1.3" => Ok(13),
        other => Err(invalid(format!(
            "unexpected TLS version {other:?} (must be one of: TLS1.2, TLS1.3)"
        ))),
    }
}

/// `--initial-cluster` text into pairs, as etcd's `types.NewURLsMap` reads it.
fn parse_initial_cluster(s: &str) -> Result<Vec<(String, Url)>, ConfigError> {
    let mut out = Vec::new();
    for entry in s.split(',').filter(|e| !e.is_empty()) {
        let Some((name, raw)) = entry.split_once('=') else {
            return Err(invalid(format!(
                "--initial-cluster entry {entry:?} is not name=URL; write it as --initial-cluster=n1=http://10.0.0.1:2380,n2=http://10.0.0.2:2380"
            )));
        };
        let urls = parse_urls(raw).map_err(|e| {
            invalid(format!(
                "--initial-cluster entry {entry:?}: {e}; give each member as name=http://host:port"
            ))
        })?;
        out.extend(urls.into_iter().map(|u| (name.to_owned(), u)));
    }
    Ok(out)
}

/// etcd's `parseCompactionRetention`: a whole number is hours (periodic) or revisions
/// (revision); otherwise a Go duration (periodic only here). Zero disables.
fn parse_retention(mode: AutoCompactionMode, s: &str) -> Result<AutoCompactionRetention, String> {
    if s.is_empty() {
        return Ok(AutoCompactionRetention::Disabled);
    }
    if let Ok(n) = s.parse::<i64>()
        && let Ok(n) = u64::try_from(n)
    {
        return Ok(match (n, mode) {
            (0, _) => AutoCompactionRetention::Disabled,
            (n, AutoCompactionMode::Revision) => AutoCompactionRetention::Revisions(n),
            (n, AutoCompactionMode::Periodic) => AutoCompactionRetention::Period(
                Duration::from_secs(n.checked_mul(3600).ok_or_else(|| {
                    format!(
                        "--auto-compaction-retention={s} hours is too long; use a smaller value"
                    )
                })?),
            ),
        });
    }
    let nanos = go_parse_duration(s).map_err(|e| {
        format!("error parsing CompactionRetention: {e}; use a whole number of hours or a duration such as 30m")
    })?;
    match mode {
        AutoCompactionMode::Revision => Err(format!(
            "--auto-compaction-retention={s:?} is not a revision count; with --auto-compaction-mode=revision give a whole number"
        )),
        AutoCompactionMode::Periodic if nanos < 0 => Err(format!(
            "--auto-compaction-retention={s:?} is negative; give a positive duration or 0 to disable"
        )),
        AutoCompactionMode::Periodic if nanos == 0 => Ok(AutoCompactionRetention::Disabled),
        AutoCompactionMode::Periodic => Ok(AutoCompactionRetention::Period(Duration::from_nanos(
            nanos.unsigned_abs(),
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// URLs
// ---------------------------------------------------------------------------------------------

fn static_url(s: &str) -> Url {
    Url::parse(s).expect("built-in default URL parses")
}

/// A URL as Go's `url.URL.String()` writes it (no trailing `/` for an empty path).
fn go_url_string(u: &Url) -> String {
    let s = u.as_str();
    if u.path() == "/" && u.query().is_none() && u.fragment().is_none() {
        s.strip_suffix('/').unwrap_or(s).to_owned()
    } else {
        s.to_owned()
    }
}

/// Comma-separated URLs as etcd's `types.NewURLs` takes them: http/https with `host:port` and
/// no path, or unix/unixs; sorted and deduplicated.
fn parse_urls(s: &str) -> Result<Vec<Url>, String> {
    let mut out: Vec<Url> = Vec::new();
    for raw in s.split(',') {
        let raw = raw.trim();
        let scheme = raw
            .split_once(':')
            .map(|(s, _)| s.to_ascii_lowercase())
            .unwrap_or_default();
        match scheme.as_str() {
            "http" | "https" => {
                let rest = raw.get(scheme.len() + 1..).unwrap_or_default();
                let Some(after) = rest.strip_prefix("//") else {
                    return Err(format!(
                        "URL address does not have the form \"host:port\": {raw}"
                    ));
                };
                let end = after.find(['/', '?', '#']).unwrap_or(after.len());
                let authority = &after[..end];
                let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                go_split_host_port(hostport).map_err(|_| {
                    format!("URL address does not have the form \"host:port\": {raw}")
                })?;
                if after[end..].starts_with('/') {
                    return Err(format!("URL must not contain a path: {raw}"));
                }
            }
            "unix" | "unixs" => {}
            _ => {
                return Err(format!(
                    "URL scheme must be http, https, unix, or unixs: {raw}"
                ));
            }
        }
        let u = Url::parse(raw).map_err(|e| format!("parse {raw:?}: {e}"))?;
        out.push(u);
    }
    out.sort_by_key(go_url_string);
    out.dedup();
    Ok(out)
}

/// Go's `net.SplitHostPort`.
fn go_split_host_port(hostport: &str) -> Result<(&str, &str), String> {
    if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("address {hostport}: missing ']' in address"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("address {hostport}: missing port in address"))?;
        return Ok((host, port));
    }
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| format!("address {hostport}: missing port in address"))?;
    if host.contains(':') {
        return Err(format!("address {hostport}: too many colons in address"));
    }
    Ok((host, port))
}

/// The `host:port` of a parsed URL, as Go's `url.Host` holds it.
fn url_host_port(u: &Url) -> Result<(String, u16), String> {
    let host = match u.host() {
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        Some(h) => h.to_string(),
        None => String::new(),
    };
    let port = u
        .port_or_known_default()
        .ok_or_else(|| format!("address {host}: missing port in address"))?;
    Ok((host, port))
}

/// etcd's `checkBindURLs`: listeners need an IP or `localhost`.
fn check_bind_urls(flag: &str, urls: &[Url]) -> Result<(), ConfigError> {
    for u in urls {
        if matches!(u.scheme(), "unix" | "unixs") {
            continue;
        }
        let (host, _) = url_host_port(u).map_err(|e| invalid(format!("{flag}: {e}")))?;
        if host == "localhost" || host.parse::<IpAddr>().is_ok() {
            continue;
        }
        return Err(invalid(format!(
            "expected IP in URL for binding ({}); {flag} must use an IP address (e.g. 0.0.0.0 or 127.0.0.1) or localhost",
            go_url_string(u)
        )));
    }
    Ok(())
}

/// etcd's `checkHostURLs`: advertised URLs need a host and a port.
fn check_host_urls(flag: &str, urls: &[Url]) -> Result<(), ConfigError> {
    for u in urls {
        let problem = match url_host_port(u) {
            Err(e) => Some(e),
            Ok((host, _)) if host.is_empty() => {
                Some(format!("unexpected empty host ({})", go_url_string(u)))
            }
            Ok(_) => None,
        };
        if let Some(problem) = problem {
            let all: Vec<String> = urls.iter().map(go_url_string).collect();
            return Err(invalid(format!(
                "{flag} {:?} must be \"host:port\" ({problem})",
                all.join(",")
            )));
        }
    }
    Ok(())
}

fn bind_addrs(flag: &str, urls: &[Url]) -> Result<Vec<SocketAddr>, ConfigError> {
    let mut out = Vec::new();
    for u in urls {
        if !matches!(u.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "{flag} {}: concord listens on TCP only; use an http:// or https:// URL",
                go_url_string(u)
            )));
        }
        let ip = match u.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(url::Host::Domain("localhost")) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            _ => {
                return Err(invalid(format!(
                    "expected IP in URL for binding ({}); {flag} must use an IP address (e.g. 0.0.0.0 or 127.0.0.1) or localhost",
                    go_url_string(u)
                )));
            }
        };
        let port = u.port_or_known_default().ok_or_else(|| {
            invalid(format!(
                "{flag} {}: missing port; write it as http://host:port",
                go_url_string(u)
            ))
        })?;
        out.push(SocketAddr::new(ip, port));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Go's value syntaxes
// ---------------------------------------------------------------------------------------------

/// Go's `strconv.ParseBool`.
fn go_parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumError {
    Syntax,
    Range,
}

impl NumError {
    /// The reason Go's flag package reports.
    fn flag_reason(self) -> String {
        match self {
            NumError::Syntax => "parse error".to_owned(),
            NumError::Range => "value out of range".to_owned(),
        }
    }

    /// strconv's own error text.
    fn strconv_text(self, func: &str, s: &str) -> String {
        match self {
            NumError::Syntax => format!("strconv.{func}: parsing {s:?}: invalid syntax"),
            NumError::Range => format!("strconv.{func}: parsing {s:?}: value out of range"),
        }
    }
}

/// Go's `strconv.ParseUint(s, 0, bits)`: decimal, `0x`, `0o`, `0b`, leading-`0` octal, `_`
/// between digits.
fn go_parse_uint(s: &str, bits: u32) -> Result<u64, NumError> {
    let lower = s.to_ascii_lowercase();
    let (radix, prefix_len) = if lower.len() >= 3 && lower.starts_with("0x") {
        (16, 2)
    } else if lower.len() >= 3 && lower.starts_with("0o") {
        (8, 2)
    } else if lower.len() >= 3 && lower.starts_with("0b") {
        (2, 2)
    } else if lower.len() >= 2 && lower.starts_with('0') {
        (8, 1)
    } else {
        (10, 0)
    };
    let digits = s.get(prefix_len..).unwrap_or_default();
    if digits.is_empty() && prefix_len != 1 {
        return Err(NumError::Syntax);
    }
    // `_` must sit between digits (or between the base prefix and a digit).
    let bytes = s.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'_'
            && (i == 0 || bytes[i - 1] == b'_' || bytes.get(i + 1).is_none_or(|n| *n == b'_'))
        {
            return Err(NumError::Syntax);
        }
    }
    let max = if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let mut n: u64 = 0;
    let mut overflow = false;
    for c in digits.chars().filter(|c| *c != '_') {
        let d = c.to_digit(radix).ok_or(NumError::Syntax)?;
        match n
            .checked_mul(u64::from(radix))
            .and_then(|m| m.checked_add(u64::from(d)))
        {
            Some(m) if m <= max => n = m,
            _ => overflow = true,
        }
    }
    if overflow {
        Err(NumError::Range)
    } else {
        Ok(n)
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`.
fn go_parse_int(s: &str) -> Result<i64, NumError> {
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let n = go_parse_uint(body, 64)?;
    if neg {
        if n > i64::MAX as u64 + 1 {
            return Err(NumError::Range);
        }
        Ok((n as i128).wrapping_neg() as i64)
    } else {
        i64::try_from(n).map_err(|_| NumError::Range)
    }
}

/// Go's `time.ParseDuration`, in nanoseconds; the error is Go's text.
fn go_parse_duration(orig: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {orig:?}");
    let mut s = orig;
    let mut neg = false;
    if let Some(rest) = s.strip_prefix('-') {
        neg = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !s.is_empty() {
        let int_len = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let int_part = &s[..int_len];
        s = &s[int_len..];
        let mut frac_part = "";
        if let Some(rest) = s.strip_prefix('.') {
            let frac_len = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            frac_part = &rest[..frac_len];
            s = &rest[frac_len..];
            if int_part.is_empty() && frac_part.is_empty() {
                return Err(invalid());
            }
        } else if int_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = s
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        if unit.is_empty() {
            return Err(format!("time: missing unit in duration {orig:?}"));
        }
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(format!("time: unknown unit {unit:?} in duration {orig:?}")),
        };
        let int_val: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        let mut v = int_val.checked_mul(scale).ok_or_else(invalid)?;
        if !frac_part.is_empty() {
            let digits = &frac_part[..frac_part.len().min(30)];
            let f: u128 = digits.parse().map_err(|_| invalid())?;
            let div = 10u128.pow(u32::try_from(digits.len()).map_err(|_| invalid())?);
            v = v.checked_add(f * scale / div).ok_or_else(invalid)?;
        }
        total = total.checked_add(v).ok_or_else(invalid)?;
        if total > i64::MAX as u128 + u128::from(neg) {
            return Err(invalid());
        }
    }
    let total = total as i128;
    Ok((if neg { -total } else { total }) as i64)
}

/// Go's `time.Duration.String()` for the few messages that print one.
fn go_format_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".to_owned();
    }
    let d = Duration::from_nanos(nanos.unsigned_abs());
    let sign = if nanos < 0 { "-" } else { "" };
    format!("{sign}{d:?}")
}

// ---------------------------------------------------------------------------------------------
// Help
// ---------------------------------------------------------------------------------------------

/// The `--help` text, generated from the flag table.
pub fn help_text() -> String {
    let mut out = String::from(
        "Usage:\n\n  concord [flags]\n      Start a concord member (a drop-in replacement for the etcd 3.5 server).\n  \
         concord --version\n      Print the version and exit.\n  concord -h | --help\n      Show this help and exit.\n\n\
         Every flag can also be given as an ETCD_<FLAG> environment variable (e.g. ETCD_DATA_DIR);\n\
         command-line flags and environment variables are ignored when --config-file is given.\n\
         Flags marked [compat] are accepted for compatibility; concord does not act on them yet.\n\nFlags:\n",
    );
    for f in FLAGS.iter().filter(|f| f.kind != Kind::Ignored) {
        let default = match (f.kind, f.default) {
            (Kind::Bool, d) => format!(" (default {d})"),
            (_, "") => String::new(),
            (_, d) => format!(" '{d}'"),
        };
        let compat = if ACTED_ON.contains(&f.name) {
            ""
        } else {
            " [compat]"
        };
        out.push_str(&format!(
            "  --{}{default}\n      {}{compat}\n",
            f.name, f.help
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn env_vec(env: &[(&str, &str)]) -> Vec<(String, String)> {
        env.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        match parse(args.iter().copied(), &env_vec(env))? {
            Invocation::Run(l) => Ok(l),
            other => panic!("{args:?}: expected Run, got {other:?}"),
        }
    }

    fn url(s: &str) -> Url {
        Url::parse(s).expect("test URL")
    }

    #[test]
    fn defaults_match_etcd() {
        let l = run(&[], &[]).expect("defaults parse");
        assert_eq!(l.config, Config::default());
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        assert_eq!(
            l.config.listen_client_addrs().expect("addrs"),
            vec![SocketAddr::from(([127, 0, 0, 1], 2379))]
        );
        assert_eq!(
            l.config.listen_peer_addrs().expect("addrs"),
            vec![SocketAddr::from(([127, 0, 0, 1], 2380))]
        );
        assert_eq!(l.config.data_dir, PathBuf::from("default.etcd"));
        assert_eq!(
            l.config.initial_cluster,
            vec![("default".to_owned(), url("http://localhost:2380"))]
        );
    }

    #[test]
    fn every_default_parses_and_names_are_unique() {
        let mut seen = HashSet::new();
        for f in FLAGS {
            assert!(seen.insert(f.name), "--{} listed twice", f.name);
            if f.kind == Kind::Urls && f.default.is_empty() {
                continue;
            }
            assert!(
                matches!(parse_value(f.kind, f.default), Ok(Some(_))),
                "default of --{} does not parse",
                f.name
            );
        }
        for name in ACTED_ON {
            assert!(lookup(name).is_some(), "ACTED_ON lists unknown flag {name}");
        }
    }

    struct TestCase {
        name: &'static str,
        args: &'static [&'static str],
        env: &'static [(&'static str, &'static str)],
        check: fn(&Config),
    }

    #[test]
    fn accepted_command_lines() {
        let cases = [
            TestCase {
                name: "--x=y",
                args: &["--name=n1"],
                env: &[],
                check: |c| assert_eq!(c.name, "n1"),
            },
            TestCase {
                name: "--x y",
                args: &["--name", "n1"],
                env: &[],
                check: |c| assert_eq!(c.name, "n1"),
            },
            TestCase {
                name: "-x y",
                args: &["-name", "n1"],
                env: &[],
                check: |c| assert_eq!(c.name, "n1"),
            },
            TestCase {
                name: "-x=y",
                args: &["-name=n1"],
                env: &[],
                check: |c| assert_eq!(c.name, "n1"),
            },
            TestCase {
                name: "value may start with a dash",
                args: &["--name", "-n1"],
                env: &[],
                check: |c| assert_eq!(c.name, "-n1"),
            },
            TestCase {
                name: "empty value",
                args: &["--name="],
                env: &[],
                check: |c| assert_eq!(c.name, ""),
            },
            TestCase {
                name: "last wins",
                args: &["--name=a", "--name=b"],
                env: &[],
                check: |c| assert_eq!(c.name, "b"),
            },
            TestCase {
                name: "data dir follows name",
                args: &["--name=n1"],
                env: &[],
                check: |c| assert_eq!(c.data_dir, PathBuf::from("n1.etcd")),
            },
            TestCase {
                name: "explicit data dir",
                args: &["--data-dir", "/var/lib/etcd"],
                env: &[],
                check: |c| assert_eq!(c.data_dir, PathBuf::from("/var/lib/etcd")),
            },
            TestCase {
                name: "bare bool",
                args: &["--strict-reconfig-check=false", "--force-new-cluster"],
                env: &[],
                check: |c| assert!(!c.strict_reconfig_check && c.force_new_cluster),
            },
            TestCase {
                name: "bool forms",
                args: &[
                    "-enable-pprof=1",
                    "--client-cert-auth=True",
                    "--auto-tls=t",
                    "--peer-auto-tls=F",
                ],
                env: &[],
                check: |c| {
                    assert!(
                        c.enable_pprof
                            && c.client_tls.client_cert_auth
                            && c.client_tls.auto_tls
                            && !c.peer_tls.auto_tls
                    )
                },
            },
            TestCase {
                name: "bool does not take the next argument",
                args: &["--force-new-cluster", "--name=x"],
                env: &[],
                check: |c| assert!(c.force_new_cluster && c.name == "x"),
            },
            TestCase {
                name: "double dash ends flags",
                args: &["--name=x", "--"],
                env: &[],
                check: |c| assert_eq!(c.name, "x"),
            },
            TestCase {
                name: "numbers in Go syntax",
                args: &[
                    "--max-txn-ops=0x100",
                    "--max-request-bytes=1_000_000",
                    "--snapshot-count=010",
                    "--quota-backend-bytes=-1",
                ],
                env: &[],
                check: |c| {
                    assert_eq!(c.max_txn_ops, 256);
                    assert_eq!(c.max_request_bytes, 1_000_000);
                    assert_eq!(c.snapshot_count, 8);
                    assert_eq!(c.quota_backend_bytes, -1);
                },
            },
            TestCase {
                name: "timing",
                args: &["--heartbeat-interval=50", "--election-timeout=250"],
                env: &[],
                check: |c| {
                    assert_eq!(c.heartbeat_interval, Duration::from_millis(50));
                    assert_eq!(c.election_timeout, Duration::from_millis(250));
                },
            },
            TestCase {
                name: "urls are sorted and deduplicated",
                args: &[
                    "--listen-client-urls=http://127.0.0.2:2379,http://127.0.0.1:2379,http://127.0.0.1:2379",
                    "--advertise-client-urls=http://a:1",
                ],
                env: &[],
                check: |c| {
                    assert_eq!(
                        c.listen_client_urls,
                        vec![url("http://127.0.0.1:2379"), url("http://127.0.0.2:2379")]
                    );
                    assert_eq!(
                        c.listen_client_addrs().expect("addrs"),
                        vec![
                            SocketAddr::from(([127, 0, 0, 1], 2379)),
                            SocketAddr::from(([127, 0, 0, 2], 2379))
                        ]
                    );
                },
            },
            TestCase {
                name: "ipv6 listener",
                args: &["--listen-peer-urls=http://[::1]:2380"],
                env: &[],
                check: |c| {
                    assert_eq!(
                        c.listen_peer_addrs().expect("addrs"),
                        vec!["[::1]:2380".parse().expect("addr")]
                    )
                },
            },
            TestCase {
                name: "empty url list keeps the default",
                args: &["--listen-peer-urls="],
                env: &[],
                check: |c| assert_eq!(c.listen_peer_urls, vec![url("http://localhost:2380")]),
            },
            TestCase {
                name: "renamed member gets its own initial cluster",
                args: &[
                    "--name=n1",
                    "--initial-advertise-peer-urls=http://10.0.0.1:2380,http://10.0.0.2:2380",
                ],
                env: &[],
                check: |c| {
                    assert_eq!(
                        c.initial_cluster,
                        vec![
                            ("n1".to_owned(), url("http://10.0.0.1:2380")),
                            ("n1".to_owned(), url("http://10.0.0.2:2380"))
                        ]
                    )
                },
            },
            TestCase {
                name: "default name keeps etcd's default initial cluster",
                args: &["--initial-advertise-peer-urls=http://10.0.0.1:2380"],
                env: &[],
                check: |c| {
                    assert_eq!(
                        c.initial_cluster,
                        vec![("default".to_owned(), url("http://localhost:2380"))]
                    )
                },
            },
            TestCase {
                name: "cluster flags",
                args: &[
                    "--initial-cluster=a=http://10.0.0.1:2380,b=http://10.0.0.2:2380",
                    "--initial-cluster-state",
                    "existing",
                    "--initial-cluster-token=tok",
                ],
                env: &[],
                check: |c| {
                    assert_eq!(c.initial_cluster.len(), 2);
                    assert_eq!(c.initial_cluster_state, ClusterState::Existing);
                    assert_eq!(c.initial_cluster_token, "tok");
                },
            },
            TestCase {
                name: "discovery clears the default initial cluster",
                args: &["--discovery=https://discovery.example/abc"],
                env: &[],
                check: |c| assert!(c.initial_cluster.is_empty()),
            },
            TestCase {
                name: "tls and misc",
                args: &[
                    "--cert-file=/c.pem",
                    "--key-file=/k.pem",
                    "--trusted-ca-file=/ca.pem",
                    "--peer-cert-file=/pc.pem",
                    "--peer-client-cert-auth",
                    "--listen-metrics-urls=http://127.0.0.1:2381",
                    "--log-level=DEBUG",
                ],
                env: &[],
                check: |c| {
                    assert_eq!(c.client_tls.cert_file, Some(PathBuf::from("/c.pem")));
                    assert_eq!(c.client_tls.key_file, Some(PathBuf::from("/k.pem")));
                    assert_eq!(c.client_tls.trusted_ca_file, Some(PathBuf::from("/ca.pem")));
                    assert_eq!(c.peer_tls.cert_file, Some(PathBuf::from("/pc.pem")));
                    assert!(c.peer_tls.client_cert_auth);
                    assert_eq!(c.listen_metrics_urls, vec![url("http://127.0.0.1:2381")]);
                    assert_eq!(c.log_level, "debug");
                },
            },
            TestCase {
                name: "compaction",
                args: &[
                    "--auto-compaction-mode=revision",
                    "--auto-compaction-retention=1000",
                ],
                env: &[],
                check: |c| {
                    assert_eq!(c.auto_compaction_mode, AutoCompactionMode::Revision);
                    assert_eq!(
                        c.auto_compaction_retention,
                        AutoCompactionRetention::Revisions(1000)
                    );
                },
            },
            TestCase {
                name: "legacy ignored flags are accepted",
                args: &["--v", "-snapshot=whatever", "--name=x"],
                env: &[],
                check: |c| assert_eq!(c.name, "x"),
            },
            TestCase {
                name: "env var",
                args: &[],
                env: &[("ETCD_NAME", "e1")],
                check: |c| assert_eq!(c.name, "e1"),
            },
            TestCase {
                name: "env vars of every kind",
                args: &[],
                env: &[
                    ("ETCD_DATA_DIR", "/d"),
                    ("ETCD_FORCE_NEW_CLUSTER", "true"),
                    ("ETCD_HEARTBEAT_INTERVAL", "20"),
                    ("ETCD_ELECTION_TIMEOUT", "200"),
                    ("ETCD_LISTEN_CLIENT_URLS", "http://0.0.0.0:2379"),
                    ("ETCD_ADVERTISE_CLIENT_URLS", "http://10.0.0.1:2379"),
                    ("ETCD_INITIAL_CLUSTER_STATE", "existing"),
                ],
                check: |c| {
                    assert_eq!(c.data_dir, PathBuf::from("/d"));
                    assert!(c.force_new_cluster);
                    assert_eq!(c.heartbeat_interval, Duration::from_millis(20));
                    assert_eq!(
                        c.listen_client_addrs().expect("addrs"),
                        vec![SocketAddr::from(([0, 0, 0, 0], 2379))]
                    );
                    assert_eq!(c.advertise_client_urls, vec![url("http://10.0.0.1:2379")]);
                    assert_eq!(c.initial_cluster_state, ClusterState::Existing);
                },
            },
            TestCase {
                name: "flags and env for different settings combine",
                args: &["--name=cli"],
                env: &[("ETCD_DATA_DIR", "/from-env")],
                check: |c| {
                    assert!(c.name == "cli" && c.data_dir == std::path::Path::new("/from-env"))
                },
            },
            TestCase {
                name: "empty env var counts as unset",
                args: &[],
                env: &[("ETCD_NAME", "")],
                check: |c| assert_eq!(c.name, "default"),
            },
            TestCase {
                name: "first definition of an env var wins, as os.Getenv",
                args: &[],
                env: &[("ETCD_NAME", "first"), ("ETCD_NAME", "second")],
                check: |c| assert_eq!(c.name, "first"),
            },
            TestCase {
                name: "ETCD_VERSION does not print the version",
                args: &[],
                env: &[("ETCD_VERSION", "true")],
                check: |c| assert_eq!(c.name, "default"),
            },
            TestCase {
                name: "ETCDCTL variables are not ours",
                args: &[],
                env: &[("ETCDCTL_API", "3"), ("PATH", "/bin")],
                check: |c| assert_eq!(c.name, "default"),
            },
            TestCase {
                name: "backend batching defaults",
                args: &[],
                env: &[],
                check: |c| {
                    assert_eq!(c.backend_batch_interval, Duration::ZERO);
                    assert_eq!(c.backend_batch_limit, 0);
                },
            },
            TestCase {
                name: "backend batching flags and variables",
                args: &["--backend-batch-interval=250ms"],
                env: &[("ETCD_BACKEND_BATCH_LIMIT", "-1")],
                check: |c| {
                    assert_eq!(c.backend_batch_interval, Duration::from_millis(250));
                    assert_eq!(c.backend_batch_limit, -1);
                },
            },
            TestCase {
                name: "lease checkpoint defaults",
                args: &[],
                env: &[],
                check: |c| {
                    assert!(!c.lease_checkpoint && !c.lease_checkpoint_persist);
                    assert_eq!(c.lease_checkpoint_interval, Duration::from_secs(300));
                },
            },
            TestCase {
                name: "lease checkpoint flags",
                args: &[
                    "--experimental-enable-lease-checkpoint",
                    "--experimental-enable-lease-checkpoint-persist=true",
                ],
                env: &[("CONCORD_LEASE_CHECKPOINT_INTERVAL", "1s")],
                check: |c| {
                    assert!(c.lease_checkpoint && c.lease_checkpoint_persist);
                    assert_eq!(c.lease_checkpoint_interval, Duration::from_secs(1));
                },
            },
            TestCase {
                name: "lease checkpoint from the environment",
                args: &[],
                env: &[
                    ("ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT", "true"),
                    ("CONCORD_LEASE_CHECKPOINT_INTERVAL", "90s"),
                ],
                check: |c| {
                    assert!(c.lease_checkpoint && !c.lease_checkpoint_persist);
                    assert_eq!(c.lease_checkpoint_interval, Duration::from_secs(90));
                },
            },
        ];
        for case in cases {
            match run(case.args, case.env) {
                Ok(l) => (case.check)(&l.config),
                Err(e) => panic!("{}: {e}", case.name),
            }
        }
    }

    struct ErrCase {
        args: &'static [&'static str],
        env: &'static [(&'static str, &'static str)],
        /// The error text starts with this.
        text: &'static str,
        exit: i32,
    }

    #[test]
    fn rejected_command_lines() {
        let cases = [
            ErrCase {
                args: &["--foo"],
                env: &[],
                text: "flag provided but not defined: -foo",
                exit: 2,
            },
            ErrCase {
                args: &["-foo=1"],
                env: &[],
                text: "flag provided but not defined: -foo",
                exit: 2,
            },
            ErrCase {
                args: &["---name=x"],
                env: &[],
                text: "bad flag syntax: ---name=x",
                exit: 2,
            },
            ErrCase {
                args: &["-=x"],
                env: &[],
                text: "bad flag syntax: -=x",
                exit: 2,
            },
            ErrCase {
                args: &["--name"],
                env: &[],
                text: "flag needs an argument: -name",
                exit: 2,
            },
            ErrCase {
                args: &["--force-new-cluster=yes"],
                env: &[],
                text: "invalid boolean value \"yes\" for -force-new-cluster: parse error",
                exit: 2,
            },
            ErrCase {
                args: &["--max-txn-ops=lots"],
                env: &[],
                text: "invalid value \"lots\" for flag -max-txn-ops: parse error",
                exit: 2,
            },
            ErrCase {
                args: &["--max-txn-ops=-1"],
                env: &[],
                text: "invalid value \"-1\" for flag -max-txn-ops: parse error",
                exit: 2,
            },
            ErrCase {
                args: &["--snapshot-count=99999999999999999999"],
                env: &[],
                text: "invalid value \"99999999999999999999\" for flag -snapshot-count: value out of range",
                exit: 2,
            },
            ErrCase {
                args: &["--max-concurrent-streams=x"],
                env: &[],
                text: "invalid value \"x\" for flag -max-concurrent-streams: strconv.ParseUint: parsing \"x\": invalid syntax",
                exit: 2,
            },
            ErrCase {
                args: &["--grpc-keepalive-timeout=5"],
                env: &[],
                text: "invalid value \"5\" for flag -grpc-keepalive-timeout: parse error",
                exit: 2,
            },
            ErrCase {
                args: &["--initial-cluster-state=old"],
                env: &[],
                text: "invalid value \"old\" for flag -initial-cluster-state: invalid value",
                exit: 2,
            },
            ErrCase {
                args: &["--listen-peer-urls=localhost:2380"],
                env: &[],
                text: "invalid value \"localhost:2380\" for flag -listen-peer-urls: URL scheme must be http, https, unix, or unixs: localhost:2380",
                exit: 2,
            },
            ErrCase {
                args: &["--listen-peer-urls=http://127.0.0.1"],
                env: &[],
                text: "invalid value \"http://127.0.0.1\" for flag -listen-peer-urls: URL address does not have the form \"host:port\": http://127.0.0.1",
                exit: 2,
            },
            ErrCase {
                args: &["--listen-peer-urls=http://127.0.0.1:2380/x"],
                env: &[],
                text: "invalid value \"http://127.0.0.1:2380/x\" for flag -listen-peer-urls: URL must not contain a path: http://127.0.0.1:2380/x",
                exit: 2,
            },
            ErrCase {
                args: &["serve"],
                env: &[],
                text: "'serve' is not a valid flag",
                exit: 1,
            },
            ErrCase {
                args: &["--name=x", "--", "extra"],
                env: &[],
                text: "'extra' is not a valid flag",
                exit: 1,
            },
            ErrCase {
                args: &["--listen-client-urls=http://127.0.0.1:2379"],
                env: &[],
                text: "--advertise-client-urls is required when --listen-client-urls is set explicitly",
                exit: 1,
            },
            ErrCase {
                args: &[],
                env: &[("ETCD_LISTEN_CLIENT_URLS", "http://127.0.0.1:2379")],
                text: "--advertise-client-urls is required when --listen-client-urls is set explicitly",
                exit: 1,
            },
            ErrCase {
                args: &["--heartbeat-interval=300"],
                env: &[],
                text: "--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[300ms]",
                exit: 1,
            },
            ErrCase {
                args: &["--election-timeout=50001"],
                env: &[],
                text: "--election-timeout[50001ms] is too long, and should be set less than 50000ms",
                exit: 1,
            },
            ErrCase {
                args: &["--heartbeat-interval=0"],
                env: &[],
                text: "--heartbeat-interval must be >0 (set to 0ms)",
                exit: 1,
            },
            ErrCase {
                args: &["--listen-peer-urls=http://example.com:2380"],
                env: &[],
                text: "expected IP in URL for binding (http://example.com:2380)",
                exit: 1,
            },
            ErrCase {
                args: &["--initial-advertise-peer-urls=unix:///tmp/sock"],
                env: &[],
                text: "--initial-advertise-peer-urls \"unix:///tmp/sock\" must be \"host:port\"",
                exit: 1,
            },
            ErrCase {
                args: &["--log-level=verbose"],
                env: &[],
                text: "invalid --log-level \"verbose\"",
                exit: 1,
            },
            ErrCase {
                args: &["--logger=capnslog"],
                env: &[],
                text: "--logger=capnslog is removed in v3.5",
                exit: 1,
            },
            ErrCase {
                args: &["--auto-compaction-mode=hourly"],
                env: &[],
                text: "unknown auto-compaction-mode \"hourly\"",
                exit: 1,
            },
            ErrCase {
                args: &["--auto-compaction-retention=soon"],
                env: &[],
                text: "error parsing CompactionRetention: time: invalid duration \"soon\"",
                exit: 1,
            },
            ErrCase {
                args: &[
                    "--discovery=https://d.example/x",
                    "--initial-cluster=a=http://10.0.0.1:2380",
                ],
                env: &[],
                text: "multiple discovery or bootstrap flags are set.",
                exit: 1,
            },
            ErrCase {
                args: &["--initial-cluster=a"],
                env: &[],
                text: "--initial-cluster entry \"a\" is not name=URL",
                exit: 1,
            },
            ErrCase {
                // etcd 3.5 has no such flag (the interval is embed-only).
                args: &["--experimental-lease-checkpoint-interval=5s"],
                env: &[],
                text: "flag provided but not defined: -experimental-lease-checkpoint-interval",
                exit: 2,
            },
            ErrCase {
                args: &["--experimental-enable-lease-checkpoint-persist"],
                env: &[],
                text: "setting experimental-enable-lease-checkpoint-persist requires experimental-enable-lease-checkpoint",
                exit: 1,
            },
            ErrCase {
                args: &["--tls-min-version=TLS1.3", "--tls-max-version=TLS1.2"],
                env: &[],
                text: "min version (TLS1.3) is greater than max version (TLS1.2)",
                exit: 1,
            },
            ErrCase {
                args: &["--tls-min-version=SSL3"],
                env: &[],
                text: "unexpected TLS version \"SSL3\" (must be one of: TLS1.2, TLS1.3)",
                exit: 1,
            },
            ErrCase {
                args: &[],
                env: &[("ETCD_INITIAL_CLUSTER_STATE", "old")],
                text: "invalid value \"old\" for ETCD_INITIAL_CLUSTER_STATE: invalid value",
                exit: 1,
            },
            ErrCase {
                args: &[],
                env: &[("ETCD_MAX_TXN_OPS", "x")],
                text: "invalid value \"x\" for ETCD_MAX_TXN_OPS: parse error",
                exit: 1,
            },
            ErrCase {
                args: &["--name=cli"],
                env: &[("ETCD_NAME", "env")],
                text: "conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding command-line flag",
                exit: 1,
            },
            ErrCase {
                args: &["--config-file=/nonexistent/concord.yaml"],
                env: &[],
                text: "cannot read configuration file /nonexistent/concord.yaml",
                exit: 1,
            },
        ];
        for case in cases {
            match run(case.args, case.env) {
                Ok(l) => panic!("{:?} {:?}: accepted: {:?}", case.args, case.env, l.config),
                Err(e) => {
                    let text = e.to_string();
                    assert!(
                        text.starts_with(case.text),
                        "{:?}: got {text:?}, want prefix {:?}",
                        case.args,
                        case.text
                    );
                    assert_eq!(e.exit_code(), case.exit, "{:?}: {text}", case.args);
                }
            }
        }
    }

    #[test]
    fn unknown_flag_text_is_exactly_go() {
        let e = run(&["--name=x", "--foo=bar", "--also-unknown"], &[]).expect_err("unknown flag");
        assert_eq!(e.to_string(), "flag provided but not defined: -foo");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn help_and_version() {
        for args in [
            &["-h"][..],
            &["--help"],
            &["-help"],
            &["--name=x", "--h"],
            &["--help", "--bogus"],
        ] {
            match parse(args.iter().copied(), &[]) {
                Ok(Invocation::Help(text)) => {
                    assert!(text.contains("--data-dir") && text.contains("ETCD_"))
                }
                other => panic!("{args:?}: {other:?}"),
            }
        }
        for args in [
            &["--version"][..],
            &["-version=true"],
            &["--version", "--name=x"],
        ] {
            assert!(
                matches!(parse(args.iter().copied(), &[]), Ok(Invocation::Version)),
                "{args:?}"
            );
        }
        assert!(matches!(
            parse(["--version=false"], &[]),
            Ok(Invocation::Run(_))
        ));
        // A flag error before --version still fails, as Go parses left to right.
        assert!(parse(["--bogus", "--version"], &[]).is_err());
    }

    struct WarnCase {
        args: &'static [&'static str],
        env: &'static [(&'static str, &'static str)],
        /// Substrings of the expected warnings; empty means no warning at all.
        want: &'static [&'static str],
    }

    #[test]
    fn warnings() {
        let cases = [
            WarnCase {
                args: &[
                    "--name=n",
                    "--data-dir=/d",
                    "--max-txn-ops=10",
                    "--log-level=warn",
                    "--initial-cluster-state=new",
                ],
                env: &[],
                want: &[],
            },
            WarnCase {
                args: &["--enable-v2"],
                env: &[],
                want: &[
                    "flag --enable-v2 is accepted for compatibility but concord does not act on it yet",
                ],
            },
            WarnCase {
                args: &["--enable-v2=false", "--pre-vote=true", "--metrics=basic"],
                env: &[],
                want: &[],
            },
            WarnCase {
                args: &[
                    "--enable-pprof",
                    "--force-new-cluster",
                    "--strict-reconfig-check=false",
                ],
                env: &[],
                want: &[
                    "--enable-pprof ",
                    "--force-new-cluster ",
                    "--strict-reconfig-check ",
                ],
            },
            WarnCase {
                args: &["--auto-compaction-retention=1h"],
                env: &[],
                want: &[],
            },
            WarnCase {
                args: &["--raft-read-timeout=1s"],
                env: &[],
                want: &["--raft-read-timeout raised to its minimum"],
            },
            WarnCase {
                args: &["--v"],
                env: &[],
                want: &["flag --v is no longer supported"],
            },
            WarnCase {
                args: &[],
                env: &[("ETCD_ENABLE_V2", "true")],
                want: &["flag --enable-v2 is accepted for compatibility"],
            },
            WarnCase {
                args: &[],
                env: &[("ETCD_NOT_A_FLAG", "1")],
                want: &["unrecognized environment variable ETCD_NOT_A_FLAG=1"],
            },
            WarnCase {
                args: &[],
                env: &[("ETCD_VERSION", "1")],
                want: &["cannot set special environment variable ETCD_VERSION"],
            },
            WarnCase {
                args: &[],
                env: &[("ETCDCTL_API", "3"), ("ETCD_NAME", "x")],
                want: &[],
            },
            WarnCase {
                args: &[],
                env: &[("ETCD_NAME", "")],
                want: &["ETCD_NAME is empty"],
            },
        ];
        for case in cases {
            let l = run(case.args, case.env).unwrap_or_else(|e| panic!("{:?}: {e}", case.args));
            assert_eq!(
                l.warnings.len(),
                case.want.len(),
                "{:?} {:?}: {:?}",
                case.args,
                case.env,
                l.warnings
            );
            for want in case.want {
                assert!(
                    l.warnings.iter().any(|w| w.contains(want)),
                    "{:?}: no {want:?} in {:?}",
                    case.args,
                    l.warnings
                );
            }
        }
    }

    struct FileCase {
        name: &'static str,
        yaml: &'static str,
        args: &'static [&'static str],
        env: &'static [(&'static str, &'static str)],
        check: fn(&Loaded),
    }

    #[test]
    fn config_file() {
        let cases = [
            FileCase {
                name: "etcd sample keys",
                yaml: "name: infra1\n\
                       data-dir: /var/lib/etcd\n\
                       heartbeat-interval: 50\n\
                       election-timeout: 500\n\
                       snapshot-count: 5000\n\
                       quota-backend-bytes: 8589934592\n\
                       max-request-bytes: 10485760\n\
                       max-txn-ops: 1000\n\
                       listen-peer-urls: http://10.0.0.1:2380\n\
                       listen-client-urls: http://10.0.0.1:2379,http://127.0.0.1:2379\n\
                       initial-advertise-peer-urls: http://10.0.0.1:2380\n\
                       advertise-client-urls: http://10.0.0.1:2379\n\
                       initial-cluster: infra1=http://10.0.0.1:2380,infra2=http://10.0.0.2:2380\n\
                       initial-cluster-token: 'etcd-cluster-1'\n\
                       initial-cluster-state: 'existing'\n\
                       auto-compaction-mode: periodic\n\
                       auto-compaction-retention: 1\n\
                       log-level: warn\n\
                       unknown-key: ignored\n\
                       client-transport-security:\n  cert-file: /c.pem\n  key-file: /k.pem\n  client-cert-auth: true\n  trusted-ca-file: /ca.pem\n  auto-tls: false\n\
                       peer-transport-security:\n  auto-tls: true\n",
                args: &[],
                env: &[],
                check: |l| {
                    let c = &l.config;
                    assert_eq!(c.name, "infra1");
                    assert_eq!(c.data_dir, PathBuf::from("/var/lib/etcd"));
                    assert_eq!(c.heartbeat_interval, Duration::from_millis(50));
                    assert_eq!(c.election_timeout, Duration::from_millis(500));
                    assert_eq!(c.snapshot_count, 5000);
                    assert_eq!(c.quota_backend_bytes, 8_589_934_592);
                    assert_eq!(c.max_request_bytes, 10_485_760);
                    assert_eq!(c.max_txn_ops, 1000);
                    assert_eq!(c.listen_client_urls.len(), 2);
                    assert_eq!(c.initial_cluster.len(), 2);
                    assert_eq!(c.initial_cluster_token, "etcd-cluster-1");
                    assert_eq!(c.initial_cluster_state, ClusterState::Existing);
                    assert_eq!(
                        c.auto_compaction_retention,
                        AutoCompactionRetention::Period(Duration::from_secs(3600))
                    );
                    assert_eq!(c.log_level, "warn");
                    assert_eq!(c.client_tls.cert_file, Some(PathBuf::from("/c.pem")));
                    assert!(c.client_tls.client_cert_auth);
                    assert!(c.peer_tls.auto_tls);
                },
            },
            FileCase {
                name: "other flags and env are ignored",
                yaml: "name: from-file\n",
                args: &["--name=cli"],
                env: &[("ETCD_DATA_DIR", "/env"), ("ETCD_NAME", "env")],
                check: |l| {
                    assert_eq!(l.config.name, "from-file");
                    assert_eq!(l.config.data_dir, PathBuf::from("from-file.etcd"));
                    assert!(
                        l.warnings.iter().any(|w| w.contains("--name")),
                        "{:?}",
                        l.warnings
                    );
                },
            },
            FileCase {
                name: "listen-client-urls alone keeps the default advertise URL, as etcd's file path",
                yaml: "listen-client-urls: http://0.0.0.0:2379\n",
                args: &[],
                env: &[],
                check: |l| {
                    assert_eq!(
                        l.config.advertise_client_urls,
                        vec![url("http://localhost:2379")]
                    )
                },
            },
            FileCase {
                name: "empty file is all defaults",
                yaml: "",
                args: &[],
                env: &[],
                check: |l| {
                    assert_eq!(l.config, Config::default());
                    assert!(l.warnings.is_empty());
                },
            },
            FileCase {
                name: "unacted keys warn; durations in nanoseconds; lists as sequences",
                yaml: "enable-v2: true\ngrpc-keepalive-timeout: 1000000000\nlog-outputs: [stderr]\nsocket-options:\n  reuse-port: true\n",
                args: &[],
                env: &[],
                check: |l| {
                    for w in [
                        "--enable-v2 ",
                        "--grpc-keepalive-timeout ",
                        "--log-outputs ",
                        "--socket-reuse-port ",
                    ] {
                        assert!(
                            l.warnings.iter().any(|x| x.contains(w)),
                            "{w}: {:?}",
                            l.warnings
                        );
                    }
                },
            },
            FileCase {
                name: "renamed member in file gets its own initial cluster",
                yaml: "name: solo\ninitial-advertise-peer-urls: http://10.0.0.9:2380\n",
                args: &[],
                env: &[],
                check: |l| {
                    assert_eq!(
                        l.config.initial_cluster,
                        vec![("solo".to_owned(), url("http://10.0.0.9:2380"))]
                    )
                },
            },
            FileCase {
                name: "ETCD_CONFIG_FILE names the file",
                yaml: "name: via-env\n",
                args: &[],
                env: &[("ETCD_CONFIG_FILE", "<file>")],
                check: |l| assert_eq!(l.config.name, "via-env"),
            },
        ];
        for case in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("etcd.yaml");
            std::fs::write(&path, case.yaml).expect("write config");
            let path = path.to_str().expect("utf-8 path").to_owned();
            let mut env = env_vec(case.env);
            for (_, v) in &mut env {
                if v == "<file>" {
                    v.clone_from(&path);
                }
            }
            let mut args: Vec<String> = case.args.iter().map(|a| (*a).to_owned()).collect();
            if !case.env.iter().any(|(k, _)| *k == "ETCD_CONFIG_FILE") {
                args.insert(0, format!("--config-file={path}"));
            }
            match parse(args, &env) {
                Ok(Invocation::Run(l)) => (case.check)(&l),
                other => panic!("{}: {other:?}", case.name),
            }
        }
    }

    #[test]
    fn config_file_errors() {
        let cases = [
            (
                "heartbeat-interval: 300\n",
                "--election-timeout[1000ms] should be at least as 5 times",
            ),
            (
                "initial-cluster-state: old\n",
                "unexpected clusterState \"old\"",
            ),
            (
                "max-txn-ops: many\n",
                "invalid value for \"max-txn-ops\" in configuration file",
            ),
            (
                "listen-peer-urls: 10.0.0.1:2380\n",
                "invalid value for \"listen-peer-urls\"",
            ),
            ("name: [a, b]\n", "invalid value for \"name\""),
            ("- just\n- a list\n", "cannot parse configuration file"),
            ("name: 'unterminated\n", "cannot parse configuration file"),
        ];
        for (yaml, want) in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("etcd.yaml");
            std::fs::write(&path, yaml).expect("write config");
            let e = parse([format!("--config-file={}", path.display())], &[]).expect_err(yaml);
            assert!(e.to_string().contains(want), "{yaml:?}: {e}");
            assert_eq!(e.exit_code(), 1);
        }
    }

    #[test]
    fn retention_parsing() {
        use AutoCompactionMode::{Periodic, Revision};
        use AutoCompactionRetention::{Disabled, Period, Revisions};
        let cases: &[(
            AutoCompactionMode,
            &str,
            Result<AutoCompactionRetention, &str>,
        )] = &[
            (Periodic, "0", Ok(Disabled)),
            (Periodic, "", Ok(Disabled)),
            (Periodic, "1", Ok(Period(Duration::from_secs(3600)))),
            (Periodic, "72", Ok(Period(Duration::from_secs(72 * 3600)))),
            (Periodic, "5m", Ok(Period(Duration::from_secs(300)))),
            (Periodic, "1h30m", Ok(Period(Duration::from_secs(5400)))),
            (Periodic, "1.5h", Ok(Period(Duration::from_secs(5400)))),
            (Periodic, "0s", Ok(Disabled)),
            (Periodic, "-1", Err("time: missing unit in duration \"-1\"")),
            (Periodic, "-5m", Err("is negative")),
            (
                Periodic,
                "5x",
                Err("time: unknown unit \"x\" in duration \"5x\""),
            ),
            (Revision, "0", Ok(Disabled)),
            (Revision, "1000", Ok(Revisions(1000))),
            (Revision, "5m", Err("not a revision count")),
        ];
        for (mode, s, want) in cases {
            let got = parse_retention(*mode, s);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "{mode:?} {s:?}"),
                (Err(w), Err(g)) => assert!(g.contains(w), "{mode:?} {s:?}: {g}"),
                _ => panic!("{mode:?} {s:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn initial_cluster_parsing() {
        type Want = Result<Vec<(&'static str, &'static str)>, &'static str>;
        let cases: &[(&str, Want)] = &[
            ("", Ok(vec![])),
            (
                "a=http://10.0.0.1:2380",
                Ok(vec![("a", "http://10.0.0.1:2380")]),
            ),
            (
                "a=http://10.0.0.1:2380,b=https://10.0.0.2:2380,,a=http://10.0.0.3:2380",
                Ok(vec![
                    ("a", "http://10.0.0.1:2380"),
                    ("b", "https://10.0.0.2:2380"),
                    ("a", "http://10.0.0.3:2380"),
                ]),
            ),
            (
                "a=http://host.example:2380",
                Ok(vec![("a", "http://host.example:2380")]),
            ),
            ("a", Err("is not name=URL")),
            ("a=", Err("URL scheme must be http, https, unix, or unixs")),
            (
                "a=http://10.0.0.1",
                Err("does not have the form \"host:port\""),
            ),
            ("a=10.0.0.1:2380", Err("URL scheme must be")),
        ];
        for (s, want) in cases {
            let got = parse_initial_cluster(s);
            match (want, got) {
                (Ok(w), Ok(g)) => {
                    let w: Vec<(String, Url)> =
                        w.iter().map(|(n, u)| ((*n).to_owned(), url(u))).collect();
                    assert_eq!(w, g, "{s:?}");
                }
                (Err(w), Err(g)) => assert!(g.to_string().contains(w), "{s:?}: {g}"),
                (w, g) => panic!("{s:?}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn go_number_and_duration_syntax() {
        let uints: &[(&str, Result<u64, NumError>)] = &[
            ("0", Ok(0)),
            ("42", Ok(42)),
            ("0x1F", Ok(31)),
            ("0o17", Ok(15)),
            ("017", Ok(15)),
            ("0b101", Ok(5)),
            ("1_000", Ok(1000)),
            ("0x_1", Ok(1)),
            ("", Err(NumError::Syntax)),
            ("+1", Err(NumError::Syntax)),
            ("_1", Err(NumError::Syntax)),
            ("1__0", Err(NumError::Syntax)),
            ("1_", Err(NumError::Syntax)),
            ("08", Err(NumError::Syntax)),
            ("0x", Err(NumError::Syntax)),
            ("18446744073709551616", Err(NumError::Range)),
        ];
        for (s, want) in uints {
            assert_eq!(go_parse_uint(s, 64), *want, "{s:?}");
        }
        assert_eq!(go_parse_uint("4294967296", 32), Err(NumError::Range));
        assert_eq!(go_parse_int("-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(go_parse_int("9223372036854775808"), Err(NumError::Range));
        assert_eq!(go_parse_int("+7"), Ok(7));
        let durations: &[(&str, Result<i64, &str>)] = &[
            ("0", Ok(0)),
            ("100ms", Ok(100_000_000)),
            ("1h2m3s", Ok(3_723_000_000_000)),
            ("1.5s", Ok(1_500_000_000)),
            (".5s", Ok(500_000_000)),
            ("-2us", Ok(-2_000)),
            ("3\u{b5}s", Ok(3_000)),
            ("", Err("time: invalid duration \"\"")),
            ("5", Err("time: missing unit in duration \"5\"")),
            ("5d", Err("time: unknown unit \"d\" in duration \"5d\"")),
            (".s", Err("time: invalid duration \".s\"")),
            ("9999999999h", Err("time: invalid duration")),
        ];
        for (s, want) in durations {
            match (want, go_parse_duration(s)) {
                (Ok(w), Ok(g)) => assert_eq!(*w, g, "{s:?}"),
                (Err(w), Err(g)) => assert!(g.starts_with(w), "{s:?}: {g}"),
                (w, g) => panic!("{s:?}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn listen_addrs() {
        let mut c = Config {
            listen_client_urls: vec![
                url("http://localhost:1"),
                url("https://0.0.0.0:2"),
                url("http://[::]:3"),
            ],
            ..Config::default()
        };
        assert_eq!(
            c.listen_client_addrs().expect("addrs"),
            vec![
                SocketAddr::from(([127, 0, 0, 1], 1)),
                SocketAddr::from(([0, 0, 0, 0], 2)),
                "[::]:3".parse().expect("addr")
            ]
        );
        c.listen_client_urls = vec![url("http://etcd.example:2379")];
        let e = c.listen_client_addrs().expect_err("hostname");
        assert!(e.to_string().contains("use an IP address"), "{e}");
        c.listen_peer_urls = vec![url("unix://localhost:2380")];
        assert!(c.listen_peer_addrs().is_err());
    }
}
