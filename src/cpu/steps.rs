//! How a call's row blocks run on the pool: one parallel region for the
//! whole call, a sequence of *steps* of independent tasks, instead of a
//! fork–join per row block.
//!
//! A fork–join per block cost each block a wake-up of the sleeping workers
//! (15–25 µs on the machines measured) and left every worker but the caller
//! idle while the caller merged the block's rows (~30 µs at
//! (4096, 4096, 64)): together ~10% of a call. Here every worker walks
//! through the steps: it claims a task of the step (an atomic
//! compare-and-swap), waits until every task of the earlier steps is done,
//! runs it and counts it done; when the
//! step has no task left to claim it goes on to the next. Each step's tasks
//! are split into one range per worker, which the worker takes from the
//! front, and which the others take from the back only once their own is
//! empty: worker w runs the same column parts block after block, and those
//! parts' dV rows and strips stay in its core's cache (claiming from one
//! shared counter instead moved them between cores, 5–8% slower at
//! (4096, 4096, 64) when the machine was busy). A task's result does not
//! depend on which worker runs it, so results stay the same bits.
//!
//! A worker waits only for tasks that other workers have already claimed
//! and are running, and a task never waits on the pool, so the region
//! cannot deadlock: if the pool's other threads are busy elsewhere, the
//! calling thread runs every task itself.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Spins (PAUSE) before a waiting worker starts yielding its core.
const SPINS: u32 = 64;
/// How long a waiting worker yields its core before it sleeps. Waits
/// between steps are mostly shorter (a part's task: 20–100 µs), and a
/// sleeping worker wakes 15–25 µs after it is woken; yielding rather than
/// spinning hands the core to a thread that needs it when the pool has
/// more threads than the machine has cores.
const YIELD_FOR: Duration = Duration::from_micros(200);

/// Runs `task(step, i)` for every step in order and every i < `counts[step]`,
/// on up to `threads` workers of the current rayon pool (the calling thread
/// one of them): every task of a step finishes before any task of the next
/// starts (its writes are then visible to them); tasks of one step may run
/// in any order and in parallel. Worker w (the pool's thread w mod
/// `threads`) prefers the tasks in the w-th of `threads` equal ranges of
/// each step.
pub(crate) fn run(threads: usize, counts: &[usize], task: impl Fn(usize, usize) + Sync) {
    let threads = threads.max(1);
    // Per step and worker range: (front, back) of the unclaimed tasks.
    let ranges: Vec<AtomicU64> = counts
        .iter()
        .flat_map(|&c| (0..threads).map(move |w| (w * c / threads, (w + 1) * c / threads)))
        .map(|(f, b)| AtomicU64::new(pack(f, b)))
        .collect();
    let done = Done::default();
    // Set when a task panics: the others stop waiting for it, and the
    // panic reaches the caller through the scope.
    let failed = AtomicBool::new(false);
    let work = || {
        let home = rayon::current_thread_index().unwrap_or(0) % threads;
        let mut first = 0;
        for (step, &count) in counts.iter().enumerate() {
            let mine = &ranges[step * threads..(step + 1) * threads];
            // Its own range from the front, then the others' from the back.
            let claim = || {
                take(&mine[home], true)
                    .or_else(|| (1..threads).find_map(|d| take(&mine[(home + d) % threads], false)))
            };
            while let Some(i) = claim() {
                // Every task before `first` has been claimed, so this waits
                // only for running tasks.
                if !done.wait_for(first, &failed) {
                    return;
                }
                let guard = PanicFlag(&failed, &done);
                task(step, i);
                std::mem::forget(guard);
                done.add_one();
            }
            first += count;
        }
    };
    if threads == 1 {
        work();
    } else {
        rayon::scope(|s| {
            for _ in 1..threads {
                s.spawn(|_| work());
            }
            work();
        });
    }
}

/// A range of task indices front..back as one atomic word.
fn pack(front: usize, back: usize) -> u64 {
    (front as u64) | (back as u64) << 32
}

/// Claims the first (`front`) or the last task of a range, if any is left.
fn take(range: &AtomicU64, front: bool) -> Option<usize> {
    let mut v = range.load(Ordering::Relaxed);
    loop {
        let (f, b) = (v & 0xffff_ffff, v >> 32);
        if f >= b {
            return None;
        }
        let (next, i) = if front {
            (v + 1, f)
        } else {
            (v - (1 << 32), b - 1)
        };
        match range.compare_exchange_weak(v, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some(i as usize),
            Err(now) => v = now,
        }
    }
}

/// The count of finished tasks, and where workers sleep waiting for it.
#[derive(Default)]
struct Done {
    count: AtomicUsize,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Done {
    /// Waits until `n` tasks are done (true), or a task failed (false):
    /// spinning, then yielding, then sleeping.
    fn wait_for(&self, n: usize, failed: &AtomicBool) -> bool {
        let ready = || self.count.load(Ordering::SeqCst) >= n;
        let mut spins = 0;
        let mut since = None;
        while !ready() {
            if failed.load(Ordering::Relaxed) {
                return false;
            }
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else if since.get_or_insert_with(Instant::now).elapsed() < YIELD_FOR {
                std::thread::yield_now();
            } else {
                // Counted as a sleeper before the check under the lock, so
                // that `add_one` either is seen by the check or sees the
                // sleeper (both SeqCst) and notifies under the lock.
                self.sleepers.fetch_add(1, Ordering::SeqCst);
                let g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                if !ready() && !failed.load(Ordering::Relaxed) {
                    // (A timeout, in case of a spurious miss.)
                    let t = Duration::from_millis(1);
                    drop(
                        self.wake
                            .wait_timeout(g, t)
                            .unwrap_or_else(|e| e.into_inner()),
                    );
                }
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        }
        true
    }

    /// Counts one more task done and wakes the sleeping workers.
    fn add_one(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.wake_all();
    }

    fn wake_all(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
    }
}

/// When dropped, i.e. when the task it guards unwinds: sets the flag and
/// wakes the sleeping workers, who then stop waiting.
struct PanicFlag<'a>(&'a AtomicBool, &'a Done);

impl Drop for PanicFlag<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
        self.1.wake_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn every_task_runs_once_and_steps_run_in_order() {
        for threads in [1, 2, 4] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let counts = [3, 0, 1, 7, 2];
            let log = Mutex::new(vec![]);
            pool.install(|| run(threads, &counts, |s, i| log.lock().unwrap().push((s, i))));
            let log = log.into_inner().unwrap();
            let steps: Vec<usize> = log.iter().map(|&(s, _)| s).collect();
            assert!(steps.is_sorted(), "{threads} threads: {log:?}");
            let mut got = log.clone();
            got.sort();
            let want: Vec<(usize, usize)> = counts
                .iter()
                .enumerate()
                .flat_map(|(s, &c)| (0..c).map(move |i| (s, i)))
                .collect();
            assert_eq!(got, want, "{threads} threads");
        }
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_nothing_hangs() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| {
                run(2, &[4, 4], |s, i| {
                    if s == 0 && i == 1 {
                        panic!("task failed")
                    }
                })
            })
        }));
        assert!(r.is_err());
    }
}
