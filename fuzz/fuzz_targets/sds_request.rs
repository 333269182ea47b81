//! Decoding of the Envoy SDS requests the agent accepts on its Workload API socket.
#![no_main]

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = DiscoveryRequest::decode(data) {
        let again = DiscoveryRequest::decode(r.encode_to_vec().as_slice()).expect("re-decodes");
        assert_eq!(again, r);
    }
    let _ = DeltaDiscoveryRequest::decode(data);
});
