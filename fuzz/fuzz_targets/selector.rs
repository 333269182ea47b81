//! Selector parsing (`type:value`), used on registration requests and in attestation. A parsed
//! selector must print back to a string that parses to the same selector.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigil_core::Selector;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(sel) = Selector::parse(s) {
        let again = Selector::parse(&sel.to_string()).expect("a printed selector parses");
        assert_eq!(again, sel);
        assert_eq!(Selector::new(sel.kind(), sel.value()).ok(), Some(sel));
    }
});
