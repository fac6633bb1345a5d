//! Capability strings (`fs.write:reports/`, `net.http:https://api.example.com`): refused with a
//! typed error, or parsed into a capability whose text parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plugin_abi::Capability;
use plugin_abi::Origin;

fuzz_target!(|text: &str| {
    if let Ok(capability) = text.parse::<Capability>() {
        let written = capability.to_string();
        let again: Capability = written.parse().expect("a capability's text parses");
        assert_eq!(again, capability, "{text:?} -> {written:?}");
        assert_eq!(again.to_string(), written);
    }
    if let Ok(origin) = Origin::parse(text) {
        assert!(!origin.host().is_empty());
        assert!(origin.port() > 0);
    }
});
