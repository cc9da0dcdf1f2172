//! The independent NetworkPolicy evaluator: network-config-analyzer (IBM's
//! `nca`, PyPI, pinned with hashes in `tests/envtest/netpol/requirements.txt`,
//! installed by `netpol/install.sh`), run over objects read back from the API
//! server, and its connectivity map parsed into protocols, ports and address
//! ranges that tests compare with what they expect.
//!
//! No CNI can run where the envtest suite runs, so this third-party code,
//! which nobody on this project wrote, stands in for enforcement.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ApiResource, DynamicObject, ListParams, TypeMeta};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use crate::binaries::repository_root;

// ---------------------------------------------------------------------------
// Connections: protocols and ports, as network-config-analyzer reports them.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            "SCTP" => Ok(Self::Sctp),
            other => bail!("protocol {other:?} is not one a NetworkPolicy port can name"),
        }
    }
}

/// Inclusive port ranges, sorted and merged.
pub type Ports = Vec<(u16, u16)>;

pub fn merge_ports(mut ports: Ports) -> Ports {
    ports.sort_unstable();
    let mut merged: Ports = Vec::new();
    for (first, last) in ports {
        match merged.last_mut() {
            Some(previous) if u32::from(first) <= u32::from(previous.1) + 1 => {
                previous.1 = previous.1.max(last);
            }
            _ => merged.push((first, last)),
        }
    }
    merged
}

/// The connections allowed from one endpoint to another.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Conn {
    /// Every protocol and port ("All connections").
    All,
    /// These ports of these protocols.
    Ports(BTreeMap<Protocol, Ports>),
}

impl Conn {
    pub fn ports(protocols: &[Protocol], ports: &[u16]) -> Self {
        let ranges: Ports = merge_ports(ports.iter().map(|p| (*p, *p)).collect());
        Self::Ports(protocols.iter().map(|p| (*p, ranges.clone())).collect())
    }

    pub fn tcp(port: u16) -> Self {
        Self::ports(&[Protocol::Tcp], &[port])
    }

    pub fn union(&self, other: &Self) -> Self {
        match (self, other) {
            (Self::All, _) | (_, Self::All) => Self::All,
            (Self::Ports(a), Self::Ports(b)) => {
                let mut all = a.clone();
                for (protocol, ports) in b {
                    let entry = all.entry(*protocol).or_default();
                    entry.extend(ports.iter().copied());
                    *entry = merge_ports(std::mem::take(entry));
                }
                Self::Ports(all)
            }
        }
    }

    pub fn allows(&self, protocol: Protocol, port: u16) -> bool {
        match self {
            Self::All => true,
            Self::Ports(map) => map
                .get(&protocol)
                .is_some_and(|ranges| ranges.iter().any(|(a, b)| (*a..=*b).contains(&port))),
        }
    }

    /// Parses the evaluator's text: `All connections`, or one or more cubes
    /// `{protocols:TCP, UDP,dst_ports:53,1000-2000}` (a cube without
    /// `dst_ports` covers every port). Any other form (`All but ...`,
    /// source ports, unnamed protocols) is refused rather than guessed.
    pub fn parse(text: &str) -> Result<Self> {
        if text == "All connections" {
            return Ok(Self::All);
        }
        let mut conn = Self::Ports(BTreeMap::new());
        let mut rest = text;
        while !rest.is_empty() {
            let body = rest
                .strip_prefix('{')
                .and_then(|r| r.split_once('}'))
                .with_context(|| format!("connection {text:?} is not a list of {{...}} cubes"))?;
            let (cube, after) = body;
            rest = after.strip_prefix(',').unwrap_or(after);
            let (protocols, ports) = match cube.split_once(",dst_ports:") {
                Some((protocols, ports)) => (protocols, Some(ports)),
                None => (cube, None),
            };
            let protocols = protocols
                .strip_prefix("protocols:")
                .with_context(|| format!("cube {cube:?} names no protocols"))?
                .split(", ")
                .map(Protocol::parse)
                .collect::<Result<Vec<_>>>()?;
            let ports: Ports = match ports {
                None => vec![(1, 65535)],
                Some(list) => list
                    .split(',')
                    .map(|range| {
                        let (first, last) = range.split_once('-').unwrap_or((range, range));
                        Ok((first.parse::<u16>()?, last.parse::<u16>()?))
                    })
                    .collect::<Result<_>>()
                    .with_context(|| format!("ports {list:?} in {text:?}"))?,
            };
            let cube = Self::Ports(
                protocols
                    .iter()
                    .map(|p| (*p, merge_ports(ports.clone())))
                    .collect(),
            );
            conn = conn.union(&cube);
        }
        Ok(conn)
    }
}

