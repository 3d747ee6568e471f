//! Media at the edges of the pipeline: images in and out, video through the system `ffmpeg`.

pub mod image;
pub mod video;
