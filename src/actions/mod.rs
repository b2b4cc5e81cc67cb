//! Actions run when a rule selects a new tag: apply to workloads, and alerts.

pub mod alert;
pub mod apply;
pub mod template;
pub mod values;
