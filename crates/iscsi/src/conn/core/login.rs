//! Login and parameter negotiation (SPDK: lib/iscsi/iscsi.c's login
//! handling and param.c; the text keys themselves are in [`crate::text`]):
//! the security and operational stages, CHAP, discovery and normal
//! sessions, session reinstatement and MC/S joins.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::State;
use super::{ConnCore, Session};
use crate::conn::session::*;
use crate::pdu::{login_response_flags, op, stage, Bhs, LoginRequest, Pdu};
use crate::target::with_registry;
use crate::text::{emit_text, negotiate, parse_text, Params};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Chap {
    Off,
    WaitA,
    WaitR { id: u8, challenge: Vec<u8> },
}

/// A login failure: Status-Class and Status-Detail (RFC 7143 11.13.5).
type LoginFailure = (u8, u8);

impl ConnCore {
    pub(super) fn login_response(
        &mut self,
        req: &Bhs,
        flags: u8,
        class: u8,
        detail: u8,
        data: Vec<u8>,
    ) {
        let mut b = Bhs::new(op::LOGIN_RESP, flags);
        b.set_versions(0, 0);
        b.set_isid(req.isid());
        let tsih = self.session.as_ref().map(|s| s.tsih).unwrap_or(0);
        if flags & 0x83 == 0x83 {
            b.set_tsih(tsih);
        } else {
            b.set_tsih(req.tsih());
        }
        b.set_itt(req.itt());
        self.next_stat_sn(&mut b);
        b.set_login_status(class, detail);
        self.send(&Pdu::new(b, data));
        if class != 0 {
            self.set_state(State::Closing);
        }
    }

    pub(super) fn handle_login(&mut self, p: Pdu) {
        let b = p.bhs;
        if let Err((class, detail)) = self.login_step(&b, &p.data) {
            self.login_response(&b, 0, class, detail, Vec::new());
        }
    }

    /// One Login Request: stage checks, the text (gathered over PDUs with
    /// the C bit), identity keys, session start, key negotiation and
    /// authentication, then the response (and the full feature phase).
    /// An error is the Status-Class and Status-Detail of the failure
    /// response the caller sends.
    fn login_step(&mut self, b: &Bhs, text: &[u8]) -> Result<(), LoginFailure> {
        let b = *b;
        let req = LoginRequest::new_checked(b).map_err(|_| (0x02, 0x00))?;
        let transit = req.transit();
        let cont = req.continues();
        let csg = req.csg();
        let nsg = req.nsg();
        if !self.login_started {
            self.login_started = true;
            self.stat_sn = b.exp_stat_sn();
            self.exp_cmd_sn = b.cmd_sn();
            self.cid = b.cid();
            self.isid = b.isid();
            if req.version_min() > 0 {
                // Version-min above ours.
                return Err((0x02, 0x05));
            }
            if b.tsih() != 0 {
                // Adds a connection to an existing session (MC/S), found
                // once the identity keys are in.
                self.join_tsih = Some(b.tsih());
            }
        }
        self.exp_cmd_sn = b.cmd_sn();
        if (transit && cont)
            || csg == 2
            || (transit && (nsg == 2 || nsg <= csg && nsg != 3))
            || csg == 3
        {
            return Err((0x02, 0x00));
        }
        let mut data = std::mem::take(&mut self.login_keys);
        let kv = parse_text(text).map_err(|e| {
            tracing::warn!(peer = %self.peer, error = %e, "bad login text");
            (0x02, 0x00)
        })?;
        if cont {
            data.extend(kv);
            self.login_keys = data;
            let f = (csg << 2) | nsg;
            self.login_response(&b, f & 0x0c, 0, 0, Vec::new());
            return Ok(());
        }
        data.extend(kv);
        let mut resp: Vec<(String, String)> = Vec::new();
        self.login_identity(&data)?;
        if self.session.is_none() {
            self.start_session(&mut resp)?;
        }
        self.negotiate_login_keys(csg, &data, &mut resp)?;
        self.check_auth(csg, &mut resp)?;
        let transit = transit && (csg != 0 || self.auth_done);
        let out_flags = login_response_flags(transit, csg, nsg);
        if transit && nsg == stage::FULL_FEATURE {
            self.register_session()?;
        }
        let text = emit_text(&resp);
        self.login_response(&b, out_flags, 0, 0, text);
        if out_flags & 0x83 == 0x83 {
            self.set_state(State::FullFeature);
            self.hd = self.params.header_digest;
            self.dd = self.params.data_digest;
            tracing::info!(peer = %self.peer, initiator = %self.initiator_name,
                target = ?self.target.as_ref().map(|t| &t.name), "iSCSI login complete");
        }
        Ok(())
    }

