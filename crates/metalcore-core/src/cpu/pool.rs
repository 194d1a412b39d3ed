//! The threads the CPU kernels' parallel loops run on: rayon's pool by default, or a fork-join
//! runner that the host process installs with [`set_fork_join`].
//!
//! Why a host runner: PyTorch runs its own CPU ops on an OpenMP team whose workers keep spinning
//! for a while after each parallel region. When a metalcore kernel runs next on rayon's threads,
//! those spinning workers take half of its CPU time on a machine with as many cores as threads
//! (measured on the 2-core reference machine: softmax forward+backward with torch's gradient
//! accumulation in between, 20 ms per step on rayon against 15 ms with OpenMP workers made
//! passive). Running the kernels on that same OpenMP team gives its spinning workers the work
//! instead. The Python package installs libgomp's `GOMP_parallel` when PyTorch uses OpenMP.

use std::ffi::{c_int, c_uint, c_void};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Mutex;

/// libgomp's `GOMP_parallel(fn, data, num_threads, flags)`: runs `body(data)` on a team of
/// `threads` threads, the caller among them, and returns when every one has returned.
pub type ForkJoinFn =
    unsafe extern "C" fn(body: unsafe extern "C" fn(*mut c_void), data: *mut c_void, threads: c_uint, flags: c_uint);
/// The number of threads the runner's teams have (OpenMP's `omp_get_max_threads`).
pub type TeamSizeFn = unsafe extern "C" fn() -> c_int;

static RUN: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
static TEAM: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// Installs a fork-join runner for the parallel loops (`None` goes back to rayon).
///
/// # Safety
/// `run` must behave as `GOMP_parallel` (call `body(data)` once on each of `threads` threads,
/// or fewer, and return after all of them) and `team` as `omp_get_max_threads`, for as long as
/// they stay installed.
pub unsafe fn set_fork_join(runner: Option<(ForkJoinFn, TeamSizeFn)>) {
    let (run, team) =
        runner.map_or((std::ptr::null_mut(), std::ptr::null_mut()), |(r, t)| (r as *mut c_void, t as *mut c_void));
    TEAM.store(team, Ordering::SeqCst);
    RUN.store(run, Ordering::SeqCst);
}

/// `"host"` while a fork-join runner is installed, else `"rayon"`.
pub fn current() -> &'static str {
    if RUN.load(Ordering::SeqCst).is_null() {
        "rayon"
    } else {
        "host"
    }
}

fn runner() -> Option<(ForkJoinFn, usize)> {
    let run = RUN.load(Ordering::SeqCst);
    let team = TEAM.load(Ordering::SeqCst);
    if run.is_null() || team.is_null() {
        return None;
    }
    // SAFETY: both were installed together by `set_fork_join` from functions of these types.
    unsafe {
        let run: ForkJoinFn = std::mem::transmute::<*mut c_void, ForkJoinFn>(run);
        let team: TeamSizeFn = std::mem::transmute::<*mut c_void, TeamSizeFn>(team);
        Some((run, team().max(1) as usize))
    }
}

/// How many threads a parallel loop runs on.
pub(crate) fn threads() -> usize {
    runner().map_or_else(rayon::current_num_threads, |(_, t)| t)
}

/// A pointer that the tasks of a parallel loop share, each touching only its own part.
pub(crate) struct Shared<T>(pub *mut T);

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Shared<T> {}
// SAFETY: the loops hand disjoint parts of the pointee to different tasks (see `part`).
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    pub(crate) fn new(p: *const T) -> Self {
        Shared(p as *mut T)
    }

    /// Element `i` (a method, so that closures capture the whole `Shared`, not its raw field).
    ///
    /// # Safety
    /// `i` lies inside the allocation.
    pub(crate) unsafe fn at(&self, i: usize) -> *mut T {
        self.0.add(i)
    }

    /// Part `i` of `len` elements.
    ///
    /// # Safety
    /// `[i·len, (i+1)·len)` lies inside the allocation, and no other task uses it meanwhile
    /// (unless every user only reads it).
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn part(&self, i: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(i * len), len)
    }
}

struct Job<'a, S, I, F> {
    next: AtomicUsize,
    n: usize,
    chunk: usize,
    init: &'a I,
    f: &'a F,
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    _s: std::marker::PhantomData<fn() -> S>,
}

