//! The distributor over TLS (a certificate from a CA made in the test): an edge that trusts the
//! CA (`[distributor] ca_file`) reports and follows the watch stream over it, and berthctl
//! reaches it with `--ca-file` or `BERTH_CA_FILE`, and refuses it without.

use std::time::Duration;

use berth_tests::fleet::{berthctl, berthctl_with, edge_config, listener, start_edge, DistributorProcess};
use berth_tests::pki::TestCa;
use berth_tests::registry::{oci_layout, random_bytes, DockerRegistry};
use berth_tests::tools::skopeo;

async fn edges_and_berthctl_reach_a_distributor_over_tls_with_the_ca_they_are_given() {
    let work = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&work.path().join("pki"));
    let pair = ca.issue(&work.path().join("pki"), "distributor");
    let registry = DockerRegistry::start(&work.path().join("registry"));
    let listener = listener();
    let log = work.path().join("distributor.log");
    let distributor =
        DistributorProcess::start_with(work.path(), &listener, 10_000, &log, Some((&pair.cert, &pair.key)));
    let url = distributor.url();
    assert!(url.starts_with("https://"), "{url}");

    let config = edge_config(work.path(), "edge-tls", "region-a", &url, &registry.url());
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[distributor]\n", &format!("[distributor]\nca_file = {:?}\n", ca.pem.display().to_string()));
    std::fs::write(&config, text).unwrap();
    let edge = start_edge(&config, &work.path().join("edge.log"));

    let ca_path = ca.pem.display().to_string();
    berth_tests::eventually("the edge reports over TLS", Duration::from_secs(20), || {
        let (code, out) = berthctl(&url, &["edges", "--ca-file", &ca_path]);
        code == 0 && out.contains("edge-tls")
    })
    .await;
    let (code, out) = berthctl(&url, &["edges"]);
    assert_ne!(code, 0, "without the CA berthctl refuses the certificate: {out}");
    assert!(out.to_lowercase().contains("certificate"), "{out}");

    // A prefetch order reaches the edge over the watch stream; --wait sees it done.
    let layout = work.path().join("layout");
    oci_layout(&layout, "v1", &[random_bytes(50_000)]);
    let dest = format!("docker://{}/tls/app:v1", registry.addr);
    skopeo(&["copy", "--dest-tls-verify=false", &format!("oci:{}:v1", layout.display()), &dest]);
    let image = "registry.test/tls/app:v1";
    let (code, out) =
        berthctl_with(&url, &["prefetch", image, "--wait", "--timeout", "60"], &[("BERTH_CA_FILE", &ca_path)]);
    assert_eq!(code, 0, "prefetch over TLS: {out}");
    drop(edge);
}

on_both_stores!(edges_and_berthctl_reach_a_distributor_over_tls_with_the_ca_they_are_given);
