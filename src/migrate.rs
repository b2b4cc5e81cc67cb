//! Migration from kimup (Go): its `Kimup` custom resources turned into this chart's values, and
//! its controller flags recognised with the way over named.
//!
//! kimup (Go)'s operator read a `Kimup` resource and deployed one controller from it. Here the
//! controller is deployed by the Helm chart, so `kimup migrate kimup-cr` prints the values that
//! carry a `Kimup`'s settings over, and says what it could not carry and why. Everything is pure:
//! YAML text in, values and notes out.

use serde_yaml::{Mapping, Value};
use thiserror::Error;

/// Why a `Kimup` manifest could not be converted.
#[derive(Debug, Error)]
pub enum MigrateError {
    /// The input is not YAML.
    #[error("not YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// No document of kind `Kimup` (or a list holding them) was found.
    #[error(
        "no Kimup resource (apiVersion kimup.cloudavenue.io/v1alpha1, kind Kimup) in the input"
    )]
    NoKimup,
    /// A field holds a value of the wrong shape.
    #[error("Kimup {name}: {field} must be {expected}")]
    Shape {
        /// The resource's metadata.name.
        name: String,
        /// Path of the field, e.g. `spec.env`.
        field: String,
        /// What the field should be.
        expected: &'static str,
    },
}

/// The chart values carrying over one `Kimup` resource, and what did not carry over.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// `metadata.namespace/metadata.name` of the resource (namespace may be empty).
    pub resource: String,
    /// Values for `helm install -f`.
    pub values: Mapping,
    /// One line per setting that changed meaning or was dropped, with the reason.
    pub notes: Vec<String>,
}

/// The chart's single listener port, when a `Kimup` names none.
const DEFAULT_PORT: i64 = 8080;
/// Upper bound of a Kubernetes port number.
const MAX_PORT: i64 = 65535;

/// Converts every `Kimup` in a YAML stream (documents, or `List`s as `kubectl get -o yaml`
/// prints) into chart values.
pub fn convert_stream(text: &str) -> Result<Vec<Converted>, MigrateError> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc)?;
        collect(&value, &mut out)?;
    }
    if out.is_empty() {
        return Err(MigrateError::NoKimup);
    }
    Ok(out)
}

fn collect(doc: &Value, out: &mut Vec<Converted>) -> Result<(), MigrateError> {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind == "Kimup" {
        out.push(convert(doc)?);
    } else if kind.ends_with("List")
        && let Some(items) = doc.get("items").and_then(Value::as_sequence)
    {
        for item in items {
            collect(item, out)?;
        }
    }
    Ok(())
}

