//! chironfs: a replicated FUSE filesystem.

mod cli;
mod clock;
mod config;
mod ctl;
mod daemon;
mod errno;
mod fs;
mod fuse;
mod meta;
mod replica;
mod resync;
mod ring;

fn main() {
    let mut argv: Vec<String> = std::env::args().collect();
    // One binary, dispatched on the name it was called by.
    let called = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("chironfs")
        .to_string();
    if called == "chironctl" {
        std::process::exit(ctl::client::main(&argv));
    }
    if argv.get(1).map(String::as_str) == Some("ctl") {
        // `chironfs ctl ...` is chironctl without the symlink.
        argv.remove(1);
        std::process::exit(ctl::client::main(&argv));
    }
    // A metadata-only ring member, and the hidden ring client of scripts/bench.
    if !called.starts_with("mount.") {
        match argv.get(1).map(String::as_str) {
            Some("ring-node") => std::process::exit(cli::ring::ring_node(&argv)),
            Some("ring-bench") => std::process::exit(cli::ring::ring_bench(&argv)),
            _ => {}
        }
    }
    if called.starts_with("mount.") {
        match cli::mount_helper::to_chironfs_args(&argv) {
            Ok(args) => argv = args,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
    }
    let code = match cli::parse(argv) {
        Ok(inv) => daemon::start(inv),
        Err(code) => code,
    };
    std::process::exit(code);
}
