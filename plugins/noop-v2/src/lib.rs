//! `noop` 0.2.0: the same source as `plugins/noop` built at another version, so tests can
//! install a second version of one skill next to the first (hot swap, rollback, fallback).

include!("../../noop/src/skill.rs");
