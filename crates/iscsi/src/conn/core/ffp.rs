//! The full feature phase dispatcher (SPDK: iscsi.c's
//! `iscsi_pdu_hdr_handle` / `iscsi_pdu_payload_handle`), and the small
//! requests handled whole here: NOP-Out, Text (SendTargets), Logout.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::ConnCore;
use super::State;
use crate::conn::session::*;
use crate::conn::NO_TAG;
use crate::pdu::{op, reject, Bhs, LogoutRequest, Pdu};
use crate::target::with_registry;
use crate::text::{emit_text, negotiate, parse_text};

impl ConnCore {
    pub(super) fn handle(&mut self, p: Pdu) {
        let opc = p.bhs.opcode();
        if self.state == State::Login {
            if opc != op::LOGIN_REQ {
                tracing::warn!(peer = %self.peer, opcode = opc, "non-login PDU during login");
                self.set_state(State::Closing);
                return;
            }
            return self.handle_login(p);
        }
        let discovery = self.session.as_ref().is_some_and(|s| s.discovery);
        match opc {
            op::NOP_OUT => self.handle_nop(p),
            op::SCSI_CMD if !discovery => self.handle_scsi(p),
            op::DATA_OUT if !discovery => self.handle_data_out(p),
            op::TMF_REQ if !discovery => self.handle_tmf(p),
            op::TEXT_REQ => self.handle_text(p),
            op::LOGOUT_REQ => self.handle_logout(p),
            op::LOGIN_REQ => {
                self.send_reject(reject::PROTOCOL_ERROR, &p.bhs);
            }
            op::SNACK => self.send_reject(reject::PROTOCOL_ERROR, &p.bhs),
            _ => self.send_reject(reject::NOT_SUPPORTED, &p.bhs),
        }
    }

    pub(super) fn handle_nop(&mut self, p: Pdu) {
        if !self.accept_cmd_sn(&p.bhs) {
            return;
        }
        if p.bhs.itt() == NO_TAG {
            return; // a ping answer or no reply wanted
        }
        let mut b = Bhs::new(op::NOP_IN, 0x80);
        b.set_lun(p.bhs.lun());
        b.set_itt(p.bhs.itt());
        b.set_ttt(NO_TAG);
        self.next_stat_sn(&mut b);
        let mut data = p.data;
        data.truncate(self.params.send_dsl as usize);
        self.send(&Pdu::new(b, data));
    }

    pub(super) fn handle_text(&mut self, p: Pdu) {
        if !self.accept_cmd_sn(&p.bhs) {
            return;
        }
        let kv = parse_text(&p.data).unwrap_or_default();
        let mut resp = Vec::new();
        let ip = self.peer.ip();
        for (k, v) in &kv {
            if k == "SendTargets" {
                let only = match v.as_str() {
                    "All" => None,
                    "" => self.target.as_ref().map(|t| t.name.clone()),
                    name => Some(name.to_string()),
                };
                if v == "All" && !self.session_type_discovery {
                    // Normal sessions may only ask for their own target.
                }
                let init = self.initiator_name.clone();
                resp.extend(with_registry(|r| {
                    r.send_targets(self.pg_tag, &init, ip, self.local, only.as_deref())
                }));
            } else {
                let discovery = self.session_type_discovery;
                if let Some(r) = negotiate(&mut self.params, &self.limits, discovery, k, v) {
                    resp.push(r);
                }
            }
        }
        let mut b = Bhs::new(op::TEXT_RESP, 0x80);
        b.set_lun(p.bhs.lun());
        b.set_itt(p.bhs.itt());
        b.set_ttt(NO_TAG);
        self.next_stat_sn(&mut b);
        self.send(&Pdu::new(b, emit_text(&resp)));
    }

    /// Logout: reason 0 closes the session (every connection of it), 1 and
    /// 2 close the connection named by CID, which may be another connection
    /// of the session (then this one goes on).
    pub(super) fn handle_logout(&mut self, p: Pdu) {
        if !self.accept_cmd_sn(&p.bhs) {
            return;
        }
        let reason = LogoutRequest::new_unchecked_view(p.bhs).reason();
        let cid = p.bhs.cid();
        let mut response = 0;
        let mut close_self = true;
        if let Some(sh) = &self.shared {
            let all = sessions();
            let same = |e: &SessionEntry| Arc::ptr_eq(&e.shared, sh);
            if reason == 0 {
                for (id, e) in all.iter() {
                    if same(e) && *id != self.id {
                        e.kill.store(true, Ordering::Release);
                    }
                }
            } else if cid != self.cid {
                close_self = false;
                let mut found = false;
                for (_, e) in all.iter() {
                    if same(e) && e.cid == cid {
                        e.kill.store(true, Ordering::Release);
                        found = true;
                    }
                }
                if !found {
                    response = 1; // CID not found
                }
            }
        }
        let mut b = Bhs::new(op::LOGOUT_RESP, 0x80);
        b.set_itt(p.bhs.itt());
        b.set_response(response);
        self.next_stat_sn(&mut b);
        self.send(&Pdu::new(b, Vec::new()));
        if close_self {
            self.set_state(State::Closing);
        }
    }
}
