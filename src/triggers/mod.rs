//! Triggers: cron schedules and registry webhook payloads (the start-up, spec-change and
//! annotation triggers live in the controller).

pub mod cron;
pub mod webhook;
