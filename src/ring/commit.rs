//! Group commit for the ring's store (DESIGN.md section 7, durability): a
//! write is acknowledged only once an fsync that began after it returned
//! has completed, and concurrent writers share one fsync.
//!
//! A writer makes its change (it reaches the OS), then takes a [`Ticket`]
//! and waits for it. One thread, `ring-sync`, runs the sync function each
//! time tickets are waiting: a sync that starts once ticket t was issued
//! covers every write made before t, so it settles every ticket up to the
//! highest one issued when it started. Writers that arrive while a sync
//! runs wait for the next one, which covers all of them at once.
//!
//! A sync that fails settles nothing: its tickets, and every later one,
//! get the error (fjall refuses further writes after a failed fsync too).

use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

/// A point in the store's write history; durable once settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[must_use = "a write is durable only once its ticket is settled"]
pub struct Ticket(u64);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Progress {
    /// Every ticket up to this one is durable.
    settled: u64,
    /// Why a sync failed; every unsettled ticket fails with it.
    failed: Option<String>,
    /// The sync thread ended: unsettled tickets never will be.
    stopped: bool,
}

#[derive(Default)]
struct State {
    issued: u64,
    progress: Progress,
    /// The thread should end: tickets not settled by then fail.
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the sync thread when a ticket is issued (or at stop).
    work: Condvar,
    /// Wakes blocking waiters when progress is made.
    settled: Condvar,
    /// The same progress, for async waiters.
    progress: watch::Sender<Progress>,
}

pub type SyncFn = Box<dyn FnMut() -> Result<(), String> + Send>;

pub struct GroupCommit {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Without a thread (`inline`): the sync function, run by a waiter.
    inline: Option<Mutex<SyncFn>>,
}

impl GroupCommit {
    /// Starts the sync thread; `sync` makes every write made before the
    /// call durable.
    pub fn start(sync: SyncFn) -> std::io::Result<GroupCommit> {
        let (progress, _) = watch::channel(Progress::default());
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            settled: Condvar::new(),
            progress,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ring-sync".into())
            .spawn(move || run(&s, sync))?;
        Ok(GroupCommit {
            shared,
            thread: Mutex::new(Some(thread)),
            inline: None,
        })
    }

