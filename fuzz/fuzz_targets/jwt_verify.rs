//! JWT-SVID parsing and verification (`ValidateJWTSVID` takes any token from any workload),
//! against a bundle holding one real ES256 key: structure, header, claims and signature checks
//! all run on attacker-chosen input. Nothing random may verify.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sigil_core::jwt::{self, JwtKeyType};
use sigil_core::{Bundle, JwtAuthority, TrustDomain};

fn bundle() -> &'static Bundle {
    static B: OnceLock<Bundle> = OnceLock::new();
    B.get_or_init(|| {
        let key = jwt::generate_key(JwtKeyType::Es256).expect("key generation");
        let mut b = Bundle::new(TrustDomain::new("example.org").expect("valid trust domain"));
        b.jwt_authorities.push(JwtAuthority {
            key_id: "k1".into(),
            public_key_der: key.public_key_der,
            expires_at: 0,
        });
        b
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let result = jwt::verify(token, "aud", &[bundle()], 1_700_000_000);
    assert!(result.is_err(), "a token the fuzzer made verified");
});
