//! `mount.chironfs SRC MOUNTPOINT [-o OPTS]`: what mount(8) and fstab call.

/// Turns a mount(8) helper command line into the `chironfs` command line.
/// (Being written; see the issue on mount(8) and fstab support.)
pub fn to_chironfs_args(argv: &[String]) -> Result<Vec<String>, String> {
    Err(format!(
        "mount.chironfs: not supported yet (called as {})",
        argv.first().map(String::as_str).unwrap_or("?")
    ))
}
