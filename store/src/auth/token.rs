//! Auth tokens, as etcd's `--auth-token` makes them.
//!
//! - `simple` (the default): `<16 random letters>.<index>`, where the index is the number of
//!   the token among those issued (etcd uses the raft index of the Authenticate entry; clients
//!   treat the token as opaque). The applied Authenticate entry records it on every member (see
//!   `backend::AUTH_TOKENS`); each member expires it `--auth-token-ttl` seconds after its last
//!   use there, as etcd's simple token keeper does.
//! - `jwt,pub-key=<file>,priv-key=<file>,sign-method=<RS256|ES256|...>,ttl=<duration>`: a signed
//!   JWT with etcd's claims (`username`, `revision`, `exp`), checked on every member with the
//!   public key. Signing and verification use `jsonwebtoken` on RustCrypto.
//!
//! This module only parses options and makes and reads tokens; it never touches storage.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// etcd's `defaultSimpleTokenLength`.
const SIMPLE_TOKEN_LEN: usize = 16;
/// etcd's letters for simple tokens.
const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
/// etcd's default JWT lifetime.
const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);

/// How this member makes and reads tokens.
pub enum TokenProvider {
    Simple,
    Jwt(Box<Jwt>),
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenProvider::Simple => f.write_str("simple"),
            TokenProvider::Jwt(j) => write!(f, "jwt({:?}, ttl {:?})", j.alg, j.ttl),
        }
    }
}

/// A JWT signer and verifier.
pub struct Jwt {
    alg: Algorithm,
    /// None: verify-only (only a public key was given).
    sign: Option<EncodingKey>,
    verify: DecodingKey,
    ttl: Duration,
}

/// etcd's JWT claims (jwt-go's `MapClaims` marshal their keys sorted).
#[derive(Serialize, Deserialize)]
struct Claims {
    exp: i64,
    revision: u64,
    username: String,
}

/// The error etcd gives for a bad `--auth-token` (`auth: invalid auth options`), with why.
fn invalid(why: impl std::fmt::Display) -> Error {
    Error::DataDir(format!("auth: invalid auth options: {why}"))
}

/// Go's `time.ParseDuration` for the units etcd users write (`h`, `m`, `s`, `ms`, `us`, `ns`,
/// combined, with decimals).
fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += num * secs;
        rest = &rest[unit_len..];
    }
    Some(Duration::from_secs_f64(total))
}

impl TokenProvider {
    /// Parses `--auth-token` and loads the JWT keys it names.
    pub fn from_flag(flag: &str) -> Result<TokenProvider> {
        let mut parts = flag.split(',');
        let kind = parts.next().unwrap_or_default();
        let mut opts = HashMap::new();
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                return Err(invalid(format!("{p:?} is not key=value")));
            };
            if opts.insert(k.to_owned(), v.to_owned()).is_some() {
                return Err(invalid(format!("{k} given twice")));
            }
        }
        match kind {
            "simple" => Ok(TokenProvider::Simple),
            "jwt" => Ok(TokenProvider::Jwt(Box::new(Jwt::from_opts(&opts)?))),
            other => Err(invalid(format!("unknown token type {other:?}"))),
        }
    }
}

fn read_key(path: &str) -> Result<Vec<u8>> {
    std::fs::read(Path::new(path)).map_err(|e| invalid(format!("cannot read {path}: {e}")))
}

/// A DER length.
fn der_len(n: usize) -> Vec<u8> {
    match n {
        0..=127 => vec![n as u8],
        128..=255 => vec![0x81, n as u8],
        _ => vec![0x82, (n >> 8) as u8, n as u8],
    }
}

/// A DER element: `tag`, length, `body`.
fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(der_len(body.len()));
    out.extend_from_slice(body);
    out
}

/// An EC private key for signing. `jsonwebtoken` reads PKCS#8 only, while etcd (Go's
/// `jwt.ParseECPrivateKeyFromPEM`) also reads OpenSSL's SEC1 `EC PRIVATE KEY`, what
/// `openssl ecparam -genkey` writes: such a key is wrapped into a PKCS#8 `PrivateKeyInfo`
/// (RFC 5208) for the curve of `alg` first.
fn ec_encoding_key(pem: &[u8], alg: Algorithm) -> jsonwebtoken::errors::Result<EncodingKey> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    /// id-ecPublicKey, prime256v1 and secp384r1, DER-encoded with their tag.
    const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
    const P256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];
    let Ok(PrivateKeyDer::Sec1(sec1)) = PrivateKeyDer::from_pem_slice(pem) else {
        return EncodingKey::from_ec_pem(pem);
    };
    let curve = if alg == Algorithm::ES384 { P384 } else { P256 };
    let algorithm = der(0x30, &[EC_PUBLIC_KEY, curve].concat());
    let body = [
        &[0x02, 0x01, 0x00][..],
        &algorithm,
        &der(0x04, sec1.secret_sec1_der()),
    ]
    .concat();
    Ok(EncodingKey::from_ec_der(&der(0x30, &body)))
}

