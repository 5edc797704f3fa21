//! What a pod brings to CNI: its identity (CNI_ARGS with the K8S_* keys), its network
//! namespace, and the capability args (port mappings, bandwidth, DNS, static IPs) that
//! plugins receive in `runtimeConfig` when they declare the capability.
//! Runs in cairnd.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cairn_proto::cri;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One pod's view for the CNI plugins.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodNetwork {
    /// The pod sandbox ID: CNI_CONTAINERID and K8S_POD_INFRA_CONTAINER_ID.
    pub pod_id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// The pod's network namespace (`<pod dir>/ns/net`).
    pub netns: PathBuf,
    pub port_mappings: Vec<PortMapping>,
    pub bandwidth: Option<Bandwidth>,
    pub dns: Option<Dns>,
    /// Requested IPs (`ips` capability, e.g. "10.1.2.3/24"); usually empty.
    pub ips: Vec<String>,
}

/// A hostPort mapping (the `portMappings` capability).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// "tcp", "udp" or "sctp".
    pub protocol: String,
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// Traffic shaping in bits per second (the `bandwidth` capability).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    #[serde(skip_serializing_if = "is_zero")]
    pub ingress_rate: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub ingress_burst: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub egress_rate: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub egress_burst: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The pod's DNS settings (the `dns` capability).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// Annotations kubelet uses for a pod's bandwidth limits.
pub const INGRESS_BANDWIDTH: &str = "kubernetes.io/ingress-bandwidth";
pub const EGRESS_BANDWIDTH: &str = "kubernetes.io/egress-bandwidth";

impl PodNetwork {
    /// The pod's CNI view from its CRI config: metadata, hostPort mappings (those with a
    /// host port), DNS config and the bandwidth annotations.
    pub fn from_sandbox(
        pod_id: &str,
        config: &cri::PodSandboxConfig,
        netns: &Path,
    ) -> Result<PodNetwork, String> {
        let meta = config.metadata.clone().unwrap_or_default();
        let port_mappings = config
            .port_mappings
            .iter()
            .filter(|p| p.host_port > 0)
            .map(port_mapping)
            .collect::<Result<Vec<_>, String>>()?;
        let dns = config
            .dns_config
            .as_ref()
            .map(|d| Dns {
                servers: d.servers.clone(),
                searches: d.searches.clone(),
                options: d.options.clone(),
            })
            .filter(|d| d != &Dns::default());
        Ok(PodNetwork {
            pod_id: pod_id.to_string(),
            name: meta.name,
            namespace: meta.namespace,
            uid: meta.uid,
            netns: netns.to_path_buf(),
            port_mappings,
            bandwidth: bandwidth_from_annotations(&config.annotations)?,
            dns,
            ips: Vec::new(),
        })
    }

    /// CNI_ARGS: `IgnoreUnknown=1` and the K8S_* keys plugins such as host-local's
    /// static allocators and Calico read.
    pub fn cni_args(&self) -> Result<String, String> {
        let pairs = [
            ("K8S_POD_NAMESPACE", &self.namespace),
            ("K8S_POD_NAME", &self.name),
            ("K8S_POD_INFRA_CONTAINER_ID", &self.pod_id),
            ("K8S_POD_UID", &self.uid),
        ];
        let mut out = String::from("IgnoreUnknown=1");
        for (k, v) in pairs {
            if v.contains([';', '=']) || v.chars().any(char::is_whitespace) {
                return Err(format!("{k} value {v:?} cannot be passed in CNI_ARGS"));
            }
            out.push_str(&format!(";{k}={v}"));
        }
        Ok(out)
    }

    /// Every capability arg the pod has; empty ones are left out.
    pub fn capability_args(&self) -> Value {
        let mut m = Map::new();
        if !self.port_mappings.is_empty() {
            m.insert("portMappings".into(), serde_json::json!(self.port_mappings));
        }
        if let Some(b) = self.bandwidth.filter(|b| b != &Bandwidth::default()) {
            m.insert("bandwidth".into(), serde_json::json!(b));
        }
        if let Some(d) = &self.dns {
            m.insert("dns".into(), serde_json::json!(d));
        }
        if !self.ips.is_empty() {
            m.insert("ips".into(), serde_json::json!(self.ips));
        }
        Value::Object(m)
    }
}

fn port_mapping(p: &cri::PortMapping) -> Result<PortMapping, String> {
    let port = |v: i32, what: &str| {
        u16::try_from(v)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port mapping: invalid {what} {v}"))
    };
    let protocol = match cri::Protocol::try_from(p.protocol) {
        Ok(cri::Protocol::Tcp) => "tcp",
        Ok(cri::Protocol::Udp) => "udp",
        Ok(cri::Protocol::Sctp) => "sctp",
        Err(_) => return Err(format!("port mapping: unknown protocol {}", p.protocol)),
    };
    Ok(PortMapping {
        host_port: port(p.host_port, "host port")?,
        container_port: port(p.container_port, "container port")?,
        protocol: protocol.into(),
        host_ip: p.host_ip.clone(),
    })
}

/// The `runtimeConfig` for one plugin: the capability args it declares with
/// `"capabilities": {"<name>": true}` and that the pod has. `None` when there are none.
pub fn runtime_config(plugin: &Map<String, Value>, args: &Value) -> Option<Value> {
    let caps = plugin.get("capabilities")?.as_object()?;
    let args = args.as_object()?;
    let picked: Map<String, Value> = caps
        .iter()
        .filter(|(_, on)| on.as_bool() == Some(true))
        .filter_map(|(name, _)| args.get(name).map(|v| (name.clone(), v.clone())))
        .collect();
    (!picked.is_empty()).then_some(Value::Object(picked))
}

