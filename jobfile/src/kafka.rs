//! How to reach a secured cluster: the `[kafka]` section of a job file and
//! the flags of every command, with librdkafka's setting names (snake case
//! here, `--kebab-case` as flags) so users can copy their settings. A
//! password is never written in a job file: `sasl_password_env` names the
//! variable that holds it.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub const NAMES: [(&'static str, SecurityProtocol); 4] = [
        ("plaintext", SecurityProtocol::Plaintext),
        ("ssl", SecurityProtocol::Ssl),
        ("sasl_plaintext", SecurityProtocol::SaslPlaintext),
        ("sasl_ssl", SecurityProtocol::SaslSsl),
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, p)| *p == self)
            .map_or("plaintext", |(n, _)| n)
    }

    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    pub fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// librdkafka's `sasl.mechanism` (the ones a broker can check a password with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    pub const NAMES: [(&'static str, SaslMechanism); 3] = [
        ("PLAIN", SaslMechanism::Plain),
        ("SCRAM-SHA-256", SaslMechanism::ScramSha256),
        ("SCRAM-SHA-512", SaslMechanism::ScramSha512),
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("PLAIN", |(n, _)| n)
    }
}

/// A name of `names`, matched without regard to case (librdkafka does the same).
fn named<T: Copy>(s: &str, names: &[(&'static str, T)], what: &str) -> Result<T, String> {
    names
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(s.trim()))
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let all: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
            format!("unknown {what} `{s}` (one of {})", all.join(", "))
        })
}

impl FromStr for SecurityProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        named(s, &Self::NAMES, "security protocol")
    }
}

impl FromStr for SaslMechanism {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        named(s, &Self::NAMES, "SASL mechanism")
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The connection settings a job file or the flags state (each unset
/// setting: not stated). No password: see [`KafkaSettings::sasl_password_env`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaSettings {
    pub security_protocol: Option<SecurityProtocol>,
    /// PEM file of the CA certificates to trust (default: the Mozilla roots).
    pub ssl_ca_location: Option<PathBuf>,
    /// PEM files of the client's certificate chain and key (mutual TLS).
    pub ssl_certificate_location: Option<PathBuf>,
    pub ssl_key_location: Option<PathBuf>,
    pub sasl_mechanism: Option<SaslMechanism>,
    pub sasl_username: Option<String>,
    /// The environment variable holding the SASL password.
    pub sasl_password_env: Option<String>,
}

impl KafkaSettings {
    /// `protocol`, and nothing else stated yet.
    pub fn with_protocol(protocol: SecurityProtocol) -> KafkaSettings {
        KafkaSettings {
            security_protocol: Some(protocol),
            ..KafkaSettings::default()
        }
    }

    /// Each stated setting under librdkafka's name (`ssl.ca.location`: the
    /// flag is `--ssl-ca-location`, the job file key `ssl_ca_location`).
    pub fn librdkafka(&self) -> Vec<(&'static str, String)> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        [
            (
                "security.protocol",
                self.security_protocol.map(|p| p.name().to_owned()),
            ),
            ("ssl.ca.location", path(&self.ssl_ca_location)),
            (
                "ssl.certificate.location",
                path(&self.ssl_certificate_location),
            ),
            ("ssl.key.location", path(&self.ssl_key_location)),
            (
                "sasl.mechanism",
                self.sasl_mechanism.map(|m| m.name().to_owned()),
            ),
            ("sasl.username", self.sasl_username.clone()),
        ]
        .into_iter()
        .filter_map(|(name, v)| Some((name, v?)))
        .collect()
    }

    /// Whether anything beyond plain TCP is stated.
    pub fn secured(&self) -> bool {
        let plain = KafkaSettings {
            security_protocol: self
                .security_protocol
                .filter(|p| *p != SecurityProtocol::Plaintext),
            ..self.clone()
        };
        plain != KafkaSettings::default()
    }

    /// [`Self::librdkafka`] as command-line flags.
    pub fn flags(&self) -> Vec<String> {
        self.librdkafka()
            .into_iter()
            .flat_map(|(name, v)| [format!("--{}", name.replace('.', "-")), v])
            .collect()
    }

    /// These settings with every one that `over` states taken from it (the
    /// flags over the job file).
    pub fn overridden_by(self, over: KafkaSettings) -> KafkaSettings {
        KafkaSettings {
            security_protocol: over.security_protocol.or(self.security_protocol),
            ssl_ca_location: over.ssl_ca_location.or(self.ssl_ca_location),
            ssl_certificate_location: over
                .ssl_certificate_location
                .or(self.ssl_certificate_location),
            ssl_key_location: over.ssl_key_location.or(self.ssl_key_location),
            sasl_mechanism: over.sasl_mechanism.or(self.sasl_mechanism),
            sasl_username: over.sasl_username.or(self.sasl_username),
            sasl_password_env: over.sasl_password_env.or(self.sasl_password_env),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_librdkafka_s_in_any_case() {
        assert_eq!("SASL_SSL".parse(), Ok(SecurityProtocol::SaslSsl));
        assert_eq!("plaintext".parse(), Ok(SecurityProtocol::Plaintext));
        assert_eq!("scram-sha-512".parse(), Ok(SaslMechanism::ScramSha512));
        let e = "tls".parse::<SecurityProtocol>().unwrap_err();
        assert!(
            e.contains("plaintext, ssl, sasl_plaintext, sasl_ssl"),
            "{e}"
        );
        for (name, p) in SecurityProtocol::NAMES {
            assert_eq!(p.name(), name);
        }
        for (name, m) in SaslMechanism::NAMES {
            assert_eq!(m.name(), name);
        }
    }

    #[test]
    fn flags_override_the_file_setting_by_setting() {
        let file = KafkaSettings {
            security_protocol: Some(SecurityProtocol::SaslSsl),
            sasl_username: Some("file".into()),
            sasl_password_env: Some("PW".into()),
            ..KafkaSettings::default()
        };
        let flags = KafkaSettings {
            sasl_username: Some("flag".into()),
            ..KafkaSettings::default()
        };
        let both = file.overridden_by(flags);
        assert_eq!(both.security_protocol, Some(SecurityProtocol::SaslSsl));
        assert_eq!(both.sasl_username.as_deref(), Some("flag"));
        assert_eq!(both.sasl_password_env.as_deref(), Some("PW"));
        assert!(both.secured());
        assert!(!KafkaSettings::with_protocol(SecurityProtocol::Plaintext).secured());
        assert!(KafkaSettings::with_protocol(SecurityProtocol::Ssl).secured());
        assert_eq!(
            both.flags(),
            ["--security-protocol", "sasl_ssl", "--sasl-username", "flag"],
            "the password's variable is no flag"
        );
    }
}
