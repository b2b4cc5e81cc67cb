//! Size limits of the CRDs' fields, enforced by the API server as `maxLength` (characters) and
//! `maxItems`: one kimup serves every namespace of every cluster, so no tenant field is
//! unbounded. README.md ("Limits") lists them with their reasons.

/// `spec.image`: Docker's reference grammar allows 255 characters for a repository name,
/// registry host included.
pub const IMAGE: usize = 255;
/// `spec.baseTag`: the OCI distribution spec allows tags of at most 128 characters.
pub const TAG: usize = 128;
/// `spec.imagePullSecrets`: each is read at every sync.
pub const PULL_SECRETS: usize = 16;
/// `spec.triggers`: there are two kinds; a few cron schedules cover any need.
pub const TRIGGERS: usize = 16;
/// A trigger's cron expression.
pub const CRON: usize = 256;
/// `spec.rules`: each is evaluated over every tag at every sync.
pub const RULES: usize = 32;
/// A rule's name: kept in status with each alert, shown in events.
pub const RULE_NAME: usize = 128;
/// A rule's value: a regex (also checked when compiling) or a semver constraint.
pub const RULE_VALUE: usize = 1024;
/// A rule's actions: six kinds, an alert kind possibly to several AlertConfigs.
pub const ACTIONS: usize = 16;
/// An inline `value` (URL, header, host, ...): the longest URL kimup sends to.
pub const VALUE: usize = 4096;
/// `valueFrom.name` / `valueFrom.key` (compatibility form): a Kubernetes object name or key.
pub const OBJECT_NAME: usize = 253;
/// A message template (`templateBody`): rendered text is capped at 64 KiB anyway.
pub const TEMPLATE: usize = 16384;
/// An e-mail subject template: one line.
pub const SUBJECT_TEMPLATE: usize = 1024;
/// `discord.templateFile`: a path (refused at alert time, kept for compatibility).
pub const TEMPLATE_FILE: usize = 1024;
/// An alert `timeout`, e.g. `10s` (at most 60 s).
pub const TIMEOUT: usize = 32;
/// `discord.mentions`.
pub const MENTIONS: usize = 32;
/// A Discord mention.
pub const MENTION: usize = 128;
/// A Slack channel override.
pub const CHANNEL: usize = 256;
/// `webhook.headers`.
pub const HEADERS: usize = 32;
/// A webhook header's name.
pub const HEADER_NAME: usize = 256;
/// An e-mail address: RFC 5321 allows 254 characters.
pub const EMAIL_ADDRESS: usize = 254;
/// `email.toAddress`: recipients of one message.
pub const RECIPIENTS: usize = 100;
/// `email.fromName`.
pub const EMAIL_NAME: usize = 256;
/// `email.clientHost`: a DNS name.
pub const HOST_NAME: usize = 253;
/// Entries of `promotion.after`.
pub const PROMOTION_AFTER: usize = 16;
