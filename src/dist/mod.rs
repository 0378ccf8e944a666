//! Communication between the ranks of a data-parallel run: the collectives training needs
//! (all-reduce, reduce-scatter, all-gather, broadcast) behind one interface. [`ThreadComm`]
//! implements it for ranks that are threads of one process (`--device cpu --ranks N`),
//! [`tcp::TcpComm`] for ranks that are processes, on one machine or several (`--nodes N`). On
//! GPUs the gradients and weights go through NCCL on the devices instead
//! (`crate::backend::Backend::reduce_scatter_sum`, `crate::backend::cuda::nccl`), set up over
//! these.
//!
//! Sums add the ranks' values in rank order on every rank, so every rank gets bit-identical
//! results and replicas never drift apart.

pub mod tcp;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use anyhow::{Result, ensure};

/// The collectives over host f32 buffers, called by every rank in the same order. Each is
/// built here on [`Comm::exchange`]; a transport with collectives of its own (NCCL) overrides
/// them.
pub trait Comm: Sync {
    /// This rank, from 0.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Every rank contributes `data` (of any length) and `read` sees every rank's, in rank
    /// order, on every rank.
    fn exchange(&self, data: &[f32], read: &mut dyn FnMut(&[Vec<f32>])) -> Result<()>;
    /// Ends the run on every rank: their pending and later collectives fail at once. Called
    /// by a rank that fails, so that the others do not wait for it forever.
    fn abort(&self);
    /// A flag that turns true once [`Comm::abort`] was called on any rank, for waits outside
    /// the collectives (a GPU rank waiting on NCCL) to check; None where the transport tells
    /// the others by itself (closed connections).
    fn abort_flag(&self) -> Option<Arc<AtomicBool>> {
        None
    }

    /// Every rank's `data` becomes the element-wise sum over ranks.
    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<()> {
        let mut sum = vec![0.0; data.len()];
        self.exchange(data, &mut |slots| sum_in_rank_order(slots, 0, &mut sum))?;
        data.copy_from_slice(&sum);
        Ok(())
    }

    /// `out` (`size · chunk.len()` values) becomes every rank's `chunk`, in rank order.
    fn all_gather(&self, chunk: &[f32], out: &mut [f32]) -> Result<()> {
        ensure!(
            out.len() == chunk.len() * self.size(),
            "all-gather of {} chunks of {} into {} values",
            self.size(),
            chunk.len(),
            out.len()
        );
        self.exchange(chunk, &mut |slots| {
            for (dst, slot) in out.chunks_mut(chunk.len().max(1)).zip(slots) {
                dst.copy_from_slice(slot);
            }
        })
    }

    /// Every rank's `data` becomes rank `root`'s.
    fn broadcast(&self, data: &mut [f32], root: usize) -> Result<()> {
        ensure!(
            root < self.size(),
            "broadcast from rank {root} of {}",
            self.size()
        );
        let mut copy = Vec::new();
        self.exchange(data, &mut |slots| copy.clone_from(&slots[root]))?;
        data.copy_from_slice(&copy);
        Ok(())
    }

    /// Every rank's piece, concatenated in rank order, where rank r's piece holds `lens[r]`
    /// values (`piece` is this rank's). The pieces travel padded to the longest, since
    /// collectives move equal lengths.
    fn gather_pieces(&self, piece: &[f32], lens: &[usize]) -> Result<Vec<f32>> {
        ensure!(
            lens.len() == self.size() && lens[self.rank()] == piece.len(),
            "a piece of {} values where rank {} of {} should have {:?}",
            piece.len(),
            self.rank(),
            self.size(),
            lens.get(self.rank())
        );
        let chunk = lens.iter().copied().max().unwrap_or(0);
        let mut padded = piece.to_vec();
        padded.resize(chunk, 0.0);
        let mut all = vec![0.0; chunk * self.size()];
        self.all_gather(&padded, &mut all)?;
        Ok((lens.iter().enumerate())
            .flat_map(|(r, &len)| &all[r * chunk..r * chunk + len])
            .copied()
            .collect())
    }

    /// This rank's piece of the element-wise sum over ranks of `data`, which is cut into
    /// consecutive pieces of `lens[r]` values, piece r for rank r (a reduce-scatter with
    /// pieces of any length).
    fn reduce_scatter_pieces(&self, data: &[f32], lens: &[usize]) -> Result<Vec<f32>> {
        ensure!(
            lens.len() == self.size() && lens.iter().sum::<usize>() == data.len(),
            "a reduce-scatter of {} values into pieces of {lens:?} over {} ranks",
            data.len(),
            self.size()
        );
        let start = lens[..self.rank()].iter().sum();
        let mut piece = vec![0.0; lens[self.rank()]];
        self.exchange(data, &mut |slots| {
            sum_in_rank_order(slots, start, &mut piece)
        })?;
        Ok(piece)
    }

