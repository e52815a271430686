//! Single flight, the one mechanism the edge has for it: a table of the operations in progress,
//! by key. A caller either starts the operation for a key or joins the one running, and the
//! operation leaves the table when it ends. What a joiner gets is the run's handle:
//! - blob fills (`cache/fill.rs`): the handle is the fill, which readers follow while it runs;
//! - manifest fetches and verifications of changed files ([`Flight::run`]): the handle is a
//!   shared future of the result; the operation runs as its own task, so a caller that goes
//!   away cancels nothing;
//! - promotions into the memory tier ([`Flight::turn`]): no handle; the others read from disk
//!   meanwhile.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;

/// A run whose result every caller shares.
pub type Waiting<V> = Shared<BoxFuture<'static, V>>;

/// The operations in progress, by key, each with the handle its joiners get.
pub struct Flight<K, H> {
    running: Arc<Mutex<HashMap<K, H>>>,
}

impl<K, H> Default for Flight<K, H> {
    fn default() -> Self {
        Flight { running: Arc::new(Mutex::new(HashMap::new())) }
    }
}

impl<K, H> Clone for Flight<K, H> {
    fn clone(&self) -> Self {
        Flight { running: Arc::clone(&self.running) }
    }
}

/// What [`Flight::start`] found.
pub enum Start<H> {
    /// The caller's run is registered: it must [`Flight::end`] it.
    Started,
    /// A run was in progress: its handle.
    Joined(H),
    /// No run, but the result is already there (the `done` check said so).
    Done,
}

impl<K, H> Flight<K, H>
where
    K: Hash + Eq + Clone,
    H: Clone,
{
    /// The handle of the run for `key`, if one is in progress.
    pub fn get(&self, key: &K) -> Option<H> {
        self.running.lock().get(key).cloned()
    }

    /// Runs in progress.
    pub fn len(&self) -> usize {
        self.running.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers a run for `key` with the handle `make()`, unless one is in progress or `done()`
    /// (checked under the table's lock, so no run can end between the check and the insert)
    /// says the result already exists.
    pub fn start(&self, key: K, make: impl FnOnce() -> H, done: impl FnOnce() -> bool) -> Start<H> {
        let mut running = self.running.lock();
        if let Some(handle) = running.get(&key) {
            return Start::Joined(handle.clone());
        }
        if done() {
            return Start::Done;
        }
        running.insert(key, make());
        Start::Started
    }

    /// Ends the run for `key` if `is_this` recognises its handle (a later run under the same
    /// key is left alone).
    pub fn end(&self, key: &K, is_this: impl FnOnce(&H) -> bool) {
        let mut running = self.running.lock();
        if running.get(key).is_some_and(is_this) {
            running.remove(key);
        }
    }
}

/// The right to run the operation for one key; the run ends when it is dropped (also when the
/// task holding it panics).
pub struct Turn<K: Hash + Eq + Clone, H: Clone = ()> {
    flight: Flight<K, H>,
    key: K,
}

impl<K: Hash + Eq + Clone, H: Clone> Drop for Turn<K, H> {
    fn drop(&mut self) {
        self.flight.end(&self.key, |_| true);
    }
}

impl<K: Hash + Eq + Clone> Flight<K, ()> {
    /// The turn to run the operation for `key`, unless another caller has it.
    pub fn turn(&self, key: K) -> Option<Turn<K>> {
        match self.start(key.clone(), || (), || false) {
            Start::Started => Some(Turn { flight: self.clone(), key }),
            Start::Joined(()) | Start::Done => None,
        }
    }
}

impl<K, V> Flight<K, Waiting<V>>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `make()` as its own task unless a run for `key` is in progress, in which case its
    /// result is shared. Returns the result and whether this caller joined another's run.
    pub async fn run<F>(&self, key: K, make: impl FnOnce() -> F, on_panic: fn(String) -> V) -> (V, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let mut mine = None;
        let started = self.start(
            key.clone(),
            || {
                let future = make();
                let (flight, task_key) = (self.clone(), key.clone());
                let handle = tokio::spawn(async move {
                    // Held across the run: it ends the run even if `future` panics.
                    let _turn = Turn { flight, key: task_key };
                    future.await
                });
                let waiting = async move { handle.await.unwrap_or_else(|e| on_panic(e.to_string())) }.boxed().shared();
                mine = Some(waiting.clone());
                waiting
            },
            || false,
        );
        match (started, mine) {
            (Start::Joined(waiting), _) => (waiting.await, true),
            (_, Some(waiting)) => (waiting.await, false),
            // `start` registers `make()`'s handle whenever it neither joins nor finds it done.
            (_, None) => (on_panic("single flight lost its run".into()), false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn should_run_once_for_concurrent_callers() {
        let flight: Arc<Flight<u32, Waiting<usize>>> = Arc::new(Flight::default());
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
        while flight.is_empty() {
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
        let flight: Flight<u32, Waiting<u32>> = Flight::default();
        assert_eq!(flight.run(1, || async { 1 }, |_| 0).await, (1, false));
        assert_eq!(flight.run(1, || async { 2 }, |_| 0).await, (2, false));
    }

    #[test]
    fn should_join_a_handle_until_its_own_run_ends_it() {
        let flight: Flight<u32, Arc<u32>> = Flight::default();
        let first = Arc::new(1);
        assert!(matches!(flight.start(7, || Arc::clone(&first), || false), Start::Started));
        assert!(matches!(flight.start(7, || Arc::new(2), || false), Start::Joined(h) if *h == 1));
        let other = Arc::new(3);
        flight.end(&7, |h| Arc::ptr_eq(h, &other));
        assert!(flight.get(&7).is_some(), "another run's end leaves this one in");
        flight.end(&7, |h| Arc::ptr_eq(h, &first));
        assert!(matches!(flight.start(7, || Arc::new(4), || true), Start::Done), "a result already there");
        assert!(flight.is_empty());
    }

    #[tokio::test]
    async fn should_end_a_run_whose_task_panicked_and_run_again() {
        let flight: Flight<u32, Waiting<String>> = Flight::default();
        let (v, _) = flight.run(1, || async { panic!("boom") }, |e| format!("failed: {e}")).await;
        assert!(v.starts_with("failed: ") && v.contains("panicked"), "{v}");
        assert!(flight.is_empty(), "the key left with the panic");
        assert_eq!(flight.run(1, || async { "ok".to_owned() }, |e| e).await, ("ok".to_owned(), false));
    }

    #[test]
    fn should_give_one_turn_at_a_time() {
        let flight: Flight<u32, ()> = Flight::default();
        let turn = flight.turn(1).expect("free");
        assert!(flight.turn(1).is_none(), "taken");
        assert!(flight.turn(2).is_some(), "another key");
        drop(turn);
        assert!(flight.turn(1).is_some(), "free again once dropped");
    }
}
