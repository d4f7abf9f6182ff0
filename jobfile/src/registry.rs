//! How the input topic's records are encoded, and the schema registry that
//! holds the schemas of the non-JSON encodings.

use std::fmt;

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
        Self::NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                format!("unknown format `{s}`: one of json, avro, protobuf, json-schema")
            })
    }
}

impl fmt::Display for InputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
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