    /// The sum over ranks of every rank's `value`, in f64 and in rank order (the same bits on
    /// every rank).
    fn sum_f64(&self, value: f64) -> Result<f64> {
        let mut sum = 0.0;
        self.exchange(&f64_to_slots(value), &mut |slots| {
            sum = slots.iter().map(|s| slots_to_f64([s[0], s[1]])).sum();
        })?;
        Ok(sum)
    }

    /// Rank `root`'s `value` on every rank, bit for bit (the decisions all ranks must agree on:
    /// a validation loss against the target, a stop request).
    fn broadcast_f64(&self, value: f64, root: usize) -> Result<f64> {
        let mut slots = f64_to_slots(value);
        self.broadcast(&mut slots, root)?;
        Ok(slots_to_f64(slots))
    }

    /// Whether this is rank 0, which alone logs, checkpoints and writes the record.
    fn is_lead(&self) -> bool {
        self.rank() == 0
    }
}

/// An f64's bits in two f32 slots, which collectives copy unchanged (NaNs included).
fn f64_to_slots(value: f64) -> [f32; 2] {
    let bits = value.to_bits();
    [
        f32::from_bits((bits >> 32) as u32),
        f32::from_bits(bits as u32),
    ]
}

fn slots_to_f64(slots: [f32; 2]) -> f64 {
    let [high, low] = slots.map(|h| u64::from(h.to_bits()));
    f64::from_bits(high << 32 | low)
}

/// What a collective returns on the ranks that did not fail when another one did.
#[derive(Debug, thiserror::Error)]
#[error("another rank failed")]
pub struct RankFailed;

/// Fails with [`RankFailed`] if `aborted`.
fn check(aborted: bool) -> Result<()> {
    if aborted {
        return Err(RankFailed.into());
    }
    Ok(())
}

/// One rank alone: every collective is the identity.
pub struct SingleRank;

impl Comm for SingleRank {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn exchange(&self, data: &[f32], read: &mut dyn FnMut(&[Vec<f32>])) -> Result<()> {
        read(&[data.to_vec()]);
        Ok(())
    }
    fn abort(&self) {}
}

/// What the ranks of a [`ThreadComm`] share.
struct Shared {
    size: usize,
    state: Mutex<State>,
    changed: Condvar,
    /// Set with `state.aborted`, for waits outside the collectives.
    aborted: Arc<AtomicBool>,
}

struct State {
    /// Each rank's contribution to the collective in progress.
    slots: Vec<Vec<f32>>,
    /// Ranks that have arrived at the current barrier, and how many barriers have completed.
    arrived: usize,
    generation: u64,
    aborted: bool,
}

/// A rank among threads of one process.
pub struct ThreadComm {
    rank: usize,
    shared: Arc<Shared>,
}

