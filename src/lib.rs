//! kimup: a Kubernetes image updater. Library behind the `kimup` binary.

pub mod actions;
pub mod api;
pub mod clusters;
pub mod controller;
pub mod credential;
pub mod evaluate;
pub mod events;
pub mod fleet;
pub mod fuzz;
pub mod leader;
pub mod metrics;
pub mod migrate;
pub mod onboard;
pub mod promotion;
pub mod rbac;
pub mod registry;
pub mod rules;
pub mod run;
pub mod server;
pub mod shards;
pub mod sync;
pub mod table;
pub mod telemetry;
pub mod triggers;
pub mod version;
pub mod workloads;
