//! Decoding of every request Sigil's server accepts (agents over mTLS, `Attest` without a client
//! certificate, admins on the admin socket). The first byte picks the message type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sigil_proto::sigil::v1 as pb;

/// Decodes `data` as `M`, and a decoded message must survive an encode/decode round trip.
fn check<M: Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(m) = M::decode(data) {
        let again = M::decode(m.encode_to_vec().as_slice()).expect("re-decodes");
        assert_eq!(again, m);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, data)) = data.split_first() else {
        return;
    };
    match which % 24 {
        0 => check::<pb::AttestRequest>(data),
        1 => check::<pb::RenewAgentRequest>(data),
        2 => check::<pb::BatchSignX509SvidRequest>(data),
        3 => check::<pb::MintJwtSvidRequest>(data),
        4 => check::<pb::SyncRequest>(data),
        5 => check::<pb::BatchCreateEntryRequest>(data),
        6 => check::<pb::GetEntryRequest>(data),
        7 => check::<pb::ListEntriesRequest>(data),
        8 => check::<pb::BatchUpdateEntryRequest>(data),
        9 => check::<pb::BatchDeleteEntryRequest>(data),
        10 => check::<pb::CreateJoinTokenRequest>(data),
        11 => check::<pb::ListAgentsRequest>(data),
        12 => check::<pb::GetAgentRequest>(data),
        13 => check::<pb::GetBundleRequest>(data),
        14 => check::<pb::ListFederatedBundlesRequest>(data),
        15 => check::<pb::DeleteFederatedBundleRequest>(data),
        16 => check::<pb::HealthCheckRequest>(data),
        17 => check::<pb::GetX509AuthorityStateRequest>(data),
        18 => check::<pb::PrepareX509AuthorityRequest>(data),
        19 => check::<pb::ActivateX509AuthorityRequest>(data),
        20 => check::<pb::GetJwtAuthorityStateRequest>(data),
        21 => check::<pb::PrepareJwtAuthorityRequest>(data),
        22 => check::<pb::ActivateJwtAuthorityRequest>(data),
        _ => check::<pb::Bundle>(data),
    }
});
