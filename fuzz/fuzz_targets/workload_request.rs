//! Decoding of every request the agent's Workload API accepts from any local process.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sigil_proto::workload as wl;

fuzz_target!(|data: &[u8]| {
    let _ = wl::X509svidRequest::decode(data);
    let _ = wl::X509BundlesRequest::decode(data);
    let _ = wl::JwtBundlesRequest::decode(data);
    if let Ok(r) = wl::JwtsvidRequest::decode(data) {
        let again = wl::JwtsvidRequest::decode(r.encode_to_vec().as_slice()).expect("re-decodes");
        assert_eq!(again, r);
    }
    if let Ok(r) = wl::ValidateJwtsvidRequest::decode(data) {
        let again =
            wl::ValidateJwtsvidRequest::decode(r.encode_to_vec().as_slice()).expect("re-decodes");
        assert_eq!(again, r);
    }
});
