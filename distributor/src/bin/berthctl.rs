//! `berthctl`: parses arguments and runs the library's client.

#[tokio::main]
async fn main() {
    std::process::exit(berth_distributor::ctl::main_entry().await);
}
