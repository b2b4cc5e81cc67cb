//! `kimup evaluate`: a dry run of rules against a tag list or the live registry.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::api::{ActionType, Image};
use crate::registry::{ClientSettings, RegistryClient};
use crate::rules::{self, Decision, RuleType};

/// Flags of `kimup evaluate`.
#[derive(Clone, Debug, clap::Args)]
pub struct EvaluateArgs {
    /// Rule type (semver-major, semver-minor, semver-patch, calver-*, regex, always).
    #[arg(long, conflicts_with = "file")]
    pub rule: Option<String>,
    /// Rule value (regex, or an extra semver constraint).
    #[arg(long, conflicts_with = "file")]
    pub value: Option<String>,
    /// Current tag.
    #[arg(long, conflicts_with = "file")]
    pub current: Option<String>,
    /// File with one tag per line (blank lines and `#` comments ignored).
    #[arg(long)]
    pub tags_file: Option<PathBuf>,
    /// Image manifest to evaluate (every rule, in order).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Output format for `-f`.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Registry reached over plain HTTP, as host[:port] (repeatable), for live evaluation.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Extra CA certificate (PEM file) trusted for registries (repeatable).
    #[arg(long = "registry-ca-file")]
    pub registry_ca_files: Vec<PathBuf>,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// One JSON document, for machines.
    Json,
}

/// A usage or input error: printed on stderr, exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// One rule's decision in `-f` mode.
#[derive(Debug, Serialize)]
pub struct RuleReport {
    /// Rule name.
    pub rule: String,
    /// Rule type.
    #[serde(rename = "type")]
    pub type_: String,
    /// Tag the rule started from.
    pub current: String,
    /// Chosen tag.
    pub chosen: Option<String>,
    /// Why.
    pub explanation: String,
    /// Every tag considered and its verdict.
    pub considered: Vec<rules::Candidate>,
    /// Rule error, if any.
    pub error: Option<String>,
}

/// Reads a tags file: one tag per line.
pub fn read_tags(path: &PathBuf) -> Result<Vec<String>, InputError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| InputError(format!("cannot read tags file {}: {e}", path.display())))?;
    Ok(parse_tags(&text))
}

/// One tag per line; blank lines and `#` comments ignored (pure).
pub fn parse_tags(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Runs the command; returns what to print on stdout.
pub async fn evaluate(args: &EvaluateArgs) -> Result<String, InputError> {
    if let Some(file) = &args.file {
        return evaluate_manifest(args, file).await;
    }
    let rule = args.rule.as_deref().ok_or_else(|| {
        InputError("either --rule (with --current and --tags-file) or -f FILE is required".into())
    })?;
    let rule: RuleType = rule.parse().map_err(|_| {
        InputError(format!(
            "unknown rule {rule:?}; expected one of {}",
            RuleType::ALL
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let current = args
        .current
        .as_deref()
        .ok_or_else(|| InputError("--current is required with --rule".into()))?;
    let tags_file = args
        .tags_file
        .as_ref()
        .ok_or_else(|| InputError("--tags-file is required with --rule".into()))?;
    let tags = read_tags(tags_file)?;
    let decision = rules::evaluate(rule, args.value.as_deref(), current, &tags)
        .map_err(|e| InputError(e.to_string()))?;
    Ok(decision
        .chosen
        .map(|t| format!("{t}\n"))
        .unwrap_or_default())
}

async fn evaluate_manifest(args: &EvaluateArgs, file: &PathBuf) -> Result<String, InputError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| InputError(format!("cannot read {}: {e}", file.display())))?;
    let image: Image = serde_yaml::from_str(&text).map_err(|e| {
        InputError(format!(
            "{} is not a valid Image manifest: {e}",
            file.display()
        ))
    })?;
    let tags = match &args.tags_file {
        Some(f) => read_tags(f)?,
        None => live_tags(args, &image).await?,
    };
    let mut current = image.current_tag().to_string();
    let mut reports = Vec::new();
    for rule in &image.spec.rules {
        let mut report = RuleReport {
            rule: rule.name.clone(),
            type_: rule.type_.to_string(),
            current: current.clone(),
            chosen: None,
            explanation: String::new(),
            considered: Vec::new(),
            error: None,
        };
        match rules::evaluate(rule.type_, rule.value.as_deref(), &current, &tags) {
            Ok(Decision {
                chosen,
                considered,
                explanation,
            }) => {
                report.explanation = explanation;
                report.considered = considered;
                report.chosen = chosen.clone();
                // Rules chain as in a real sync: an apply moves the tag the next rule starts from.
                if let Some(c) = chosen
                    && rule.actions.iter().any(|a| a.type_ == ActionType::Apply)
                {
                    current = c;
                }
            }
            Err(e) => report.error = Some(e.to_string()),
        }
        reports.push(report);
    }
    Ok(match args.output {
        Output::Json => {
            serde_json::to_string_pretty(&reports).map_err(|e| InputError(e.to_string()))? + "\n"
        }
        Output::Text => render_text(&image, &reports),
    })
}

fn render_text(image: &Image, reports: &[RuleReport]) -> String {
    let mut out = format!(
        "image {} (from {})\n",
        image.spec.image,
        image.current_tag()
    );
    for r in reports {
        out.push_str(&format!(
            "rule {:?} ({}) from {}: ",
            r.rule, r.type_, r.current
        ));
        match (&r.error, &r.chosen) {
            (Some(e), _) => out.push_str(&format!("error: {e}\n")),
            (None, Some(c)) => out.push_str(&format!("chose {c}\n")),
            (None, None) => out.push_str("no new tag\n"),
        }
        if !r.explanation.is_empty() {
            out.push_str(&format!("  why: {}\n", r.explanation));
        }
        for c in &r.considered {
            out.push_str(&format!("  {:<30} {}\n", c.tag, c.outcome));
        }
    }
    out
}

async fn live_tags(args: &EvaluateArgs, image: &Image) -> Result<Vec<String>, InputError> {
    let reference = crate::sync::image_ref(image).map_err(|e| InputError(e.to_string()))?;
    let mut extra_ca_pem = Vec::new();
    for f in &args.registry_ca_files {
        extra_ca_pem.push(
            std::fs::read(f).map_err(|e| InputError(format!("reading {}: {e}", f.display())))?,
        );
    }
    let client = Arc::new(
        RegistryClient::new(ClientSettings {
            plain_http: args.insecure_registries.clone(),
            extra_ca_pem,
            ..ClientSettings::default()
        })
        .map_err(|e| InputError(e.to_string()))?,
    );
    let tls = client.tls_mode(&reference.registry, image.spec.insecure_skip_tls_verify);
    if !image.spec.image_pull_secrets.is_empty() {
        eprintln!("note: imagePullSecrets are not read by evaluate; listing anonymously");
    }
    client
        .list_tags(&reference, None, tls)
        .await
        .map_err(|e| InputError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_file_format() {
        assert_eq!(
            parse_tags("1.0\n\n# comment\n  2.0  \n"),
            vec!["1.0".to_string(), "2.0".to_string()]
        );
    }
}
