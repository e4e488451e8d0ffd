//! `gathering-server`: runs the GatheRing service.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match gathering_server::run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gathering-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
