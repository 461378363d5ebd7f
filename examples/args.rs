//! Command-line arguments shared by the examples.

/// The value after `--port`, or `default`.
pub fn port(default: u16) -> u16 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--port")
        .and_then(|i| args.get(i + 1))
        .and_then(|p| p.parse().ok())
        .unwrap_or(default)
}