impl Jwt {
    fn from_opts(opts: &HashMap<String, String>) -> Result<Jwt> {
        let method = opts.get("sign-method").map(String::as_str).unwrap_or("");
        let alg: Algorithm = method
            .parse()
            .map_err(|_| invalid(format!("auth: invalid auth signature method {method:?}")))?;
        let ttl = match opts.get("ttl").filter(|t| !t.is_empty()) {
            Some(t) => parse_go_duration(t).ok_or_else(|| invalid(format!("ttl={t}")))?,
            None => DEFAULT_JWT_TTL,
        };
        let priv_pem = opts
            .get("priv-key")
            .filter(|p| !p.is_empty())
            .map(|p| read_key(p));
        let pub_pem = opts
            .get("pub-key")
            .filter(|p| !p.is_empty())
            .map(|p| read_key(p));
        let priv_pem = priv_pem.transpose()?;
        let pub_pem = pub_pem.transpose()?;
        let bad = |e: jsonwebtoken::errors::Error| invalid(format!("bad key: {e}"));
        use Algorithm::*;
        let (sign, verify) = match alg {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => {
                let sign = priv_pem
                    .as_deref()
                    .map(EncodingKey::from_rsa_pem)
                    .transpose()
                    .map_err(bad)?;
                let Some(p) = pub_pem.as_deref() else {
                    return Err(invalid(
                        "concord needs pub-key= next to priv-key= to verify tokens",
                    ));
                };
                (sign, DecodingKey::from_rsa_pem(p).map_err(bad)?)
            }
            ES256 | ES384 => {
                let sign = priv_pem
                    .as_deref()
                    .map(|pem| ec_encoding_key(pem, alg))
                    .transpose()
                    .map_err(bad)?;
                let Some(p) = pub_pem.as_deref() else {
                    return Err(invalid(
                        "concord needs pub-key= next to priv-key= to verify tokens",
                    ));
                };
                (sign, DecodingKey::from_ec_pem(p).map_err(bad)?)
            }
            HS256 | HS384 | HS512 => {
                let Some(secret) = priv_pem else {
                    return Err(invalid("auth: missing key data"));
                };
                (
                    Some(EncodingKey::from_secret(&secret)),
                    DecodingKey::from_secret(&secret),
                )
            }
            other => return Err(invalid(format!("unsupported signing method {other:?}"))),
        };
        Ok(Jwt {
            alg,
            sign,
            verify,
            ttl,
        })
    }

    /// A signed token for `username` at auth revision `revision`.
    pub fn assign(&self, username: &str, revision: u64) -> Result<String> {
        let Some(key) = &self.sign else {
            return Err(Error::VerifyOnly);
        };
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
            + self.ttl.as_secs() as i64;
        let claims = Claims {
            exp,
            revision,
            username: username.to_owned(),
        };
        jsonwebtoken::encode(&Header::new(self.alg), &claims, key)
            .map_err(|e| Error::Raft(format!("cannot sign a JWT: {e}")))
    }

    /// The user name and auth revision of a valid, unexpired token.
    pub fn info(&self, token: &str) -> Option<(String, u64)> {
        let mut v = Validation::new(self.alg);
        v.leeway = 0;
        v.validate_aud = false;
        let data = jsonwebtoken::decode::<Claims>(token, &self.verify, &v).ok()?;
        Some((data.claims.username, data.claims.revision))
    }
}

/// etcd's `genTokenPrefix`: 16 random letters.
pub fn simple_prefix() -> Result<String> {
    let mut buf = [0u8; SIMPLE_TOKEN_LEN];
    getrandom::fill(&mut buf).map_err(|e| Error::Raft(format!("no randomness: {e}")))?;
    Ok(buf
        .iter()
        .map(|b| LETTERS[*b as usize % LETTERS.len()] as char)
        .collect())
}

/// Splits a simple token into its prefix and index (`None`: not a simple token).
pub fn split_simple(token: &str) -> Option<(&str, u64)> {
    let (prefix, index) = token.split_once('.')?;
    if index.contains('.') {
        return None;
    }
    Some((prefix, index.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_flags_parse_as_etcd() {
        assert!(matches!(
            TokenProvider::from_flag("simple"),
            Ok(TokenProvider::Simple)
        ));
        assert!(TokenProvider::from_flag("bogus").is_err());
        assert!(TokenProvider::from_flag("jwt,sign-method").is_err());
        assert!(TokenProvider::from_flag("jwt,sign-method=XX256").is_err());
        assert!(TokenProvider::from_flag("jwt,ttl=1m,ttl=2m").is_err());
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("10"), None);
    }

    #[test]
    fn simple_tokens_look_like_etcds() {
        let p = simple_prefix().unwrap();
        assert_eq!(p.len(), 16);
        assert!(p.bytes().all(|b| b.is_ascii_alphabetic()));
        assert_eq!(split_simple("abc.12"), Some(("abc", 12)));
        assert_eq!(split_simple("abc"), None);
        assert_eq!(split_simple("a.b.c"), None);
    }

    #[test]
    fn hmac_jwt_round_trip_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("secret");
        std::fs::write(&key, b"0123456789abcdef").unwrap();
        let flag = format!("jwt,priv-key={},sign-method=HS256,ttl=1h", key.display());
        let TokenProvider::Jwt(j) = TokenProvider::from_flag(&flag).unwrap() else {
            panic!("not jwt");
        };
        let t = j.assign("alice", 7).unwrap();
        assert_eq!(j.info(&t), Some(("alice".to_owned(), 7)));
        assert_eq!(j.info(&format!("{t}x")), None);
    }
}
