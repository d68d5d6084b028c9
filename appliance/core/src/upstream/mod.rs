//! Upstream delivery: placeholder, being written.
