//! Dynamic batching: a bounded queue of texts and a pool of inference threads that pull batches.
//!
//! Handlers submit already-validated, already-tokenized items (one per text) and await a oneshot
//! receiver. Each inference thread waits for work, lets a batch fill up to `max_batch_size` items
//! or `max_batch_tokens` tokens (as TEI budgets its batches: a batch's cost is its tokens, not its
//! texts), or until the oldest item has waited `max_wait`, picks items of similar length, and runs
//! the batch outside the async runtime. Results go back through the oneshot channel of
//! the request the texts came from.
//!
//! Items are grouped by `group` (the model index): a batch never mixes models. The oldest waiting
//! item is always in the next batch of its group, so sorting by length cannot starve anyone.
//! Requests whose receiver is gone (client disconnected, timed out) are dropped before inference.

use std::collections::VecDeque;
use std::fmt::Display;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntGauge};
use tokio::sync::oneshot;

/// How many batches' worth of queued items are considered when grouping by length.
const LOOKAHEAD_BATCHES: usize = 4;

#[derive(Debug, Clone)]
pub struct BatcherConfig {
    pub max_batch_size: usize,
    /// Most tokens (summed item costs) in one batch; a single item over it still runs alone.
    pub max_batch_tokens: usize,
    pub max_wait: Duration,
    /// Queue capacity in texts.
    pub queue_capacity: usize,
    pub threads: usize,
}

/// Something that can be batched: its length (tokens) decides which items share a batch.
pub trait BatchItem: Send + 'static {
    fn cost(&self) -> usize;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the queue is full ({depth} of {capacity} texts waiting)")]
    QueueFull { depth: usize, capacity: usize },
    #[error("the server is shutting down")]
    ShuttingDown,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("inference panicked: {0}")]
    Panicked(String),
    #[error("the batcher stopped before the request was served")]
    Stopped,
}

/// The inference function: a group (model index) and a batch of items, one output per item.
pub type WorkFn<I, O, E> = dyn Fn(usize, &[&I]) -> Result<Vec<O>, E> + Send + Sync;

/// Outputs of one request, in the order its items were submitted.
pub type RequestResult<O> = Result<Vec<O>, BatchError>;

pub struct Batcher<I, O> {
    shared: Arc<Shared<I, O>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct Shared<I, O> {
    queue: Mutex<Queue<I, O>>,
    wakeup: Condvar,
    cfg: BatcherConfig,
    queue_depth: IntGauge,
    batch_size: Histogram,
}

struct Queue<I, O> {
    entries: VecDeque<Entry<I, O>>,
    closed: bool,
}

struct Entry<I, O> {
    group: usize,
    item: I,
    index: usize,
    enqueued: Instant,
    slot: Arc<Slot<O>>,
}

/// Collects the outputs of one request across batches.
struct Slot<O> {
    state: Mutex<SlotState<O>>,
}

struct SlotState<O> {
    outputs: Vec<Option<O>>,
    remaining: usize,
    tx: Option<oneshot::Sender<RequestResult<O>>>,
}

impl<O> Slot<O> {
    /// True when nobody waits for the answer any more (or it was already answered with an error).
    fn abandoned(&self) -> bool {
        let s = lock(&self.state);
        s.tx.as_ref().is_none_or(|tx| tx.is_closed())
    }

    fn fulfil(&self, index: usize, output: O) {
        let mut s = lock(&self.state);
        if s.tx.is_none() {
            return;
        }
        s.outputs[index] = Some(output);
        s.remaining -= 1;
        if s.remaining == 0 {
            let outputs = std::mem::take(&mut s.outputs)
                .into_iter()
                .map(|o| o.expect("every index fulfilled once"))
                .collect();
            if let Some(tx) = s.tx.take() {
                let _ = tx.send(Ok(outputs));
            }
        }
    }

