//! The generators of `kimup-fuzz`, at a smaller count in the default suite: no parser of tenant
//! or network input panics on 2,000 generated inputs from a fixed seed. Timings are measured by
//! the release runner (README, "Fuzzing"), not asserted here.

use std::sync::atomic::AtomicU64;

use kimup::fuzz;

/// Cases per parser.
const CASES: u64 = 2_000;

/// Fixed, so that a failure here replays with `kimup-fuzz --seed`.
const SEED: u64 = 8;

fn no_panics(name: &str) {
    let target = fuzz::all()
        .into_iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("no parser named {name}"));
    let report = target.run(SEED, CASES, &AtomicU64::new(0));
    assert_eq!(report.cases, CASES);
    assert_eq!(
        report.panics, 0,
        "{name}: {} panics, the first: {:?}\nreplay: cargo run --release --bin kimup-fuzz -- \
         --seed {SEED} --only {name} --case <case>",
        report.panics, report.first_panic
    );
}

macro_rules! parsers {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                no_panics($name);
            }
        )*

        #[test]
        fn every_parser_is_tested() {
            let names: Vec<&str> = fuzz::all().iter().map(|t| t.name()).collect();
            assert_eq!(names, vec![$($name),*]);
        }
    };
}

parsers! {
    tags => "tag",
    rules => "rules",
    cron => "cron",
    template => "template",
    reference => "reference",
    docker_config => "dockerconfig",
    webhook_generic => "webhook-generic",
    webhook_dockerhub => "webhook-dockerhub",
    webhook_harbor => "webhook-harbor",
    webhook_distribution => "webhook-distribution",
    webhook_ghcr => "webhook-ghcr",
    webhook_quay => "webhook-quay",
    kubeconfig => "kubeconfig",
    www_authenticate => "www-authenticate",
    link => "link",
    promotion => "promotion",
}
