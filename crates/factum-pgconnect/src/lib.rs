//! Connections to PostgreSQL with TLS (rustls), asked for the way libpq is asked:
//! `sslmode` and `sslrootcert` in the connection string.
//!
//! | `sslmode` | encrypted | server certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (the default) | when the server offers TLS | not checked¹ |
//! | `require` | always, or no connection | not checked¹ |
//! | `verify-ca` | always | signed by a root of `sslrootcert` |
//! | `verify-full` | always | as `verify-ca`, and issued for the host connected to |
//!
//! ¹ Unless a root certificate is given (`sslrootcert`, or `~/.postgresql/root.crt` when it
//! exists): then the chain is checked, as with `verify-ca`. `sslrootcert=system` takes the
//! system's roots and makes `verify-full` the default; a weaker mode with it is refused.
//!
//! `prefer` and `require` protect against eavesdropping but not against a server that pretends
//! to be another; use `verify-full` where that matters. SCRAM's channel binding
//! (`channel_binding=prefer|require`) uses the server certificate's hash, as
//! `tokio-postgres-rustls` computes it (for RSA and ECDSA certificates with SHA-256 or
//! SHA-384, and RSA with SHA-512; other certificates connect without channel binding).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Connection, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls;

/// A TLS connection to PostgreSQL (rustls, through `tokio-postgres-rustls`, which also gives
/// SCRAM's channel binding the server certificate's hash).
pub type TlsStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

/// A connection string that could not be used: a bad `sslmode`, an unreadable root
/// certificate, or what the driver's parser refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn bad(message: impl Into<String>) -> ConfigError {
    ConfigError(message.into())
}

/// How a connection uses TLS (libpq's `sslmode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Never.
    Disable,
    /// When the server offers it.
    Prefer,
    /// Always.
    Require,
    /// Always, and the server certificate must be signed by a root of `sslrootcert`.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, ConfigError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(bad(
                    "sslmode=allow is not supported: use prefer, require, verify-ca or verify-full (or disable)",
                ));
            }
            other => {
                return Err(bad(format!(
                    "unknown sslmode '{other}': use disable, prefer, require, verify-ca or verify-full"
                )));
            }
        })
    }
}

/// A parsed connection string and the TLS it asks for; [`PgConnect::connect`] opens
/// connections with both.
#[derive(Clone)]
pub struct PgConnect {
    config: tokio_postgres::Config,
    mode: SslMode,
    tls: MakeRustlsConnect,
}

impl fmt::Debug for PgConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConnect")
            .field("config", &self.config)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl PgConnect {
    /// Reads a URL (`postgres://user@host/db?sslmode=verify-full&sslrootcert=ca.pem`) or
    /// key-value pairs (`host=… user=… sslmode=require`), and any root certificate it names.
    pub fn parse(connection: &str) -> Result<Self, ConfigError> {
        let (rest, options) = take_tls_options(connection)?;
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| bad(format!("bad PostgreSQL connection string: {e}")))?;
        let root = match options.root_cert.as_deref() {
            Some("system") => Some(Roots::System),
            Some(path) => Some(Roots::File(PathBuf::from(path))),
            None => default_root_file().map(Roots::File),
        };
        let mode = match (&options.mode, &root) {
            (Some(mode), _) => SslMode::parse(mode)?,
            (None, Some(Roots::System)) => SslMode::VerifyFull,
            (None, _) => SslMode::Prefer,
        };
        if matches!(root, Some(Roots::System)) && mode != SslMode::VerifyFull {
            return Err(bad(
                "sslrootcert=system needs sslmode=verify-full (the system's roots vouch for host names)",
            ));
        }
        let check = match (mode, &root) {
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(bad(format!(
                    "sslmode={} needs a root certificate: sslrootcert=FILE, sslrootcert=system, or ~/.postgresql/root.crt",
                    options.mode.as_deref().unwrap_or("verify-full")
                )));
            }
            (SslMode::Disable, _) | (SslMode::Prefer | SslMode::Require, None) => Check::Nothing,
            (SslMode::VerifyFull, Some(roots)) => Check::Full(roots.load()?),
            (_, Some(roots)) => Check::Chain(roots.load()?),
        };
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        Ok(PgConnect {
            config,
            mode,
            tls: MakeRustlsConnect::new(client_config(check)?),
        })
    }

    /// The driver's configuration (host, user, options, …).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The driver's configuration, to change before connecting.
    pub fn config_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.config
    }

    /// How connections use TLS.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// Opens a connection; the caller drives the [`Connection`] (usually with `tokio::spawn`).
    pub async fn connect(
        &self,
    ) -> Result<(Client, Connection<Socket, TlsStream>), tokio_postgres::Error> {
        self.config.connect(self.tls.clone()).await
    }
}