    fn fail(&self, err: BatchError) {
        let mut s = lock(&self.state);
        if let Some(tx) = s.tx.take() {
            let _ = tx.send(Err(err));
        }
        s.outputs.clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; a poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<I: BatchItem, O: Send + 'static> Batcher<I, O> {
    pub fn start<E: Display + 'static>(
        cfg: BatcherConfig,
        queue_depth: IntGauge,
        batch_size: Histogram,
        work: Arc<WorkFn<I, O, E>>,
    ) -> Self {
        let cfg = BatcherConfig {
            max_batch_size: cfg.max_batch_size.max(1),
            max_batch_tokens: cfg.max_batch_tokens.max(1),
            threads: cfg.threads.max(1),
            ..cfg
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                entries: VecDeque::new(),
                closed: false,
            }),
            wakeup: Condvar::new(),
            cfg: cfg.clone(),
            queue_depth,
            batch_size,
        });
        let threads = (0..cfg.threads)
            .map(|i| {
                let shared = Arc::clone(&shared);
                let work = Arc::clone(&work);
                std::thread::Builder::new()
                    .name(format!("inference-{i}"))
                    .spawn(move || worker(&shared, &*work))
                    .expect("spawn inference thread")
            })
            .collect();
        Self {
            shared,
            threads: Mutex::new(threads),
        }
    }

    /// Queues the items of one request. All or nothing: a request that does not fit entirely is
    /// rejected, so a half-served request never occupies the queue.
    pub fn submit(
        &self,
        group: usize,
        items: Vec<I>,
    ) -> Result<oneshot::Receiver<RequestResult<O>>, SubmitError> {
        let (tx, rx) = oneshot::channel();
        let n = items.len();
        if n == 0 {
            let _ = tx.send(Ok(Vec::new()));
            return Ok(rx);
        }
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState {
                outputs: (0..n).map(|_| None).collect(),
                remaining: n,
                tx: Some(tx),
            }),
        });
        let now = Instant::now();
        {
            let mut q = lock(&self.shared.queue);
            if q.closed {
                return Err(SubmitError::ShuttingDown);
            }
            let depth = q.entries.len();
            if depth + n > self.shared.cfg.queue_capacity {
                return Err(SubmitError::QueueFull {
                    depth,
                    capacity: self.shared.cfg.queue_capacity,
                });
            }
            q.entries
                .extend(items.into_iter().enumerate().map(|(index, item)| Entry {
                    group,
                    item,
                    index,
                    enqueued: now,
                    slot: Arc::clone(&slot),
                }));
            self.shared.queue_depth.set(q.entries.len() as i64);
        }
        self.shared.wakeup.notify_all();
        Ok(rx)
    }

    /// Texts waiting in the queue.
    pub fn depth(&self) -> usize {
        lock(&self.shared.queue).entries.len()
    }

    /// Stops taking new work; the threads finish what is queued, then exit. Returns at once.
    pub fn close(&self) {
        lock(&self.shared.queue).closed = true;
        self.shared.wakeup.notify_all();
    }

    /// Closes and waits for the inference threads to finish the queued work.
    pub fn shutdown(&self) {
        self.close();
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl<I, O> Drop for Batcher<I, O> {
    fn drop(&mut self) {
        // Threads hold their own Arc of the shared state; tell them to stop once idle.
        lock(&self.shared.queue).closed = true;
        self.shared.wakeup.notify_all();
    }
}

fn worker<I: BatchItem, O, E: Display>(shared: &Shared<I, O>, work: &WorkFn<I, O, E>) {
    while let Some((group, batch)) = next_batch(shared) {
        shared.batch_size.observe(batch.len() as f64);
        let items: Vec<&I> = batch.iter().map(|e| &e.item).collect();
        let result = catch_unwind(AssertUnwindSafe(|| work(group, &items)));
        drop(items);
        match result {
            Ok(Ok(outputs)) if outputs.len() == batch.len() => {
                for (entry, output) in batch.into_iter().zip(outputs) {
                    entry.slot.fulfil(entry.index, output);
                }
            }
            Ok(Ok(outputs)) => {
                let err = BatchError::Inference(format!(
                    "{} outputs for {} inputs",
                    outputs.len(),
                    batch.len()
                ));
                fail_all(&batch, err);
            }
            Ok(Err(e)) => fail_all(&batch, BatchError::Inference(e.to_string())),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                fail_all(&batch, BatchError::Panicked(msg));
            }
        }
    }
}

