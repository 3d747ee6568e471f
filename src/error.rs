//! The one error type of the engine: every failure names what was wrong and where.

use thiserror::Error;

/// Everything that can go wrong in fswap, with enough context to act on it.
#[derive(Debug, Error)]
pub enum Error {
    /// No adapter matched the request (backend, index, or none at all).
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    /// A backend name that wgpu does not know.
    #[error("unknown backend '{0}' (expected one of: vulkan, metal, dx12, gl)")]
    UnknownBackend(String),
    /// The device could not be created.
    #[error("could not create the device on '{adapter}': {reason}")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// What wgpu said.
        reason: String,
    },
    /// The device needs a feature the adapter (or the host's device) lacks.
    #[error("the device lacks feature {feature}: {why}")]
    MissingFeature {
        /// Feature name.
        feature: &'static str,
        /// What needed it.
        why: String,
    },
    /// A shader failed to preprocess, parse, validate or compile.
    #[error("shader '{name}' ({path}): {message}")]
    Shader {
        /// Shader family name (file stem in `shaders/`).
        name: String,
        /// Storage path it was built for.
        path: String,
        /// The compiler's message.
        message: String,
    },
    /// Tensor shapes that do not fit the operation.
    #[error("shape mismatch in {op}: {detail}")]
    Shape {
        /// The operation that checked the shapes.
        op: String,
        /// Expected vs found.
        detail: String,
    },
    /// An operation parameter out of its supported range.
    #[error("invalid parameter for {op}: {detail}")]
    Param {
        /// The operation.
        op: String,
        /// What was wrong.
        detail: String,
    },
    /// A tensor with no elements.
    #[error("{what} has zero elements (shape {shape:?})")]
    Empty {
        /// The tensor's role.
        what: String,
        /// Its shape.
        shape: [usize; 4],
    },
    /// A buffer larger than the device can bind.
    #[error("{what} needs {bytes} bytes, over this device's max_storage_buffer_binding_size of {limit} bytes")]
    TooLarge {
        /// The tensor's role.
        what: String,
        /// Bytes it needs.
        bytes: u64,
        /// The device's limit.
        limit: u64,
    },
    /// Host data that does not fit the tensor, or holds NaN/Inf.
    #[error("bad data for {what}: {detail}")]
    Data {
        /// The tensor's role.
        what: String,
        /// What was wrong.
        detail: String,
    },
    /// wgpu reported a validation or out-of-memory error.
    #[error("GPU error during {during}: {message}")]
    Gpu {
        /// What the engine was doing.
        during: String,
        /// wgpu's message.
        message: String,
    },
    /// The device was lost (driver reset, unplugged, destroyed).
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    /// Reading results back failed.
    #[error("readback failed: {0}")]
    Readback(String),
    /// File I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A safetensors file that could not be read.
    #[error("{path}: {detail}")]
    Format {
        /// The file.
        path: String,
        /// What was wrong.
        detail: String,
    },
}

/// `Result` with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A shape error for `op`.
    pub fn shape(op: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Shape {
            op: op.into(),
            detail: detail.into(),
        }
    }
    /// A parameter error for `op`.
    pub fn param(op: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Param {
            op: op.into(),
            detail: detail.into(),
        }
    }
}
