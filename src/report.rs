//! TODO
pub fn init_logging() {}
