//! `spin-describe`: a hostile skill whose `describe` never returns.
//!
//! Review finding: a spinning `describe` stalled every command for its manifest deadline (up to
//! 600 s). Loading must give up at describe's own short deadline and refuse the package.

use plugin_abi::guest::{Descriptor, Invocation, OutputRecord, SkillError};

struct SpinDescribe;

impl plugin_abi::guest::bindings::Guest for SpinDescribe {
    fn wizer_initialize() {}

    fn describe() -> Descriptor {
        let mut iterations: u64 = 0;
        loop {
            iterations = std::hint::black_box(iterations.wrapping_add(1));
        }
    }

    fn invoke(_invocation: Invocation) -> Result<OutputRecord, SkillError> {
        Err(SkillError::Permanent("never loaded, so never invoked".to_owned()))
    }
}

plugin_abi::guest::bindings::export_skill_world!(SpinDescribe with_types_in plugin_abi::guest::bindings);
