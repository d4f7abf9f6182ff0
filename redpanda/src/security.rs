//! Secured clusters: TLS (rustls with ring; the CA from a PEM file or the
//! Mozilla roots), mutual TLS, and SASL PLAIN / SCRAM, from the settings a
//! job file or the flags state ([`KafkaSettings`], librdkafka's names).
//!
//! ```text
//!   KafkaSettings + password ──Security::new──▶ checked: files read, combinations valid
//!   Brokers { addrs, security } ──connect──▶ rskafka ClientBuilder.tls_config().sasl_config()
//! ```
//!
//! The password is kept out of every `Debug` and `Display` (rskafka's
//! `Credentials` derive `Debug` with it): [`Security`] prints the protocol,
//! the mechanism and the user only.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iotflow_jobfile::KafkaSettings;
use iotflow_jobfile::kafka::{SaslMechanism, SecurityProtocol};
use rskafka::client::{Credentials, SaslConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Settings that cannot work, named the way the user wrote them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    #[error("{setting} is set, but security protocol {protocol} does not use it (use {wants})")]
    Unused {
        setting: &'static str,
        protocol: SecurityProtocol,
        wants: &'static str,
    },
    #[error("security protocol {protocol} needs {setting}")]
    Missing {
        protocol: SecurityProtocol,
        setting: &'static str,
    },
    #[error("{setting} {path}: {problem}", path = .path.display())]
    File {
        setting: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("TLS: {0}")]
    Tls(String),
}

/// How to reach a cluster: the protocol, and what it needs, checked.
#[derive(Clone, Default)]
pub struct Security {
    protocol: SecurityProtocol,
    tls: Option<Arc<rustls::ClientConfig>>,
    sasl: Option<(SaslMechanism, String, String)>,
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl fmt::Display for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.protocol)?;
        if let Some((mechanism, user, _)) = &self.sasl {
            write!(f, " ({mechanism} as {user})")?;
        }
        Ok(())
    }
}

impl Security {
    /// Plain TCP, no authentication: the local broker.
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// The settings checked and their files read; `password` is the SASL
    /// password (from `--sasl-password` or the variable the settings name).
    pub fn new(s: &KafkaSettings, password: Option<String>) -> Result<Self, SecurityError> {
        let protocol = s.security_protocol.unwrap_or_default();
        let unused = |setting, wants| SecurityError::Unused {
            setting,
            protocol,
            wants,
        };
        let missing = |setting| SecurityError::Missing { protocol, setting };
        if !protocol.tls() {
            for (set, name) in [
                (s.ssl_ca_location.is_some(), "ssl-ca-location"),
                (
                    s.ssl_certificate_location.is_some(),
                    "ssl-certificate-location",
                ),
                (s.ssl_key_location.is_some(), "ssl-key-location"),
            ] {
                if set {
                    return Err(unused(name, "ssl or sasl_ssl"));
                }
            }
        }
        if !protocol.sasl() {
            for (set, name) in [
                (s.sasl_mechanism.is_some(), "sasl-mechanism"),
                (s.sasl_username.is_some(), "sasl-username"),
                (password.is_some(), "sasl-password"),
            ] {
                if set {
                    return Err(unused(name, "sasl_plaintext or sasl_ssl"));
                }
            }
        }
        let tls = match protocol.tls() {
            true => Some(Arc::new(tls_config(s)?)),
            false => None,
        };
        let sasl = match protocol.sasl() {
            true => Some((
                s.sasl_mechanism.ok_or(missing("sasl-mechanism"))?,
                s.sasl_username.clone().ok_or(missing("sasl-username"))?,
                password.ok_or(missing(
                    "sasl-password (or the variable sasl_password_env names)",
                ))?,
            )),
            false => None,
        };
        Ok(Self {
            protocol,
            tls,
            sasl,
        })
    }

    pub fn protocol(&self) -> SecurityProtocol {
        self.protocol
    }

    pub fn tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls.clone()
    }

    pub fn sasl(&self) -> Option<SaslConfig> {
        let (mechanism, user, password) = self.sasl.as_ref()?;
        let c = Credentials::new(user.clone(), password.clone());
        Some(match mechanism {
            SaslMechanism::Plain => SaslConfig::Plain(c),
            SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(c),
            SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(c),
        })
    }
}

fn file_err<'a>(setting: &'static str, path: &'a Path) -> impl Fn(String) -> SecurityError + 'a {
    move |problem| SecurityError::File {
        setting,
        path: path.to_owned(),
        problem,
    }
}

