//! Reassembly: placeholder, being written.
