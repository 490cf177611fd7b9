//! Text keys (RFC 7143 6, 13): `key=value` pairs separated by NUL, and
//! the negotiation of the operational keys.

use crate::IscsiError;

/// Largest key length RFC 7143 allows.
pub const MAX_KEY_LEN: usize = 63;
/// Largest value we accept (RFC 7143: 8192 for most keys; CHAP binaries are longer).
pub const MAX_VALUE_LEN: usize = 8192;

/// Parses `key=value\0` pairs. Trailing garbage after the last NUL is
/// tolerated only if empty; a pair without `=` or with an oversized key is
/// an error.
pub fn parse_text(data: &[u8]) -> Result<Vec<(String, String)>, IscsiError> {
    let mut out = Vec::new();
    for raw in data.split(|&b| b == 0) {
        if raw.is_empty() {
            continue;
        }
        let s = std::str::from_utf8(raw).map_err(|_| IscsiError::Text("key not UTF-8".into()))?;
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| IscsiError::Text(format!("no '=' in '{}'", s.escape_debug())))?;
        if k.is_empty() || k.len() > MAX_KEY_LEN {
            return Err(IscsiError::Text(format!("bad key length {}", k.len())));
        }
        if v.len() > MAX_VALUE_LEN {
            return Err(IscsiError::Text(format!("value of '{k}' too long")));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Builds a text data segment.
pub fn emit_text(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// The target's side of negotiable values (from `iscsi_set_options`).
#[derive(Debug, Clone)]
pub struct TargetLimits {
    /// What we accept per PDU.
    pub max_recv_data_segment_length: u32,
    /// Our MaxBurstLength.
    pub max_burst_length: u32,
    /// Our FirstBurstLength.
    pub first_burst_length: u32,
    /// Our ImmediateData.
    pub immediate_data: bool,
    /// Our InitialR2T.
    pub initial_r2t: bool,
    /// Our MaxOutstandingR2T.
    pub max_outstanding_r2t: u32,
    /// Our ErrorRecoveryLevel.
    pub error_recovery_level: u32,
    /// Our MaxConnections.
    pub max_connections: u32,
    /// Our DefaultTime2Wait.
    pub default_time2wait: u32,
    /// Our DefaultTime2Retain.
    pub default_time2retain: u32,
}

impl Default for TargetLimits {
    fn default() -> Self {
        TargetLimits {
            max_recv_data_segment_length: 65536,
            max_burst_length: 1 << 20,
            first_burst_length: 8192,
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: 16,
            error_recovery_level: 0,
            max_connections: 1,
            default_time2wait: 2,
            default_time2retain: 20,
        }
    }
}

/// Negotiated session/connection parameters.
#[derive(Debug, Clone)]
pub struct Params {
    /// The initiator's MaxRecvDataSegmentLength: our largest PDU data to send.
    pub send_dsl: u32,
    /// MaxBurstLength.
    pub max_burst_length: u32,
    /// FirstBurstLength.
    pub first_burst_length: u32,
    /// ImmediateData.
    pub immediate_data: bool,
    /// InitialR2T.
    pub initial_r2t: bool,
    /// MaxOutstandingR2T.
    pub max_outstanding_r2t: u32,
    /// DataPDUInOrder.
    pub data_pdu_in_order: bool,
    /// DataSequenceInOrder.
    pub data_sequence_in_order: bool,
    /// ErrorRecoveryLevel.
    pub error_recovery_level: u32,
    /// HeaderDigest=CRC32C.
    pub header_digest: bool,
    /// DataDigest=CRC32C.
    pub data_digest: bool,
    /// MaxConnections.
    pub max_connections: u32,
    /// DefaultTime2Wait.
    pub default_time2wait: u32,
    /// DefaultTime2Retain.
    pub default_time2retain: u32,
}

impl Params {
    /// RFC 7143 defaults (before negotiation).
    pub fn rfc_defaults() -> Params {
        Params {
            send_dsl: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            header_digest: false,
            data_digest: false,
            max_connections: 1,
            default_time2wait: 2,
            default_time2retain: 20,
        }
    }
}

fn num(v: &str, lo: u32, hi: u32) -> Option<u32> {
    let n = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u32::from_str_radix(h, 16).ok()?
    } else {
        v.parse::<u32>().ok()?
    };
    (lo..=hi).contains(&n).then_some(n)
}

fn boolean(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yn(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_string()
}

/// Keys handled elsewhere (login identity, authentication, discovery).
pub const DECLARATIVE_KEYS: &[&str] = &[
    "InitiatorName",
    "InitiatorAlias",
    "TargetName",
    "SessionType",
    "AuthMethod",
    "CHAP_A",
    "CHAP_N",
    "CHAP_R",
    "CHAP_I",
    "CHAP_C",
    "SendTargets",
    "TargetAlias",
    "TargetAddress",
    "TargetPortalGroupTag",
];

/// True for the session-wide keys that only the leading connection of a
/// session negotiates (RFC 7143 13: "LO"); a connection added to a session
/// answers them `Irrelevant` and keeps the session's values.
pub fn leading_only(key: &str) -> bool {
    matches!(
        key,
        "MaxConnections"
            | "InitialR2T"
            | "ImmediateData"
            | "MaxBurstLength"
            | "FirstBurstLength"
            | "DefaultTime2Wait"
            | "DefaultTime2Retain"
            | "MaxOutstandingR2T"
            | "DataPDUInOrder"
            | "DataSequenceInOrder"
            | "ErrorRecoveryLevel"
    )
}

/// Negotiates one operational key; returns the response pair, or `None`
/// for keys that need no answer. Unknown keys get `NotUnderstood`, bad
/// values `Reject`.
pub fn negotiate(
    p: &mut Params,
    ours: &TargetLimits,
    discovery: bool,
    key: &str,
    value: &str,
) -> Option<(String, String)> {
    let k = key.to_string();
    let reply = |v: String| Some((k.clone(), v));
    let reject = || Some((key.to_string(), "Reject".to_string()));
    let max24 = (1 << 24) - 1;
    match key {
        "HeaderDigest" | "DataDigest" => {
            let pick = value
                .split(',')
                .find(|c| *c == "CRC32C" || *c == "None")
                .map(str::to_string);
            match pick {
                Some(c) => {
                    let on = c == "CRC32C";
                    if key == "HeaderDigest" {
                        p.header_digest = on;
                    } else {
                        p.data_digest = on;
                    }
                    reply(c)
                }
                None => reject(),
            }
        }
        "MaxRecvDataSegmentLength" => match num(value, 512, max24) {
            Some(n) => {
                p.send_dsl = n;
                reply(ours.max_recv_data_segment_length.to_string())
            }
            None => reject(),
        },
        "MaxBurstLength" | "FirstBurstLength" if discovery => reply("Irrelevant".into()),
        "MaxBurstLength" => match num(value, 512, max24) {
            Some(n) => {
                p.max_burst_length = n.min(ours.max_burst_length);
                if p.first_burst_length > p.max_burst_length {
                    p.first_burst_length = p.max_burst_length;
                }
                reply(p.max_burst_length.to_string())
            }
            None => reject(),
        },
        "FirstBurstLength" => match num(value, 512, max24) {
            Some(n) => {
                p.first_burst_length = n.min(ours.first_burst_length).min(p.max_burst_length);
                reply(p.first_burst_length.to_string())
            }
            None => reject(),
        },
        "ImmediateData" | "InitialR2T" | "DataPDUInOrder" | "DataSequenceInOrder" if discovery => {
            reply("Irrelevant".into())
        }
        "ImmediateData" => match boolean(value) {
            Some(b) => {
                p.immediate_data = b && ours.immediate_data;
                reply(yn(p.immediate_data))
            }
            None => reject(),
        },
        "InitialR2T" => match boolean(value) {
            Some(b) => {
                p.initial_r2t = b || ours.initial_r2t;
                reply(yn(p.initial_r2t))
            }
            None => reject(),
        },
        "DataPDUInOrder" => match boolean(value) {
            Some(_) => {
                p.data_pdu_in_order = true;
                reply(yn(true))
            }
            None => reject(),
        },
        "DataSequenceInOrder" => match boolean(value) {
            Some(_) => {
                p.data_sequence_in_order = true;
                reply(yn(true))
            }
            None => reject(),
        },
        "MaxOutstandingR2T" if discovery => reply("Irrelevant".into()),
        "MaxOutstandingR2T" => match num(value, 1, 65535) {
            Some(n) => {
                p.max_outstanding_r2t = n.min(ours.max_outstanding_r2t);
                reply(p.max_outstanding_r2t.to_string())
            }
            None => reject(),
        },
        "ErrorRecoveryLevel" => match num(value, 0, 2) {
            Some(n) => {
                p.error_recovery_level = n.min(ours.error_recovery_level);
                reply(p.error_recovery_level.to_string())
            }
            None => reject(),
        },
        "MaxConnections" if discovery => reply("Irrelevant".into()),
        "MaxConnections" => match num(value, 1, 65535) {
            Some(n) => {
                p.max_connections = n.min(ours.max_connections);
                reply(p.max_connections.to_string())
            }
            None => reject(),
        },
        "DefaultTime2Wait" => match num(value, 0, 3600) {
            Some(n) => {
                p.default_time2wait = n.max(ours.default_time2wait);
                reply(p.default_time2wait.to_string())
            }
            None => reject(),
        },
        "DefaultTime2Retain" => match num(value, 0, 3600) {
            Some(n) => {
                p.default_time2retain = n.min(ours.default_time2retain);
                reply(p.default_time2retain.to_string())
            }
            None => reject(),
        },
        "IFMarker" | "OFMarker" => reply("No".into()),
        "OFMarkInt" | "IFMarkInt" => reply("Irrelevant".into()),
        k if k.starts_with("X-") || k.starts_with("X#") => reply("NotUnderstood".into()),
        _ => reply("NotUnderstood".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_and_emit() {
        let t = b"InitiatorName=iqn.x\0SessionType=Normal\0";
        let kv = parse_text(t).unwrap();
        assert_eq!(kv.len(), 2);
        assert_eq!(emit_text(&kv), t.to_vec());
        assert!(parse_text(b"novalue\0").is_err());
    }

    #[test]
    fn negotiation_rules() {
        let ours = TargetLimits::default();
        let mut p = Params::rfc_defaults();
        assert_eq!(
            negotiate(&mut p, &ours, false, "HeaderDigest", "CRC32C,None")
                .unwrap()
                .1,
            "CRC32C"
        );
        assert!(p.header_digest);
        assert_eq!(
            negotiate(&mut p, &ours, false, "InitialR2T", "No")
                .unwrap()
                .1,
            "Yes"
        );
        assert_eq!(
            negotiate(&mut p, &ours, false, "MaxBurstLength", "100")
                .unwrap()
                .1,
            "Reject"
        );
        assert_eq!(
            negotiate(&mut p, &ours, false, "Foo", "1").unwrap().1,
            "NotUnderstood"
        );
        assert_eq!(
            negotiate(&mut p, &ours, false, "MaxRecvDataSegmentLength", "4096")
                .unwrap()
                .1,
            "65536"
        );
        assert_eq!(p.send_dsl, 4096);
    }

    proptest! {
        #[test]
        fn text_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(kv) = parse_text(&bytes) {
                let ours = TargetLimits::default();
                let mut p = Params::rfc_defaults();
                for (k, v) in &kv {
                    let _ = negotiate(&mut p, &ours, false, k, v);
                }
                prop_assert!(p.first_burst_length <= p.max_burst_length);
            }
        }
    }
}