impl fmt::Display for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Ports(map) => {
                // Protocols sharing the same ports are written together: "TCP+UDP 53".
                let mut by_ports: BTreeMap<&Ports, Vec<Protocol>> = BTreeMap::new();
                for (protocol, ports) in map {
                    by_ports.entry(ports).or_default().push(*protocol);
                }
                let parts: Vec<String> = by_ports
                    .iter()
                    .map(|(ports, protocols)| {
                        let protocols: Vec<String> = protocols
                            .iter()
                            .map(|p| format!("{p:?}").to_uppercase())
                            .collect();
                        let ports: Vec<String> = ports
                            .iter()
                            .map(|(a, b)| {
                                if a == b {
                                    a.to_string()
                                } else {
                                    format!("{a}-{b}")
                                }
                            })
                            .collect();
                        format!("{} {}", protocols.join("+"), ports.join(","))
                    })
                    .collect();
                f.write_str(&parts.join("; "))
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Address ranges.

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The last address of the family, as a number.
    pub fn max(self) -> u128 {
        match self {
            Self::V4 => u128::from(u32::MAX),
            Self::V6 => u128::MAX,
        }
    }
}

/// An inclusive range of addresses of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct IpRange {
    pub family: Family,
    /// The first address, as a number.
    pub first: u128,
    /// The last address, as a number.
    pub last: u128,
}

fn address_value(address: IpAddr) -> (Family, u128) {
    match address {
        IpAddr::V4(a) => (Family::V4, u128::from(u32::from(a))),
        IpAddr::V6(a) => (Family::V6, u128::from(a)),
    }
}

/// The address of `family` numbered `value` (IPv4 values beyond 32 bits
/// saturate to 255.255.255.255).
pub fn address_of(family: Family, value: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(value).unwrap_or(u32::MAX))),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

impl IpRange {
    pub fn cidr(text: &str) -> Result<Self> {
        let (address, prefix) = text
            .split_once('/')
            .with_context(|| format!("{text:?} is not a CIDR"))?;
        let (family, value) = address_value(address.parse()?);
        let bits: u32 = if family == Family::V4 { 32 } else { 128 };
        let prefix: u32 = prefix.parse()?;
        ensure!(prefix <= bits, "{text:?}: prefix too long");
        let host_mask = if prefix == bits {
            0
        } else {
            family.max() >> prefix
        };
        Ok(Self {
            family,
            first: value & !host_mask & family.max(),
            last: value | host_mask,
        })
    }

    /// The evaluator's forms: `first-last`, or one address.
    pub fn parse(text: &str) -> Result<Self> {
        let (first, last) = text.split_once('-').unwrap_or((text, text));
        let (family, first) = address_value(first.parse()?);
        let (last_family, last) = address_value(last.parse()?);
        ensure!(
            family == last_family && first <= last,
            "{text:?} is not a range"
        );
        Ok(Self {
            family,
            first,
            last,
        })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let (family, value) = address_value(address);
        family == self.family && (self.first..=self.last).contains(&value)
    }

    /// This range without the given ones.
    pub fn minus(self, holes: &[IpRange]) -> Vec<IpRange> {
        let mut pieces = vec![self];
        for hole in holes.iter().filter(|h| h.family == self.family) {
            pieces = pieces
                .into_iter()
                .flat_map(|p| {
                    let mut left = Vec::new();
                    if hole.last < p.first || hole.first > p.last {
                        left.push(p);
                    } else {
                        if hole.first > p.first {
                            left.push(IpRange {
                                last: hole.first - 1,
                                ..p
                            });
                        }
                        if hole.last < p.last {
                            left.push(IpRange {
                                first: hole.last + 1,
                                ..p
                            });
                        }
                    }
                    left
                })
                .collect();
        }
        pieces
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}",
            address_of(self.family, self.first),
            address_of(self.family, self.last)
        )
    }
}

