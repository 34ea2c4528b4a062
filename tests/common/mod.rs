//! What several test files share: the tiny model the library's tests build, and for the
//! tests of the binary, their scratch folders, the tiny run they train and the binary run
//! as a user runs it.

// Each test file is its own crate and uses a part of this module; the rest is not dead.
#![allow(dead_code, unused_imports)]

mod binary;
mod files;
mod model;

pub use binary::*;
pub use files::*;
pub use model::*;
