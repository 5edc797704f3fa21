//! A CNI ADD result as cairn reads it: the pod's IP addresses (sandbox interfaces only,
//! the first IPv4 first, as the CRI pod IP then additional IPs), with the raw JSON kept for
//! chaining (prevResult) and for the cache. Reads the 0.3.0+ format (`ips[].address`) and
//! the 0.1/0.2 one (`ip4.ip`, `ip6.ip`).
//! Runs in cairnd.

use std::net::IpAddr;

use cairn_proto::cri;
use serde_json::Value;

/// The outcome of attaching a pod to a network.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkResult {
    /// The network list's name.
    pub network: String,
    /// The pod's addresses; the first is the pod IP, IPv4 before IPv6.
    pub ips: Vec<IpAddr>,
    /// The final plugin's result as it printed it.
    pub raw: Value,
}

impl NetworkResult {
    pub fn parse(network: &str, raw: Value) -> Result<NetworkResult, String> {
        let ips = ips_of(&raw)?;
        Ok(NetworkResult {
            network: network.to_string(),
            ips,
            raw,
        })
    }

    /// The CRI pod IP (first IPv4, else first IPv6).
    pub fn pod_ip(&self) -> Option<IpAddr> {
        self.ips.first().copied()
    }

    /// The CRI additional IPs.
    pub fn additional_ips(&self) -> &[IpAddr] {
        self.ips.get(1..).unwrap_or(&[])
    }

    /// The pod's network status as PodSandboxStatus reports it.
    pub fn to_cri(&self) -> cri::PodSandboxNetworkStatus {
        cri::PodSandboxNetworkStatus {
            ip: self.pod_ip().map(|ip| ip.to_string()).unwrap_or_default(),
            additional_ips: self
                .additional_ips()
                .iter()
                .map(|ip| cri::PodIp { ip: ip.to_string() })
                .collect(),
        }
    }
}

/// Checks that a plugin's ADD output is a JSON object a later plugin can take as
/// prevResult.
pub fn parse_output(stdout: &[u8]) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(stdout).map_err(|e| {
        let text = String::from_utf8_lossy(stdout);
        let short: String = text.chars().take(200).collect();
        format!("invalid JSON ({e}): {short:?}")
    })?;
    if !v.is_object() {
        return Err("result is not a JSON object".into());
    }
    Ok(v)
}

fn ips_of(raw: &Value) -> Result<Vec<IpAddr>, String> {
    let mut out: Vec<IpAddr> = Vec::new();
    if let Some(ips) = raw.get("ips") {
        let ips = ips.as_array().ok_or("\"ips\" is not an array")?;
        let interfaces = raw.get("interfaces").and_then(Value::as_array);
        for ip in ips {
            if on_host_interface(ip, interfaces) {
                continue;
            }
            let addr = ip
                .get("address")
                .and_then(Value::as_str)
                .ok_or("an \"ips\" entry has no \"address\"")?;
            out.push(parse_cidr(addr)?);
        }
    } else {
        for key in ["ip4", "ip6"] {
            if let Some(addr) = raw
                .get(key)
                .and_then(|v| v.get("ip"))
                .and_then(Value::as_str)
            {
                out.push(parse_cidr(addr)?);
            }
        }
    }
    let mut seen = Vec::new();
    out.retain(|ip| {
        let new = !seen.contains(ip);
        seen.push(*ip);
        new
    });
    // Stable: keeps the plugin's order within each family.
    out.sort_by_key(|ip| ip.is_ipv6());
    Ok(out)
}

/// Whether an `ips` entry names (by index) an interface without a sandbox, i.e. one on
/// the host, whose address is not the pod's.
fn on_host_interface(ip: &Value, interfaces: Option<&Vec<Value>>) -> bool {
    let (Some(idx), Some(ifs)) = (ip.get("interface").and_then(Value::as_u64), interfaces) else {
        return false;
    };
    let Some(iface) = usize::try_from(idx).ok().and_then(|i| ifs.get(i)) else {
        return false;
    };
    iface
        .get("sandbox")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
}

fn parse_cidr(s: &str) -> Result<IpAddr, String> {
    let addr = s.split('/').next().unwrap_or(s);
    addr.parse()
        .map_err(|_| format!("invalid IP address {s:?} in result"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_current_results() {
        let raw = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa"},
                {"name": "veth1", "mac": "bb"},
                {"name": "eth0", "mac": "cc", "sandbox": "/run/netns/x"}
            ],
            "ips": [
                {"address": "fd00::5/64", "interface": 2},
                {"address": "10.1.0.1/24", "interface": 0},
                {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2},
                {"address": "10.1.0.5/24", "interface": 2}
            ]
        });
        let r = NetworkResult::parse("n", raw).unwrap();
        assert_eq!(
            r.ips,
            vec![
                "10.1.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert_eq!(r.pod_ip(), Some("10.1.0.5".parse().unwrap()));
        assert_eq!(r.additional_ips().len(), 1);
        let st = r.to_cri();
        assert_eq!(st.ip, "10.1.0.5");
        assert_eq!(st.additional_ips[0].ip, "fd00::5");
    }

    #[test]
    fn reads_old_results_and_rejects_bad_ones() {
        let r = NetworkResult::parse(
            "n",
            json!({"cniVersion":"0.2.0","ip4":{"ip":"10.2.0.3/16"}}),
        )
        .unwrap();
        assert_eq!(r.ips, vec!["10.2.0.3".parse::<IpAddr>().unwrap()]);
        assert!(NetworkResult::parse("n", json!({"ips":[{"address":"nope/8"}]})).is_err());
        assert!(NetworkResult::parse("n", json!({"ips":{}})).is_err());
        assert!(NetworkResult::parse("n", json!({})).unwrap().ips.is_empty());
        assert!(parse_output(b"[1]").is_err());
        assert!(parse_output(b"garbage")
            .unwrap_err()
            .contains("invalid JSON"));
        assert!(parse_output(br#"{"cniVersion":"1.0.0"}"#).is_ok());
    }
}
