//! Transport IDs as SPDK writes them (`spdk_nvme_transport_id_parse`):
//! `trtype:PCIe traddr:0000:00:04.0`, key:value (or key=value) pairs
//! separated by whitespace, keys case-insensitive.

use crate::error::NvmeError;

/// Transport types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportType {
    /// PCIe (this driver).
    Pcie,
    /// RDMA (not implemented here).
    Rdma,
    /// NVMe/TCP (this driver's fabrics transport).
    Tcp,
    /// vfio-user (not implemented here).
    VfioUser,
}

impl TransportType {
    /// SPDK's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportType::Pcie => "PCIe",
            TransportType::Rdma => "RDMA",
            TransportType::Tcp => "TCP",
            TransportType::VfioUser => "VFIOUSER",
        }
    }
}

/// A transport ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportId {
    /// Transport type.
    pub trtype: TransportType,
    /// Transport address: for PCIe a normalised BDF (`0000:00:04.0`).
    pub traddr: String,
    /// Address family (fabrics only).
    pub adrfam: Option<String>,
    /// Service id (fabrics only).
    pub trsvcid: Option<String>,
    /// Subsystem NQN (fabrics; none means the discovery subsystem).
    pub subnqn: Option<String>,
    /// Host NQN to connect as (fabrics; SPDK's perf and identify accept
    /// `hostnqn:` in the string; [`ControllerOpts::hostnqn`] otherwise).
    ///
    /// [`ControllerOpts::hostnqn`]: crate::ControllerOpts::hostnqn
    pub hostnqn: Option<String>,
}

/// The well-known discovery subsystem NQN.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

impl TransportId {
    /// A PCIe transport ID for `bdf`.
    pub fn pcie(bdf: &str) -> Result<TransportId, NvmeError> {
        Ok(TransportId {
            trtype: TransportType::Pcie,
            traddr: rspdk_env::pci::normalize_bdf(bdf)
                .map_err(|e| NvmeError::InvalidArgument(e.to_string()))?,
            adrfam: None,
            trsvcid: None,
            subnqn: None,
            hostnqn: None,
        })
    }

    /// An NVMe/TCP transport ID (IPv4 unless `traddr` has a colon).
    pub fn tcp(traddr: &str, trsvcid: u16, subnqn: &str) -> TransportId {
        TransportId {
            trtype: TransportType::Tcp,
            traddr: traddr.to_string(),
            adrfam: Some(if traddr.contains(':') { "IPv6" } else { "IPv4" }.to_string()),
            trsvcid: Some(trsvcid.to_string()),
            subnqn: Some(subnqn.to_string()),
            hostnqn: None,
        }
    }

    /// The subsystem NQN to connect to (the discovery NQN when none).
    pub fn subnqn_or_discovery(&self) -> &str {
        self.subnqn.as_deref().unwrap_or(DISCOVERY_NQN)
    }

    /// True when this names the discovery subsystem.
    pub fn is_discovery(&self) -> bool {
        self.subnqn_or_discovery() == DISCOVERY_NQN
    }

    /// The socket address of a TCP transport ID (trsvcid defaults to 4420).
    pub fn socket_addr(&self) -> Result<std::net::SocketAddr, NvmeError> {
        use std::net::ToSocketAddrs;
        let port = self.trsvcid.as_deref().unwrap_or("4420");
        let port: u16 = port.parse().map_err(|_| {
            NvmeError::InvalidArgument(format!(
                "transport ID '{self}': trsvcid '{port}' is not a TCP port (1..65535)"
            ))
        })?;
        (self.traddr.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| {
                NvmeError::InvalidArgument(format!(
                    "transport ID '{self}': traddr '{}' does not resolve ({e}); give an IP address",
                    self.traddr
                ))
            })?
            .next()
            .ok_or_else(|| {
                NvmeError::InvalidArgument(format!(
                    "transport ID '{self}': traddr '{}' resolves to no address",
                    self.traddr
                ))
            })
    }
}

impl std::str::FromStr for TransportId {
    type Err = NvmeError;

