//! TODO(helper): see provider/mod.rs
