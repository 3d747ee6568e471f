//! The face pipeline: detection, landmarks, alignment, paste-back.

pub mod align;
pub mod detect;
pub mod identity;
pub mod landmarks;
pub mod paste;
pub mod pipeline;
pub mod smooth;
pub mod swapper;
