//! The `pitr` binary.

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = pitr::cli::Cli::parse();
    match pitr::cli::run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
