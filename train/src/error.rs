//! The trainer's and the CLI's one error type.

use thiserror::Error;

/// Everything that can go wrong in training, evaluation, checkpointing, the
/// file formats and the command line.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The fused loss refused its input or a backend failed.
    #[error(transparent)]
    Mns(#[from] mixneg::MnsError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A malformed input file, checkpoint or log, or an invalid
    /// configuration; the message says what and where.
    #[error("{0}")]
    Invalid(String),
}

impl From<String> for Error {
    fn from(msg: String) -> Self {
        Error::Invalid(msg)
    }
}

impl From<&str> for Error {
    fn from(msg: &str) -> Self {
        Error::Invalid(msg.to_string())
    }
}

#[cfg(feature = "cuda")]
impl From<mixneg::cuda::cudarc::driver::DriverError> for Error {
    fn from(e: mixneg::cuda::cudarc::driver::DriverError) -> Self {
        Error::Mns(e.into())
    }
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// The trainer's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
