//! gathering-tools: the tool registry, the built-in tools and the traversal-safe workspace
//! path resolver shared with the HTTP layer.
//!
//! Build the server's registry with [`ToolRegistry::with_builtins`]; it implements
//! [`gathering_domain::tools::ToolInvoker`] for pipelines, schedules and agents.

pub mod builtins;
pub mod config;
pub mod error;
pub mod limits;
pub mod net;
pub mod registry;
pub mod settings;
pub mod workspace;

pub use config::ToolsConfig;
pub use error::ToolsError;
pub use limits::OutputLimits;
pub use registry::{AsyncTool, BlockingTool, ToolRegistry, ToolSpec};
pub use settings::ToolsSettings;
