//! CSR parsing and proof-of-possession check, run by the server on every CSR an agent sends
//! (unauthenticated in `Attest`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = sigil_core::keys::parse_csr(data) {
        // A key that verified the CSR's signature has a public key to sign for.
        assert!(!key.spki_der().is_empty());
    }
});