/// Converts one `Kimup` resource (pure).
pub fn convert(doc: &Value) -> Result<Converted, MigrateError> {
    let meta = doc.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)")
        .to_owned();
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let resource = if namespace.is_empty() {
        name.clone()
    } else {
        format!("{namespace}/{name}")
    };
    let empty = Mapping::new();
    let spec = match doc.get("spec") {
        None | Some(Value::Null) => &empty,
        Some(Value::Mapping(m)) => m,
        Some(_) => return Err(shape(&name, "spec", "a mapping")),
    };
    let mut values = Mapping::new();
    let mut notes = Vec::new();
    let mut port: Option<(i64, &'static str)> = None;

    for (key, value) in spec {
        let key = key.as_str().unwrap_or_default();
        let field = format!("spec.{key}");
        match key {
            "name" => notes.push(format!(
                "spec.name {}: kimup (Go) suffixed its resource names with it; here the Helm \
                 release name does that (helm install <release> …)",
                show(value)
            )),
            "image" => notes.push(format!(
                "spec.image {}: that is kimup (Go)'s controller image and is not carried over; \
                 the chart runs kimup's image (values image.repository and image.tag)",
                show(value)
            )),
            "annotations"
            | "labels"
            | "nodeSelector"
            | "env"
            | "tolerations"
            | "topologySpreadConstraints"
            | "resources"
            | "affinity"
            | "priorityClassName" => {
                let (to, wanted) = match key {
                    "annotations" => ("podAnnotations", Shape::Mapping),
                    "labels" => ("podLabels", Shape::Mapping),
                    "env" | "tolerations" | "topologySpreadConstraints" => (key, Shape::List),
                    "priorityClassName" => (key, Shape::Text),
                    _ => (key, Shape::Mapping),
                };
                put(&mut values, to, value, wanted, &name, &field)?
            }
            "serviceAccountName" => {
                let sa = value
                    .as_str()
                    .ok_or_else(|| shape(&name, &field, "a string"))?;
                if !sa.is_empty() {
                    let mut m = Mapping::new();
                    m.insert("name".into(), sa.into());
                    values.insert("serviceAccount".into(), Value::Mapping(m));
                    notes.push(format!(
                        "spec.serviceAccountName {sa}: the chart creates this ServiceAccount and \
                         binds kimup's RBAC to it; if it exists already and Helm does not own it, \
                         also set serviceAccount.create=false (RBAC is bound to it either way)"
                    ));
                }
            }
            "logLevel" => {
                let level = value
                    .as_str()
                    .ok_or_else(|| shape(&name, &field, "a string"))?;
                let (mapped, note) = log_level(level);
                let mut m = Mapping::new();
                m.insert("level".into(), mapped.into());
                values.insert("log".into(), Value::Mapping(m));
                if let Some(n) = note {
                    notes.push(n);
                }
            }
            "metrics" | "healthz" => {
                let probe = match value {
                    Value::Null => continue,
                    Value::Mapping(m) => m,
                    _ => return Err(shape(&name, &field, "a mapping")),
                };
                let endpoint = if key == "metrics" {
                    "/metrics"
                } else {
                    "/healthz"
                };
                if probe.get("enabled").and_then(Value::as_bool) == Some(false) {
                    notes.push(format!(
                        "{field}.enabled false: kimup always serves {endpoint} (it costs nothing \
                         and the chart's probes and ServiceMonitor use it)"
                    ));
                }
                if let Some(path) = probe.get("path").and_then(Value::as_str)
                    && path != endpoint
                {
                    notes.push(format!(
                        "{field}.path {path}: kimup serves {endpoint} at a fixed path; point \
                         scrapers and probes there"
                    ));
                }
                if let Some(p) = probe.get("port") {
                    let p = p
                        .as_i64()
                        .filter(|p| (1..=MAX_PORT).contains(p))
                        .ok_or_else(|| shape(&name, &format!("{field}.port"), "a port number"))?;
                    match port {
                        None => {
                            port = Some((
                                p,
                                if key == "metrics" {
                                    "metrics"
                                } else {
                                    "healthz"
                                },
                            ))
                        }
                        Some((q, from)) if q != p => {
                            // One listener serves both: metrics keep their port, so Prometheus
                            // scrapes where it did; probes are the chart's own and follow.
                            let (kept, dropped, dropped_from) = if from == "metrics" {
                                (q, p, key)
                            } else {
                                port = Some((p, "metrics"));
                                (p, q, from)
                            };
                            notes.push(format!(
                                "spec.{dropped_from}.port {dropped}: kimup serves /metrics, \
                                 /healthz, /readyz and /webhooks on one port; kept {kept} \
                                 (the metrics port)"
                            ));
                        }
                        Some(_) => {}
                    }
                }
            }
            other => notes.push(format!(
                "spec.{other}: not a field of kimup (Go)'s Kimup, not carried over"
            )),
        }
    }
    if let Some((p, _)) = port
        && p != DEFAULT_PORT
    {
        values.insert("port".into(), p.into());
    }
    if ["affinity", "topologySpreadConstraints"]
        .iter()
        .any(|k| yaml_mentions(spec.get(*k), "labelSelector"))
    {
        notes.push(
            "label selectors in affinity or topologySpreadConstraints must select the chart's \
             pods: app.kubernetes.io/name=kimup, app.kubernetes.io/instance=<release>"
                .into(),
        );
    }
    notes.push(
        "replicas: kimup (Go) ran one controller without leader election; the chart runs 2 \
         replicas that elect a leader (replicaCount, leaderElection)"
            .into(),
    );
    Ok(Converted {
        resource,
        values,
        notes,
    })
}

