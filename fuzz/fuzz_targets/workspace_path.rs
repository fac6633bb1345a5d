//! Workspace paths a guest names: refused with a typed error, or a relative path that, joined to
//! a workspace root, stays below it (no `..`, no root, no empty or `.` segment, no NUL).
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use plugin_abi::WorkspacePath;

fuzz_target!(|text: &str| {
    let Ok(path) = WorkspacePath::parse(text) else {
        return;
    };
    assert!(path.as_str().len() <= 1024, "MAX_WORKSPACE_PATH_BYTES");
    assert!(!path.as_str().contains('\0'));
    let root = Path::new("/srv/agentd/workspaces/acme");
    let joined = root.join(path.as_str());
    assert!(joined.starts_with(root), "{text:?} escapes to {}", joined.display());
    for component in Path::new(path.as_str()).components() {
        assert!(matches!(component, Component::Normal(_)), "{text:?} has {component:?}");
    }
    assert_eq!(path.segments().collect::<Vec<_>>().join("/"), path.as_str());
    assert!(path.starts_with(&path));
});
