//! cairn's CNI client against Debian's real plugins (bridge, host-local, loopback,
//! portmap): pods get distinct IPs and talk over TCP, hostPorts reach a pod through
//! 127.0.0.1, DEL releases everything (also after the namespace is gone and after a
//! "restart"), and bad configs, missing plugins and plugins failing half-way leave
//! nothing behind. Each test has its own bridge, subnet (10.123.<n>.0/24), conf, bin,
//! cache and IPAM dirs; everything is removed on drop, also when a test fails.
//!
//! Needs root, iproute2, iptables, util-linux (unshare, nsenter) and
//! `apt-get install containernetworking-plugins`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_tests::cni::{Network, PLUGINS};
use cairn_tests::net::{fetch, iptables_dump, NetNs, PortmapChains, Server};
use cairnd::cni::{Cni, CniConfig, CniError, PodNetwork, PortMapping};
use serde_json::{json, Value};

/// One test's private network (subnet 10.123.<n>.0/24), and cairnd's CNI client on it.
struct Fixture {
    net: Network,
}

impl std::ops::Deref for Fixture {
    type Target = Network;
    fn deref(&self) -> &Network {
        &self.net
    }
}

impl Fixture {
    fn new() -> Fixture {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "the CNI tests need root");
        Fixture {
            net: Network::new("cairn-test", "10.123"),
        }
    }

    fn cni(&self) -> Cni {
        Cni::new(CniConfig {
            conf_dirs: vec![self.conf_dir()],
            bin_dirs: vec![self.bin_dir(), PathBuf::from(PLUGINS)],
            cache_dir: self.cache_dir(),
            plugin_timeout: Duration::from_secs(60),
        })
    }

    fn subnet_prefix(&self) -> String {
        self.prefix()
    }

    /// The usual list: bridge, then loopback (which passes the result through).
    fn standard_list(&self) -> Value {
        self.list_with(Vec::new())
    }

    fn with_portmap(&self) -> Value {
        self.list_with(vec![Network::portmap_plugin()])
    }

    fn write_conf(&self, file: &str, conf: &Value) {
        self.write_value(file, conf);
    }

    /// Attachment records left in the cache dir.
    fn cached(&self) -> Vec<PathBuf> {
        walk(&self.cache_dir())
    }

    fn pod(&self, tag: &str, ns: &NetNs) -> PodNetwork {
        PodNetwork {
            pod_id: format!("pod{}{tag}", self.n),
            name: format!("pod-{tag}"),
            namespace: "cni-test".into(),
            uid: format!("uid-{}-{tag}", self.n),
            netns: ns.path.clone(),
            ..Default::default()
        }
    }

    /// Nothing of the pods is left: no IP held, no veth on the bridge, no record.
    fn assert_clean(&self) {
        assert!(
            self.allocated().is_empty(),
            "IPs left: {:?}",
            self.allocated()
        );
        // A deleted namespace's veth goes with it, but the kernel does that asynchronously.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !self.bridge.ports().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            self.bridge.ports().is_empty(),
            "veths left: {:?}",
            self.bridge.ports()
        );
        assert!(
            self.cached().is_empty(),
            "records left: {:?}",
            self.cached()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    read.filter_map(|e| e.ok())
        .flat_map(|e| {
            let p = e.path();
            if p.is_dir() {
                walk(&p)
            } else {
                vec![p]
            }
        })
        .collect()
}

fn links_in(ns: &NetNs) -> String {
    ns.ip(&["-o", "link", "show"]).unwrap()
}

