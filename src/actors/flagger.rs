pub const POLICIES: &[&str] = &["default", "always_immediate"];
