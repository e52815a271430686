//! The steering lab (deploy/lab/lab) in the test suite: network namespaces with a BGP router,
//! two edge hosts announcing the anycast address with BIRD while anycast-healthchecker sees
//! `/readyz` 200, a client and an origin. `check` pulls through the anycast address, drains the
//! nearest edge and requires the route to move within 3 s and the next pull to land on the other
//! edge, with no failed pull.

use std::process::Command;
use std::time::Duration;

use berth_tests::clients::run_within;
use berth_tests::edge::binary;

#[test]
fn the_anycast_lab_moves_clients_off_a_drained_edge_within_three_seconds() {
    let test = "the_anycast_lab_moves_clients_off_a_drained_edge_within_three_seconds";
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
        assert!(check.output.contains("FIGURE anycast withdrawal after drain"), "{}", check.output);
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