#[tokio::test]
async fn two_pods_get_distinct_ips_and_talk_over_tcp() {
    let fx = Fixture::new();
    fx.write_conf("10-test.conflist", &fx.standard_list());
    let cni = fx.cni();
    assert_eq!(cni.status(), Ok(fx.name.clone()));
    let (a, b) = (NetNs::new().unwrap(), NetNs::new().unwrap());
    let (pa, pb) = (fx.pod("a", &a), fx.pod("b", &b));

    let ra = cni.add(&pa).await.unwrap();
    let rb = cni.add(&pb).await.unwrap();
    let (ipa, ipb) = (ra.pod_ip().unwrap(), rb.pod_ip().unwrap());
    assert_ne!(ipa, ipb);
    for ip in [ipa, ipb] {
        assert!(ip.to_string().starts_with(&fx.subnet_prefix()), "{ip}");
    }
    assert_eq!(ra.network, fx.name);
    assert_eq!(a.ipv4_of("eth0").unwrap(), vec![ipa.to_string()]);
    assert_eq!(b.ipv4_of("eth0").unwrap(), vec![ipb.to_string()]);
    assert_eq!(fx.bridge.ports().len(), 2);
    let mut held = fx.allocated();
    held.sort();
    let mut want = vec![ipa.to_string(), ipb.to_string()];
    want.sort();
    assert_eq!(held, want);
    assert_eq!(cni.result(&pa.pod_id).unwrap().ips, ra.ips);
    // ADD again for an attached pod gives the recorded result, sets up nothing new.
    assert_eq!(cni.add(&pa).await.unwrap().ips, ra.ips);
    assert_eq!(fx.allocated().len(), 2);

    cni.check(&pa).await.unwrap();
    // CHECK from a fresh instance works off the record alone.
    fx.cni().check(&pb).await.unwrap();

    let _server = Server::start(&a.path, 8080, "hello from a").unwrap();
    let got = fetch(
        Some(&b.path),
        SocketAddr::new(ipa, 8080),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(got, "hello from a");

    cni.del(&pa).await.unwrap();
    cni.del(&pb).await.unwrap();
    fx.assert_clean();
    assert!(!links_in(&a).contains("eth0"), "{}", links_in(&a));
    // Idempotent.
    cni.del(&pa).await.unwrap();
    cni.del(&pb).await.unwrap();
    fx.assert_clean();
}

#[tokio::test]
async fn del_releases_the_ip_when_the_netns_is_gone() {
    let fx = Fixture::new();
    fx.write_conf("10-test.conflist", &fx.standard_list());
    let cni = fx.cni();

    // The namespace deleted first: CNI_NETNS goes empty, IPAM still releases.
    let mut a = NetNs::new().unwrap();
    let pa = fx.pod("a", &a);
    cni.add(&pa).await.unwrap();
    assert_eq!(fx.allocated().len(), 1);
    a.delete();
    assert!(!pa.netns.exists());
    cni.del(&pa).await.unwrap();
    fx.assert_clean();
    cni.del(&pa).await.unwrap();

    // The namespace unmounted but its file left behind (what an unmounted bind mount
    // looks like): not passed as CNI_NETNS either.
    let b = NetNs::new().unwrap();
    let mut pb = fx.pod("b", &b);
    cni.add(&pb).await.unwrap();
    let stale = fx.dir.path().join("stale-netns");
    std::fs::write(&stale, "").unwrap();
    pb.netns = stale;
    cni.del(&pb).await.unwrap();
    assert!(fx.allocated().is_empty());
    assert!(fx.cached().is_empty());
    drop(b);
    fx.assert_clean();

    // The record lost (e.g. a wiped cache dir): DEL with the current config still
    // releases the address.
    let c = NetNs::new().unwrap();
    let pc = fx.pod("c", &c);
    cni.add(&pc).await.unwrap();
    std::fs::remove_dir_all(fx.cache_dir()).unwrap();
    cni.del(&pc).await.unwrap();
    fx.assert_clean();

    // A corrupt record: the same, and the record goes.
    let d = NetNs::new().unwrap();
    let pd = fx.pod("d", &d);
    cni.add(&pd).await.unwrap();
    let record = fx.cached().pop().unwrap();
    std::fs::write(&record, "{").unwrap();
    assert!(cni.result(&pd.pod_id).is_none());
    cni.del(&pd).await.unwrap();
    fx.assert_clean();

    // ADD into something that is not a namespace is refused up front.
    let mut pe = fx.pod("e", &d);
    pe.netns = fx.dir.path().join("stale-netns");
    let err = cni.add(&pe).await.unwrap_err();
    assert!(
        err.to_string().contains("is not a network namespace"),
        "{err}"
    );
    fx.assert_clean();
}

#[tokio::test]
async fn the_recorded_attachment_survives_a_restart() {
    let chains = PortmapChains::take();
    let fx = Fixture::new();
    fx.write_conf("10-test.conflist", &fx.with_portmap());
    let a = NetNs::new().unwrap();
    let mut pa = fx.pod("a", &a);
    pa.port_mappings = vec![PortMapping {
        host_port: cairn_tests::free_port(),
        container_port: 8080,
        protocol: "tcp".into(),
        host_ip: "127.0.0.1".into(),
    }];
    let first = fx.cni().add(&pa).await.unwrap();
    assert!(iptables_dump().contains(&pa.pod_id), "no portmap rules");

    // A new daemon, whose conf dir no longer has the network, and a pod view without
    // the port mappings: DEL must run on the recorded config and capability args.
    std::fs::remove_file(fx.conf_dir().join("10-test.conflist")).unwrap();
    let cni = fx.cni();
    assert!(cni.status().is_err());
    assert_eq!(cni.result(&pa.pod_id).unwrap().ips, first.ips);
    // (No CHECK here: portmap before 1.2 fails CHECK for IPv4-only pods, looking for
    // IPv6 rules it never made — containernetworking/plugins#819.)
    pa.port_mappings.clear();
    cni.del(&pa).await.unwrap();
    fx.assert_clean();
    assert!(cni.result(&pa.pod_id).is_none());
    assert!(
        !iptables_dump().contains(&pa.pod_id),
        "portmap rules left:\n{}",
        iptables_dump()
    );
    drop(chains);
}

#[tokio::test]
async fn a_malformed_config_is_reported_and_creates_nothing() {
    let fx = Fixture::new();
    std::fs::write(
        fx.conf_dir().join("10-test.conflist"),
        "{\"cniVersion\": \"1.0.0\", ",
    )
    .unwrap();
    let cni = fx.cni();
    let reason = cni.status().unwrap_err();
    assert!(
        reason.contains("10-test.conflist") && reason.contains("invalid JSON"),
        "{reason}"
    );
    let a = NetNs::new().unwrap();
    let err = cni.add(&fx.pod("a", &a)).await.unwrap_err();
    assert!(matches!(err, CniError::NotReady(_)), "{err:?}");
    assert!(err.to_string().contains("invalid JSON"), "{err}");
    assert!(!fx.bridge.exists());
    fx.assert_clean();
    assert!(!links_in(&a).contains("eth0"));

    // Valid JSON, invalid list: the reason says what is wrong.
    fx.write_conf(
        "10-test.conflist",
        &json!({"cniVersion": "1.0.0", "name": fx.name, "plugins": [{"bridge": "x"}]}),
    );
    let reason = cni.status().unwrap_err();
    assert!(reason.contains("no plugin \"type\""), "{reason}");
}

#[tokio::test]
async fn a_missing_plugin_is_named_and_nothing_is_left() {
    let fx = Fixture::new();
    fx.write_conf(
        "10-test.conflist",
        &fx.list(vec![
            fx.bridge_plugin(),
            json!({"type": "cairn-no-such-plugin"}),
        ]),
    );
    let cni = fx.cni();
    let a = NetNs::new().unwrap();
    let err = cni.add(&fx.pod("a", &a)).await.unwrap_err();
    match &err {
        CniError::PluginNotFound { plugin, dirs, .. } => {
            assert_eq!(plugin, "cairn-no-such-plugin");
            assert!(dirs.contains(PLUGINS), "{dirs}");
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("cairn-no-such-plugin") && msg.contains(&fx.name),
        "{msg}"
    );
    fx.assert_clean();
    assert!(!links_in(&a).contains("eth0"), "{}", links_in(&a));
}

#[tokio::test]
async fn a_plugin_failing_half_way_is_undone() {
    let fx = Fixture::new();
    let log = fx.dir.path().join("calls.log");
    fx.write_plugin(
        "cairn-fail",
        &format!(
            r#"#!/bin/sh
stdin=$(cat)
echo "$CNI_COMMAND|$CNI_CONTAINERID|$CNI_IFNAME|$CNI_ARGS|$stdin" >> {log}
if [ "$CNI_COMMAND" = ADD ]; then
  echo '{{"cniVersion":"1.0.0","code":99,"msg":"boom","details":"on purpose"}}'
  exit 1
fi
"#,
            log = log.display()
        ),
    );
    fx.write_conf(
        "10-test.conflist",
        &fx.list(vec![fx.bridge_plugin(), json!({"type": "cairn-fail"})]),
    );
    let cni = fx.cni();
    let a = NetNs::new().unwrap();
    let pa = fx.pod("a", &a);
    let err = cni.add(&pa).await.unwrap_err();
    match &err {
        CniError::Plugin {
            plugin,
            command,
            code,
            msg,
            details,
            network,
        } => {
            assert_eq!(
                (
                    plugin.as_str(),
                    *command,
                    *code,
                    msg.as_str(),
                    details.as_str()
                ),
                ("cairn-fail", "ADD", 99, "boom", "on purpose")
            );
            assert_eq!(network, &fx.name);
        }
        other => panic!("{other:?}"),
    }
    fx.assert_clean();
    assert!(!links_in(&a).contains("eth0"), "{}", links_in(&a));

    // What the plugin saw: ADD with bridge's result chained in, then DEL to undo.
    let calls = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let add: Vec<&str> = calls[0].splitn(5, '|').collect();
    assert_eq!(add[0..3], ["ADD", pa.pod_id.as_str(), "eth0"]);
    assert_eq!(
        add[3],
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=cni-test;K8S_POD_NAME=pod-a;K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            pa.pod_id, pa.uid
        )
    );
    let conf: Value = serde_json::from_str(add[4]).unwrap();
    assert_eq!(conf["name"], fx.name.as_str());
    assert_eq!(conf["cniVersion"], "1.0.0");
    assert!(conf["prevResult"]["ips"][0]["address"]
        .as_str()
        .unwrap()
        .starts_with(&fx.subnet_prefix()));
    assert!(calls[1].starts_with("DEL|"), "{}", calls[1]);
}

#[tokio::test]
async fn a_config_added_later_is_picked_up() {
    let fx = Fixture::new();
    let cni = fx.cni();
    let reason = cni.status().unwrap_err();
    assert_eq!(
        reason,
        format!("no network config found in {}", fx.conf_dir().display())
    );
    let a = NetNs::new().unwrap();
    let pa = fx.pod("a", &a);
    assert!(matches!(cni.add(&pa).await, Err(CniError::NotReady(_))));
    fx.assert_clean();

    fx.write_conf("50-test.conflist", &fx.standard_list());
    assert_eq!(cni.status(), Ok(fx.name.clone()));
    let r = cni.add(&pa).await.unwrap();
    assert!(r.pod_ip().is_some());

    // A list earlier in name order takes over; the attached pod is deleted with the
    // list it was added with.
    let mut other = fx.standard_list();
    other["name"] = json!("cairn-other");
    fx.write_conf("05-other.conflist", &other);
    assert_eq!(cni.status(), Ok("cairn-other".to_string()));
    cni.del(&pa).await.unwrap();
    fx.assert_clean();
}

#[tokio::test]
async fn portmap_publishes_a_host_port_on_localhost() {
    let chains = PortmapChains::take();
    let fx = Fixture::new();
    fx.write_conf("10-test.conflist", &fx.with_portmap());
    let cni = fx.cni();
    let a = NetNs::new().unwrap();
    let mut pa = fx.pod("a", &a);
    let host_port = cairn_tests::free_port();
    pa.port_mappings = vec![PortMapping {
        host_port,
        container_port: 8080,
        protocol: "tcp".into(),
        host_ip: "127.0.0.1".into(),
    }];
    cni.add(&pa).await.unwrap();
    let _server = Server::start(&a.path, 8080, "published").unwrap();
    let got = fetch(
        None,
        SocketAddr::from(([127, 0, 0, 1], host_port)),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(got, "published");

    cni.del(&pa).await.unwrap();
    fx.assert_clean();
    let dump = iptables_dump();
    assert!(!dump.contains(&pa.pod_id), "rules left:\n{dump}");
    drop(fx);
    let had_nat = !cairn_tests::net::sh("iptables-save", &["-t", "nat"])
        .unwrap_or_default()
        .is_empty();
    drop(chains);
    let dump = iptables_dump();
    assert!(!dump.contains("CNI-DN-"), "{dump}");
    if !had_nat {
        assert!(!dump.contains("CNI-HOSTPORT"), "{dump}");
    }
}

#[tokio::test]
async fn pods_added_and_deleted_in_a_loop_leave_nothing_behind() {
    let chains = PortmapChains::take();
    let fx = Fixture::new();
    fx.write_conf("10-test.conflist", &fx.with_portmap());
    let cni = fx.cni();
    for i in 0..25 {
        let mut ns = NetNs::new().unwrap();
        let mut pod = fx.pod(&format!("loop{i}"), &ns);
        pod.port_mappings = vec![PortMapping {
            host_port: 20000 + i,
            container_port: 80,
            protocol: if i % 2 == 0 { "tcp" } else { "udp" }.into(),
            host_ip: "127.0.0.1".into(),
        }];
        cni.add(&pod).await.unwrap();
        if i == 0 {
            assert!(iptables_dump().contains(&pod.pod_id), "no portmap rules");
        }
        // Half the pods lose their namespace before DEL, as after a shim crash.
        if i % 2 == 1 {
            ns.delete();
        }
        cni.del(&pod).await.unwrap();
    }
    fx.assert_clean();
    let dump = iptables_dump();
    assert!(!dump.contains(&fx.name), "rules left:\n{dump}");
    drop(fx);
    drop(chains);
}
