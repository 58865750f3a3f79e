pub const POLICIES: &[&str] = &["weighted"];
