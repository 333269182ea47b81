//! The agent-record rules, as pure functions: which agent SVID a record accepts, and what a
//! renewal, a ban or the first use of a renewed SVID changes. The handlers run them as
//! check-and-set decisions inside [`DataStore::update_agent`](crate::datastore::DataStore),
//! so each is evaluated against the stored record, never against an earlier copy.
//!
//! SVID acceptance (SPIRE's model, with a time bound added): the record holds the serial of
//! the newest SVID and, after a renewal, the one it replaced. The previous SVID is accepted
//! until the agent first presents the new one (the switch-over; SPIRE calls it activation) or
//! until the overlap configured as `agent_svid_overlap` has passed, whichever comes first.
//! Anything else, such as a stolen copy of an SVID the agent has since replaced, or an SVID
//! from before an eviction and re-attestation, is refused.

use crate::datastore::AgentRecord;

/// How a presented agent SVID stands against the stored record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SvidStanding {
    /// The newest SVID the server issued to this agent.
    Current,
    /// The one the last renewal replaced, inside its overlap.
    Previous,
    /// Neither: replaced, from an earlier attestation, or past its overlap.
    Superseded,
}

/// Classifies the SVID with serial `serial` presented at unix time `now`.
pub fn standing(agent: &AgentRecord, serial: &str, now: i64) -> SvidStanding {
    if serial.is_empty() {
        SvidStanding::Superseded
    } else if serial == agent.x509_svid_serial {
        SvidStanding::Current
    } else if serial == agent.previous_x509_svid_serial
        && now < agent.previous_x509_svid_accepted_until
    {
        SvidStanding::Previous
    } else {
        SvidStanding::Superseded
    }
}

/// A freshly issued agent SVID, as a renewal records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// Its serial, as `x509_parser` renders it.
    pub serial: String,
    /// Its notAfter, unix seconds.
    pub expires_at: i64,
}

/// The record after a renewal by a caller that presented `presented`, or `None` when the
/// stored record no longer allows it (banned since the caller authenticated, or the presented
/// SVID superseded meanwhile). The presented SVID becomes the previous one, accepted until
/// `now + overlap_secs`: it is the one the agent provably holds if the reply gets lost.
pub fn renewed(
    agent: &AgentRecord,
    presented: &str,
    issued: &Issued,
    now: i64,
    overlap_secs: i64,
) -> Option<AgentRecord> {
    if agent.banned || standing(agent, presented, now) == SvidStanding::Superseded {
        return None;
    }
    let mut next = agent.clone();
    next.previous_x509_svid_serial = presented.to_owned();
    next.previous_x509_svid_accepted_until = now.saturating_add(overlap_secs);
    next.x509_svid_serial = issued.serial.clone();
    next.x509_svid_expires_at = issued.expires_at;
    Some(next)
}

/// The record once the agent has presented its current SVID `serial`: the previous one is
/// dropped. `None` when there is nothing to change (already switched, or `serial` is not the
/// current one any more).
pub fn switched(agent: &AgentRecord, serial: &str) -> Option<AgentRecord> {
    if agent.previous_x509_svid_serial.is_empty() || agent.x509_svid_serial != serial {
        return None;
    }
    let mut next = agent.clone();
    next.previous_x509_svid_serial.clear();
    next.previous_x509_svid_accepted_until = 0;
    Some(next)
}

/// The record banned; `None` if it already is (nothing to write).
pub fn banned(agent: &AgentRecord) -> Option<AgentRecord> {
    if agent.banned {
        return None;
    }
    let mut next = agent.clone();
    next.banned = true;
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AgentRecord {
        AgentRecord {
            id: sigil_core::SpiffeId::parse("spiffe://td/sigil/agent/join_token/t").unwrap(),
            attestation_type: "join_token".into(),
            x509_svid_serial: "cur".into(),
            x509_svid_expires_at: 5000,
            previous_x509_svid_serial: "old".into(),
            previous_x509_svid_accepted_until: 1000,
            selectors: vec![],
            banned: false,
            created_at: 0,
        }
    }

    #[test]
    fn standing_table() {
        let r = record();
        for (serial, now, want) in [
            ("cur", 0, SvidStanding::Current),
            ("cur", 99_999, SvidStanding::Current),
            ("old", 999, SvidStanding::Previous),
            ("old", 1000, SvidStanding::Superseded),
            ("older", 0, SvidStanding::Superseded),
            ("", 0, SvidStanding::Superseded),
        ] {
            assert_eq!(standing(&r, serial, now), want, "{serial} at {now}");
        }
        let mut none = record();
        none.previous_x509_svid_serial.clear();
        assert_eq!(standing(&none, "", 0), SvidStanding::Superseded);
    }

    #[test]
    fn renewal_keeps_the_presented_svid_for_the_overlap() {
        let issued = Issued {
            serial: "new".into(),
            expires_at: 9000,
        };
        let next = renewed(&record(), "cur", &issued, 500, 300).unwrap();
        assert_eq!(next.x509_svid_serial, "new");
        assert_eq!(next.x509_svid_expires_at, 9000);
        assert_eq!(next.previous_x509_svid_serial, "cur");
        assert_eq!(next.previous_x509_svid_accepted_until, 800);
        // A retry with the previous SVID (the reply was lost) is allowed and forgets the
        // unseen one.
        let retry = renewed(&record(), "old", &issued, 500, 300).unwrap();
        assert_eq!(retry.previous_x509_svid_serial, "old");
        assert_eq!(retry.x509_svid_serial, "new");
        // Superseded or banned: refused.
        assert_eq!(renewed(&record(), "old", &issued, 1000, 300), None);
        assert_eq!(renewed(&record(), "other", &issued, 0, 300), None);
        let mut b = record();
        b.banned = true;
        assert_eq!(renewed(&b, "cur", &issued, 0, 300), None);
    }

    #[test]
    fn switching_drops_the_previous_svid_once() {
        let next = switched(&record(), "cur").unwrap();
        assert!(next.previous_x509_svid_serial.is_empty());
        assert_eq!(standing(&next, "old", 0), SvidStanding::Superseded);
        assert_eq!(switched(&next, "cur"), None);
        assert_eq!(switched(&record(), "old"), None);
    }

    #[test]
    fn banning_is_idempotent() {
        let b = banned(&record()).unwrap();
        assert!(b.banned);
        assert_eq!(banned(&b), None);
    }
}
