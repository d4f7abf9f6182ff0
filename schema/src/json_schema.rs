//! JSON with a JSON Schema (the registry's `JSON` type): the value is JSON
//! text after the frame, parsed and validated against its schema through the
//! `jsonschema` crate. References are the registry's, by name; nothing is
//! fetched from the network.

use std::collections::HashMap;

use serde_json::Value;

/// A compiled JSON Schema.
#[derive(Debug)]
pub struct JsonSchema {
    validator: jsonschema::Validator,
    schema: Value,
}

/// The schemas a schema references, by the name its `$ref`s use.
struct References(HashMap<String, Value>);

impl jsonschema::Retrieve for References {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let wanted = uri.as_str();
        self.0
            .iter()
            .find(|(name, _)| wanted == name.as_str() || wanted.ends_with(&format!("/{name}")))
            .map(|(_, schema)| schema.clone())
            .ok_or_else(|| format!("{wanted} is not among the schema's references").into())
    }
}

impl JsonSchema {
    /// `text` compiled, `references` (name → schema text) resolving its `$ref`s.
    pub fn compile(text: &str, references: &[(String, String)]) -> Result<Self, String> {
        let schema: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let references = references
            .iter()
            .map(|(name, text)| {
                serde_json::from_str(text)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| format!("reference {name}: not JSON: {e}"))
            })
            .collect::<Result<HashMap<_, _>, _>>()?;
        let validator = jsonschema::options()
            .with_retriever(References(references))
            .build(&schema)
            .map_err(|e| e.to_string())?;
        Ok(Self { validator, schema })
    }

    /// The JSON text `body`, if it is JSON and valid under the schema.
    pub fn decode(&self, body: &[u8]) -> Option<Value> {
        let value: Value = serde_json::from_slice(body).ok()?;
        self.validator.is_valid(&value).then_some(value)
    }

    /// Whether a value of this schema can hold `path`: declared in nested
    /// `properties`. An object schema that declares no properties, or types
    /// its other properties (`additionalProperties` as a schema, pattern
    /// properties, `$ref` or a combinator), may hold any.
    pub fn has_path(&self, path: &[String]) -> bool {
        has_path(&self.schema, path)
    }
}

fn has_path(schema: &Value, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return true;
    };
    if let Some(inner) = schema.get("properties").and_then(|p| p.get(first)) {
        return has_path(inner, rest);
    }
    // A value typed as anything but an object has no fields.
    let object = match schema.get("type") {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(types)) => types.iter().any(|t| t == "object"),
        _ => true,
    };
    if !object {
        return false;
    }
    let open = ["patternProperties", "$ref", "allOf", "anyOf", "oneOf"]
        .iter()
        .any(|k| schema.get(k).is_some())
        || schema
            .get("additionalProperties")
            .is_some_and(Value::is_object)
        || schema.get("properties").is_none();
    open && schema.get("additionalProperties") != Some(&Value::Bool(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    const READING: &str = r#"{"type":"object","properties":{
        "machine":{"type":"string"},"at":{"type":"integer"},
        "temp":{"type":"number"},"meta":{"$ref":"meta.json"},
        "extra":{"type":"object","additionalProperties":{"type":"number"}}},
        "required":["machine","at"]}"#;
    const META: &str =
        r#"{"type":"object","properties":{"line":{"type":"string"}},"required":["line"]}"#;

    fn schema() -> JsonSchema {
        JsonSchema::compile(READING, &[("meta.json".into(), META.into())]).unwrap()
    }

    #[test]
    fn values_are_validated_against_the_schema_and_its_references() {
        let s = schema();
        let good = br#"{"machine":"m","at":5,"temp":1.5,"meta":{"line":"L"},"extra":{"rpm":3}}"#;
        assert_eq!(s.decode(good).unwrap()["meta"]["line"], "L");
        for bad in [
            &br#"{"machine":"m"}"#[..],
            br#"{"machine":"m","at":"five"}"#,
            br#"{"machine":"m","at":5,"meta":{}}"#,
            br#"{"machine":"m","at":5,"extra":{"rpm":"fast"}}"#,
            b"{not json",
        ] {
            assert!(s.decode(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn declared_properties_say_which_paths_a_value_can_hold() {
        let s = schema();
        let p = |s: &str| s.split('.').map(str::to_owned).collect::<Vec<_>>();
        for present in ["machine", "temp", "meta.line", "extra.rpm"] {
            assert!(s.has_path(&p(present)), "{present}");
        }
        for absent in ["device", "hum", "machine.x"] {
            assert!(!s.has_path(&p(absent)), "{absent}");
        }
        let closed =
            JsonSchema::compile(r#"{"type":"object","additionalProperties":false}"#, &[]).unwrap();
        assert!(!closed.has_path(&p("machine")));
        let open = JsonSchema::compile(r#"{"type":"object"}"#, &[]).unwrap();
        assert!(open.has_path(&p("machine")));
    }

    #[test]
    fn a_schema_that_is_not_one_or_misses_a_reference_says_why() {
        assert!(
            JsonSchema::compile("{", &[])
                .unwrap_err()
                .contains("not JSON")
        );
        assert!(JsonSchema::compile(r#"{"type":"nonsense"}"#, &[]).is_err());
        assert!(JsonSchema::compile(READING, &[]).is_err());
    }
}
