//! The face pipeline: detection, landmarks, alignment, paste-back.

pub mod align;
pub mod convert;
pub mod detect;
pub mod faceset;
pub mod identity;
pub mod landmarks;
pub mod paste;
pub mod pipeline;
pub mod smooth;
pub mod swapper;
