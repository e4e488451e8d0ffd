//! The GatheRing server: configuration, telemetry and wiring. `main.rs` only calls [`run`].

pub mod config;
pub mod engines;
pub mod keys;
pub mod startup;
pub mod telemetry;

pub use config::Settings;
pub use startup::Application;

/// The whole program: configuration → telemetry → application → serve until a signal.
pub async fn run() -> anyhow::Result<()> {
    let subscriber = telemetry::get_subscriber("gathering", "info", std::io::stdout);
    telemetry::init_subscriber(subscriber);
    let settings = Settings::load()?;
    let app = Application::build(settings).await?;
    app.run_until_stopped().await
}