/// Canonical form of "these ranges allow these connections": disjoint
/// ranges in order, each with the union of the connections of every piece
/// covering it, neighbours with equal connections merged. Two descriptions
/// of the same reachability have the same canonical form.
pub fn canonical(pieces: &[(IpRange, Conn)]) -> Vec<(IpRange, Conn)> {
    let mut out: Vec<(IpRange, Conn)> = Vec::new();
    for family in [Family::V4, Family::V6] {
        let mine: Vec<&(IpRange, Conn)> =
            pieces.iter().filter(|(r, _)| r.family == family).collect();
        let mut cuts: BTreeSet<u128> = BTreeSet::new();
        for (range, _) in &mine {
            cuts.insert(range.first);
            if range.last < family.max() {
                cuts.insert(range.last + 1);
            }
        }
        let cuts: Vec<u128> = cuts.into_iter().collect();
        for (i, first) in cuts.iter().enumerate() {
            let last = cuts.get(i + 1).map_or(family.max(), |next| next - 1);
            let conn = mine
                .iter()
                .filter(|(r, _)| r.first <= *first && *first <= r.last)
                .fold(None::<Conn>, |acc, (_, c)| {
                    Some(acc.map_or_else(|| c.clone(), |a| a.union(c)))
                });
            let Some(conn) = conn else { continue };
            match out.last_mut() {
                Some((previous, previous_conn))
                    if previous.family == family
                        && previous.last + 1 == *first
                        && *previous_conn == conn =>
                {
                    previous.last = last;
                }
                _ => out.push((
                    IpRange {
                        family,
                        first: *first,
                        last,
                    },
                    conn,
                )),
            }
        }
    }
    out
}

