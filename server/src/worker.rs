//! Worker threads of the data planes (media, TURN): each runs a current-thread tokio runtime
//! with a `LocalSet`, so its tasks share state through `Rc`/`RefCell` without locks.

use std::future::Future;

/// Starts thread `name` running the future `start` builds on it (inside the thread, so the
/// future may hold `Rc`s). `what` names the worker in the log if its runtime cannot start.
pub(crate) fn spawn<F, Fut>(
    name: String,
    what: &'static str,
    start: F,
) -> std::io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    std::thread::Builder::new().name(name).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, "{what} worker could not start");
                return;
            }
        };
        tokio::task::LocalSet::new().block_on(&runtime, start());
    })
}
