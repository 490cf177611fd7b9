//! The discovery log page's entries (NVMe-oF 1.1, figure 33).

use crate::trid::{TransportId, TransportType};

/// One entry of the discovery log page (LID 70h, NVMe-oF 1.1 figure 33).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryEntry {
    /// Transport type (1 RDMA, 2 FC, 3 TCP, 254 intra-host).
    pub trtype: u8,
    /// Address family (1 IPv4, 2 IPv6, 3 IB, 4 FC).
    pub adrfam: u8,
    /// Subsystem type (1 referral to a discovery service, 2 NVM subsystem,
    /// 3 current discovery subsystem).
    pub subtype: u8,
    /// Transport requirements.
    pub treq: u8,
    /// Port id.
    pub portid: u16,
    /// Controller id (0xffff: dynamic).
    pub cntlid: u16,
    /// Admin queue size the subsystem takes.
    pub asqsz: u16,
    /// Service id (the TCP port).
    pub trsvcid: String,
    /// Address.
    pub traddr: String,
    /// Subsystem NQN.
    pub subnqn: String,
}

impl DiscoveryEntry {
    /// Parses a 1024-byte entry.
    pub fn parse(b: &[u8]) -> Option<DiscoveryEntry> {
        if b.len() < 1024 {
            return None;
        }
        let text = |r: std::ops::Range<usize>| {
            String::from_utf8_lossy(&b[r])
                .trim_end_matches([' ', '\0'])
                .to_string()
        };
        Some(DiscoveryEntry {
            trtype: b[0],
            adrfam: b[1],
            subtype: b[2],
            treq: b[3],
            portid: u16::from_le_bytes([b[4], b[5]]),
            cntlid: u16::from_le_bytes([b[6], b[7]]),
            asqsz: u16::from_le_bytes([b[8], b[9]]),
            trsvcid: text(32..64),
            subnqn: text(256..512),
            traddr: text(512..768),
        })
    }

    /// The transport ID of an NVMe/TCP entry (None for other transports).
    pub fn trid(&self) -> Option<TransportId> {
        if self.trtype != 3 {
            return None;
        }
        Some(TransportId {
            trtype: TransportType::Tcp,
            traddr: self.traddr.clone(),
            adrfam: Some(if self.adrfam == 2 { "IPv6" } else { "IPv4" }.into()),
            trsvcid: Some(self.trsvcid.clone()),
            subnqn: Some(self.subnqn.clone()),
            hostnqn: None,
        })
    }
}