pub fn describe(ranges: &[(IpRange, Conn)]) -> String {
    if ranges.is_empty() {
        return "  (none)".to_owned();
    }
    ranges
        .iter()
        .map(|(r, c)| format!("  {r} : {c}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------
// The evaluator.

/// The connectivity map network-config-analyzer computed.
#[derive(Debug, Default)]
pub struct Connectivity {
    /// `namespace/name` to `namespace/name`; absent pairs have no connection.
    pub between_pods: BTreeMap<(String, String), Conn>,
    /// From a pod to address ranges.
    pub egress: BTreeMap<String, Vec<(IpRange, Conn)>>,
    /// From address ranges to a pod.
    pub ingress: BTreeMap<String, Vec<(IpRange, Conn)>>,
}

enum Peer {
    Pod(String),
    Addresses(IpRange),
}

/// A peer as `--output_endpoints pods` writes it: `namespace/name` (or
/// `namespace/name[Pod]`), an address range `first-last`, or one address.
/// Workloads (`[ReplicaSet]`, `[Deployment]`) are refused: they would hide
/// the connections between replicas.
fn parse_peer(text: &str) -> Result<Peer> {
    if let Ok(range) = IpRange::parse(text) {
        return Ok(Peer::Addresses(range));
    }
    let pod = text.strip_suffix("[Pod]").unwrap_or(text);
    ensure!(
        !pod.contains('[') && pod.split('/').count() == 2,
        "peer {text:?} is neither namespace/name of a pod nor an address range"
    );
    Ok(Peer::Pod(pod.to_owned()))
}

impl Connectivity {
    /// Parses `nca --connectivity -o txt_no_fw_rules` output: one
    /// `SOURCE => DESTINATION : CONNECTIONS` line per pair and connection
    /// set, after a `global: ...` summary line.
    pub fn parse(output: &str) -> Result<Self> {
        let mut map = Self::default();
        let mut lines = 0;
        for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if line.starts_with("global: cluster has ") || line.starts_with("Total run time:") {
                continue;
            }
            let parsed = (|| -> Result<()> {
                let (source, rest) = line.split_once(" => ").context("no \" => \"")?;
                let (destination, conn) = rest.split_once(" : ").context("no \" : \"")?;
                let conn = Conn::parse(conn)?;
                match (parse_peer(source)?, parse_peer(destination)?) {
                    (Peer::Pod(s), Peer::Pod(d)) => {
                        let entry = map
                            .between_pods
                            .entry((s, d))
                            .or_insert_with(|| conn.clone());
                        *entry = entry.union(&conn);
                    }
                    (Peer::Pod(s), Peer::Addresses(r)) => {
                        map.egress.entry(s).or_default().push((r, conn))
                    }
                    (Peer::Addresses(r), Peer::Pod(d)) => {
                        map.ingress.entry(d).or_default().push((r, conn))
                    }
                    (Peer::Addresses(_), Peer::Addresses(_)) => {
                        bail!("a connection between two address ranges")
                    }
                }
                Ok(())
            })();
            parsed.with_context(|| format!("cannot read the evaluator's line {line:?}"))?;
            lines += 1;
        }
        ensure!(
            lines > 0,
            "the evaluator reported no connection at all:\n{output}"
        );
        for ranges in map.egress.values_mut().chain(map.ingress.values_mut()) {
            *ranges = canonical(ranges);
        }
        Ok(map)
    }

    pub fn between(&self, source: &str, destination: &str) -> Option<&Conn> {
        self.between_pods
            .get(&(source.to_owned(), destination.to_owned()))
    }

    pub fn egress_of(&self, source: &str) -> &[(IpRange, Conn)] {
        self.egress.get(source).map_or(&[], Vec::as_slice)
    }

    pub fn ingress_of(&self, destination: &str) -> &[(IpRange, Conn)] {
        self.ingress.get(destination).map_or(&[], Vec::as_slice)
    }

    pub fn allows_to_address(
        &self,
        source: &str,
        address: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> bool {
        self.egress_of(source)
            .iter()
            .any(|(range, conn)| range.contains(address) && conn.allows(protocol, port))
    }
}

/// Installs the pinned evaluator (a no-op when cached) and returns its path.
pub fn evaluator() -> Result<PathBuf> {
    let script = repository_root().join("tests/envtest/netpol/install.sh");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .context("running netpol/install.sh")?;
    ensure!(
        output.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout)?;
    let path = stdout
        .lines()
        .last()
        .context("netpol/install.sh printed no path")?;
    Ok(PathBuf::from(path))
}

/// Runs the evaluator's connectivity query over the objects.
pub fn evaluate(objects: &[Value]) -> Result<Connectivity> {
    let nca = evaluator()?;
    let dir = tempfile::tempdir()?;
    let resources = dir.path().join("resources.yaml");
    let mut yaml = String::new();
    for object in objects {
        yaml.push_str("---\n");
        yaml.push_str(&yaml_serde::to_string(object)?);
    }
    std::fs::write(&resources, yaml)?;
    let output = Command::new(&nca)
        .current_dir(dir.path())
        .args(["--connectivity", "--resource_list"])
        .arg(&resources)
        // Pods one by one: by default replicas are merged into their owner,
        // and the connections between them are then left out.
        .args([
            "--output_format",
            "txt_no_fw_rules",
            "--output_endpoints",
            "pods",
        ])
        .arg("--print_ipv6")
        .output()
        .with_context(|| format!("running {}", nca.display()))?;
    let stdout = String::from_utf8(output.stdout)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "nca exited with {}:\n{stdout}\n{stderr}",
        output.status
    );
    Connectivity::parse(&stdout).with_context(|| format!("nca's diagnostics:\n{stderr}"))
}

/// Every object of `resource` in the given namespaces, exactly as the API
/// server returns them (all fields kept), with `apiVersion` and `kind`,
/// which list items lack.
pub async fn read_back(
    client: &Client,
    resource: &ApiResource,
    namespaces: &BTreeSet<String>,
) -> Result<Vec<Value>> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), resource);
    let mut objects = Vec::new();
    for mut object in api.list(&ListParams::default()).await?.items {
        let namespace = object.namespace().or_else(|| object.metadata.name.clone());
        if namespace.is_some_and(|n| namespaces.contains(&n)) {
            object.types = Some(TypeMeta {
                api_version: resource.api_version.clone(),
                kind: resource.kind.clone(),
            });
            objects.push(serde_json::to_value(&object)?);
        }
    }
    Ok(objects)
}

/// What the evaluator judges: every Namespace, NetworkPolicy and Pod of
/// `namespaces`, read back as [`read_back`] does.
pub async fn read_back_world(client: &Client, namespaces: &BTreeSet<String>) -> Result<Vec<Value>> {
    let mut objects = Vec::new();
    for resource in [
        ApiResource::erase::<Namespace>(&()),
        ApiResource::erase::<NetworkPolicy>(&()),
        ApiResource::erase::<Pod>(&()),
    ] {
        objects.extend(read_back(client, &resource, namespaces).await?);
    }
    Ok(objects)
}

/// A pause pod `namespace/name` with `labels` (a JSON object), standing in
/// for a workload: admitted under Pod Security `restricted` wherever it is
/// created (Kubernetes "Pod Security Standards").
pub fn pause_pod(namespace: &str, name: &str, labels: &Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "automountServiceAccountToken": false,
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 65535,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": "main",
                "image": "registry.k8s.io/pause:3.10",
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                },
                "resources": {"limits": {"cpu": "10m", "memory": "16Mi"}},
            }],
        },
    })
}
