//! A replica's own worker threads.
//!
//! Each replica has a separate pool so that a replica whose syscalls hang
//! (a dead NFS server) can only ever tie up its own workers: the FUSE
//! threads wait for it with a deadline and the other replicas' pools keep
//! serving.
//!
//! A plain mutex-and-condvar queue: on a machine with few cores, waiting by
//! spinning or yielding (as lock-free channels do before they park) costs
//! more than it saves.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
}

#[derive(Clone)]
pub struct Pool {
    queue: Arc<Queue>,
}

impl Pool {
    pub fn new(name: &str, threads: usize) -> std::io::Result<Pool> {
        let queue = Arc::new(Queue {
            jobs: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
        });
        for i in 0..threads {
            let q = queue.clone();
            thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || worker(&q))?;
        }
        Ok(Pool { queue })
    }

    /// Queues a job; it runs on one of the pool's threads.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        if let Ok(mut jobs) = self.queue.jobs.lock() {
            jobs.push_back(Box::new(job));
        }
        self.queue.ready.notify_one();
    }
}

fn worker(q: &Queue) {
    loop {
        let job = {
            let Ok(mut jobs) = q.jobs.lock() else {
                return;
            };
            loop {
                if let Some(j) = jobs.pop_front() {
                    break j;
                }
                jobs = match q.ready.wait(jobs) {
                    Ok(g) => g,
                    Err(_) => return,
                };
            }
        };
        job();
    }
}
