//! The `agentd.invoke.v1` envelope: any text is refused with a typed error or parsed into a
//! request whose input survives a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plugin_abi::InvokeRequest;

fuzz_target!(|text: &str| {
    if let Ok(request) = InvokeRequest::parse(text) {
        let input = request.input_json();
        let again: serde_json::Value = serde_json::from_str(&input).expect("input_json is JSON");
        assert!(again.is_object(), "the input is an object");
        assert_eq!(again.as_object(), Some(&request.input));
    }
});
