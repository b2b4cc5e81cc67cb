//! Reading `ValueOrValueFrom` values from Secrets and ConfigMaps, each object fetched once per sync.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};

use crate::api::{ValueOrValueFrom, ValueSource};

/// Why a value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// The referenced Secret or ConfigMap does not exist.
    #[error("{kind} {name} not found in namespace {namespace}")]
    NotFound {
        kind: &'static str,
        name: String,
        namespace: String,
    },
    /// The object exists without the key.
    #[error("{kind} {name} has no key {key}")]
    MissingKey {
        kind: &'static str,
        name: String,
        key: String,
    },
    /// The key's bytes are not UTF-8.
    #[error("{kind} {name} key {key} is not UTF-8 text")]
    NotText {
        kind: &'static str,
        name: String,
        key: String,
    },
    /// Neither `value` nor `valueFrom` given.
    #[error("{field}: neither value nor valueFrom is set")]
    Missing { field: String },
    /// `alertConfigRef` where a plain value was expected.
    #[error("{field}: alertConfigRef is not allowed here")]
    Unexpected { field: String },
    /// API error.
    #[error("reading {kind} {name}: {source}")]
    Api {
        kind: &'static str,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
}

/// Resolves values in one namespace, caching each fetched Secret and ConfigMap (decoded once).
pub struct ValueResolver {
    client: Client,
    namespace: String,
    secrets: HashMap<String, Option<Secret>>,
    configmaps: HashMap<String, Option<ConfigMap>>,
}

impl ValueResolver {
    /// A resolver for `namespace`.
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            client,
            namespace: namespace.to_string(),
            secrets: HashMap::new(),
            configmaps: HashMap::new(),
        }
    }

    /// The value, or None when it is absent and optional.
    pub async fn resolve(
        &mut self,
        field: &str,
        v: &ValueOrValueFrom,
    ) -> Result<Option<String>, ValueError> {
        match v.source() {
            ValueSource::Inline(s) => Ok(Some(s)),
            ValueSource::Missing => Err(ValueError::Missing {
                field: field.to_string(),
            }),
            ValueSource::AlertConfig(_) => Err(ValueError::Unexpected {
                field: field.to_string(),
            }),
            ValueSource::Secret {
                name,
                key,
                optional,
            } => {
                let secret = self.secret(&name).await?;
                let Some(secret) = secret else {
                    return if optional {
                        Ok(None)
                    } else {
                        Err(ValueError::NotFound {
                            kind: "Secret",
                            name,
                            namespace: self.namespace.clone(),
                        })
                    };
                };
                let bytes = secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(&key))
                    .map(|b| b.0.clone())
                    .or_else(|| {
                        secret
                            .string_data
                            .as_ref()
                            .and_then(|d| d.get(&key))
                            .map(|s| s.as_bytes().to_vec())
                    });
                match bytes {
                    Some(b) => String::from_utf8(b)
                        .map(|s| Some(s.trim_end().to_string()))
                        .map_err(|_| ValueError::NotText {
                            kind: "Secret",
                            name,
                            key,
                        }),
                    None if optional => Ok(None),
                    None => Err(ValueError::MissingKey {
                        kind: "Secret",
                        name,
                        key,
                    }),
                }
            }
            ValueSource::ConfigMap {
                name,
                key,
                optional,
            } => {
                let cm = self.configmap(&name).await?;
                let Some(cm) = cm else {
                    return if optional {
                        Ok(None)
                    } else {
                        Err(ValueError::NotFound {
                            kind: "ConfigMap",
                            name,
                            namespace: self.namespace.clone(),
                        })
                    };
                };
                match cm.data.as_ref().and_then(|d| d.get(&key)) {
                    Some(s) => Ok(Some(s.trim_end().to_string())),
                    None if optional => Ok(None),
                    None => Err(ValueError::MissingKey {
                        kind: "ConfigMap",
                        name,
                        key,
                    }),
                }
            }
        }
    }

    /// A Secret of the namespace (None when absent), fetched at most once.
    pub async fn secret(&mut self, name: &str) -> Result<Option<Secret>, ValueError> {
        if let Some(s) = self.secrets.get(name) {
            return Ok(s.clone());
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let s = api.get_opt(name).await.map_err(|e| ValueError::Api {
            kind: "Secret",
            name: name.to_string(),
            source: Box::new(e),
        })?;
        self.secrets.insert(name.to_string(), s.clone());
        Ok(s)
    }

    async fn configmap(&mut self, name: &str) -> Result<Option<ConfigMap>, ValueError> {
        if let Some(c) = self.configmaps.get(name) {
            return Ok(c.clone());
        }
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let c = api.get_opt(name).await.map_err(|e| ValueError::Api {
            kind: "ConfigMap",
            name: name.to_string(),
            source: Box::new(e),
        })?;
        self.configmaps.insert(name.to_string(), c.clone());
        Ok(c)
    }
}
