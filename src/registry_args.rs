//! Which schema registry a command talks to: `--schema-registry` and its
//! credentials, over a job file's `[input]` settings.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use iotflow_jobfile::{InputFormat, InputPlan, RegistrySettings};
use iotflow_schema::avro::AvroSchema;
use iotflow_schema::{Decoder, Registered, Registry, SchemaKind};

use crate::target::Password;

/// How long one request to the registry may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The schema registry (Confluent REST API; Redpanda's built-in one serves it too).
#[derive(Debug, Clone, Default, Args)]
pub struct RegistryArgs {
    /// Base URL of the schema registry, e.g. http://localhost:8081 (a job
    /// file's `schema_registry` otherwise).
    #[arg(long, env = "IOTFLOW_SCHEMA_REGISTRY")]
    pub schema_registry: Option<String>,
    /// Basic-auth user of the schema registry.
    #[arg(long, env = "IOTFLOW_SCHEMA_REGISTRY_USERNAME")]
    pub schema_registry_username: Option<String>,
    /// Better given as IOTFLOW_SCHEMA_REGISTRY_PASSWORD: a flag shows in the process list.
    #[arg(long, env = "IOTFLOW_SCHEMA_REGISTRY_PASSWORD", hide_env_values = true)]
    pub schema_registry_password: Option<Password>,
}

impl RegistryArgs {
    fn settings(&self) -> RegistrySettings {
        RegistrySettings {
            url: self.schema_registry.clone(),
            username: self.schema_registry_username.clone(),
            password_env: None,
        }
    }

    /// The decoder of iotflow's own Avro outputs (aggregates, alert events)
    /// for the commands that show them, when these flags name a registry.
    pub fn output_decoder(&self) -> Result<Option<Decoder>> {
        Ok(self
            .registry(&RegistrySettings::default())?
            .map(|r| Decoder::new(Box::new(r), SchemaKind::Avro, Vec::new())))
    }

    /// The registry these flags over `file` name, its password read; `None`
    /// when neither names one.
    pub fn registry(&self, file: &RegistrySettings) -> Result<Option<Registry>> {
        let settings = file.overridden_by(&self.settings());
        let Some(url) = &settings.url else {
            if self.schema_registry_password.is_some() || settings.username.is_some() {
                bail!("schema registry credentials without a registry: add --schema-registry URL");
            }
            return Ok(None);
        };
        let password = match (&self.schema_registry_password, &settings.password_env) {
            (Some(p), _) => Some(p.0.clone()),
            (None, Some(var)) => Some(std::env::var(var).with_context(|| {
                format!("schema_registry_password_env names {var}, which is not set")
            })?),
            (None, None) => None,
        };
        let credentials = match (&settings.username, &password) {
            (Some(user), Some(password)) => Some((user.as_str(), password.as_str())),
            (None, None) => None,
            _ => bail!("the schema registry's basic auth needs both a username and a password"),
        };
        Registry::new(url, credentials, REQUEST_TIMEOUT)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("--schema-registry {e}"))
    }
}

/// The decoder of `input`'s format through `registry`, or `None` for JSON text.
pub fn decoder(input: &InputPlan, registry: Option<&Registry>) -> Result<Option<Arc<Decoder>>> {
    let kind = match input.format {
        InputFormat::Json => return Ok(None),
        InputFormat::Avro => SchemaKind::Avro,
        InputFormat::Protobuf => SchemaKind::Protobuf,
        InputFormat::JsonSchema => SchemaKind::Json,
    };
    let Some(registry) = registry else {
        bail!(
            "input format {} reads schemas from a registry: add --schema-registry URL or schema_registry in [input]",
            input.format
        );
    };
    let required = iotflow_dataflow::reading::InputMapping::required_paths(&input.mapping);
    Ok(Some(Arc::new(Decoder::new(
        Box::new(registry.clone()),
        kind,
        required,
    ))))
}

/// Registers `schema` of `kind` under `subject`: its id. Blocking: the
/// registry client is synchronous.
pub fn register(registry: &Registry, subject: &str, kind: SchemaKind, schema: &str) -> Result<u32> {
    let registered = Registered {
        schema_type: kind,
        schema: schema.to_owned(),
        references: Vec::new(),
    };
    tokio::task::block_in_place(|| registry.register(subject, &registered))
        .with_context(|| format!("registering the schema of {subject}"))
}

/// Registers `schema` (Avro, JSON text) under `subject`: its id and the parsed schema.
pub fn register_avro(
    registry: &Registry,
    subject: &str,
    schema: &str,
) -> Result<(u32, AvroSchema)> {
    let parsed = AvroSchema::parse(schema, &[])
        .map_err(|e| anyhow::anyhow!("the Avro schema of {subject}: {e}"))?;
    Ok((
        register(registry, subject, SchemaKind::Avro, schema)?,
        parsed,
    ))
}

/// A value as JSON text: an Avro value decoded through the registry; as it
/// is when there is none, or it does not decode.
pub fn as_json<'a>(value: &'a [u8], decoder: Option<&Decoder>) -> Cow<'a, [u8]> {
    match decoder {
        Some(d) if value.first() == Some(&iotflow_schema::wire::MAGIC) => {
            match tokio::task::block_in_place(|| d.decode_nulling_non_finite(value)) {
                Ok(json) => Cow::Owned(json.to_string().into_bytes()),
                Err(_) => Cow::Borrowed(value),
            }
        }
        _ => Cow::Borrowed(value),
    }
}
