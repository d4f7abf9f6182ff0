//! The `[kafka]` section: how to reach the cluster.

use crate::error::Problem;
use crate::kafka::{KafkaSettings, SaslMechanism, SecurityProtocol};
use crate::raw::{RawKafka, S};

type Result<T> = std::result::Result<T, Problem>;

/// The `[kafka]` section: each name known, no password inline.
pub(super) fn kafka(raw: RawKafka) -> Result<KafkaSettings> {
    if let Some(p) = &raw.sasl_password {
        return Err(Problem::new(p.span(), "no passwords in job files")
            .secret()
            .hint(
                "sasl_password_env = \"VARIABLE\" names the environment variable that holds it",
            ));
    }
    let parsed = |s: &Option<S<String>>, hint: &str| -> Result<Option<String>> {
        match s {
            Some(v) if v.get_ref().trim().is_empty() => {
                Err(Problem::new(v.span(), "empty").hint(hint.to_owned()))
            }
            Some(v) => Ok(Some(v.get_ref().clone())),
            None => Ok(None),
        }
    };
    fn named<T: std::str::FromStr<Err = String>>(s: &Option<S<String>>) -> Result<Option<T>> {
        s.as_ref()
            .map(|v| {
                v.get_ref()
                    .parse::<T>()
                    .map_err(|e| Problem::new(v.span(), e))
            })
            .transpose()
    }
    let security_protocol: Option<SecurityProtocol> = named(&raw.security_protocol)?;
    let sasl_mechanism: Option<SaslMechanism> = named(&raw.sasl_mechanism)?;
    let file = "a path to a PEM file";
    Ok(KafkaSettings {
        security_protocol,
        ssl_ca_location: parsed(&raw.ssl_ca_location, file)?.map(Into::into),
        ssl_certificate_location: parsed(&raw.ssl_certificate_location, file)?.map(Into::into),
        ssl_key_location: parsed(&raw.ssl_key_location, file)?.map(Into::into),
        sasl_mechanism,
        sasl_username: parsed(&raw.sasl_username, "the SASL user")?,
        sasl_password_env: parsed(
            &raw.sasl_password_env,
            "the name of an environment variable",
        )?,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::kafka::{SaslMechanism, SecurityProtocol};

    const JOB: &str =
        "name = \"j\"\n[[aggregation]]\nname = \"a\"\nwindow = \"tumbling 1m\"\ntopic = \"t\"\n";

    #[test]
    fn the_kafka_section_is_read_with_librdkafka_s_names() {
        let text = format!(
            "{JOB}[kafka]\nsecurity_protocol = \"SASL_SSL\"\nssl_ca_location = \"ca.pem\"\n\
             sasl_mechanism = \"SCRAM-SHA-256\"\nsasl_username = \"iot\"\nsasl_password_env = \"PW\"\n"
        );
        let plan = crate::parse(Path::new("j.toml"), &text).unwrap();
        assert_eq!(
            plan.kafka.security_protocol,
            Some(SecurityProtocol::SaslSsl)
        );
        assert_eq!(plan.kafka.sasl_mechanism, Some(SaslMechanism::ScramSha256));
        assert_eq!(
            plan.kafka.ssl_ca_location.as_deref(),
            Some(Path::new("ca.pem"))
        );
        assert_eq!(plan.kafka.sasl_password_env.as_deref(), Some("PW"));
        assert!(
            plan.to_string().contains(
                "kafka     sasl_ssl, CA ca.pem, SASL SCRAM-SHA-256, as iot, password from $PW\n"
            ),
            "{plan}"
        );
    }

    #[test]
    fn a_password_or_an_unknown_name_is_refused_at_its_line() {
        for (kafka, line, says) in [
            (
                "sasl_password = \"hunter2\"",
                7,
                "no passwords in job files",
            ),
            (
                "security_protocol = \"tls\"",
                7,
                "unknown security protocol `tls`",
            ),
            (
                "sasl_mechanism = \"GSSAPI\"",
                7,
                "unknown SASL mechanism `GSSAPI`",
            ),
            ("ssl_key = \"k.pem\"", 7, "unknown field `ssl_key`"),
        ] {
            let text = format!("{JOB}[kafka]\n{kafka}\n");
            let e = crate::parse(Path::new("j.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("j.toml:{line}:")), "{e}");
            assert!(e.contains(says), "{e}");
            assert!(!e.contains("hunter2"), "the password is echoed: {e}");
        }
    }
}
