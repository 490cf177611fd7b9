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
    /// TCP (not implemented here).
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
    /// Subsystem NQN.
    pub subnqn: Option<String>,
}

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
        })
    }
}

impl std::str::FromStr for TransportId {
    type Err = NvmeError;

    fn from_str(s: &str) -> Result<Self, NvmeError> {
        let bad = |m: String| NvmeError::InvalidArgument(format!("transport ID '{s}': {m}"));
        let mut trtype = None;
        let mut traddr = None;
        let (mut adrfam, mut trsvcid, mut subnqn) = (None, None, None);
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
                "adrfam" => adrfam = Some(v.to_string()),
                "trsvcid" => trsvcid = Some(v.to_string()),
                "subnqn" => subnqn = Some(v.to_string()),
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
        Ok(TransportId {
            trtype,
            traddr,
            adrfam,
            trsvcid,
            subnqn,
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
        ] {
            let e = bad.parse::<TransportId>().unwrap_err();
            assert!(e.to_string().contains("transport ID"), "{bad}: {e}");
        }
    }
}
