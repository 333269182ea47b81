//! SPIFFE bundle JSON (JWK set) parsing, for federated bundles an operator or peer supplies. A
//! parsed bundle must serialise to JSON that parses to the same bundle.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigil_core::{Bundle, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let td = TrustDomain::new("example.org").expect("valid trust domain");
    if let Ok(b) = Bundle::from_spiffe_json(td.clone(), data) {
        let json = b.to_spiffe_json().expect("a parsed bundle serialises");
        let again = Bundle::from_spiffe_json(td, json.as_bytes()).expect("its JSON reparses");
        assert_eq!(again.x509_authorities, b.x509_authorities);
        assert_eq!(again.jwt_authorities, b.jwt_authorities);
    }
});
