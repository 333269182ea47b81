//! The state-of-the-world xDS conversation of one `StreamSecrets` stream, as a plain state
//! machine: which requests are ACKs, NACKs or stale, and when a response is due. Kept free of
//! I/O so the protocol rules are tested one by one.
//!
//! The rules (Envoy's xDS protocol, as SPIRE's agent applies them to SDS):
//! - Every response carries a `version_info` and a fresh `nonce`; Envoy answers each response
//!   with a request that echoes the nonce as `response_nonce`.
//! - Such a request with the response's version is an ACK; one with `error_detail` (or an older
//!   version) is a NACK. Either way, if the subscribed names did not change, nothing is sent:
//!   re-sending what Envoy just rejected would loop.
//! - A request echoing an older nonce is stale (a newer response is on its way) and is ignored.
//! - A new subscription is answered at once; a change of the workload's identities is sent only
//!   when it changes what the subscription renders, under a new version.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

use super::resources::Subscription;

/// What to do after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction {
    /// Nothing to send (ACK, NACK or stale request with an unchanged subscription).
    Ignore,
    /// The subscription (or the node) changed: answer even if the rendering is unchanged.
    Respond,
}

/// One stream's protocol state.
#[derive(Debug, Default)]
pub struct XdsState {
    subscription: Option<Subscription>,
    node: Option<Node>,
    /// The last response sent: its version and nonce.
    sent: Option<(String, String)>,
    /// A response is owed regardless of content (new subscription or node).
    owed: bool,
}

impl XdsState {
    /// Applies a request from the client.
    pub fn on_request(&mut self, req: &DiscoveryRequest) -> Reaction {
        if let Some((version, nonce)) = &self.sent {
            if req.response_nonce != *nonce {
                tracing::debug!(
                    nonce = %req.response_nonce,
                    expected = %nonce,
                    "ignoring SDS request with a stale nonce"
                );
                return Reaction::Ignore;
            }
            if let Some(err) = &req.error_detail {
                tracing::warn!(
                    version = %version,
                    code = err.code,
                    error = %err.message,
                    resources = ?req.resource_names,
                    "Envoy rejected the secrets sent (NACK)"
                );
            } else if req.version_info != *version {
                tracing::warn!(
                    version = %req.version_info,
                    expected = %version,
                    "Envoy did not apply the secrets sent and kept an older version"
                );
            }
        }
        if let Some(node) = &req.node {
            // Envoy sends its node only on the first request of a stream by default.
            if self.node.as_ref() != Some(node) {
                self.node = Some(node.clone());
                self.owed = true;
            }
        }
        let sub = Subscription::new(&req.resource_names);
        if self.subscription.as_ref() != Some(&sub) {
            self.subscription = Some(sub);
            self.owed = true;
        }
        if self.owed {
            Reaction::Respond
        } else {
            Reaction::Ignore
        }
    }

    /// What the client subscribed to; `None` until its first request.
    pub fn subscription(&self) -> Option<&Subscription> {
        self.subscription.as_ref()
    }

    /// The client's node, from the latest request that carried one.
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    /// Whether a rendering with `version` should be sent now.
    pub fn should_send(&self, version: &str) -> bool {
        self.owed || self.sent.as_ref().is_none_or(|(v, _)| v != version)
    }

    /// Records a response as sent.
    pub fn sent(&mut self, version: String, nonce: String) {
        self.sent = Some((version, nonce));
        self.owed = false;
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::rpc::Status as RpcStatus;

    use super::*;

    fn req(names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    #[test]
    fn first_request_is_answered_then_acks_are_not() {
        let mut s = XdsState::default();
        assert!(s.subscription().is_none());
        assert_eq!(
            s.on_request(&req(&["default", "ROOTCA"], "", "")),
            Reaction::Respond
        );
        assert!(s.should_send("v1"));
        s.sent("v1".into(), "n1".into());
        assert!(!s.should_send("v1"));
        // ACK, names in another order.
        assert_eq!(
            s.on_request(&req(&["ROOTCA", "default"], "v1", "n1")),
            Reaction::Ignore
        );
        assert!(!s.should_send("v1"));
        // A rotation renders a new version.
        assert!(s.should_send("v2"));
    }

    #[test]
    fn nack_is_not_answered() {
        let mut s = XdsState::default();
        s.on_request(&req(&["default"], "", ""));
        s.sent("v1".into(), "n1".into());
        let mut nack = req(&["default"], "", "n1");
        nack.error_detail = Some(RpcStatus {
            code: 3,
            message: "bad key".into(),
            details: vec![],
        });
        assert_eq!(s.on_request(&nack), Reaction::Ignore);
        assert!(!s.should_send("v1"));
        assert!(s.should_send("v2"));
    }

    #[test]
    fn stale_nonce_is_ignored_even_with_new_names() {
        let mut s = XdsState::default();
        s.on_request(&req(&["default"], "", ""));
        s.sent("v1".into(), "n1".into());
        s.sent("v2".into(), "n2".into());
        assert_eq!(
            s.on_request(&req(&["default", "ROOTCA"], "v1", "n1")),
            Reaction::Ignore
        );
        assert_eq!(
            s.subscription(),
            Some(&Subscription::new(&["default"])),
            "a stale request does not change the subscription"
        );
        assert_eq!(
            s.on_request(&req(&["default", "ROOTCA"], "v2", "n2")),
            Reaction::Respond
        );
        assert!(s.should_send("v2"), "a new subscription is owed an answer");
        s.sent("v3".into(), "n3".into());
        assert!(!s.should_send("v3"));
    }

    #[test]
    fn node_is_remembered_and_a_new_one_is_answered() {
        let mut s = XdsState::default();
        let mut r = req(&["ROOTCA"], "", "");
        r.node = Some(Node {
            id: "a".into(),
            ..Default::default()
        });
        s.on_request(&r);
        s.sent("v1".into(), "n1".into());
        assert_eq!(
            s.on_request(&req(&["ROOTCA"], "v1", "n1")),
            Reaction::Ignore
        );
        assert_eq!(s.node().map(|n| n.id.as_str()), Some("a"));
        let mut r = req(&["ROOTCA"], "v1", "n1");
        r.node = Some(Node {
            id: "b".into(),
            ..Default::default()
        });
        assert_eq!(s.on_request(&r), Reaction::Respond);
    }
}