    fn from_str(s: &str) -> Result<Self, NvmeError> {
        let bad = |m: String| NvmeError::InvalidArgument(format!("transport ID '{s}': {m}"));
        let mut trtype = None;
        let mut traddr = None;
        let (mut adrfam, mut trsvcid, mut subnqn, mut hostnqn) = (None, None, None, None);
        for tok in s.split_whitespace() {
            let (k, v) = tok
                .split_once([':', '='])
                .ok_or_else(|| bad(format!("'{tok}' is not key:value")))?;
            if v.is_empty() {
                return Err(bad(format!("'{k}' has no value")));
            }
            match k.to_ascii_lowercase().as_str() {
                "trtype" => {
                    trtype = Some(match v.to_ascii_lowercase().as_str() {
                        "pcie" => TransportType::Pcie,
                        "rdma" => TransportType::Rdma,
                        "tcp" => TransportType::Tcp,
                        "vfiouser" => TransportType::VfioUser,
                        _ => {
                            return Err(bad(format!(
                                "unknown trtype '{v}' (PCIe, RDMA, TCP, VFIOUSER)"
                            )))
                        }
                    })
                }
                "traddr" => traddr = Some(v.to_string()),
                "trsvcid" => trsvcid = Some(v.to_string()),
                "subnqn" => subnqn = Some(v.to_string()),
                "hostnqn" => hostnqn = Some(v.to_string()),
                "adrfam" => {
                    adrfam = Some(match v.to_ascii_lowercase().as_str() {
                        "ipv4" => "IPv4".to_string(),
                        "ipv6" => "IPv6".to_string(),
                        "ib" => "IB".to_string(),
                        "fc" => "FC".to_string(),
                        _ => return Err(bad(format!("unknown adrfam '{v}' (IPv4, IPv6, IB, FC)"))),
                    })
                }
                // SPDK accepts these; they do not select a controller.
                "hostaddr" | "hostsvcid" | "priority" | "ns" | "alt_traddr" => {}
                other => return Err(bad(format!("unknown key '{other}'"))),
            }
        }
        let trtype = trtype.ok_or_else(|| bad("no trtype".into()))?;
        let traddr = traddr.ok_or_else(|| bad("no traddr".into()))?;
        let traddr = if trtype == TransportType::Pcie {
            rspdk_env::pci::normalize_bdf(&traddr).map_err(|e| bad(e.to_string()))?
        } else {
            traddr
        };
        if trtype == TransportType::Tcp {
            if let Some(p) = &trsvcid {
                if !matches!(p.parse::<u16>(), Ok(1..)) {
                    return Err(bad(format!("trsvcid '{p}' is not a TCP port (1..65535)")));
                }
            }
            let ip = traddr.parse::<std::net::IpAddr>();
            match (adrfam.as_deref(), &ip) {
                (Some("IPv4"), Ok(std::net::IpAddr::V6(_)))
                | (Some("IPv6"), Ok(std::net::IpAddr::V4(_))) => {
                    return Err(bad(format!(
                        "traddr '{traddr}' does not match adrfam {}",
                        adrfam.as_deref().unwrap_or("")
                    )))
                }
                (Some("IB") | Some("FC"), _) => {
                    return Err(bad(format!(
                        "adrfam {} is not for TCP (IPv4 or IPv6)",
                        adrfam.as_deref().unwrap_or("")
                    )))
                }
                _ => {}
            }
        }
        Ok(TransportId {
            trtype,
            traddr,
            adrfam,
            trsvcid,
            subnqn,
            hostnqn,
        })
    }
}

impl std::fmt::Display for TransportId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "trtype:{} traddr:{}", self.trtype.as_str(), self.traddr)?;
        if let Some(a) = &self.adrfam {
            write!(f, " adrfam:{a}")?;
        }
        if let Some(a) = &self.trsvcid {
            write!(f, " trsvcid:{a}")?;
        }
        if let Some(a) = &self.subnqn {
            write!(f, " subnqn:{a}")?;
        }
        if let Some(a) = &self.hostnqn {
            write!(f, " hostnqn:{a}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spdk_strings() {
        let t: TransportId = "trtype:PCIe traddr:0000:00:04.0".parse().unwrap();
        assert_eq!(t.trtype, TransportType::Pcie);
        assert_eq!(t.traddr, "0000:00:04.0");
        assert_eq!(t.to_string(), "trtype:PCIe traddr:0000:00:04.0");
        let t: TransportId = "  TRTYPE=pcie   traddr=00:04.0 ".parse().unwrap();
        assert_eq!(t.traddr, "0000:00:04.0");
        let t: TransportId = "trtype:PCIe traddr:0000.81.00.0".parse().unwrap();
        assert_eq!(t.traddr, "0000:81:00.0");
        let t: TransportId = "trtype:TCP adrfam:IPv4 traddr:10.0.0.1 trsvcid:4420 subnqn:nqn.x"
            .parse()
            .unwrap();
        assert_eq!(t.trtype, TransportType::Tcp);
        assert_eq!(t.trsvcid.as_deref(), Some("4420"));
        assert_eq!(
            t.to_string(),
            "trtype:TCP traddr:10.0.0.1 adrfam:IPv4 trsvcid:4420 subnqn:nqn.x"
        );
        let t: TransportId =
            "trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.x hostnqn:nqn.h"
                .parse()
                .unwrap();
        assert_eq!(t.adrfam.as_deref(), Some("IPv4"));
        assert_eq!(t.hostnqn.as_deref(), Some("nqn.h"));
        assert_eq!(t.socket_addr().unwrap().port(), 4420);
        assert!(!t.is_discovery());
        let t: TransportId = "trtype:TCP traddr:127.0.0.1".parse().unwrap();
        assert!(t.is_discovery());
    }

    #[test]
    fn rejects_bad_strings() {
        for bad in [
            "",
            "traddr:0000:00:04.0",
            "trtype:PCIe",
            "trtype:FC traddr:x",
            "trtype:PCIe traddr:zz",
            "trtype:PCIe traddr",
            "trtype:PCIe traddr:0000:00:04.0 colour:blue",
            "trtype: traddr:0000:00:04.0",
            "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:99999",
            "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:http",
            "trtype:TCP adrfam:IPv5 traddr:127.0.0.1",
            "trtype:TCP adrfam:IPv6 traddr:127.0.0.1",
            "trtype:TCP adrfam:IPv4 traddr:::1",
        ] {
            let e = bad.parse::<TransportId>().unwrap_err();
            assert!(e.to_string().contains("transport ID"), "{bad}: {e}");
        }
    }
}
