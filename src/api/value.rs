//! `ValueOrValueFrom`: an inline value or a reference to a Secret, ConfigMap or AlertConfig key.

use k8s_openapi::api::core::v1::{ConfigMapKeySelector, LocalObjectReference, SecretKeySelector};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::limits;

/// A string given inline or read from a Secret or ConfigMap key (or, for alert actions, an AlertConfig).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValueOrValueFrom {
    /// The value itself; ignored when `valueFrom` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::VALUE))]
    pub value: Option<String>,
    /// Where to read the value from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<ValueFromSource>,
}

/// A reference to the source of a value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValueFromSource {
    /// A key of a Secret in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeySelector>,
    /// A key of a ConfigMap in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<ConfigMapKeySelector>,
    /// An AlertConfig in the same namespace (alert actions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_config_ref: Option<LocalObjectReference>,
    /// Compatibility: kimup's email documentation indents `name`/`key` one level too high, next
    /// to an empty `secretKeyRef`. Such manifests are read as a Secret reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::OBJECT_NAME))]
    pub name: Option<String>,
    /// Compatibility companion of `name` (see there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::OBJECT_NAME))]
    pub key: Option<String>,
}

/// Where a value comes from, after the compatibility forms are resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueSource {
    /// Inline.
    Inline(String),
    /// Secret `name`, key `key`, optional.
    Secret {
        name: String,
        key: String,
        optional: bool,
    },
    /// ConfigMap `name`, key `key`, optional.
    ConfigMap {
        name: String,
        key: String,
        optional: bool,
    },
    /// AlertConfig `name`.
    AlertConfig(String),
    /// Nothing usable was given.
    Missing,
}

impl ValueOrValueFrom {
    /// Resolves the compatibility forms into one source; `valueFrom` wins over `value`.
    pub fn source(&self) -> ValueSource {
        if let Some(from) = &self.value_from {
            if let Some(s) = &from.secret_key_ref {
                return ValueSource::Secret {
                    name: s.name.clone(),
                    key: s.key.clone(),
                    optional: s.optional.unwrap_or(false),
                };
            }
            if let Some(c) = &from.config_map_key_ref {
                return ValueSource::ConfigMap {
                    name: c.name.clone(),
                    key: c.key.clone(),
                    optional: c.optional.unwrap_or(false),
                };
            }
            if let Some(a) = &from.alert_config_ref {
                return ValueSource::AlertConfig(a.name.clone());
            }
            if let (Some(name), Some(key)) = (&from.name, &from.key) {
                return ValueSource::Secret {
                    name: name.clone(),
                    key: key.clone(),
                    optional: false,
                };
            }
        }
        match &self.value {
            Some(v) => ValueSource::Inline(v.clone()),
            None => ValueSource::Missing,
        }
    }

    /// An inline value.
    pub fn inline(v: &str) -> Self {
        Self {
            value: Some(v.to_string()),
            value_from: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misindented_doc_form_reads_as_secret() {
        let v: ValueOrValueFrom = serde_yaml::from_str(
            "valueFrom:\n  secretKeyRef:\n  name: email-secret\n  key: smtpHost\n",
        )
        .expect("parses");
        assert_eq!(
            v.source(),
            ValueSource::Secret {
                name: "email-secret".into(),
                key: "smtpHost".into(),
                optional: false
            }
        );
    }

    #[test]
    fn value_from_wins_over_value() {
        let v: ValueOrValueFrom = serde_yaml::from_str(
            "value: inline\nvalueFrom:\n  configMapKeyRef: {name: cm, key: k}\n",
        )
        .expect("parses");
        assert!(matches!(v.source(), ValueSource::ConfigMap { .. }));
        assert_eq!(ValueOrValueFrom::default().source(), ValueSource::Missing);
        assert_eq!(
            ValueOrValueFrom::inline("x").source(),
            ValueSource::Inline("x".into())
        );
    }
}
