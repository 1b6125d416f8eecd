//! The client's event loop: one single-threaded tokio runtime, driven by the caller's
//! thread during a call and by a background thread between calls.
//!
//! Why not a multi-threaded runtime: a packet's round trip then crosses threads several
//! times (the caller's future, the connection driver, the endpoint driver), and on a
//! small machine each wake-up costs more than the round trip itself (p50 69 µs against
//! 43 µs single-threaded, measured with `benches/cluster.rs`). Why not a plain
//! current-thread runtime: between calls nothing would drive it, so keep-alives would
//! stop and nodes would drop an idle client after their idle timeout. So a background
//! thread drives the runtime while the client is idle and hands it over, whole, for the
//! duration of each call.

use std::future::Future;
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;

/// A current-thread runtime that is always being driven by someone.
pub(crate) struct Driver {
    // Taken out in `drop` to be shut down without blocking (see there).
    runtime: std::mem::ManuallyDrop<std::sync::Arc<tokio::runtime::Runtime>>,
    state: Mutex<Idle>,
}

/// The background thread and how to reach it.
struct Idle {
    /// Stops the background thread's current drive (present while it drives).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Starts a drive that lasts until its receiver fires.
    resume: Option<mpsc::Sender<tokio::sync::oneshot::Receiver<()>>>,
    /// Acknowledges that a drive ended and the runtime is free.
    released: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl Driver {
    /// Builds the runtime and starts driving it in the background.
    pub(crate) fn new() -> std::io::Result<Driver> {
        let runtime = std::sync::Arc::new(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        );
        let (resume, resumes) = mpsc::channel::<tokio::sync::oneshot::Receiver<()>>();
        let (release, released) = mpsc::channel();
        let background = std::sync::Arc::clone(&runtime);
        let thread = std::thread::Builder::new()
            .name("offload-client-io".into())
            .spawn(move || {
                while let Ok(stop) = resumes.recv() {
                    background.block_on(async {
                        let _ = stop.await;
                    });
                    if release.send(()).is_err() {
                        break;
                    }
                }
            })?;
        let driver = Driver {
            runtime: std::mem::ManuallyDrop::new(runtime),
            state: Mutex::new(Idle {
                stop: None,
                resume: Some(resume),
                released,
                thread: Some(thread),
            }),
        };
        driver.lock().drive_in_background();
        Ok(driver)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        // The state holds no invariant a panicking caller could break halfway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `future` to completion, driving the runtime (every connection included)
    /// meanwhile: on the calling thread, or, when the caller is itself a thread of some
    /// tokio runtime (an `async fn` calling the blocking API, where tokio forbids
    /// blocking on another runtime), on a helper thread while the caller waits. Calls
    /// from several threads queue. Fails only when that helper thread cannot start.
    pub(crate) fn block_on<F>(&self, future: F) -> std::io::Result<F::Output>
    where
        F: Future + Send,
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_err() {
            return Ok(self.drive(future));
        }
        std::thread::scope(|scope| {
            let helper = std::thread::Builder::new()
                .name("offload-client-call".into())
                .spawn_scoped(scope, || self.drive(future))?;
            Ok(helper
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        })
    }

    fn drive<F: Future>(&self, future: F) -> F::Output {
        let mut idle = self.lock();
        idle.take_over();
        let output = self.runtime.block_on(future);
        idle.drive_in_background();
        output
    }

    /// Enters the runtime's context (to create endpoints) without driving it.
    pub(crate) fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.runtime.enter()
    }
}

impl Idle {
    /// Ends the background drive and waits until the runtime is free.
    fn take_over(&mut self) {
        if let Some(stop) = self.stop.take() {
            if stop.send(()).is_ok() {
                // An error means the thread is gone; the runtime is free either way.
                let _ = self.released.recv();
            }
        }
    }

    /// Hands the runtime to the background thread until the next call.
    fn drive_in_background(&mut self) {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        if let Some(resume) = &self.resume {
            if resume.send(stopped).is_ok() {
                self.stop = Some(stop);
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let idle = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        idle.take_over();
        // Closing the channel ends the background loop.
        idle.resume = None;
        if let Some(thread) = idle.thread.take() {
            let _ = thread.join();
        }
        // SAFETY: `runtime` is not used after this point; `drop` runs once.
        let runtime = unsafe { std::mem::ManuallyDrop::take(&mut self.runtime) };
        // Dropping a runtime blocks until its tasks are gone, which tokio forbids inside
        // another runtime (a client dropped in an `async fn`): shut it down without
        // waiting instead. The background thread has let go of its handle by now.
        if let Ok(runtime) = std::sync::Arc::try_unwrap(runtime) {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tasks_keep_running_between_calls() {
        let driver = Driver::new().expect("driver");
        // A plain channel: the test waits on it without driving the runtime itself.
        let (tx, rx) = std::sync::mpsc::channel();
        let _ = driver.block_on(async move {
            tokio::spawn(async move {
                let mut ticks = 0u32;
                loop {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    ticks += 1;
                    if tx.send(ticks).is_err() {
                        break;
                    }
                }
            });
        });
        // No call in progress: only the background thread can make the task tick, ten
        // times (each tick waits on the runtime's timer).
        for expected in 1..=10 {
            let tick = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the task stopped ticking while no call was in progress");
            assert_eq!(tick, expected);
        }
        drop(driver);
    }

    #[test]
    fn calls_from_inside_a_tokio_runtime_work_on_both_kinds_of_runtime() {
        for multi_thread in [false, true] {
            let outer = if multi_thread {
                tokio::runtime::Builder::new_multi_thread().build()
            } else {
                tokio::runtime::Builder::new_current_thread().build()
            }
            .expect("outer runtime");
            let answer = outer.block_on(async {
                let driver = Driver::new().expect("driver");
                let answer = driver.block_on(async { 42 }).expect("call");
                // Dropping it here, inside the outer runtime, must not panic either.
                drop(driver);
                answer
            });
            assert_eq!(answer, 42);
        }
    }

    #[test]
    fn calls_return_their_output_and_drop_ends_the_thread() {
        let driver = Driver::new().expect("driver");
        for i in 0..100u32 {
            assert_eq!(driver.block_on(async move { i * 2 }).expect("call"), i * 2);
        }
        drop(driver);
    }
}