impl ThreadComm {
    /// The handles of `size` ranks, one per thread.
    pub fn group(size: usize) -> Vec<ThreadComm> {
        let shared = Arc::new(Shared {
            size,
            state: Mutex::new(State {
                slots: vec![Vec::new(); size],
                arrived: 0,
                generation: 0,
                aborted: false,
            }),
            changed: Condvar::new(),
            aborted: Arc::new(AtomicBool::new(false)),
        });
        (0..size)
            .map(|rank| ThreadComm {
                rank,
                shared: Arc::clone(&shared),
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until every rank has arrived (or one aborted), holding the lock on return.
    fn barrier<'a>(&'a self, mut state: MutexGuard<'a, State>) -> Result<MutexGuard<'a, State>> {
        check(state.aborted)?;
        let generation = state.generation;
        state.arrived += 1;
        if state.arrived == self.shared.size {
            state.arrived = 0;
            state.generation += 1;
            self.shared.changed.notify_all();
        } else {
            while state.generation == generation && !state.aborted {
                state = (self.shared.changed.wait(state)).unwrap_or_else(PoisonError::into_inner);
            }
        }
        check(state.aborted)?;
        Ok(state)
    }
}

/// The element-wise sum of `slots[..][start..start + out.len()]`, in rank order, into `out`.
fn sum_in_rank_order(slots: &[Vec<f32>], start: usize, out: &mut [f32]) {
    out.copy_from_slice(&slots[0][start..start + out.len()]);
    for slot in &slots[1..] {
        for (o, v) in out.iter_mut().zip(&slot[start..]) {
            *o += v;
        }
    }
}

impl Comm for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    /// Puts `data` in this rank's slot, waits for all, calls `read` with every slot, and waits
    /// again so that no rank overwrites a slot another is still reading.
    fn exchange(&self, data: &[f32], read: &mut dyn FnMut(&[Vec<f32>])) -> Result<()> {
        let mut state = self.lock();
        check(state.aborted)?;
        state.slots[self.rank].clear();
        state.slots[self.rank].extend_from_slice(data);
        let state = self.barrier(state)?;
        read(&state.slots);
        drop(self.barrier(state)?);
        Ok(())
    }

    fn abort(&self) {
        self.lock().aborted = true;
        self.shared.aborted.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
    }

    fn abort_flag(&self) -> Option<Arc<AtomicBool>> {
        Some(Arc::clone(&self.shared.aborted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `body` on every rank of a group of `size` threads; returns each rank's result.
    fn on_ranks<T: Send>(size: usize, body: impl Fn(&ThreadComm) -> T + Sync) -> Vec<T> {
        let comms = ThreadComm::group(size);
        std::thread::scope(|s| {
            let handles: Vec<_> = comms.iter().map(|c| s.spawn(|| body(c))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn collectives_give_what_their_definitions_say() {
        // Rank r holds [r, 10r, 100r, 1000r] + 1.
        let data = |r: usize| [1.0, 10.0, 100.0, 1000.0].map(|x| x * r as f32 + 1.0);
        for _ in 0..20 {
            let out = on_ranks(4, |c| {
                let mut sum = data(c.rank()).to_vec();
                c.all_reduce_sum(&mut sum).unwrap();
                // Pieces of 0, 1, 2 and 1 values.
                let piece = c
                    .reduce_scatter_pieces(&data(c.rank()), &[0, 1, 2, 1])
                    .unwrap();
                let mut gathered = [0.0; 4];
                c.all_gather(&[c.rank() as f32], &mut gathered).unwrap();
                let mut b = data(c.rank()).to_vec();
                c.broadcast(&mut b, 2).unwrap();
                let x = c.broadcast_f64(1.0 / (3.0 + c.rank() as f64), 1).unwrap();
                assert_eq!(x, 0.25);
                let total = c.sum_f64(1.0 / (3.0 + c.rank() as f64)).unwrap();
                assert!((total - 57.0 / 60.0).abs() < 1e-15, "{total}");
                // Rank r's piece is r copies of r: pieces of 0 to 3 values, one empty.
                let mine = vec![c.rank() as f32; c.rank()];
                let pieces = c.gather_pieces(&mine, &[0, 1, 2, 3]).unwrap();
                assert_eq!(pieces, [1.0, 2.0, 2.0, 3.0, 3.0, 3.0]);
                (sum, piece, gathered, b)
            });
            let starts = [0, 0, 1, 3, 4];
            for (r, (sum, piece, gathered, b)) in out.iter().enumerate() {
                // Σ_r (r·x + 1) = 6x + 4.
                assert_eq!(sum, &[10.0, 64.0, 604.0, 6004.0]);
                assert_eq!(piece[..], sum[starts[r]..starts[r + 1]]);
                assert_eq!(gathered, &[0.0, 1.0, 2.0, 3.0]);
                assert_eq!(b, &data(2).to_vec());
            }
        }
    }

    #[test]
    fn a_failing_rank_releases_the_others() {
        let out = on_ranks(3, |c| {
            if c.rank() == 1 {
                c.abort();
                return Err(anyhow::anyhow!("rank 1 failed"));
            }
            let mut x = [1.0];
            c.all_reduce_sum(&mut x)?;
            c.all_reduce_sum(&mut x)
        });
        for (r, result) in out.iter().enumerate() {
            let message = format!("{:#}", result.as_ref().unwrap_err());
            let want = if r == 1 {
                "rank 1 failed"
            } else {
                "another rank failed"
            };
            assert_eq!(message, want);
        }
    }

    #[test]
    fn an_abort_raises_every_ranks_flag() {
        let comms = ThreadComm::group(2);
        let flag = comms[1].abort_flag().unwrap();
        assert!(!flag.load(Ordering::SeqCst));
        comms[0].abort();
        assert!(flag.load(Ordering::SeqCst));
        assert!(SingleRank.abort_flag().is_none());
    }

    #[test]
    fn a_single_rank_passes_data_through() {
        let c = SingleRank;
        for x in [1.0 / 3.0, -0.0, f64::INFINITY, 1e-310] {
            assert_eq!(c.broadcast_f64(x, 0).unwrap().to_bits(), x.to_bits());
        }
        let out = c.reduce_scatter_pieces(&[1.0, 2.0, 3.0], &[3]).unwrap();
        assert_eq!(out, [1.0, 2.0, 3.0]);
        assert_eq!(c.sum_f64(1.0 / 3.0).unwrap(), 1.0 / 3.0);
    }
}