/// kimup (Go)'s log levels (logrus: panic, fatal, error, warn, warning, info, debug, trace) as a
/// kimup log filter, and a note when the meaning changes.
pub fn log_level(level: &str) -> (String, Option<String>) {
    let lower = level.trim().to_ascii_lowercase();
    match lower.as_str() {
        "error" | "warn" | "info" | "debug" | "trace" => (lower, None),
        "warning" => ("warn".into(), None),
        "panic" | "fatal" => (
            "error".into(),
            Some(format!(
                "spec.logLevel {level}: kimup has no {lower} level; error is the closest"
            )),
        ),
        _ => (
            "info".into(),
            Some(format!(
                "spec.logLevel {level}: not a kimup (Go) level; info is used"
            )),
        ),
    }
}

/// Renders the conversion of a stream as the text `kimup migrate kimup-cr` prints: one values
/// document per resource, its notes as YAML comments above it.
pub fn render(converted: &[Converted]) -> Result<String, MigrateError> {
    let mut out = String::new();
    for (i, c) in converted.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&format!(
            "# kimup chart values from Kimup {} (kimup migrate kimup-cr)\n",
            c.resource
        ));
        for n in &c.notes {
            out.push_str(&format!("# NOTE {n}\n"));
        }
        if c.values.is_empty() {
            out.push_str("{}\n");
        } else {
            out.push_str(&serde_yaml::to_string(&c.values)?);
        }
    }
    Ok(out)
}

/// Whether a key of this name occurs anywhere below `v`.
fn yaml_mentions(v: Option<&Value>, key: &str) -> bool {
    match v {
        Some(Value::Mapping(m)) => m
            .iter()
            .any(|(k, v)| k.as_str() == Some(key) || yaml_mentions(Some(v), key)),
        Some(Value::Sequence(s)) => s.iter().any(|v| yaml_mentions(Some(v), key)),
        _ => false,
    }
}

fn shape(name: &str, field: &str, expected: &'static str) -> MigrateError {
    MigrateError::Shape {
        name: name.to_owned(),
        field: field.to_owned(),
        expected,
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
    }
}

/// The YAML shape a carried field must have.
#[derive(Clone, Copy)]
enum Shape {
    Mapping,
    List,
    Text,
}

/// Copies `v` to `values[key]` when it has `shape` and is not empty; null and empty are skipped.
fn put(
    values: &mut Mapping,
    key: &str,
    v: &Value,
    shape_wanted: Shape,
    name: &str,
    field: &str,
) -> Result<(), MigrateError> {
    let empty = match (shape_wanted, v) {
        (_, Value::Null) => true,
        (Shape::Mapping, Value::Mapping(m)) => m.is_empty(),
        (Shape::List, Value::Sequence(l)) => l.is_empty(),
        (Shape::Text, Value::String(t)) => t.is_empty(),
        (Shape::Mapping, _) => return Err(shape(name, field, "a mapping")),
        (Shape::List, _) => return Err(shape(name, field, "a list")),
        (Shape::Text, _) => return Err(shape(name, field, "a string")),
    };
    if !empty {
        values.insert(key.into(), v.clone());
    }
    Ok(())
}

/// kimup (Go)'s controller flags, accepted so that an old command line fails with the way over
/// instead of clap's "unexpected argument", or, where kimup behaves the same, runs.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct UpstreamFlags {
    /// kimup (Go): enable /metrics (always on here).
    #[arg(long = "metrics", hide = true)]
    pub metrics: bool,
    /// kimup (Go): enable /healthz (always on here).
    #[arg(long = "healthz", hide = true)]
    pub healthz: bool,
    /// kimup (Go): metrics port.
    #[arg(long = "metrics-port", hide = true)]
    pub metrics_port: Option<String>,
    /// kimup (Go): metrics path.
    #[arg(long = "metrics-path", hide = true)]
    pub metrics_path: Option<String>,
    /// kimup (Go): health port.
    #[arg(long = "healthz-port", hide = true)]
    pub healthz_port: Option<String>,
    /// kimup (Go): health path.
    #[arg(long = "healthz-path", hide = true)]
    pub healthz_path: Option<String>,
}

