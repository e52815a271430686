//! The files in deploy/ are checked like code: the systemd units pass `systemd-analyze verify`
//! with no warning (pointed at the binaries built here), keep the hardening they promise, reload
//! with SIGHUP, and give a stopping edge the time its drain and grace periods need.

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_tests::edge::binary;
use berth_tests::tools::have;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("deploy")
}

/// `key=value` lines of a unit file (the last one wins).
fn value<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines().rev().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

fn seconds(text: &str) -> u64 {
    let (n, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("a duration: {text}"));
    match unit {
        "" | "s" => n,
        "min" | "m" => n * 60,
        other => panic!("unit {other} in {text}"),
    }
}

#[test]
fn the_systemd_units_verify_cleanly_and_keep_their_hardening() {
    if !have("systemd-analyze") {
        return berth_tests::skip("the_systemd_units_verify_cleanly", "systemd-analyze is not installed");
    }
    let work = tempfile::tempdir().unwrap();
    let units = ["berth-edge.service", "berth-distributor.service", "berth-distributor.socket"];
    for name in units {
        let text = std::fs::read_to_string(deploy().join("systemd").join(name)).unwrap();
        let text = text
            .replace("/usr/local/bin/berth-edge", &binary("berth-edge").display().to_string())
            .replace("/usr/local/bin/berth-distributor", &binary("berth-distributor").display().to_string());
        std::fs::write(work.path().join(name), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(units.map(|u| work.path().join(u)))
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");

    for name in ["berth-edge.service", "berth-distributor.service"] {
        let unit = std::fs::read_to_string(deploy().join("systemd").join(name)).unwrap();
        for (key, expected) in [
            ("DynamicUser", "yes"),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ] {
            assert_eq!(value(&unit, key), Some(expected), "{name}: {key}");
        }
        assert!(value(&unit, "StateDirectory").is_some(), "{name}: StateDirectory");
        assert!(value(&unit, "CapabilityBoundingSet").is_some(), "{name}: CapabilityBoundingSet");
    }

    // A stopping edge drains, then lets requests finish: systemd must wait that long.
    let edge = std::fs::read_to_string(deploy().join("systemd/berth-edge.service")).unwrap();
    let config: toml::Value = toml::from_str(&std::fs::read_to_string(deploy().join("edge.toml")).unwrap()).unwrap();
    let server = config.get("server");
    let setting = |key: &str, default: &str| {
        let text = server.and_then(|s| s.get(key)).and_then(|v| v.as_str()).unwrap_or(default).to_owned();
        seconds(&text)
    };
    let needed = setting("drain_period", "15s") + setting("grace_period", "30s");
    let stop = seconds(value(&edge, "TimeoutStopSec").expect("TimeoutStopSec"));
    assert!(stop >= needed, "TimeoutStopSec {stop} s < drain_period + grace_period {needed} s");
}

#[test]
fn the_example_configs_in_deploy_are_valid() {
    let edge = std::fs::read_to_string(deploy().join("edge.toml")).unwrap();
    // Secrets named by the example are not on this machine: validate everything else.
    let only_secrets =
        |problems: &str| problems.lines().filter(|l| l.trim_start().starts_with("- ")).all(|l| l.contains("token"));
    if let Err(e) = berth_edge::config::parse(&edge) {
        let problems = e.to_string();
        assert!(only_secrets(&problems), "deploy/edge.toml: {problems}");
    }
    let distributor = std::fs::read_to_string(deploy().join("distributor.toml")).unwrap();
    if let Err(e) = berth_distributor::config::parse(&distributor) {
        let problems = e.to_string();
        assert!(only_secrets(&problems), "deploy/distributor.toml: {problems}");
    }
}

/// Every document of a multi-document YAML file.
fn yaml_documents(path: &Path) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect()
}

fn of_kind<'a>(docs: &'a [serde_yaml::Value], kind: &str) -> &'a serde_yaml::Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"))
}

/// The ConfigMap entry a container's `--config` names, checked to be mounted at that path.
fn mounted_config<'a>(docs: &'a [serde_yaml::Value], container: &serde_yaml::Value) -> &'a str {
    let args: Vec<&str> = container["args"].as_sequence().unwrap().iter().filter_map(|a| a.as_str()).collect();
    let path = args[args.iter().position(|a| *a == "--config").expect("--config") + 1];
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == path)
        .expect("config mounted");
    let key = mount["subPath"].as_str().expect("subPath");
    of_kind(docs, "ConfigMap")["data"][key].as_str().expect("config in the ConfigMap")
}

fn mounts_cover(container: &serde_yaml::Value, dir: &Path) -> bool {
    container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .any(|m| dir.starts_with(m))
}

