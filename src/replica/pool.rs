//! A replica's own worker threads.
//!
//! Each replica has a separate pool so that a replica whose syscalls hang
//! (a dead NFS server) can only ever tie up its own workers: the FUSE
//! threads wait for it with a deadline and the other replicas' pools keep
//! serving.

use std::thread;

use crossbeam_channel::{Sender, unbounded};

type Job = Box<dyn FnOnce() + Send + 'static>;

pub struct Pool {
    tx: Sender<Job>,
}

impl Pool {
    pub fn new(name: &str, threads: usize) -> std::io::Result<Pool> {
        let (tx, rx) = unbounded::<Job>();
        for i in 0..threads {
            let rx = rx.clone();
            thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })?;
        }
        Ok(Pool { tx })
    }

    /// Queues a job; it runs on one of the pool's threads.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        // The receivers live as long as their threads, which never exit
        // while the sender exists, so this cannot fail.
        let _ = self.tx.send(Box::new(job));
    }
}