impl UpstreamFlags {
    /// Refuses the flags kimup cannot honour (with their replacement) and returns a warning for
    /// each one it accepts and ignores (pure).
    pub fn check(&self) -> Result<Vec<String>, String> {
        let mut refused = Vec::new();
        for (flag, value) in [
            ("--metrics-port", &self.metrics_port),
            ("--healthz-port", &self.healthz_port),
        ] {
            if let Some(v) = value {
                let port = v.trim_start_matches(':');
                refused.push(format!(
                    "{flag} {v} is kimup (Go)'s flag: kimup serves /metrics, /healthz, /readyz \
                     and /webhooks on one listener, use --listen-addr 0.0.0.0:{port}"
                ));
            }
        }
        for (flag, value, path) in [
            ("--metrics-path", &self.metrics_path, "/metrics"),
            ("--healthz-path", &self.healthz_path, "/healthz"),
        ] {
            if let Some(v) = value
                && v != path
            {
                refused.push(format!(
                    "{flag} {v} is kimup (Go)'s flag: kimup serves {path} at a fixed path"
                ));
            }
        }
        if !refused.is_empty() {
            return Err(refused.join("; "));
        }
        let mut warnings = Vec::new();
        for (flag, on) in [("--metrics", self.metrics), ("--healthz", self.healthz)] {
            if on {
                warnings.push(format!(
                    "{flag} is kimup (Go)'s flag and has no effect: kimup always serves it"
                ));
            }
        }
        for (flag, value) in [
            ("--metrics-path", &self.metrics_path),
            ("--healthz-path", &self.healthz_path),
        ] {
            if value.is_some() {
                warnings.push(format!(
                    "{flag} is kimup (Go)'s flag and has no effect (the path is the same)"
                ));
            }
        }
        Ok(warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
apiVersion: kimup.cloudavenue.io/v1alpha1
kind: Kimup
metadata:
  name: kimup
  namespace: kimup-operator
spec:
  name: demo
  image: ghcr.io/orange-cloudavenue/kimup-controller:v0.2.0
  annotations: {prometheus.io/scrape: "true"}
  labels: {team: platform}
  env:
    - {name: HTTPS_PROXY, value: "http://proxy:3128"}
  resources:
    limits: {memory: 512Mi}
  nodeSelector: {kubernetes.io/os: linux}
  tolerations:
    - {key: dedicated, operator: Equal, value: infra, effect: NoSchedule}
  topologySpreadConstraints:
    - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway,
       labelSelector: {matchLabels: {app.kubernetes.io/name: kimup}}}
  serviceAccountName: kimup-sa
  priorityClassName: system-cluster-critical
  logLevel: debug
  metrics: {enabled: true, port: 9080, path: /metrics}
  healthz: {enabled: true, port: 9081, path: /healthz}
"#;

    fn get<'a>(m: &'a Mapping, k: &str) -> &'a Value {
        m.get(k).unwrap_or_else(|| panic!("no {k} in {m:?}"))
    }

    #[test]
    fn every_kimup_field_is_carried_or_explained() {
        let out = convert_stream(FULL).expect("converts");
        assert_eq!(out.len(), 1);
        let c = &out[0];
        assert_eq!(c.resource, "kimup-operator/kimup");
        let v = &c.values;
        assert_eq!(get(v, "podAnnotations")["prometheus.io/scrape"], "true");
        assert_eq!(get(v, "podLabels")["team"], "platform");
        assert_eq!(get(v, "env")[0]["name"], "HTTPS_PROXY");
        assert_eq!(get(v, "resources")["limits"]["memory"], "512Mi");
        assert_eq!(get(v, "nodeSelector")["kubernetes.io/os"], "linux");
        assert_eq!(get(v, "tolerations")[0]["key"], "dedicated");
        assert_eq!(get(v, "topologySpreadConstraints")[0]["maxSkew"], 1);
        assert_eq!(get(v, "serviceAccount")["name"], "kimup-sa");
        assert_eq!(get(v, "priorityClassName"), "system-cluster-critical");
        assert_eq!(get(v, "log")["level"], "debug");
        // The metrics port wins: Prometheus keeps scraping where it did.
        assert_eq!(get(v, "port"), 9080);
        assert!(v.get("image").is_none(), "the Go image must not be carried");
        let notes = c.notes.join("\n");
        for needle in [
            "spec.name \"demo\"",
            "spec.image",
            "spec.healthz.port 9081",
            "serviceAccount.create=false",
            "replicaCount",
            "app.kubernetes.io/instance=<release>",
        ] {
            assert!(notes.contains(needle), "no {needle:?} in notes:\n{notes}");
        }
    }

    #[test]
    fn healthz_port_first_still_keeps_the_metrics_port() {
        let doc = "kind: Kimup\nmetadata: {name: k}\nspec:\n  healthz: {port: 9081}\n  metrics: {port: 9080}\n";
        let c = &convert_stream(doc).expect("converts")[0];
        assert_eq!(get(&c.values, "port"), 9080);
        assert!(c.notes.iter().any(|n| n.contains("spec.healthz.port 9081")));
    }

    #[test]
    fn default_port_and_empty_spec_give_no_values() {
        let doc = "kind: Kimup\nmetadata: {name: k}\nspec:\n  name: x\n  metrics: {enabled: true, port: 8080}\n";
        let c = &convert_stream(doc).expect("converts")[0];
        assert!(c.values.is_empty(), "{:?}", c.values);
        let doc = "kind: Kimup\nmetadata: {name: k}\n";
        assert!(convert_stream(doc).expect("converts")[0].values.is_empty());
    }

    #[test]
    fn lists_and_streams_are_read_and_other_kinds_skipped() {
        let text = "kind: Image\nmetadata: {name: i}\n---\nkind: List\nitems:\n  - {kind: Kimup, metadata: {name: a}, spec: {logLevel: warning}}\n  - {kind: Kimup, metadata: {name: b}, spec: {logLevel: fatal}}\n";
        let out = convert_stream(text).expect("converts");
        assert_eq!(out.len(), 2);
        assert_eq!(get(&out[0].values, "log")["level"], "warn");
        assert_eq!(get(&out[1].values, "log")["level"], "error");
        assert!(out[1].notes.iter().any(|n| n.contains("no fatal level")));
        let text = render(&out).expect("renders");
        assert_eq!(text.matches("\n---\n").count(), 1, "{text}");
        assert!(text.contains("# NOTE spec.logLevel fatal"), "{text}");
    }

    #[test]
    fn bad_input_is_an_error_naming_the_field() {
        assert!(matches!(
            convert_stream("kind: Image\n"),
            Err(MigrateError::NoKimup)
        ));
        assert!(matches!(convert_stream(""), Err(MigrateError::NoKimup)));
        assert!(matches!(
            convert_stream("a: [b"),
            Err(MigrateError::Yaml(_))
        ));
        let e = convert_stream("kind: Kimup\nmetadata: {name: k}\nspec: {env: {a: b}}\n")
            .expect_err("env must be a list");
        assert_eq!(e.to_string(), "Kimup k: spec.env must be a list");
        let e =
            convert_stream("kind: Kimup\nmetadata: {name: k}\nspec: {metrics: {port: 99999}}\n")
                .expect_err("port out of range");
        assert!(e.to_string().contains("spec.metrics.port"), "{e}");
        let e = convert_stream("kind: Kimup\nmetadata: {name: k}\nspec: [1]\n")
            .expect_err("spec must be a mapping");
        assert!(e.to_string().contains("spec must be a mapping"), "{e}");
    }

    #[test]
    fn unknown_spec_fields_are_reported() {
        let c = &convert_stream("kind: Kimup\nmetadata: {name: k}\nspec: {replicas: 3}\n")
            .expect("converts")[0];
        assert!(
            c.notes
                .iter()
                .any(|n| n.starts_with("spec.replicas: not a field"))
        );
    }

    #[test]
    fn upstream_flags_refused_with_the_replacement_or_accepted_with_a_warning() {
        let f = UpstreamFlags {
            metrics_port: Some(":9080".into()),
            ..Default::default()
        };
        let e = f.check().expect_err("a port is refused");
        assert!(e.contains("--listen-addr 0.0.0.0:9080"), "{e}");
        let f = UpstreamFlags {
            healthz_path: Some("/health".into()),
            ..Default::default()
        };
        assert!(f.check().expect_err("path refused").contains("fixed path"));
        let f = UpstreamFlags {
            metrics: true,
            healthz: true,
            metrics_path: Some("/metrics".into()),
            ..Default::default()
        };
        let w = f.check().expect("accepted");
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(UpstreamFlags::default().check().expect("none").is_empty());
    }
}
