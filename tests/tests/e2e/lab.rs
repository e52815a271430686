//! The steering lab (deploy/lab/lab) in the test suite: network namespaces with three regions
//! (one with two edges), an origin, the distributor, PowerDNS serving the zone the distributor
//! renders, a BGP router with two edge hosts announcing the anycast address (BIRD, while
//! anycast-healthchecker sees `/readyz` 200), and a client per region. `check` runs the four
//! scenarios: each region resolves and pulls by name; `berthctl drain` of one eu edge moves DNS
//! with no failed pull; kill -9 of the ap edge moves ap to the next region; draining the nearest
//! anycast edge withdraws its route within 3 s and the next pull lands on the other edge.

use std::process::Command;
use std::time::Duration;

use berth_tests::clients::run_within;
use berth_tests::edge::binary;

#[test]
fn the_steering_lab_moves_clients_by_dns_and_anycast_with_no_failed_pull() {
    let test = "the_steering_lab_moves_clients_by_dns_and_anycast_with_no_failed_pull";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return berth_tests::skip(test, "network namespaces need root");
    }
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned();
    let bin = binary("berth-edge").parent().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let name = format!("bl{}", std::process::id() % 100_000);
    let venv = workspace.join("target/lab-venv");
    let lab = |action: &str, limit: u64| {
        let mut cmd = Command::new(workspace.join("deploy/lab/lab"));
        cmd.arg(action)
            .env("BERTH_BIN", &bin)
            .env("BERTH_LAB", &name)
            .env("BERTH_LAB_DIR", dir.path())
            .env("BERTH_LAB_VENV", &venv);
        run_within(&mut cmd, Duration::from_secs(limit))
    };
    let up = lab("up", 300);
    let result = std::panic::catch_unwind(|| {
        assert!(up.status.success(), "lab up: {}", up.output);
        let check = lab("check", 120);
        assert!(check.status.success(), "lab check: {}", check.output);
        for figure in
            ["geodns drain: eu clients", "geodns drain: pulls by name", "geodns failure", "anycast withdrawal"]
        {
            assert!(check.output.contains(&format!("FIGURE {figure}")), "{figure}: {}", check.output);
        }
        assert!(check.output.contains("check: all scenarios passed"), "{}", check.output);
        eprintln!("{}", check.output);
    });
    let down = lab("down", 60);
    assert!(down.status.success(), "lab down: {}", down.output);
    let left =
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned();
    assert!(!left.lines().any(|l| l.starts_with(&format!("{name}-"))), "namespaces left: {left}");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
