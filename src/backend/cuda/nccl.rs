//! NCCL between the GPUs of a data-parallel run: ZeRO-1's reduce-scatter of the gradients and
//! all-gather of the weights on the devices, instead of through the host as
//! [`crate::dist::Comm`] does.
//!
//! The communicator is set up over the run's host [`Comm`] (threads, or processes over TCP):
//! rank 0 asks NCCL for a unique id and broadcasts its 128 bytes, then every rank joins. Each
//! piece is summed on one rank (its root) and copied from there, so every rank ends with the
//! same bits and replicas stay identical, as with the host collectives; the order of the
//! additions is NCCL's, not rank order, so results differ from the host path by float
//! rounding.
//!
//! libnccl is loaded at run time (cudarc's dynamic loading); without it, an error. Not yet run
//! on a GPU.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use cudarc::driver::CudaStream;
use cudarc::driver::sys::CUresult;
use cudarc::nccl::{result, sys};

use super::view::View;
use crate::dist::{Comm, RankFailed};

/// Whether libnccl can be loaded (cudarc would panic on its first call otherwise).
pub fn present() -> bool {
    // SAFETY: only tries to dlopen the library's candidate names.
    unsafe { sys::is_culib_present() }
}

/// NCCL's error as an error that says what failed (cudarc's `NcclError` is no `std` error).
fn failed(what: String) -> impl FnOnce(result::NcclError) -> anyhow::Error {
    move |error| anyhow!("{what}: NCCL returned {:?}", error.0)
}

/// One rank's NCCL communicator.
pub struct Nccl {
    comm: sys::ncclComm_t,
    size: usize,
    /// How long a wait on its collectives may go without completing before the run ends.
    timeout: Duration,
    /// The host ranks' abort, where their transport has one: a rank that failed elsewhere.
    host_aborted: Option<Arc<AtomicBool>>,
}

/// A unique id's 128 bytes as 32 f32 slots, whose copies move bits unchanged.
fn id_to_slots(id: &sys::ncclUniqueId) -> Vec<f32> {
    id.internal
        .chunks_exact(4)
        .map(|b| {
            f32::from_bits(u32::from_ne_bytes([
                b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8,
            ]))
        })
        .collect()
}

fn slots_to_id(slots: &[f32]) -> sys::ncclUniqueId {
    let mut id = sys::ncclUniqueId { internal: [0; 128] };
    for (chunk, slot) in id.internal.chunks_exact_mut(4).zip(slots) {
        for (byte, value) in chunk.iter_mut().zip(slot.to_bits().to_ne_bytes()) {
            *byte = value as _;
        }
    }
    id
}

impl Nccl {
    /// Joins the communicator of `host`'s ranks, on the current GPU (each rank its own).
    /// Collective: every rank of `host` must call it.
    pub fn new(host: &dyn Comm, timeout: Duration) -> Result<Nccl> {
        // Every rank learns whether all have the library before any waits in NCCL's set-up,
        // which would wait forever for a rank that cannot join.
        let mut ready = [f32::from(u8::from(present()))];
        host.all_reduce_sum(&mut ready)?;
        if !present() {
            bail!(
                "NCCL (libnccl.so.2) cannot be loaded: install it (e.g. pip install \
                 nvidia-nccl-cu13) and put its lib directory on LD_LIBRARY_PATH"
            );
        }
        ensure!(
            ready[0] as usize == host.size(),
            "NCCL cannot be loaded on {} of the {} ranks",
            host.size() - ready[0] as usize,
            host.size()
        );
        let mut slots = if host.is_lead() {
            id_to_slots(&result::get_uniqueid().map_err(failed("making NCCL's unique id".into()))?)
        } else {
            vec![0.0; 32]
        };
        host.broadcast(&mut slots, 0)?;
        let (size, rank) = (
            i32::try_from(host.size()).context("too many ranks for NCCL")?,
            host.rank() as i32,
        );
        let mut comm = std::ptr::null_mut();
        // SAFETY: `comm` receives the new communicator; every rank passes the same id and size.
        unsafe { result::comm_init_rank(&mut comm, size, slots_to_id(&slots), rank) }
            .map_err(failed(format!("setting up NCCL rank {rank} of {size}")))?;
        Ok(Nccl {
            comm,
            size: host.size(),
            timeout,
            host_aborted: host.abort_flag(),
        })
    }

