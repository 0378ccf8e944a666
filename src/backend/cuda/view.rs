//! Typed views of device memory: an address and an element count.
//!
//! The launchers take views instead of cudarc's `CudaSlice`s because the backend hands out
//! many views of one allocation at once, some written and some read by the same kernel, which
//! Rust's borrows of one `CudaSlice` cannot express (llm.c passes raw pointers for the same
//! reason). A view does not keep its memory alive: the allocation it came from must outlive
//! every launch that uses it, which holds because the backend frees nothing before it is
//! dropped, and every check keeps its `CudaSlice`s for the whole comparison. All work is queued
//! on one stream, so no view needs events to order its reads and writes.

use std::marker::PhantomData;

use anyhow::{Result, ensure};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

/// `len` elements of type `T` from device address `address`.
pub struct View<T> {
    address: u64,
    len: usize,
    element: PhantomData<fn() -> T>,
}

// Manual impls: derive would require `T: Clone`, which an address does not need.
impl<T> Clone for View<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for View<T> {}

impl<T> std::fmt::Debug for View<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "View({:#x}, {})", self.address, self.len)
    }
}

impl<T> View<T> {
    /// The whole of `slice`.
    pub fn of(slice: &CudaSlice<T>) -> View<T> {
        let stream = slice.stream().clone();
        // With event tracking off (see `Gpu::open`) this only reads the address.
        let (address, _sync) = slice.device_ptr(&stream);
        View {
            address,
            len: slice.len(),
            element: PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn address(&self) -> u64 {
        self.address
    }

    /// The address in place, for a kernel argument (which is passed by reference).
    pub fn address_ref(&self) -> &u64 {
        &self.address
    }

    pub fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }

    /// The `len` elements from element `start`.
    pub fn slice(self, start: usize, len: usize) -> Result<View<T>> {
        ensure!(
            start.checked_add(len).is_some_and(|end| end <= self.len),
            "device view {start}+{len} outside a view of {} elements",
            self.len
        );
        Ok(View {
            address: self.address + (start * std::mem::size_of::<T>()) as u64,
            len,
            element: PhantomData,
        })
    }

    /// The same memory read as `U`, which must have the same size (e.g. f32 ↔ u32).
    pub fn cast<U>(self) -> View<U> {
        assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<U>());
        View {
            address: self.address,
            len: self.len,
            element: PhantomData,
        }
    }
}

/// Queues a copy of `src` into `dst`, which must have the same length.
pub fn copy<T>(stream: &CudaStream, dst: View<T>, src: View<T>) -> Result<()> {
    ensure!(
        dst.len == src.len,
        "device copy of {} elements into {}",
        src.len,
        dst.len
    );
    if dst.len > 0 {
        // SAFETY: both views lie inside live allocations of `len` elements of T.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                dst.address,
                src.address,
                dst.bytes(),
                stream.cu_stream(),
            )
        }?;
    }
    Ok(())
}

/// Copies `src` from the host into `dst` and waits for it (so `src` may go away at once).
pub fn upload<T>(stream: &CudaStream, dst: View<T>, src: &[T]) -> Result<()> {
    ensure!(
        dst.len == src.len(),
        "upload of {} elements into a device view of {}",
        src.len(),
        dst.len
    );
    if !src.is_empty() {
        // SAFETY: dst holds src.len() elements of T; we wait below, before src can move.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst.address, src, stream.cu_stream()) }?;
        stream.synchronize()?;
    }
    Ok(())
}

/// The contents of `src` on the host, after all queued work.
pub fn download<T: Default + Clone>(stream: &CudaStream, src: View<T>) -> Result<Vec<T>> {
    let mut host = vec![T::default(); src.len];
    if !host.is_empty() {
        // SAFETY: src holds host.len() elements of T; we wait below, before host is read.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(&mut host, src.address, stream.cu_stream())
        }?;
    }
    stream.synchronize()?;
    Ok(host)
}

/// Sets every byte of `dst` to zero (0.0 for floats).
pub fn zero<T>(stream: &CudaStream, dst: View<T>) -> Result<()> {
    if dst.len > 0 {
        // SAFETY: dst lies inside a live allocation of dst.bytes() bytes.
        unsafe {
            cudarc::driver::result::memset_d8_async(dst.address, 0, dst.bytes(), stream.cu_stream())
        }?;
    }
    Ok(())
}

/// `slice.view()` for [`View::of`], where the checks hand whole allocations to the launchers.
pub trait ViewOf<T> {
    fn view(&self) -> View<T>;
}

impl<T> ViewOf<T> for CudaSlice<T> {
    fn view(&self) -> View<T> {
        View::of(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    fn view<T>(address: u64, len: usize) -> View<T> {
        View {
            address,
            len,
            element: PhantomData,
        }
    }

    #[test]
    fn slices_move_the_address_by_whole_elements() {
        let floats = view::<f32>(0x1000, 10);
        let middle = floats.slice(2, 3).unwrap();
        assert_eq!((middle.address(), middle.len()), (0x1008, 3));
        assert_eq!(middle.bytes(), 12);
        let halves = view::<bf16>(0x1000, 10).slice(9, 1).unwrap();
        assert_eq!(halves.address(), 0x1012);
        // The empty slice at the end is inside; one element past it is not.
        assert!(floats.slice(10, 0).is_ok());
        assert!(floats.slice(8, 3).is_err());
        assert!(floats.slice(usize::MAX, 2).is_err());
    }
}
