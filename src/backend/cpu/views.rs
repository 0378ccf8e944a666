//! Checked borrowing of several tensors of the backend's buffers at once.
//!
//! One operation reads some tensors and writes others, often in the same buffer (all
//! activations live in one allocation). Rust cannot see that views at different offsets are
//! disjoint, so [`Views`] checks it at run time, like a `RefCell` over ranges: a mutable view
//! may not overlap any other view taken from the same `Views`, a shared view may not overlap a
//! mutable one. Overlap is a bug in the caller, so it panics with the two tensors named.

use std::marker::PhantomData;

use crate::backend::Tensor;

/// Most views one operation takes.
const MAX_VIEWS: usize = 12;

pub(super) struct Views<'a, F> {
    buffers: *mut Vec<F>,
    buffer_count: usize,
    taken: [(Tensor, bool); MAX_VIEWS],
    count: usize,
    _borrow: PhantomData<&'a mut [Vec<F>]>,
}

impl<'a, F> Views<'a, F> {
    pub fn new(buffers: &'a mut [Vec<F>]) -> Self {
        let empty = Tensor {
            buffer: 0,
            offset: 0,
            len: 0,
        };
        Views {
            buffer_count: buffers.len(),
            buffers: buffers.as_mut_ptr(),
            taken: [(empty, false); MAX_VIEWS],
            count: 0,
            _borrow: PhantomData,
        }
    }

    /// Records the view after checking it against those already taken, and returns a pointer
    /// to its first element.
    fn claim(&mut self, t: Tensor, mutable: bool) -> *mut F {
        assert!(t.buffer < self.buffer_count, "tensor {t:?} names no buffer");
        // SAFETY: the index is in bounds and `self` holds the exclusive borrow of all buffers.
        let buffer = unsafe { &mut *self.buffers.add(t.buffer) };
        assert!(
            t.offset
                .checked_add(t.len)
                .is_some_and(|end| end <= buffer.len()),
            "tensor {t:?} runs past its buffer of {}",
            buffer.len()
        );
        for &(other, other_mutable) in &self.taken[..self.count] {
            let overlap = other.buffer == t.buffer
                && t.len > 0
                && other.len > 0
                && t.offset < other.offset + other.len
                && other.offset < t.offset + t.len;
            assert!(
                !(overlap && (mutable || other_mutable)),
                "tensor {t:?} overlaps {other:?} in one operation"
            );
        }
        assert!(self.count < MAX_VIEWS, "too many views in one operation");
        self.taken[self.count] = (t, mutable);
        self.count += 1;
        // SAFETY: `t.offset` is within the buffer (checked above).
        unsafe { buffer.as_mut_ptr().add(t.offset) }
    }

    pub fn mutable(&mut self, t: Tensor) -> &'a mut [F] {
        let ptr = self.claim(t, true);
        // SAFETY: in bounds (checked in `claim`), and no other view of these elements exists
        // for 'a: every earlier view was checked disjoint, every later one will be.
        unsafe { std::slice::from_raw_parts_mut(ptr, t.len) }
    }

    pub fn shared(&mut self, t: Tensor) -> &'a [F] {
        let ptr = self.claim(t, false);
        // SAFETY: in bounds, and no mutable view of these elements exists for 'a.
        unsafe { std::slice::from_raw_parts(ptr, t.len) }
    }
}
