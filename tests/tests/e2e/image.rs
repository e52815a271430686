//! The OCI image of Berth, built here without a base image (deploy/image/build), pushed to the
//! origin, pulled through an edge by podman, and run: its binaries start from the image's own
//! root filesystem. (`podman run` itself cannot start a container in this sandbox — crun may not
//! set its rlimits — so the entrypoint runs in the image's root with chroot.)

use std::path::Path;
use std::process::Command;

use berth_tests::clients::{run_ok, Podman};
use berth_tests::edge::{binary, EdgeProcess};
use berth_tests::registry::DockerRegistry;
use berth_tests::tools::{have, skopeo, RefusingPort};

#[tokio::test(flavor = "multi_thread")]
async fn the_berth_image_builds_without_a_base_is_pulled_through_an_edge_and_runs() {
    let test = "the_berth_image_builds_without_a_base_is_pulled_through_an_edge_and_runs";
    if let Some(missing) = ["podman", "docker-registry", "skopeo", "chroot"].iter().find(|t| !have(t)) {
        return berth_tests::skip(test, &format!("{missing} is not installed"));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return berth_tests::skip(test, "chroot needs root");
    }
    let work = tempfile::tempdir().unwrap();
    let bin = binary("berth-edge").parent().unwrap().to_owned();
    binary("berth-distributor");
    let layout = work.path().join("image");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("deploy/image/build");
    let built = run_ok(Command::new(&script).arg(&bin).arg(&layout).arg("test"));
    assert!(built.contains("oci:"), "{built}");

    let origin = DockerRegistry::start(&work.path().join("origin"));
    let dest = format!("docker://{}/berth/berth:test", origin.addr);
    skopeo(&["copy", "--dest-tls-verify=false", &format!("oci:{}:test", layout.display()), &dest]);
    let config = work.path().join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[server]\nthreads = 2\ngrace_period = \"0s\"\n[cache]\ndir = {:?}\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n",
            work.path().join("cache").display().to_string(),
            origin.url()
        ),
    )
    .unwrap();
    let edge = EdgeProcess::start(&config, &work.path().join("edge.log"));
    let proxy = RefusingPort::new();
    let podman = Podman::new(&work.path().join("podman"), edge.http(), proxy.addr);
    podman.pull("docker.io/berth/berth:test", "state");
    origin.sync_log().await;
    assert_eq!(
        origin.access_count("/v2/", "containers/"),
        0,
        "podman pulled through the edge:\n{}",
        origin.access_log()
    );
    assert!(origin.access_count("GET /v2/berth/berth/blobs/", "berth-edge/") >= 2, "{}", origin.access_log());

    let (version, check) = podman.with_image_root("docker.io/berth/berth:test", "state", |root| {
        let chrooted = |args: &[&str]| run_ok(Command::new("chroot").arg(root).args(args));
        (
            chrooted(&["/usr/local/bin/berth-edge", "--version"]),
            chrooted(&["/usr/local/bin/berth-edge", "--config", "/etc/berth/edge.toml", "--check"]),
        )
    });
    assert!(version.starts_with("berth-edge "), "{version}");
    assert!(check.contains("config ok"), "the image's default config is valid: {check}");
}
