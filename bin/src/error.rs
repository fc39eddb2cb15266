//! What went wrong in a CLI command, typed, with an exit code a script can
//! act on.

/// Exit codes besides 0: 1 for any other failure, 2 for bad arguments
/// (clap's own), 3 when the node cannot be reached, 4 when it refused.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No answer: connection refused, DNS, TLS, timeout.
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    /// The node answered with an error (its message).
    #[error("{message}")]
    Refused { status: u16, message: String },
    /// The node answered something this CLI cannot read.
    #[error("bad answer from {url}: {reason}")]
    BadAnswer { url: String, reason: String },
    /// A failure described where it happened.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Unreachable { .. } => 3,
            CliError::Refused { .. } => 4,
            CliError::BadAnswer { .. } | CliError::Failed(_) => 1,
        }
    }
}

/// Messages composed where the failure happened (paths, flags, processes).
impl From<String> for CliError {
    fn from(message: String) -> CliError {
        CliError::Failed(message)
    }
}

impl From<&str> for CliError {
    fn from(message: &str) -> CliError {
        CliError::Failed(message.to_owned())
    }
}