/// `sslmode` and `sslrootcert` as written, taken out of the connection string.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsOptions {
    mode: Option<String>,
    root_cert: Option<String>,
}

const TLS_KEYS: [&str; 2] = ["sslmode", "sslrootcert"];

/// Splits `sslmode` and `sslrootcert` off a connection string (the driver knows only some of
/// their values), and returns the rest as written.
fn take_tls_options(connection: &str) -> Result<(String, TlsOptions), ConfigError> {
    let mut options = TlsOptions::default();
    let mut keep = |key: &str, value: String| {
        match key {
            "sslmode" => options.mode = Some(value),
            _ => options.root_cert = Some(value),
        };
    };
    let rest = if connection.starts_with("postgres://") || connection.starts_with("postgresql://") {
        let Some((base, query)) = connection.split_once('?') else {
            return Ok((connection.to_owned(), options));
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key_text = percent_decode(key)?;
            if TLS_KEYS.contains(&key_text.as_str()) {
                keep(&key_text, percent_decode(value)?);
            } else {
                kept.push(pair);
            }
        }
        if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        let mut rest = String::with_capacity(connection.len());
        let mut last = 0;
        for pair in key_values(connection)? {
            if TLS_KEYS.contains(&pair.key.as_str()) {
                rest.push_str(&connection[last..pair.start]);
                last = pair.end;
                keep(&pair.key, pair.value);
            }
        }
        rest.push_str(&connection[last..]);
        rest
    };
    Ok((rest, options))
}

fn percent_decode(text: &str) -> Result<String, ConfigError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(format!("bad percent-encoding in '{text}'")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(format!("'{text}' is not UTF-8 once decoded")))
}

/// One `key = value` of a key-value connection string, with the byte range it takes.
struct KeyValue {
    key: String,
    value: String,
    start: usize,
    end: usize,
}

/// The pairs of `host=h user='a b' password=x\ y`: values may be single-quoted, and a backslash
/// takes the next character as it is.
fn key_values(text: &str) -> Result<Vec<KeyValue>, ConfigError> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|&(_, c)| c);
    let offset = |i: usize| chars.get(i).map_or(text.len(), |&(o, _)| o);
    let mut pairs = Vec::new();
    let mut i = 0;
    loop {
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        if at(i).is_none() {
            return Ok(pairs);
        }
        let start = i;
        while at(i).is_some_and(|c| c != '=' && !c.is_whitespace()) {
            i += 1;
        }
        let key = text[offset(start)..offset(i)].to_owned();
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        if at(i) != Some('=') {
            return Err(bad(format!(
                "bad PostgreSQL connection string: '{key}' has no '='"
            )));
        }
        i += 1;
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        let mut value = String::new();
        let quoted = at(i) == Some('\'');
        if quoted {
            i += 1;
        }
        loop {
            match at(i) {
                None if quoted => {
                    return Err(bad(format!(
                        "bad PostgreSQL connection string: the value of '{key}' has no closing quote"
                    )));
                }
                None => break,
                Some('\'') if quoted => {
                    i += 1;
                    break;
                }
                Some(c) if c.is_whitespace() && !quoted => break,
                Some('\\') => {
                    if let Some(next) = at(i + 1) {
                        value.push(next);
                    }
                    i += 2;
                }
                Some(c) => {
                    value.push(c);
                    i += 1;
                }
            }
        }
        pairs.push(KeyValue {
            key,
            value,
            start: offset(start),
            end: offset(i.min(chars.len())),
        });
    }
}

/// libpq's default root certificate, when it exists.
fn default_root_file() -> Option<PathBuf> {
    let path = Path::new(&std::env::var_os("HOME")?).join(".postgresql/root.crt");
    path.is_file().then_some(path)
}

enum Roots {
    System,
    File(PathBuf),
}

