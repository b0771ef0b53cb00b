use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    verimail::cli::main().await
}
