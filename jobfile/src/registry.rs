//! How the input topic's records are encoded, and the schema registry that
//! holds the schemas of the non-JSON encodings.

use std::fmt;

/// The entry of `table` named `name`, in any case (flags take `AVRO` too).
fn by_name<T: Copy>(table: &[(&str, T)], name: &str) -> Option<T> {
    table
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

/// The encoding of the input topic's record values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputFormat {
    /// Free JSON (today's shapes or the mapped fields).
    #[default]
    Json,
    /// Avro in the Confluent wire format (magic byte, schema id, datum).
    Avro,
    /// Protobuf in the Confluent wire format (magic byte, schema id, message indexes, message).
    Protobuf,
    /// JSON in the Confluent wire format, validated against its JSON Schema.
    JsonSchema,
}

impl InputFormat {
    pub const NAMES: [(&'static str, InputFormat); 4] = [
        ("json", InputFormat::Json),
        ("avro", InputFormat::Avro),
        ("protobuf", InputFormat::Protobuf),
        ("json-schema", InputFormat::JsonSchema),
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("json", |(n, _)| n)
    }

    /// Its records carry a schema id that the registry resolves.
    pub fn needs_registry(self) -> bool {
        self != InputFormat::Json
    }
}

impl std::str::FromStr for InputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        by_name(&Self::NAMES, s).ok_or_else(|| {
            format!("unknown format `{s}`: one of json, avro, protobuf, json-schema")
        })
    }
}

impl fmt::Display for InputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The encoding of an aggregation's Kafka values (Parquet keeps its typed schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Json,
    /// Avro in the Confluent wire format, the schema registered under `<topic>-value`.
    Avro,
}

impl OutputFormat {
    pub const NAMES: [(&'static str, OutputFormat); 2] =
        [("json", OutputFormat::Json), ("avro", OutputFormat::Avro)];
}

impl std::str::FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        by_name(&Self::NAMES, s).ok_or_else(|| format!("unknown output format `{s}`: json or avro"))
    }
}

/// A schema registry speaking the Confluent REST API, as a job file or the
/// flags state it (each unset setting: not stated). No password: see
/// [`RegistrySettings::password_env`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrySettings {
    /// Base URL, e.g. `http://localhost:8081`.
    pub url: Option<String>,
    /// HTTP basic-auth user.
    pub username: Option<String>,
    /// The environment variable holding the basic-auth password.
    pub password_env: Option<String>,
}

impl RegistrySettings {
    /// These settings with each one `flags` states taken from there instead.
    pub fn overridden_by(&self, flags: &RegistrySettings) -> RegistrySettings {
        RegistrySettings {
            url: flags.url.clone().or_else(|| self.url.clone()),
            username: flags.username.clone().or_else(|| self.username.clone()),
            password_env: flags
                .password_env
                .clone()
                .or_else(|| self.password_env.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const JOB: &str =
        "name = \"j\"\n[[aggregation]]\nname = \"a\"\nwindow = \"tumbling 1m\"\ntopic = \"t\"\n";

    #[test]
    fn the_input_format_and_its_registry_are_read_and_printed() {
        let text = format!(
            "{JOB}[input]\nformat = \"avro\"\nschema_registry = \"http://registry:8081\"\n\
             schema_registry_username = \"iot\"\nschema_registry_password_env = \"PW\"\n"
        );
        let plan = crate::parse(Path::new("j.toml"), &text).unwrap();
        assert_eq!(plan.input.format, InputFormat::Avro);
        assert_eq!(
            plan.input.registry,
            RegistrySettings {
                url: Some("http://registry:8081".into()),
                username: Some("iot".into()),
                password_env: Some("PW".into()),
            }
        );
        let printed = plan.to_string();
        assert!(
            printed.contains("Avro (Confluent wire format), schemas from the registry at http://registry:8081 as iot"),
            "{printed}"
        );
        // The flags win, setting by setting.
        let flags = RegistrySettings {
            url: Some("https://other:443".into()),
            ..RegistrySettings::default()
        };
        let both = plan.input.registry.overridden_by(&flags);
        assert_eq!(both.url.as_deref(), Some("https://other:443"));
        assert_eq!(both.username.as_deref(), Some("iot"));
        // JSON by default, without a registry.
        let plain = crate::parse(Path::new("j.toml"), JOB).unwrap();
        assert_eq!(plain.input.format, InputFormat::Json);
        assert!(!plain.input.format.needs_registry());
    }

    #[test]
    fn output_formats_are_per_topic_and_refused_without_one() {
        let text = "name = \"j\"\n[output]\nalerts_format = \"avro\"\n\
                    [[aggregation]]\nname = \"a\"\nwindow = \"tumbling 1m\"\ntopic = \"t\"\nformat = \"avro\"\n\
                    [[aggregation]]\nname = \"b\"\nwindow = \"tumbling 1m\"\ntopic = \"u\"\n\
                    [[alert]]\nname = \"hot\"\non = \"a\"\nwhen = \"mean > 1\"\n";
        let plan = crate::parse(Path::new("j.toml"), text).unwrap();
        assert_eq!(plan.aggregations[0].format, OutputFormat::Avro);
        assert_eq!(plan.aggregations[1].format, OutputFormat::Json);
        assert_eq!(plan.alert_outputs.format, OutputFormat::Avro);
        let printed = plan.to_string();
        assert!(
            printed.contains("topic t in Avro, its schema registered under t-value"),
            "{printed}"
        );
        assert!(
            printed.contains("in Avro (group fields as the map `labels`)"),
            "{printed}"
        );
        for (text, line, says) in [
            (
                "[[aggregation]]\nname = \"a\"\nwindow = \"tumbling 1m\"\nparquet = \"a\"\nformat = \"avro\"\n",
                6,
                "a format without a topic",
            ),
            (
                "[[aggregation]]\nname = \"a\"\nwindow = \"tumbling 1m\"\ntopic = \"t\"\nformat = \"xml\"\n",
                6,
                "unknown output format `xml`",
            ),
        ] {
            let e = crate::parse(Path::new("j.toml"), &format!("name = \"j\"\n{text}"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("j.toml:{line}:")) && e.contains(says),
                "{e}"
            );
        }
    }

    #[test]
    fn a_password_an_unknown_format_or_a_url_that_is_not_http_is_refused_at_its_line() {
        for (input, says) in [
            (
                "schema_registry_password = \"hunter2\"",
                "no passwords in job files",
            ),
            ("format = \"thrift\"", "unknown format `thrift`"),
            (
                "schema_registry = \"registry:8081\"",
                "is not an http(s) URL",
            ),
            ("schema_registry_username = \" \"", "empty"),
        ] {
            let text = format!("{JOB}[input]\n{input}\n");
            let e = crate::parse(Path::new("j.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(e.contains("j.toml:7:"), "{e}");
            assert!(e.contains(says), "{e}");
            assert!(!e.contains("hunter2"), "the password is echoed: {e}");
        }
        assert_eq!("AVRO".parse::<InputFormat>(), Ok(InputFormat::Avro));
        assert_eq!("avro".parse::<OutputFormat>(), Ok(OutputFormat::Avro));
        assert!("protobuf".parse::<OutputFormat>().is_err());
        assert!("xml".parse::<InputFormat>().is_err());
    }
}
