//! The server, built inside the test package so black-box tests can run it as a real process
//! (SIGTERM, kill -9) through `CARGO_BIN_EXE_gathering-test-server`. Same code as `gathering-server`.

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