fn fail_all<I, O>(batch: &[Entry<I, O>], err: BatchError) {
    for e in batch {
        e.slot.fail(err.clone());
    }
}

/// Blocks until a batch is ready; `None` when closed and drained.
fn next_batch<I: BatchItem, O>(shared: &Shared<I, O>) -> Option<(usize, Vec<Entry<I, O>>)> {
    let cfg = &shared.cfg;
    let mut q = lock(&shared.queue);
    loop {
        drop_abandoned(&mut q);
        shared.queue_depth.set(q.entries.len() as i64);
        let Some(head) = q.entries.front() else {
            if q.closed {
                return None;
            }
            q = shared.wakeup.wait(q).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        let group = head.group;
        let deadline = head.enqueued + cfg.max_wait;
        // Full: enough texts, or enough tokens, of the head's group are waiting.
        let (mut ready, mut tokens) = (0, 0);
        for e in q.entries.iter().filter(|e| e.group == group) {
            if ready == cfg.max_batch_size || tokens >= cfg.max_batch_tokens {
                break;
            }
            ready += 1;
            tokens += e.item.cost();
        }
        let full = ready == cfg.max_batch_size || tokens >= cfg.max_batch_tokens;
        let now = Instant::now();
        // Closed: drain without waiting, the process is on its way out.
        if !full && now < deadline && !q.closed {
            q = shared
                .wakeup
                .wait_timeout(q, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            continue;
        }

        // Candidates: the oldest items of the head's group, a few batches deep.
        let lookahead = cfg.max_batch_size * LOOKAHEAD_BATCHES;
        let positions: Vec<usize> = q
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.group == group)
            .map(|(i, _)| i)
            .take(lookahead)
            .collect();
        let costs: Vec<usize> = positions
            .iter()
            .map(|&p| q.entries[p].item.cost())
            .collect();
        let mut chosen: Vec<usize> = pick_batch(&costs, cfg.max_batch_size, cfg.max_batch_tokens)
            .into_iter()
            .map(|c| positions[c])
            .collect();
        chosen.sort_unstable();
        // Remove back to front so earlier positions stay valid.
        let mut batch: Vec<Entry<I, O>> = chosen
            .iter()
            .rev()
            .map(|&p| q.entries.remove(p).expect("position in range"))
            .collect();
        batch.reverse();
        shared.queue_depth.set(q.entries.len() as i64);
        if !q.entries.is_empty() {
            // Another thread may start on the rest right away.
            shared.wakeup.notify_one();
        }
        return Some((group, batch));
    }
}

fn drop_abandoned<I, O>(q: &mut Queue<I, O>) {
    if q.entries.iter().any(|e| e.slot.abandoned()) {
        q.entries.retain(|e| !e.slot.abandoned());
    }
}

/// Picks at most `max` of the candidates (given oldest first by their cost), together costing at
/// most `budget` tokens, so that costs in the batch are close together. The oldest candidate
/// (index 0) is always picked, even alone over the budget: fairness first, then the most items the
/// limits allow, then the least spread of lengths, then age. Returns candidate indices.
pub fn pick_batch(costs: &[usize], max: usize, budget: usize) -> Vec<usize> {
    let max = max.max(1);
    if costs.len() <= max && costs.iter().sum::<usize>() <= budget {
        return (0..costs.len()).collect();
    }
    let mut order: Vec<usize> = (0..costs.len()).collect();
    // Stable by age within equal costs.
    order.sort_by_key(|&i| (costs[i], i));
    let head_pos = order.iter().position(|&i| i == 0).expect("head present");
    // Windows of consecutive sorted candidates that contain the head: for each start, the longest
    // one within both limits (the head alone always qualifies).
    let first = head_pos.saturating_sub(max - 1);
    let best = (first..=head_pos)
        .filter_map(|s| {
            let mut sum = 0;
            let mut end = s;
            while end < order.len() && end - s < max {
                let next = sum + costs[order[end]];
                if next > budget && end > head_pos {
                    break;
                }
                if next > budget && s < head_pos {
                    // The head is not reached within the budget from this start.
                    return None;
                }
                sum = next;
                end += 1;
            }
            (end > head_pos).then_some((s, end))
        })
        .min_by_key(|&(s, end)| {
            let spread = costs[order[end - 1]] - costs[order[s]];
            let age: usize = order[s..end].iter().sum();
            (std::cmp::Reverse(end - s), spread, age)
        })
        .unwrap_or((head_pos, head_pos + 1));
    order[best.0..best.1].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::HistogramOpts;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, Clone)]
    struct Text(usize);
    impl BatchItem for Text {
        fn cost(&self) -> usize {
            self.0
        }
    }

    fn metrics() -> (IntGauge, Histogram) {
        (
            IntGauge::new("depth", "d").unwrap(),
            Histogram::with_opts(HistogramOpts::new("size", "s")).unwrap(),
        )
    }

    fn cfg(max_batch_size: usize, wait_ms: u64, capacity: usize, threads: usize) -> BatcherConfig {
        BatcherConfig {
            max_batch_size,
            max_batch_tokens: usize::MAX,
            max_wait: Duration::from_millis(wait_ms),
            queue_capacity: capacity,
            threads,
        }
    }

    #[test]
    fn pick_keeps_small_candidate_sets_whole() {
        assert_eq!(pick_batch(&[5, 1, 3], 4, 100), vec![0, 1, 2]);
    }

    #[test]
    fn pick_groups_similar_lengths_and_always_takes_the_head() {
        // Head is short: the other short ones join it.
        let mut p = pick_batch(&[2, 100, 3, 90, 2, 95], 3, 1000);
        p.sort();
        assert_eq!(p, vec![0, 2, 4]);
        // Head is long: the long ones join it.
        let mut p = pick_batch(&[100, 2, 3, 90, 2, 95], 3, 1000);
        p.sort();
        assert_eq!(p, vec![0, 3, 5]);
    }

    #[test]
    fn pick_prefers_older_items_on_equal_spread() {
        let mut p = pick_batch(&[5, 5, 5, 5, 5], 2, 1000);
        p.sort();
        assert_eq!(p, vec![0, 1]);
    }

    #[test]
    fn pick_stays_within_the_token_budget() {
        // Five texts of 256 tokens fit 1024 four at a time, oldest first.
        let mut p = pick_batch(&[256; 5], 32, 1024);
        p.sort();
        assert_eq!(p, vec![0, 1, 2, 3]);
        // A short head with long and short texts queued: the short ones join it, up to the budget.
        // (10 + 12 + 11 + 9 = 42 is over; of the two windows of three, the older one.)
        let mut p = pick_batch(&[10, 300, 12, 300, 11, 9], 32, 40);
        p.sort();
        assert_eq!(p, vec![0, 2, 4]);
        // Every batch respects the budget, whatever the mix, unless the head alone exceeds it.
        let costs = [7, 250, 31, 256, 2, 128, 64, 199, 17, 5, 256, 90];
        for budget in [1, 50, 256, 300, 512, 1000] {
            for max in [1, 2, 3, 8, 32] {
                let p = pick_batch(&costs, max, budget);
                assert!(p.contains(&0), "head missing at max {max} budget {budget}");
                assert!(p.len() <= max);
                let sum: usize = p.iter().map(|&i| costs[i]).sum();
                assert!(
                    sum <= budget.max(costs[0]),
                    "{sum} > {budget} at max {max}: {p:?}"
                );
            }
        }
    }

    #[test]
    fn pick_runs_a_head_over_the_budget_alone() {
        assert_eq!(pick_batch(&[600, 5, 5], 32, 512), vec![0]);
    }

    #[test]
    fn results_come_back_in_request_order() {
        let (d, h) = metrics();
        let work: Arc<WorkFn<Text, usize, String>> =
            Arc::new(|_g, items: &[&Text]| Ok(items.iter().map(|t| t.0 * 10).collect()));
        let b = Batcher::start(cfg(2, 1, 100, 2), d, h.clone(), work);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let rx = b
            .submit(0, vec![Text(7), Text(1), Text(50), Text(3), Text(2)])
            .unwrap();
        assert_eq!(rt.block_on(rx).unwrap().unwrap(), vec![70, 10, 500, 30, 20]);
        assert!(h.get_sample_count() >= 3, "5 items in batches of <= 2");
        b.shutdown();
    }

    #[test]
    fn concurrent_requests_share_a_batch() {
        let (d, h) = metrics();
        let work: Arc<WorkFn<Text, usize, String>> =
            Arc::new(|_g, items: &[&Text]| Ok(items.iter().map(|t| t.0).collect()));
        let b = Batcher::start(cfg(32, 50, 100, 1), d, h.clone(), work);
        let rx1 = b.submit(0, vec![Text(1)]).unwrap();
        let rx2 = b.submit(0, vec![Text(2), Text(3)]).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(rx1).unwrap().unwrap(), vec![1]);
        assert_eq!(rt.block_on(rx2).unwrap().unwrap(), vec![2, 3]);
        assert_eq!(h.get_sample_count(), 1);
        assert_eq!(h.get_sample_sum(), 3.0);
        b.shutdown();
    }

    #[test]
    fn a_full_token_budget_closes_the_batch_without_waiting() {
        let (d, h) = metrics();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = Arc::clone(&seen);
        let work: Arc<WorkFn<Text, usize, String>> = Arc::new(move |_g, items: &[&Text]| {
            lock(&seen2).push(items.iter().map(|t| t.0).sum::<usize>());
            Ok(items.iter().map(|t| t.0).collect())
        });
        // Room for 32 texts but 512 tokens; a 10 s wait that a full budget must not sit out.
        let config = BatcherConfig {
            max_batch_tokens: 512,
            ..cfg(32, 10_000, 100, 1)
        };
        let b = Batcher::start(config, d, h.clone(), work);
        let started = Instant::now();
        let rx = b.submit(0, vec![Text(256); 4]).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(rx).unwrap().unwrap(), vec![256; 4]);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(*lock(&seen), vec![512, 512]);
        b.shutdown();
    }

    #[test]
    fn batches_never_mix_groups() {
        let (d, h) = metrics();
        let work: Arc<WorkFn<Text, (usize, usize), String>> =
            Arc::new(|g, items: &[&Text]| Ok(items.iter().map(|t| (g, t.0)).collect()));
        let b = Batcher::start(cfg(8, 20, 100, 1), d, h, work);
        let a = b.submit(0, vec![Text(1), Text(2)]).unwrap();
        let c = b.submit(1, vec![Text(3)]).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(a).unwrap().unwrap(), vec![(0, 1), (0, 2)]);
        assert_eq!(rt.block_on(c).unwrap().unwrap(), vec![(1, 3)]);
        b.shutdown();
    }

    #[test]
    fn full_queue_rejects_whole_requests() {
        let (d, h) = metrics();
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let g2 = Arc::clone(&gate);
        // The single thread blocks on the gate, so the queue fills up behind it.
        let work: Arc<WorkFn<Text, usize, String>> = Arc::new(move |_g, items: &[&Text]| {
            let (m, cv) = &*g2;
            let mut open = m.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            Ok(items.iter().map(|t| t.0).collect())
        });
        let b = Batcher::start(cfg(1, 0, 3, 1), d.clone(), h, work);
        let first = b.submit(0, vec![Text(1)]).unwrap();
        // Wait until the thread took the first item.
        while b.depth() > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let second = b.submit(0, vec![Text(2), Text(3)]).unwrap();
        assert_eq!(d.get(), 2);
        assert_eq!(
            b.submit(0, vec![Text(4), Text(5)]).unwrap_err(),
            SubmitError::QueueFull {
                depth: 2,
                capacity: 3
            }
        );
        let third = b.submit(0, vec![Text(6)]).unwrap();
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(first).unwrap().unwrap(), vec![1]);
        assert_eq!(rt.block_on(second).unwrap().unwrap(), vec![2, 3]);
        assert_eq!(rt.block_on(third).unwrap().unwrap(), vec![6]);
        b.shutdown();
        assert_eq!(d.get(), 0);
    }

    #[test]
    fn errors_and_panics_fail_only_their_batch() {
        let (d, h) = metrics();
        let work: Arc<WorkFn<Text, usize, String>> = Arc::new(|_g, items: &[&Text]| {
            if items.iter().any(|t| t.0 == 666) {
                panic!("bad input reached the model");
            }
            if items.iter().any(|t| t.0 == 13) {
                return Err("unlucky".to_string());
            }
            Ok(items.iter().map(|t| t.0).collect())
        });
        let b = Batcher::start(cfg(1, 0, 100, 1), d, h, work);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let p = b.submit(0, vec![Text(666)]).unwrap();
        let e = b.submit(0, vec![Text(13)]).unwrap();
        let ok = b.submit(0, vec![Text(4)]).unwrap();
        assert!(matches!(
            rt.block_on(p).unwrap(),
            Err(BatchError::Panicked(m)) if m.contains("bad input")
        ));
        assert_eq!(
            rt.block_on(e).unwrap(),
            Err(BatchError::Inference("unlucky".into()))
        );
        assert_eq!(rt.block_on(ok).unwrap().unwrap(), vec![4]);
        b.shutdown();
    }

    #[test]
    fn abandoned_requests_are_not_computed() {
        let (d, h) = metrics();
        let computed = Arc::new(AtomicUsize::new(0));
        let c2 = Arc::clone(&computed);
        let work: Arc<WorkFn<Text, usize, String>> = Arc::new(move |_g, items: &[&Text]| {
            c2.fetch_add(items.len(), Ordering::SeqCst);
            Ok(items.iter().map(|t| t.0).collect())
        });
        // A long wait keeps the first request queued while we drop its receiver.
        let b = Batcher::start(cfg(32, 200, 100, 1), d, h, work);
        let gone = b.submit(0, vec![Text(1), Text(2)]).unwrap();
        drop(gone);
        let kept = b.submit(0, vec![Text(3)]).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(kept).unwrap().unwrap(), vec![3]);
        assert_eq!(computed.load(Ordering::SeqCst), 1);
        b.shutdown();
    }

    #[test]
    fn shutdown_drains_queued_work_and_refuses_new() {
        let (d, h) = metrics();
        let work: Arc<WorkFn<Text, usize, String>> = Arc::new(|_g, items: &[&Text]| {
            std::thread::sleep(Duration::from_millis(5));
            Ok(items.iter().map(|t| t.0).collect())
        });
        let b = Batcher::start(cfg(1, 0, 100, 1), d, h, work);
        let rxs: Vec<_> = (0..5)
            .map(|i| b.submit(0, vec![Text(i)]).unwrap())
            .collect();
        b.shutdown();
        assert_eq!(
            b.submit(0, vec![Text(9)]).unwrap_err(),
            SubmitError::ShuttingDown
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for (i, rx) in rxs.into_iter().enumerate() {
            assert_eq!(rt.block_on(rx).unwrap().unwrap(), vec![i]);
        }
    }
}
