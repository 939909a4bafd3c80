//! A fixed pool of password-hashing threads with a bounded queue: the server's argon2id memory is the
//! pool's threads × 19 MiB however many logins arrive at once, and a full queue is refused at once.
//!
//! Each thread owns one [`Hasher`] whose memory is allocated once and reused, so hashing never
//! allocates and frees 19 MiB blocks (which would also make the C allocator keep such blocks around in
//! per-thread arenas). Call order: [`HashPool::start`], then [`HashPool::verify`] / [`HashPool::hash`]
//! from async code (or [`HashPool::hash_blocking`] from a blocking thread); dropping the pool ends its
//! threads once their current job is done.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use tokio::sync::oneshot;

use crate::password::{Hasher, Password, PasswordError};

/// Most hashing threads when the configuration leaves the number to the server.
const DEFAULT_MAX_THREADS: usize = 4;
/// A thread with no job for this long frees its 19 MiB (allocated again for the next job: mapping and
/// touching 19 MiB costs a few milliseconds, against tens for the hash itself).
const IDLE_RELEASE: Duration = Duration::from_secs(1);

/// Errors of the pool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HashPoolError {
    /// Every thread is busy and the queue is full: try again shortly.
    #[error("password hashing is at capacity")]
    Busy,
    /// The pool's threads have stopped.
    #[error("password hashing has stopped")]
    Stopped,
    /// A thread could not be started.
    #[error("cannot start a hashing thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// Hashing failed (policy or library).
    #[error(transparent)]
    Password(#[from] PasswordError),
}

enum Job {
    Verify {
        password: Password,
        phc: String,
        reply: oneshot::Sender<bool>,
    },
    Hash {
        password: String,
        reply: oneshot::Sender<Result<String, PasswordError>>,
    },
}

/// The pool (see the module documentation).
#[derive(Debug)]
pub struct HashPool {
    jobs: Sender<Job>,
    threads: usize,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    verifications: AtomicU64,
    /// Threads holding their hashing memory now.
    holding: AtomicUsize,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Job::Verify { .. } => "Verify",
            Job::Hash { .. } => "Hash",
        })
    }
}

fn work(jobs: &Receiver<Job>, counters: &Counters, idle: Duration) {
    let mut hasher = Hasher::new();
    loop {
        let job = match jobs.recv_timeout(idle) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                if hasher.holds_memory() {
                    hasher.release();
                    counters.holding.fetch_sub(1, Ordering::Relaxed);
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if !hasher.holds_memory() {
            counters.holding.fetch_add(1, Ordering::Relaxed);
        }
        match job {
            Job::Verify { password, phc, reply } => {
                let ok = hasher.verify(password.expose(), &phc);
                counters.verifications.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("relaydesk_password_verifications_total").increment(1);
                let _ = reply.send(ok);
            }
            Job::Hash { password, reply } => {
                let _ = reply.send(hasher.hash(&password));
            }
        }
    }
}

impl HashPool {
    /// Starts `threads` hashing threads (0: one per core, at most 4) with room for `queue` waiting jobs.
    pub fn start(threads: u32, queue: u32) -> Result<Self, HashPoolError> {
        Self::start_with_idle(threads, queue, IDLE_RELEASE)
    }

    /// [`HashPool::start`] whose threads free their memory after `idle` without a job.
    pub fn start_with_idle(threads: u32, queue: u32, idle: Duration) -> Result<Self, HashPoolError> {
        let threads = match usize::try_from(threads).unwrap_or(usize::MAX) {
            0 => std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .min(DEFAULT_MAX_THREADS),
            n => n,
        };
        let (tx, rx) = crossbeam_channel::bounded(usize::try_from(queue).unwrap_or(usize::MAX));
        let counters = Arc::new(Counters::default());
        for i in 0..threads {
            let (rx, count) = (rx.clone(), Arc::clone(&counters));
            std::thread::Builder::new()
                .name(format!("relaydesk-hash-{i}"))
                // Hashing needs little stack; the 19 MiB of blocks are on the heap.
                .stack_size(256 * 1024)
                .spawn(move || work(&rx, &count, idle))
                .map_err(HashPoolError::Spawn)?;
        }
        Ok(Self {
            jobs: tx,
            threads,
            counters,
        })
    }

    /// The number of hashing threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Passwords verified so far.
    pub fn verifications(&self) -> u64 {
        self.counters.verifications.load(Ordering::Relaxed)
    }

    /// Threads holding their 19 MiB of hashing memory now.
    pub fn threads_holding_memory(&self) -> usize {
        self.counters.holding.load(Ordering::Relaxed)
    }

    fn submit(&self, job: Job) -> Result<(), HashPoolError> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => {
                metrics::counter!("relaydesk_password_checks_refused_total").increment(1);
                HashPoolError::Busy
            }
            TrySendError::Disconnected(_) => HashPoolError::Stopped,
        })
    }

    /// Verifies `password` against the PHC string `phc`, or [`HashPoolError::Busy`] at once when the
    /// queue is full.
    pub async fn verify(&self, password: Password, phc: String) -> Result<bool, HashPoolError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Verify { password, phc, reply })?;
        rx.await.map_err(|_| HashPoolError::Stopped)
    }

    /// Hashes a new password (policy checked).
    pub async fn hash(&self, password: String) -> Result<String, HashPoolError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Hash { password, reply })?;
        Ok(rx.await.map_err(|_| HashPoolError::Stopped)??)
    }

    /// [`HashPool::hash`] for blocking threads (never call it on the async runtime).
    pub fn hash_blocking(&self, password: String) -> Result<String, HashPoolError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Hash { password, reply })
            .map_err(|_| HashPoolError::Stopped)?;
        Ok(rx.blocking_recv().map_err(|_| HashPoolError::Stopped)??)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once_and_the_threads_keep_working() {
        let pool = HashPool::start(1, 2).unwrap();
        assert_eq!(pool.threads(), 1);
        let phc = pool.hash("a pool password".into()).await.unwrap();
        // One running, two queued: further jobs are refused without waiting. Submitting is synchronous,
        // so the futures below are queued (or refused) in order as they are first polled.
        let mut pending = Vec::new();
        let mut busy = 0;
        for _ in 0..20 {
            let (reply, rx) = oneshot::channel();
            let job = Job::Verify {
                password: Password::new("a pool password"),
                phc: phc.clone(),
                reply,
            };
            match pool.submit(job) {
                Ok(()) => pending.push(rx),
                Err(HashPoolError::Busy) => busy += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!((2..=3).contains(&pending.len()), "{}", pending.len());
        assert_eq!(busy, 20 - pending.len());
        for rx in pending {
            assert!(rx.await.unwrap());
        }
        assert!(!pool.verify(Password::new("wrong password"), phc).await.unwrap());
        assert_eq!(pool.verifications(), 20 - busy as u64 + 1);
    }

    #[tokio::test]
    async fn idle_threads_free_their_memory_and_get_it_back() {
        let pool = HashPool::start_with_idle(2, 4, Duration::from_millis(50)).unwrap();
        assert_eq!(
            pool.threads_holding_memory(),
            0,
            "nothing allocated before the first job"
        );
        let phc = pool.hash("a pool password".into()).await.unwrap();
        assert!(pool.threads_holding_memory() >= 1);
        // Poll (bounded) until the idle threads have freed their memory.
        let mut freed = false;
        for _ in 0..200 {
            if pool.threads_holding_memory() == 0 {
                freed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(freed, "idle threads free their memory");
        assert!(pool.verify(Password::new("a pool password"), phc).await.unwrap());
    }
}
