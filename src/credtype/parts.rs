//! Multi-part values (`certificate`, `ssh_key`, `oauth`) arrive as one JSON object naming their
//! parts. This reads such an object field by field, so that no error message is built by a
//! deserializer that might quote a secret: errors name the field, the JSON position, or the
//! expected shape, never a value.

use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::CredTypeError;

/// Whether `text` is written as a JSON object rather than as the bare text of its main part.
pub(super) fn is_object(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

/// The fields of one multi-part value, taken out one by one.
pub(super) struct Parts {
    map: Map<String, Value>,
}

impl Parts {
    /// Reads `text` as a JSON object whose keys are all in `allowed`; `type_name` names the
    /// credential type in errors.
    pub(super) fn parse(
        text: &str,
        type_name: &str,
        allowed: &[&str],
    ) -> Result<Self, CredTypeError> {
        let map: Map<String, Value> = serde_json::from_str(text).map_err(|e| {
            CredTypeError::invalid(
                "value",
                format!(
                    "a JSON object with the {type_name} fields {}; this is not valid JSON (line {}, column {})",
                    allowed.join(", "),
                    e.line(),
                    e.column()
                ),
            )
        })?;
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(CredTypeError::invalid(
                unknown.chars().take(64).collect::<String>(),
                format!(
                    "unknown {type_name} field; expected one of {}",
                    allowed.join(", ")
                ),
            ));
        }
        Ok(Self { map })
    }

    /// Takes the string field `name`: absent or `null` is `None`, any other JSON type an error.
    pub(super) fn string(
        &mut self,
        name: &str,
    ) -> Result<Option<Zeroizing<String>>, CredTypeError> {
        match self.map.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(Zeroizing::new(s))),
            Some(_) => Err(CredTypeError::invalid(name, "a string")),
        }
    }

    /// Takes the string field `name`, which must be present.
    pub(super) fn required(&mut self, name: &str) -> Result<Zeroizing<String>, CredTypeError> {
        self.string(name)?
            .ok_or_else(|| CredTypeError::invalid(name, "required, a string"))
    }

    /// Takes the field `name` as JSON, whatever its type (`null` is `None`).
    pub(super) fn any(&mut self, name: &str) -> Option<Value> {
        self.map.remove(name).filter(|v| !v.is_null())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_fields_and_positions_never_values() {
        let err = Parts::parse(r#"{"a": "s3cret", "zz": "s3cret"}"#, "demo", &["a"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("zz: unknown demo field"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let err = Parts::parse(r#"{"a": "s3cret" "#, "demo", &["a"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not valid JSON (line 1"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let mut p = Parts::parse(r#"{"a": 5, "b": null}"#, "demo", &["a", "b"]).unwrap();
        assert_eq!(p.string("a").unwrap_err().to_string(), "a: a string");
        assert!(p.string("b").unwrap().is_none());
        assert_eq!(
            p.required("b").unwrap_err().to_string(),
            "b: required, a string"
        );
    }
}