impl Roots {
    fn load(&self) -> Result<RootCertStore, ConfigError> {
        let mut store = RootCertStore::empty();
        match self {
            Roots::System => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = store.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(bad(format!(
                        "sslrootcert=system: no root certificates found on this system{}",
                        found
                            .errors
                            .first()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    )));
                }
            }
            Roots::File(path) => {
                let unreadable =
                    |e: &dyn fmt::Display| bad(format!("sslrootcert {}: {e}", path.display()));
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| unreadable(&e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| unreadable(&e))?;
                if certs.is_empty() {
                    return Err(unreadable(&"no PEM certificate in the file"));
                }
                for cert in certs {
                    store.add(cert).map_err(|e| unreadable(&e))?;
                }
            }
        }
        Ok(store)
    }
}

/// What is checked of the server's certificate.
enum Check {
    Nothing,
    Chain(RootCertStore),
    Full(RootCertStore),
}

fn client_config(check: Check) -> Result<ClientConfig, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::Nothing => Arc::new(Lenient {
            chain: None,
            provider: provider.clone(),
        }),
        Check::Chain(roots) => Arc::new(Lenient {
            chain: Some(webpki(roots, &provider)?),
            provider: provider.clone(),
        }),
        Check::Full(roots) => webpki(roots, &provider)?,
    };
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn webpki(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, ConfigError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| bad(format!("TLS: {e}")))
}

/// What `prefer`, `require` and `verify-ca` check: without a root nothing of the certificate
/// (so they encrypt without knowing who the server is), with one the chain but not the host
/// name. webpki checks the chain before the name, so a certificate refused only for its name
/// has a good chain. The handshake's signatures are checked either way.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn split(connection: &str) -> (String, TlsOptions) {
        take_tls_options(connection).unwrap()
    }

    fn options(mode: Option<&str>, root: Option<&str>) -> TlsOptions {
        TlsOptions {
            mode: mode.map(str::to_owned),
            root_cert: root.map(str::to_owned),
        }
    }

    #[test]
    fn tls_options_are_taken_out_of_urls() {
        assert_eq!(
            split("postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20x.pem"),
            (
                "postgres://u@h/db".into(),
                options(Some("verify-full"), Some("/etc/ca x.pem"))
            )
        );
        assert_eq!(
            split("postgresql://u@h/db?application_name=a&sslmode=require&connect_timeout=3"),
            (
                "postgresql://u@h/db?application_name=a&connect_timeout=3".into(),
                options(Some("require"), None)
            )
        );
        assert_eq!(
            split("postgres://u@h/db"),
            ("postgres://u@h/db".into(), options(None, None))
        );
        assert!(take_tls_options("postgres://h/db?sslrootcert=%zz").is_err());
    }

    #[test]
    fn tls_options_are_taken_out_of_key_values() {
        assert_eq!(
            split("host=h sslmode = verify-ca user='a b' sslrootcert='/x/my ca.pem'"),
            (
                "host=h  user='a b' ".into(),
                options(Some("verify-ca"), Some("/x/my ca.pem"))
            )
        );
        assert_eq!(
            split(r"sslrootcert=/a\ b.pem host=h password='p\'w'"),
            (
                r" host=h password='p\'w'".into(),
                options(None, Some("/a b.pem"))
            )
        );
        assert_eq!(
            split("host=h user=u"),
            ("host=h user=u".into(), options(None, None))
        );
        assert!(take_tls_options("host=h sslmode").is_err());
        assert!(take_tls_options("host='h").is_err());
    }

    #[test]
    fn modes_and_roots_are_checked_when_parsed() {
        let mode = |s: &str| PgConnect::parse(s).map(|c| c.mode());
        assert_eq!(mode("host=h"), Ok(SslMode::Prefer));
        assert_eq!(mode("host=h sslmode=disable"), Ok(SslMode::Disable));
        assert_eq!(
            mode("postgres://h/db?sslmode=require"),
            Ok(SslMode::Require)
        );
        for refused in [
            "host=h sslmode=allow",
            "host=h sslmode=verify",
            "host=h sslmode=verify-full sslrootcert=/no/such/file.pem",
            "host=h sslmode=require sslrootcert=system",
            "host=h sslrootcert=Cargo.toml",
            "host=h unknown=1",
        ] {
            let error = PgConnect::parse(refused).unwrap_err();
            assert!(!error.to_string().is_empty(), "{refused}");
        }
        if default_root_file().is_none() {
            let error = PgConnect::parse("host=h sslmode=verify-full").unwrap_err();
            assert!(error.to_string().contains("sslrootcert"), "{error}");
        }
    }
}
