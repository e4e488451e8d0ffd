//! gathering-events: the live event bus behind the WebSocket.
//!
//! - [`EventBus`] implements [`gathering_domain::events::EventPublisher`]: `publish` never blocks
//!   (a bounded queue; when full the event is dropped and counted in [`EventStats`]).
//! - A [`Flusher`] (one task per bus) gathers events per flush window, de-duplicates them by
//!   `dedup_key` within the window (last wins, order kept), delivers them to subscribers and to
//!   the per-user history ring, and NOTIFYs other instances in batches (channel
//!   [`EVENTS_CHANNEL`]).
//! - Subscribers get only their user's events through a bounded channel; one that falls behind
//!   receives [`Received::Lagged`] instead of growing memory.
//! - Events from other instances come in through [`EventBus::handle_listener_event`].

mod batch;
mod bus;
mod config;
mod error;
mod flusher;
pub mod remote;
pub mod settings;

pub use bus::{EventBus, EventStats, Received, Subscription};
pub use config::EventsConfig;
pub use error::EventsError;
pub use flusher::Flusher;
pub use remote::EVENTS_CHANNEL;
pub use settings::EventsSettings;
