//! chironfs: a replicated FUSE filesystem.

mod cli;
mod config;
mod daemon;
mod errno;
mod fs;
mod fuse;
mod meta;
mod replica;
mod resync;

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let code = match cli::parse(argv) {
        Ok(inv) => daemon::start(inv),
        Err(code) => code,
    };
    std::process::exit(code);
}