/// The bandwidth limits from kubelet's annotations. The burst is not configurable through
/// them, so it is left as large as the bandwidth plugin takes.
pub fn bandwidth_from_annotations(
    annotations: &HashMap<String, String>,
) -> Result<Option<Bandwidth>, String> {
    let read = |key: &str| -> Result<u64, String> {
        match annotations.get(key) {
            None => Ok(0),
            Some(v) => parse_quantity(v).map_err(|e| format!("annotation {key}={v:?}: {e}")),
        }
    };
    let ingress = read(INGRESS_BANDWIDTH)?;
    let egress = read(EGRESS_BANDWIDTH)?;
    if ingress == 0 && egress == 0 {
        return Ok(None);
    }
    let burst = |rate: u64| if rate > 0 { u64::from(u32::MAX) } else { 0 };
    Ok(Some(Bandwidth {
        ingress_rate: ingress,
        ingress_burst: burst(ingress),
        egress_rate: egress,
        egress_burst: burst(egress),
    }))
}

/// A Kubernetes quantity ("10M", "1.5Gi", "500k", "100") as a whole number, rounded up.
pub fn parse_quantity(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        other => return Err(format!("unknown suffix {other:?}")),
    };
    let n: f64 = num.parse().map_err(|_| "not a number".to_string())?;
    let v = (n * multiplier).ceil();
    if !v.is_finite() || v > u64::MAX as f64 {
        return Err("out of range".into());
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox() -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                uid: "u-1".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            port_mappings: vec![
                cri::PortMapping {
                    protocol: cri::Protocol::Udp as i32,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: "127.0.0.1".into(),
                },
                // No host port: not a hostPort mapping, not passed.
                cri::PortMapping {
                    protocol: 0,
                    container_port: 80,
                    host_port: 0,
                    host_ip: String::new(),
                },
            ],
            dns_config: Some(cri::DnsConfig {
                servers: vec!["10.0.0.10".into()],
                searches: vec!["default.svc".into()],
                options: vec!["ndots:5".into()],
            }),
            annotations: HashMap::from([(INGRESS_BANDWIDTH.to_string(), "10M".to_string())]),
            ..Default::default()
        }
    }

    #[test]
    fn builds_from_a_sandbox_config() {
        let p = PodNetwork::from_sandbox("abc", &sandbox(), Path::new("/run/x/ns/net")).unwrap();
        assert_eq!(p.name, "web");
        assert_eq!(p.port_mappings.len(), 1);
        assert_eq!(p.port_mappings[0].protocol, "udp");
        assert_eq!(
            p.cni_args().unwrap(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1"
        );
        let args = p.capability_args();
        assert_eq!(
            args["portMappings"],
            serde_json::json!([{"hostPort":5353,"containerPort":53,"protocol":"udp","hostIP":"127.0.0.1"}])
        );
        assert_eq!(
            args["bandwidth"],
            serde_json::json!({"ingressRate":10_000_000u64,"ingressBurst":u32::MAX})
        );
        assert_eq!(args["dns"]["options"], serde_json::json!(["ndots:5"]));
        assert!(args.get("ips").is_none());
    }

    #[test]
    fn rejects_bad_cni_args_and_ports() {
        let mut p = PodNetwork {
            name: "a;b".into(),
            ..Default::default()
        };
        assert!(p.cni_args().unwrap_err().contains("K8S_POD_NAME"));
        p.name = "ok".into();
        assert!(p.cni_args().is_ok());
        let mut cfg = sandbox();
        cfg.port_mappings[0].host_port = 70000;
        assert!(PodNetwork::from_sandbox("a", &cfg, Path::new("/x")).is_err());
    }

    #[test]
    fn filters_runtime_config_by_declared_capabilities() {
        let args = serde_json::json!({"portMappings": [1], "dns": {"servers": []}});
        let plugin = |v: Value| v.as_object().unwrap().clone();
        let pm = plugin(
            serde_json::json!({"type":"portmap","capabilities":{"portMappings":true,"bandwidth":true}}),
        );
        assert_eq!(
            runtime_config(&pm, &args),
            Some(serde_json::json!({"portMappings": [1]}))
        );
        let off =
            plugin(serde_json::json!({"type":"portmap","capabilities":{"portMappings":false}}));
        assert_eq!(runtime_config(&off, &args), None);
        let none = plugin(serde_json::json!({"type":"bridge"}));
        assert_eq!(runtime_config(&none, &args), None);
        let bw = plugin(serde_json::json!({"type":"bandwidth","capabilities":{"bandwidth":true}}));
        assert_eq!(runtime_config(&bw, &args), None);
    }

    #[test]
    fn parses_quantities() {
        assert_eq!(parse_quantity("100").unwrap(), 100);
        assert_eq!(parse_quantity("10M").unwrap(), 10_000_000);
        assert_eq!(parse_quantity("1.5k").unwrap(), 1500);
        assert_eq!(parse_quantity("1Mi").unwrap(), 1 << 20);
        assert_eq!(parse_quantity("1500m").unwrap(), 2);
        assert!(parse_quantity("10X").is_err());
        assert!(parse_quantity("M").is_err());
        let none = HashMap::new();
        assert_eq!(bandwidth_from_annotations(&none).unwrap(), None);
        let bad = HashMap::from([(EGRESS_BANDWIDTH.to_string(), "lots".to_string())]);
        assert!(bandwidth_from_annotations(&bad)
            .unwrap_err()
            .contains(EGRESS_BANDWIDTH));
    }
}