    /// Group commit without a thread: a waiter whose ticket is not settled
    /// runs the sync itself, which settles every ticket issued before it.
    /// Writes nobody waits for stay unsynced, as they may with the thread.
    /// For the deterministic simulation (ring/dsim), where no thread may
    /// run beside the simulated network.
    pub fn inline(sync: SyncFn) -> GroupCommit {
        let (progress, _) = watch::channel(Progress::default());
        GroupCommit {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                work: Condvar::new(),
                settled: Condvar::new(),
                progress,
            }),
            thread: Mutex::new(None),
            inline: Some(Mutex::new(sync)),
        }
    }

    /// Inline mode: syncs now unless `t` is settled (or failed).
    fn sync_inline(&self, t: Ticket) {
        let Some(sync) = &self.inline else {
            return;
        };
        let mut sync = sync.lock();
        let target = {
            let st = self.shared.state.lock();
            if Self::outcome(&st.progress, t).is_some() || st.stop {
                return;
            }
            st.issued
        };
        let result = sync();
        let mut st = self.shared.state.lock();
        match result {
            Ok(()) => st.progress.settled = st.progress.settled.max(target),
            Err(e) => st.progress.failed = Some(e),
        }
        publish(&self.shared, &st);
    }

    /// A new ticket, covering every write that returned before this call.
    pub fn issue(&self) -> Ticket {
        let mut st = self.shared.state.lock();
        st.issued += 1;
        self.shared.work.notify_one();
        Ticket(st.issued)
    }

    /// The newest ticket issued: what a caller that wrote nothing itself
    /// waits for before it acknowledges what it read (another writer's
    /// change it saw may not be durable yet). Issues nothing new.
    pub fn latest(&self) -> Ticket {
        Ticket(self.shared.state.lock().issued)
    }

    fn outcome(p: &Progress, t: Ticket) -> Option<Result<(), String>> {
        if p.settled >= t.0 {
            Some(Ok(()))
        } else if let Some(e) = &p.failed {
            Some(Err(e.clone()))
        } else {
            p.stopped.then(|| Err("the store is closed".into()))
        }
    }

    /// Waits, without blocking the thread, until `t` is durable.
    pub async fn wait(&self, t: Ticket) -> Result<(), String> {
        self.sync_inline(t);
        let mut rx = self.shared.progress.subscribe();
        let p = rx
            .wait_for(|p| Self::outcome(p, t).is_some())
            .await
            .map_err(|_| "the store's sync thread is gone".to_string())?;
        Self::outcome(&p, t).unwrap_or(Ok(()))
    }

    /// Blocks the calling thread until `t` is durable.
    pub fn wait_blocking(&self, t: Ticket) -> Result<(), String> {
        self.sync_inline(t);
        let mut st = self.shared.state.lock();
        loop {
            if let Some(r) = Self::outcome(&st.progress, t) {
                return r;
            }
            self.shared.settled.wait(&mut st);
        }
    }

    /// Settles every ticket issued so far without a sync: the caller made
    /// everything durable itself (an orderly close).
    pub fn settle_all(&self) {
        let mut st = self.shared.state.lock();
        st.progress.settled = st.issued;
        publish(&self.shared, &st);
    }

    /// Ends the sync thread; tickets not settled by then fail (call
    /// `settle_all` first after making everything durable).
    pub fn stop(&self) {
        {
            let mut st = self.shared.state.lock();
            st.stop = true;
            if self.inline.is_some() {
                st.progress.stopped = true;
                publish(&self.shared, &st);
            }
        }
        self.shared.work.notify_one();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.stop();
    }
}

fn publish(shared: &Shared, st: &State) {
    shared.progress.send_replace(st.progress.clone());
    shared.settled.notify_all();
}

fn run(shared: &Shared, mut sync: SyncFn) {
    loop {
        let target = {
            let mut st = shared.state.lock();
            loop {
                if st.stop {
                    // Without an orderly close (`settle_all`) the tickets
                    // still waiting are not known durable: they fail.
                    st.progress.stopped = true;
                    publish(shared, &st);
                    return;
                }
                if st.issued > st.progress.settled && st.progress.failed.is_none() {
                    break st.issued;
                }
                shared.work.wait(&mut st);
            }
        };
        let result = sync();
        let mut st = shared.state.lock();
        match result {
            Ok(()) => st.progress.settled = st.progress.settled.max(target),
            Err(e) => st.progress.failed = Some(e),
        }
        publish(shared, &st);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[test]
    fn concurrent_writers_share_syncs_and_each_waits_for_one_after_it() {
        let syncs = Arc::new(AtomicU64::new(0));
        let s = syncs.clone();
        let gc = Arc::new(
            GroupCommit::start(Box::new(move || {
                std::thread::sleep(Duration::from_millis(5));
                s.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }))
            .unwrap(),
        );
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let gc = gc.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let t = gc.issue();
                        gc.wait_blocking(t).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = syncs.load(Ordering::SeqCst);
        assert!(n < 16 * 20 / 2, "{n} syncs for 320 writes: no grouping");
        // Nothing waiting: latest() is settled, no sync needed.
        gc.wait_blocking(gc.latest()).unwrap();
        assert_eq!(syncs.load(Ordering::SeqCst), n);
    }

    #[test]
    fn a_failed_sync_fails_every_waiting_and_later_ticket() {
        let gc = GroupCommit::start(Box::new(|| Err("EIO".into()))).unwrap();
        let t = gc.issue();
        assert_eq!(gc.wait_blocking(t), Err("EIO".into()));
        let t2 = gc.issue();
        assert_eq!(gc.wait_blocking(t2), Err("EIO".into()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(gc.wait(gc.issue())), Err("EIO".into()));
    }
}