unsafe extern "C" fn team_body<S, I: Fn() -> S + Sync, F: Fn(&mut S, usize) + Sync>(data: *mut c_void) {
    // SAFETY: `data` is the `Job` that `for_each_init` keeps alive until the runner returns.
    let job = &*(data as *const Job<'_, S, I, F>);
    let run = std::panic::AssertUnwindSafe(|| {
        let mut scratch: Option<S> = None;
        loop {
            let start = job.next.fetch_add(job.chunk, Ordering::Relaxed);
            if start >= job.n {
                break;
            }
            let s = scratch.get_or_insert_with(job.init);
            for i in start..(start + job.chunk).min(job.n) {
                (job.f)(s, i);
            }
        }
    });
    if let Err(p) = std::panic::catch_unwind(run) {
        // A panic must not unwind into the C runner: keep it for the caller to resume.
        job.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(p);
        job.next.store(job.n, Ordering::Relaxed);
    }
}

/// Runs `f(scratch, i)` for every `i` in `0..n`, in parallel in pieces of at least `min_len`
/// consecutive indices (on the calling thread alone when that is the whole job). `init` makes one
/// scratch value per thread (rayon: per task) that runs a piece.
pub(crate) fn for_each_init<S, I, F>(n: usize, min_len: usize, init: I, f: F)
where
    I: Fn() -> S + Sync + Send,
    F: Fn(&mut S, usize) + Sync + Send,
{
    let min_len = min_len.max(1);
    if n <= min_len {
        let mut s = init();
        (0..n).for_each(|i| f(&mut s, i));
        return;
    }
    let Some((run, team)) = runner() else {
        use rayon::prelude::*;
        (0..n).into_par_iter().with_min_len(min_len).for_each_init(init, f);
        return;
    };
    // About eight pieces per thread: enough to even out uneven threads, few enough that the
    // shared counter costs nothing.
    let chunk = min_len.max(n.div_ceil(team * 8));
    let job: Job<S, I, F> = Job {
        next: AtomicUsize::new(0),
        n,
        chunk,
        init: &init,
        f: &f,
        panic: Mutex::new(None),
        _s: std::marker::PhantomData,
    };
    let threads = team.min(n.div_ceil(chunk)) as c_uint;
    // SAFETY: `job` outlives the call (the runner returns after every thread has); `team_body`
    // is instantiated for exactly this job's types.
    unsafe { run(team_body::<S, I, F>, &job as *const _ as *mut c_void, threads, 0) };
    if let Some(p) = job.panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
        std::panic::resume_unwind(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in runner: `threads` scoped threads, each calling `body(data)` once.
    unsafe extern "C" fn scoped_runner(
        body: unsafe extern "C" fn(*mut c_void),
        data: *mut c_void,
        threads: c_uint,
        _flags: c_uint,
    ) {
        let data = data as usize;
        std::thread::scope(|s| {
            for _ in 0..threads {
                // SAFETY: forwarded from the caller's contract.
                s.spawn(move || unsafe { body(data as *mut c_void) });
            }
        });
    }
    unsafe extern "C" fn three() -> c_int {
        3
    }

    #[test]
    fn every_index_runs_once_on_either_pool() {
        // (Other tests running meanwhile may land on the stand-in runner: it is a correct one.)
        for host in [false, true] {
            // SAFETY: the stand-ins meet `set_fork_join`'s contract.
            unsafe { set_fork_join(host.then_some((scoped_runner as ForkJoinFn, three as TeamSizeFn))) };
            assert_eq!(current(), if host { "host" } else { "rayon" });
            for (n, min_len) in [(0, 4), (1, 4), (5, 4), (1000, 7), (4097, 64)] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                let inits = AtomicUsize::new(0);
                for_each_init(
                    n,
                    min_len,
                    || inits.fetch_add(1, Ordering::Relaxed),
                    |_, i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    },
                );
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "n={n} host={host}");
                if host && n > min_len {
                    assert!(inits.load(Ordering::Relaxed) <= 3, "one scratch per thread");
                }
            }
        }
        // A panic in a team thread reaches the caller.
        // SAFETY: as above.
        unsafe { set_fork_join(Some((scoped_runner as ForkJoinFn, three as TeamSizeFn))) };
        let r = std::panic::catch_unwind(|| for_each_init(100, 1, || (), |_, i| assert!(i != 57, "boom")));
        // SAFETY: back to rayon.
        unsafe { set_fork_join(None) };
        assert!(r.is_err());
    }
}