fn container_ports(container: &serde_yaml::Value) -> Vec<u64> {
    container["ports"].as_sequence().unwrap().iter().filter_map(|p| p["containerPort"].as_u64()).collect()
}

#[test]
fn the_kubernetes_manifests_match_the_configs_they_ship_with() {
    // Secrets (a Secret) and per-pod values (the pod's environment) are not on this machine.
    let per_pod =
        |l: &str| l.contains("token") || l.contains("cluster.key_file") || l.contains("cluster.advertise_env");
    let only_secrets = |problems: &str| problems.lines().filter(|l| l.trim_start().starts_with("- ")).all(per_pod);
    let docs = yaml_documents(&deploy().join("kubernetes/edge.yaml"));
    let set = of_kind(&docs, "DaemonSet");
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    let text = mounted_config(&docs, container);
    let config: berth_edge::EdgeConfig = match berth_edge::config::parse(text) {
        Ok(c) => c,
        Err(e) => {
            // Secrets live in a Secret that is not on this machine: every other key must be valid.
            assert!(only_secrets(&e.to_string()), "the edge ConfigMap: {e}");
            toml::from_str(text).unwrap()
        }
    };
    let admin = u64::from(config.listen.admin.port());
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(
        container["readinessProbe"]["httpGet"]["port"].as_u64(),
        Some(admin),
        "readiness probe on the admin port"
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"].as_u64(), Some(admin));
    let ports = container_ports(container);
    assert!(ports.contains(&u64::from(config.listen.http.unwrap().port())) && ports.contains(&admin), "{ports:?}");
    assert!(mounts_cover(container, &config.cache.dir), "the cache dir is on a volume");
    for file in [
        config.admin.tokens_file.clone(),
        config.distributor.as_ref().and_then(|d| d.token_file.clone()),
        config.cluster.key_file.clone(),
    ]
    .into_iter()
    .flatten()
    {
        assert!(mounts_cover(container, &file), "{} is mounted", file.display());
    }
    if let Some(var) = &config.cluster.advertise_env {
        let env = container["env"].as_sequence().expect("the container's env");
        let set = env.iter().find(|e| e["name"].as_str() == Some(var.as_str())).expect("advertise_env is set");
        let port = config.listen.http.unwrap().port();
        assert!(
            set["value"].as_str().is_some_and(|v| v.starts_with("http://") && v.ends_with(&format!(":{port}"))),
            "{var} names this edge's pull port: {set:?}"
        );
    }
    let grace = set["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap();
    let needed = config.server.drain_period.get().as_secs() + config.server.grace_period.get().as_secs();
    assert!(grace >= needed, "terminationGracePeriodSeconds {grace} < drain_period + grace_period {needed}");

    let docs = yaml_documents(&deploy().join("kubernetes/distributor.yaml"));
    let set = of_kind(&docs, "StatefulSet");
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    let text = mounted_config(&docs, container);
    let config: berth_distributor::DistributorConfig = match berth_distributor::config::parse(text) {
        Ok(c) => c,
        Err(e) => {
            assert!(only_secrets(&e.to_string()), "the distributor ConfigMap: {e}");
            toml::from_str(text).unwrap()
        }
    };
    let api = u64::from(config.listen.http.port());
    assert_eq!(container["readinessProbe"]["httpGet"]["port"].as_u64(), Some(api));
    assert!(container_ports(container).contains(&api));
    assert!(mounts_cover(container, &config.store.dir), "the store is on the persistent volume");
    let claim = &set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"];
    let store_mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| config.store.dir.starts_with(m["mountPath"].as_str().unwrap()))
        .unwrap();
    assert_eq!(&store_mount["name"], claim, "the store's volume is the claim");
}

#[test]
fn the_anycast_bird_config_parses() {
    if !have("bird") {
        return berth_tests::skip("the_anycast_bird_config_parses", "bird is not installed");
    }
    let work = tempfile::tempdir().unwrap();
    let prefixes = work.path().join("anycast-prefixes.conf");
    std::fs::write(&prefixes, "define ACAST_PS_ADVERTISE =\n    [\n        192.0.2.255/32\n    ];\n").unwrap();
    let text = std::fs::read_to_string(deploy().join("anycast/bird.conf"))
        .unwrap()
        .replace("/var/lib/anycast-healthchecker/anycast-prefixes.conf", &prefixes.display().to_string());
    let config = work.path().join("bird.conf");
    std::fs::write(&config, text).unwrap();
    let out = Command::new("bird").args(["-p", "-c"]).arg(&config).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "bird -p: {said}");
    let check = std::fs::read_to_string(deploy().join("anycast/checks/berth.conf")).unwrap();
    assert!(check.contains("/readyz") && check.contains("check_disabled = false"), "the check follows /readyz");
}
