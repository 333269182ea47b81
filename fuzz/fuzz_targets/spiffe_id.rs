//! SPIFFE ID and trust domain parsing: every ID a peer sends (CSRs, JWT `sub`, requests) goes
//! through it. A parsed ID must print back to a string that parses to the same ID.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigil_core::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(s) {
        let again = SpiffeId::parse(&id.to_string()).expect("a printed ID parses");
        assert_eq!(again, id);
        assert_eq!(SpiffeId::parse_workload(s).is_ok(), !id.is_trust_domain_id());
    }
    if let Ok(td) = TrustDomain::new(s) {
        assert_eq!(TrustDomain::new(td.as_str()).expect("a trust domain reparses"), td);
    }
});
