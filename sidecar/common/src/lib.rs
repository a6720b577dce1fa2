//! What the sidecar and the webhook share, and nothing heavier: process setup ([`process`]),
//! durations on the command line ([`duration`]), and the names of the environment variables
//! through which the webhook configures an injected sidecar ([`env`]).

pub mod duration;
pub mod env;
pub mod process;
