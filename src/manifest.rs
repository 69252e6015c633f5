//! TODO
use crate::Options;
use crate::exit::Exit;
pub fn validate_command(_o: &Options) -> Exit { Exit::Ok }