/// rustls with ring (the provider every rustls user in the tree shares),
/// trusting `ssl_ca_location`'s certificates or else the Mozilla roots,
/// presenting a client certificate when both its files are given.
fn tls_config(s: &KafkaSettings) -> Result<rustls::ClientConfig, SecurityError> {
    let mut roots = rustls::RootCertStore::empty();
    match &s.ssl_ca_location {
        Some(path) => {
            let err = file_err("ssl-ca-location", path);
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| err(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(e.to_string()))?;
            if certs.is_empty() {
                return Err(err("no certificate in it".into()));
            }
            for c in certs {
                roots.add(c).map_err(|e| err(e.to_string()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SecurityError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match (&s.ssl_certificate_location, &s.ssl_key_location) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let cert_err = file_err("ssl-certificate-location", cert);
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| cert_err(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| cert_err(e.to_string()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| file_err("ssl-key-location", key)(e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| SecurityError::Tls(format!("the client certificate: {e}")))
        }
        (Some(_), None) => Err(SecurityError::Missing {
            protocol: s.security_protocol.unwrap_or_default(),
            setting: "ssl-key-location (with ssl-certificate-location)",
        }),
        (None, Some(_)) => Err(SecurityError::Missing {
            protocol: s.security_protocol.unwrap_or_default(),
            setting: "ssl-certificate-location (with ssl-key-location)",
        }),
    }
}

/// A cluster to connect to: its bootstrap addresses and how to reach it.
/// Derefs to the addresses.
#[derive(Debug, Clone, Default)]
pub struct Brokers {
    addrs: Vec<String>,
    security: Arc<Security>,
}

impl Brokers {
    pub fn new(addrs: Vec<String>, security: Security) -> Self {
        Self {
            addrs,
            security: Arc::new(security),
        }
    }

    pub fn security(&self) -> &Security {
        &self.security
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }
}

impl std::ops::Deref for Brokers {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.addrs
    }
}

/// Plain TCP to `addrs`: the local broker and tests. A command reaching a
/// cluster builds its `Brokers` from the security settings instead
/// (`tests/secured/` runs produce, run, tail, scan, topics and the demo
/// against endpoints that speak nothing else: a connection made in plain
/// TCP by mistake fails there).
impl From<Vec<String>> for Brokers {
    fn from(addrs: Vec<String>) -> Self {
        Self::new(addrs, Security::plaintext())
    }
}

impl From<&[String]> for Brokers {
    fn from(addrs: &[String]) -> Self {
        addrs.to_vec().into()
    }
}

impl<const N: usize> From<&[String; N]> for Brokers {
    fn from(addrs: &[String; N]) -> Self {
        addrs.to_vec().into()
    }
}

impl From<&Vec<String>> for Brokers {
    fn from(addrs: &Vec<String>) -> Self {
        addrs.clone().into()
    }
}

impl From<&Brokers> for Brokers {
    fn from(brokers: &Brokers) -> Self {
        brokers.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_a_protocol_does_not_use_or_lacks_are_refused_by_name() {
        let e = |s: KafkaSettings, pw: Option<&str>| {
            Security::new(&s, pw.map(str::to_owned))
                .unwrap_err()
                .to_string()
        };
        let ca = KafkaSettings {
            ssl_ca_location: Some("ca.pem".into()),
            ..KafkaSettings::with_protocol(SecurityProtocol::SaslPlaintext)
        };
        assert!(
            e(ca, None).contains("ssl-ca-location is set, but security protocol sasl_plaintext")
        );
        let user = KafkaSettings {
            sasl_username: Some("u".into()),
            ..KafkaSettings::with_protocol(SecurityProtocol::Ssl)
        };
        assert!(e(user, None).contains("sasl-username is set"));
        let no_mechanism = KafkaSettings {
            sasl_username: Some("u".into()),
            ..KafkaSettings::with_protocol(SecurityProtocol::SaslPlaintext)
        };
        assert!(e(no_mechanism, Some("pw")).contains("needs sasl-mechanism"));
        let no_password = KafkaSettings {
            sasl_username: Some("u".into()),
            sasl_mechanism: Some(SaslMechanism::Plain),
            ..KafkaSettings::with_protocol(SecurityProtocol::SaslPlaintext)
        };
        assert!(e(no_password, None).contains("needs sasl-password"));
        let missing_ca = KafkaSettings {
            ssl_ca_location: Some("/nonexistent/ca.pem".into()),
            ..KafkaSettings::with_protocol(SecurityProtocol::Ssl)
        };
        assert!(e(missing_ca, None).contains("ssl-ca-location /nonexistent/ca.pem"));
    }

    #[test]
    fn the_password_is_never_shown() {
        let s = KafkaSettings {
            sasl_username: Some("iot".into()),
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            ..KafkaSettings::with_protocol(SecurityProtocol::SaslPlaintext)
        };
        let security = Security::new(&s, Some("hunter2".into())).unwrap();
        let brokers = Brokers::new(vec!["b:9092".into()], security);
        for shown in [format!("{brokers:?}"), brokers.security().to_string()] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(
                shown.contains("sasl_plaintext (SCRAM-SHA-512 as iot)"),
                "{shown}"
            );
        }
        assert!(brokers.security().sasl().is_some());
    }
}
