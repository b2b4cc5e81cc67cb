//! Triggers: cron schedules (the start-up, spec-change and annotation triggers live in the controller).

pub mod cron;
