//! Logs as bunyan JSON lines; every line of a request carries its request id (root span field).

use tracing::Subscriber;
use tracing::subscriber::set_global_default;
use tracing_bunyan_formatter::{BunyanFormattingLayer, JsonStorageLayer};
use tracing_log::LogTracer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::{EnvFilter, Registry, layer::SubscriberExt};

pub fn get_subscriber<Sink>(
    name: &str,
    default_filter: &str,
    sink: Sink,
) -> impl Subscriber + Send + Sync
where
    Sink: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    Registry::default()
        .with(filter)
        .with(JsonStorageLayer)
        .with(BunyanFormattingLayer::new(name.to_owned(), sink))
}

/// Installs the subscriber once; later calls (tests) are ignored.
pub fn init_subscriber(subscriber: impl Subscriber + Send + Sync) {
    let _ = LogTracer::init();
    let _ = set_global_default(subscriber);
}