    /// Waits until `stream` has done all its work, watching this communicator meanwhile: a
    /// rank that died leaves the others' collectives waiting for it forever, so NCCL's
    /// asynchronous error (a lost peer), the host ranks' abort (a rank thread that failed) or
    /// no completion within the timeout aborts the communicator, which ends its pending
    /// operations, and gives an error instead of a hang.
    pub fn wait(&mut self, stream: &CudaStream) -> Result<()> {
        stream.context().bind_to_thread()?;
        let started = Instant::now();
        loop {
            // SAFETY: the stream is live; the query only reads its state.
            match unsafe { cudarc::driver::sys::cuStreamQuery(stream.cu_stream()) } {
                CUresult::CUDA_ERROR_NOT_READY => {}
                done => {
                    return done
                        .result()
                        .context("a GPU kernel, copy or collective failed");
                }
            }
            if let Err(error) = self.async_error() {
                self.abort();
                return Err(error);
            }
            // Another rank failed: its collectives will never come.
            if (self.host_aborted.as_ref()).is_some_and(|flag| flag.load(Ordering::SeqCst)) {
                self.abort();
                return Err(RankFailed.into());
            }
            if started.elapsed() > self.timeout {
                self.abort();
                bail!(
                    "NCCL's collectives did not complete within {} s (--collective-timeout): \
                     another rank has probably failed",
                    self.timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// NCCL's asynchronous error on this communicator (a lost peer, a network failure).
    fn async_error(&self) -> Result<()> {
        let mut state = sys::ncclResult_t::ncclSuccess;
        // SAFETY: the communicator is live (checked); the call only writes `state`.
        ensure!(!self.comm.is_null(), "NCCL communicator already closed");
        unsafe { sys::ncclCommGetAsyncError(self.comm, &mut state) }
            .result()
            .map_err(failed("asking NCCL for errors".into()))?;
        state
            .result()
            .map_err(failed("a collective of this run".into()))?;
        Ok(())
    }

    /// Ends the communicator and its pending operations; later collectives fail.
    fn abort(&mut self) {
        if !self.comm.is_null() {
            // SAFETY: the communicator was made by comm_init_rank and is ended once.
            let _ = unsafe { result::comm_abort(self.comm) };
            self.comm = std::ptr::null_mut();
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// On rank r, piece r of `x` (consecutive pieces of `lens`) becomes the sum over ranks of
    /// that piece; the rest of `x` is left as it was. One reduce per rank with that rank as
    /// root, in one NCCL group (NCCL's reduce-scatter wants equal pieces).
    pub fn reduce_scatter_sum(
        &self,
        x: View<f32>,
        lens: &[usize],
        stream: &CudaStream,
    ) -> Result<()> {
        self.grouped("NCCL reduce-scatter", x, lens, |piece, root| {
            // SAFETY: `piece` lies in a live allocation on this rank's GPU; in place (send =
            // receive) is allowed, and only the root's receive buffer is written.
            unsafe {
                result::reduce(
                    piece.address() as *const _,
                    piece.address() as *mut _,
                    piece.len(),
                    sys::ncclDataType_t::ncclFloat32,
                    sys::ncclRedOp_t::ncclSum,
                    root,
                    self.comm,
                    stream.cu_stream() as sys::cudaStream_t,
                )
            }
        })
    }

    /// Every rank gets every rank's piece of `x` (consecutive pieces of `lens`, rank r's the
    /// r-th): one broadcast per rank with that rank as root, in one NCCL group (NCCL's
    /// all-gather wants equal pieces).
    pub fn all_gather_pieces(
        &self,
        x: View<f32>,
        lens: &[usize],
        stream: &CudaStream,
    ) -> Result<()> {
        self.grouped("NCCL all-gather", x, lens, |piece, root| {
            // SAFETY: as in `reduce_scatter_sum`; the root sends its piece in place.
            unsafe {
                result::broadcast(
                    piece.address() as *const _,
                    piece.address() as *mut _,
                    piece.len(),
                    sys::ncclDataType_t::ncclFloat32,
                    root,
                    self.comm,
                    stream.cu_stream() as sys::cudaStream_t,
                )
            }
        })
    }

    /// Issues `op(piece r, r)` for every non-empty piece of `x` between one group start and
    /// end, so that NCCL runs them as one collective.
    fn grouped(
        &self,
        what: &str,
        x: View<f32>,
        lens: &[usize],
        op: impl Fn(View<f32>, i32) -> Result<result::NcclStatus, result::NcclError>,
    ) -> Result<()> {
        ensure!(!self.comm.is_null(), "NCCL communicator already closed");
        ensure!(
            lens.len() == self.size && lens.iter().sum::<usize>() == x.len(),
            "{what} of {} values in pieces of {lens:?} over {} ranks",
            x.len(),
            self.size
        );
        result::group_start().map_err(failed(format!("{what}: starting the group")))?;
        let mut start = 0;
        let mut outcome = Ok(());
        for (root, &len) in lens.iter().enumerate() {
            if len > 0 && outcome.is_ok() {
                outcome = x.slice(start, len).and_then(|piece| {
                    op(piece, root as i32).map_err(failed(format!("{what} (root {root})")))?;
                    Ok(())
                });
            }
            start += len;
        }
        // The group is closed whatever happened inside it.
        let ended = result::group_end().map_err(failed(format!("{what}: ending the group")));
        outcome.and(ended.map(drop))
    }
}

impl Drop for Nccl {
    /// Aborts rather than destroys: a rank that ends on an error may leave operations pending,
    /// which a destroy would wait for (after a run's last wait there are none).
    fn drop(&mut self) {
        self.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unique_id_survives_the_trip_through_f32_slots() {
        let mut id = sys::ncclUniqueId { internal: [0; 128] };
        for (i, byte) in id.internal.iter_mut().enumerate() {
            // Every byte value, NaN bit patterns included.
            *byte = (i as u8).wrapping_mul(37).wrapping_add(0x7f) as _;
        }
        let slots = id_to_slots(&id);
        assert_eq!(slots.len(), 32);
        let copied: Vec<f32> = slots.clone();
        assert_eq!(slots_to_id(&copied).internal, id.internal);
    }
}
