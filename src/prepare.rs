//! TODO: apply/check engine.
use crate::Options;
use crate::exit::Exit;
pub fn apply(_o: &Options) -> Exit { Exit::Ok }
pub fn check(_o: &Options) -> Exit { Exit::Ok }
