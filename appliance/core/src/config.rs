//! Configuration: placeholder, being written.
