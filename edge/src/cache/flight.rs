//! Single flight: concurrent callers with the same key share one run of an async operation.
//! The operation runs as its own task, so a caller that goes away cancels nothing.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;

type Waiting<V> = Shared<BoxFuture<'static, V>>;

/// Coalesces concurrent operations by key.
pub struct Flight<K, V: Clone> {
    running: Arc<Mutex<HashMap<K, Waiting<V>>>>,
}

impl<K, V> Default for Flight<K, V>
where
    V: Clone,
{
    fn default() -> Self {
        Flight { running: Arc::new(Mutex::new(HashMap::new())) }
    }
}

impl<K, V> Flight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `make()` unless a run for `key` is in progress, in which case its result is shared.
    /// Returns the result and whether this caller joined another's run.
    pub async fn run<F>(&self, key: K, make: impl FnOnce() -> F, on_panic: fn(String) -> V) -> (V, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (waiting, joined) = {
            let mut running = self.running.lock();
            match running.get(&key) {
                Some(w) => (w.clone(), true),
                None => {
                    let future = make();
                    let map = Arc::clone(&self.running);
                    let task_key = key.clone();
                    let handle = tokio::spawn(async move {
                        let value = future.await;
                        map.lock().remove(&task_key);
                        value
                    });
                    let waiting =
                        async move { handle.await.unwrap_or_else(|e| on_panic(e.to_string())) }.boxed().shared();
                    running.insert(key, waiting.clone());
                    (waiting, false)
                }
            }
        };
        (waiting.await, joined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn should_run_once_for_concurrent_callers() {
        let flight: Arc<Flight<u32, usize>> = Arc::new(Flight::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (flight, runs, mut rx) = (flight.clone(), runs.clone(), release_rx.clone());
            tasks.push(tokio::spawn(async move {
                flight
                    .run(
                        1,
                        || async move {
                            let _ = rx.wait_for(|v| *v).await;
                            runs.fetch_add(1, Ordering::SeqCst) + 100
                        },
                        |_| 0,
                    )
                    .await
            }));
        }
        // Every caller has either started the run or joined it once the map holds the key.
        while flight.running.lock().is_empty() {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        release_tx.send(true).unwrap();
        let mut joined = 0;
        for t in tasks {
            let (v, j) = t.await.unwrap();
            assert_eq!(v, 100);
            joined += j as usize;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(joined, 7);
    }

    #[tokio::test]
    async fn should_run_again_after_completion() {
        let flight: Flight<u32, u32> = Flight::default();
        assert_eq!(flight.run(1, || async { 1 }, |_| 0).await, (1, false));
        assert_eq!(flight.run(1, || async { 2 }, |_| 0).await, (2, false));
    }
}