    /// The identity keys: InitiatorName, SessionType, TargetName.
    fn login_identity(&mut self, data: &[(String, String)]) -> Result<(), LoginFailure> {
        // Identity keys.
        for (k, v) in data {
            match k.as_str() {
                "InitiatorName" => self.initiator_name = v.clone(),
                "SessionType" => match v.as_str() {
                    "Discovery" => self.session_type_discovery = true,
                    "Normal" => self.session_type_discovery = false,
                    _ => return Err((0x02, 0x00)),
                },
                "TargetName" => {
                    let t = with_registry(|r| r.targets.get(v).cloned());
                    match t {
                        Some(t) => {
                            if let Some(e) = logging_in().iter_mut().find(|e| e.info.id == self.id)
                            {
                                e.info.target_node_name = t.name.clone();
                            }
                            self.target = Some(t);
                        }
                        None => return Err((0x02, 0x03)),
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The first login PDU with the identity keys: checks the initiator
    /// may log in to the target, and starts a session (or joins one, MC/S).
    fn start_session(&mut self, resp: &mut Vec<(String, String)>) -> Result<(), LoginFailure> {
        if self.initiator_name.is_empty() {
            return Err((0x02, 0x07));
        }
        if !self.session_type_discovery {
            let Some(t) = self.target.clone() else {
                return Err((0x02, 0x07));
            };
            let ok =
                with_registry(|r| r.allowed(&t, self.pg_tag, &self.initiator_name, self.peer.ip()));
            if !ok {
                return Err((0x02, 0x02));
            }
            self.queue_depth = t.queue_depth.max(1);
        }
        if let Some(tsih) = self.join_tsih {
            self.join_session(tsih)?;
        } else {
            let nexus = format!(
                "{},i,0x{}",
                self.initiator_name,
                self.isid
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<String>()
            );
            self.session = Some(Session {
                discovery: self.session_type_discovery,
                target: self.target.clone(),
                tsih: 0,
                nexus: nexus.into(),
            });
        }
        if !self.session_type_discovery {
            resp.push(("TargetPortalGroupTag".into(), self.pg_tag.to_string()));
        }
        Ok(())
    }

    /// Authentication (AuthMethod, CHAP_*) and operational keys.
    fn negotiate_login_keys(
        &mut self,
        csg: u8,
        data: &[(String, String)],
        resp: &mut Vec<(String, String)>,
    ) -> Result<(), LoginFailure> {
        let discovery = self.session_type_discovery;
        for (k, v) in data {
            match k.as_str() {
                "InitiatorName" | "SessionType" | "TargetName" | "InitiatorAlias" => {}
                "AuthMethod" => {
                    if csg != 0 {
                        resp.push((k.clone(), "Reject".into()));
                        continue;
                    }
                    let offers: Vec<&str> = v.split(',').collect();
                    let (require, _, group) = self.auth_policy();
                    if offers.contains(&"CHAP")
                        && (require || (!offers.contains(&"None") && group != 0))
                    {
                        resp.push((k.clone(), "CHAP".into()));
                        self.chap = Chap::WaitA;
                    } else if !require && offers.contains(&"None") {
                        resp.push((k.clone(), "None".into()));
                        self.auth_done = true;
                    } else {
                        return Err((0x02, 0x01));
                    }
                }
                "CHAP_A" if csg == 0 => {
                    if self.chap != Chap::WaitA || !v.split(',').any(|a| a == "5") {
                        return Err((0x02, 0x01));
                    }
                    // No randomness, no login: a guessable challenge
                    // would let a recorded response be replayed.
                    let (id, challenge) = match crate::chap::challenge() {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::error!(peer = %self.peer, error = %e,
                                "no random bytes for the CHAP challenge: failing the login");
                            // Target error, out of resources.
                            return Err((0x03, 0x02));
                        }
                    };
                    resp.push(("CHAP_A".into(), "5".into()));
                    resp.push(("CHAP_I".into(), id.to_string()));
                    resp.push(("CHAP_C".into(), crate::chap::to_hex(&challenge)));
                    self.chap = Chap::WaitR { id, challenge };
                }
                "CHAP_N" | "CHAP_R" | "CHAP_I" | "CHAP_C" if csg == 0 => {
                    self.chap_keys.push((k.clone(), v.clone()));
                }
                "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => {
                    resp.push((k.clone(), "Irrelevant".into()))
                }
                // A non-leading connection keeps the session's values.
                _ if self.joining.is_some() && crate::text::leading_only(k) => {
                    resp.push((k.clone(), "Irrelevant".into()))
                }
                _ if csg == 0 => {
                    // Operational keys in the security stage are negotiated too.
                    if let Some(r) = negotiate(&mut self.params, &self.limits, discovery, k, v) {
                        resp.push(r);
                    }
                }
                _ => {
                    if let Some(r) = negotiate(&mut self.params, &self.limits, discovery, k, v) {
                        resp.push(r);
                    }
                }
            }
        }
        Ok(())
    }

    /// Verifies a CHAP response that arrived; fails a login that must
    /// authenticate and leaves the security stage without having done so.
    fn check_auth(
        &mut self,
        csg: u8,
        resp: &mut Vec<(String, String)>,
    ) -> Result<(), LoginFailure> {
        if let Chap::WaitR { .. } = self.chap {
            if self.chap_keys.iter().any(|(k, _)| k == "CHAP_R") {
                match self.chap_verify() {
                    Some(extra) => resp.extend(extra),
                    None => return Err((0x02, 0x01)),
                }
            }
        }
        let (require, _, _) = self.auth_policy();
        if require && !self.auth_done && csg == 1 {
            // Authentication is required and did not happen.
            return Err((0x02, 0x01));
        }
        Ok(())
    }

    /// Enters the full feature phase: the session is created (session
    /// reinstatement closes an older one of this initiator port) or joined
    /// (connection reinstatement closes an older connection with this
    /// CID), and the connection is listed.
    fn register_session(&mut self) -> Result<(), LoginFailure> {
        let target_name = self
            .target
            .as_ref()
            .map(|t| t.name.clone())
            .unwrap_or_default();
        let mut all = sessions();
        let shared = match self.joining.take() {
            Some(sh) => {
                // Connection reinstatement: an older connection with
                // this CID leaves the session.
                for (_, s) in all.iter() {
                    if Arc::ptr_eq(&s.shared, &sh) && s.cid == self.cid {
                        s.kill.store(true, Ordering::Release);
                    }
                }
                sh
            }
            None => {
                // Session reinstatement: close older sessions of this
                // initiator port.
                for (_, s) in all.iter() {
                    if s.initiator == self.initiator_name
                        && s.isid == self.isid
                        && s.target == target_name
                    {
                        s.kill.store(true, Ordering::Release);
                    }
                }
                let tsih = NEXT_TSIH.fetch_add(1, Ordering::Relaxed).max(1);
                let Some(sess) = self.session.as_mut() else {
                    drop(all);
                    return Err((0x03, 0x00));
                };
                sess.tsih = tsih;
                Arc::new(SessionShared {
                    tsih,
                    discovery: sess.discovery,
                    target: sess.target.clone(),
                    nexus: sess.nexus.clone(),
                    queue_depth: self.queue_depth,
                    params: self.params.clone(),
                    cmd_sn: AtomicU64::new(u64::from(self.exp_cmd_sn) << 32),
                    conns: AtomicU32::new(0),
                })
            }
        };
        shared.conns.fetch_add(1, Ordering::AcqRel);
        all.push((
            self.id,
            SessionEntry {
                logout: self.logout_req.clone(),
                pg_tag: self.pg_tag,
                initiator: self.initiator_name.clone(),
                isid: self.isid,
                target: target_name.clone(),
                cid: self.cid,
                kill: self.kill.clone(),
                mailbox: self.mailbox.clone(),
                shared: shared.clone(),
                info: Some(ConnInfo {
                    id: self.id,
                    cid: self.cid,
                    tsih: shared.tsih,
                    lcore_id: self.lcore_id,
                    initiator_addr: self.peer.ip().to_string(),
                    target_addr: self.local.ip().to_string(),
                    target_node_name: target_name,
                    thread_name: self.thread_name.clone(),
                    initiator_name: self.initiator_name.clone(),
                    isid: self.isid.iter().map(|x| format!("{x:02x}")).collect(),
                    state: "running",
                    login_phase: "full_feature_phase",
                }),
            },
        ));
        drop(all);
        self.shared = Some(shared);
        self.registered = true;
        Ok(())
    }

    /// The first login PDU of a connection that names an existing session
    /// (TSIH != 0): finds the session of this initiator port and target,
    /// checks MaxConnections, and takes over the session's values.
    fn join_session(&mut self, tsih: u16) -> Result<(), LoginFailure> {
        let target_name = self.target.as_ref().map(|t| t.name.clone());
        let found = {
            let all = sessions();
            let sh = all
                .iter()
                .find(|(_, e)| {
                    e.shared.tsih == tsih
                        && e.isid == self.isid
                        && e.initiator == self.initiator_name
                        && Some(&e.target) == target_name.as_ref()
                        && !e.shared.discovery
                })
                .map(|(_, e)| e.shared.clone());
            sh.map(|sh| {
                let others = all
                    .iter()
                    .filter(|(_, e)| Arc::ptr_eq(&e.shared, &sh) && e.cid != self.cid)
                    .count();
                (sh, others)
            })
        };
        let Some((sh, others)) = found else {
            tracing::warn!(peer = %self.peer, tsih, "login names a session that does not exist");
            return Err((0x02, 0x0a));
        };
        if others >= sh.params.max_connections as usize {
            tracing::warn!(peer = %self.peer, tsih, max = sh.params.max_connections,
                "session has MaxConnections connections already");
            return Err((0x02, 0x06));
        }
        // Session-wide keys from the leading login; connection keys
        // (digests, MaxRecvDataSegmentLength) start over.
        let fresh = Params::rfc_defaults();
        self.params = Params {
            send_dsl: fresh.send_dsl,
            header_digest: false,
            data_digest: false,
            ..sh.params.clone()
        };
        self.queue_depth = sh.queue_depth;
        self.session = Some(Session {
            discovery: false,
            target: sh.target.clone(),
            tsih: sh.tsih,
            nexus: sh.nexus.clone(),
        });
        self.joining = Some(sh);
        Ok(())
    }

    /// (CHAP required, mutual CHAP required, auth group) for this login:
    /// discovery sessions follow their portal group's settings
    /// (`iscsi_portal_group_set_auth`, else the global discovery auth),
    /// normal sessions their target node's (group 0: the global group).
    pub(super) fn auth_policy(&self) -> (bool, bool, i32) {
        if self.session_type_discovery {
            with_registry(|r| {
                let a = r
                    .portal_groups
                    .get(&self.pg_tag)
                    .and_then(|g| g.auth)
                    .unwrap_or(crate::target::Auth {
                        disable_chap: r.options.disable_chap,
                        require_chap: r.options.require_chap,
                        mutual_chap: r.options.mutual_chap,
                        chap_group: r.options.chap_group,
                    });
                (
                    a.require_chap && !a.disable_chap,
                    a.mutual_chap,
                    a.chap_group,
                )
            })
        } else {
            match &self.target {
                Some(t) => {
                    let a = *t.auth.lock().unwrap_or_else(|e| e.into_inner());
                    let g = if a.chap_group != 0 {
                        a.chap_group
                    } else {
                        with_registry(|r| r.options.chap_group)
                    };
                    (a.require_chap && !a.disable_chap, a.mutual_chap, g)
                }
                None => (false, false, 0),
            }
        }
    }

    /// Checks the initiator's CHAP_N/CHAP_R; returns the keys to answer
    /// (the target's own CHAP_N/CHAP_R for mutual CHAP), None on failure.
    pub(super) fn chap_verify(&mut self) -> Option<Vec<(String, String)>> {
        let Chap::WaitR { id, challenge } = std::mem::replace(&mut self.chap, Chap::Off) else {
            return None;
        };
        let get = |k: &str| {
            self.chap_keys
                .iter()
                .rev()
                .find(|(kk, _)| kk == k)
                .map(|(_, v)| v.clone())
        };
        let name = get("CHAP_N")?;
        let r = crate::chap::from_hex(&get("CHAP_R")?)?;
        let (_, mutual, group) = self.auth_policy();
        let secret = with_registry(|reg| {
            reg.auth_groups
                .get(&group)
                .and_then(|g| g.secrets.iter().find(|s| s.user == name).cloned())
        })?;
        if crate::chap::response(id, secret.secret.as_bytes(), &challenge).as_slice()
            != r.as_slice()
        {
            tracing::warn!(peer = %self.peer, user = %name, "CHAP response does not match");
            return None;
        }
        let mut out = Vec::new();
        let ci = get("CHAP_I");
        let cc = get("CHAP_C");
        if mutual || (ci.is_some() && cc.is_some()) {
            let ci: u8 = ci?.parse().ok()?;
            let cc = crate::chap::from_hex(&cc?)?;
            if cc == challenge {
                return None; // reflected challenge
            }
            let (muser, msecret) = (secret.muser.clone()?, secret.msecret.clone()?);
            out.push(("CHAP_N".to_string(), muser));
            out.push((
                "CHAP_R".to_string(),
                crate::chap::to_hex(&crate::chap::response(ci, msecret.as_bytes(), &cc)),
            ));
        }
        self.auth_done = true;
        Some(out)
    }
}
