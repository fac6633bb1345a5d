//! `skill.toml`: any text is refused with a typed error, or gives a manifest whose limits are
//! non-zero and within the ceilings.
#![no_main]

use std::path::Path;

use agent_runtime::{LimitCeilings, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let ceilings = LimitCeilings::default();
    if let Ok(manifest) = Manifest::parse(text, Path::new("fuzz/skill.toml"), &ceilings) {
        let limits = &manifest.limits;
        assert!(limits.memory_bytes > 0 && limits.memory_bytes <= ceilings.memory_bytes);
        assert!(limits.fuel > 0 && limits.fuel <= ceilings.fuel);
        assert!(limits.deadline_ms > 0 && limits.deadline_ms <= ceilings.deadline_ms);
        assert!(!manifest.id.is_empty());
    }
});
