//! Heap buffers whose start is [`ALIGNMENT`](crate::ALIGNMENT)-byte aligned, without `unsafe`: the
//! storage is a `Vec` of 128-byte blocks that `bytemuck` views as bytes, i8, i32 or f32.

use bytemuck::{Pod, Zeroable};

#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(128))]
struct Block([u8; 128]);

const _: () = assert!(std::mem::size_of::<Block>() == crate::ALIGNMENT);
const _: () = assert!(std::mem::align_of::<Block>() == crate::ALIGNMENT);

/// A zero-initialised, 128-byte aligned buffer of `len` elements of `T`.
#[derive(Clone)]
pub struct AlignedVec<T: Pod> {
    blocks: Vec<Block>,
    len: usize,
    _marker: std::marker::PhantomData<T>,
}

impl<T: Pod> AlignedVec<T> {
    /// `len` zeroed elements.
    pub fn zeroed(len: usize) -> Self {
        let bytes = len * std::mem::size_of::<T>();
        Self {
            blocks: vec![Block([0; 128]); bytes.div_ceil(128)],
            len,
            _marker: std::marker::PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[T] {
        &bytemuck::cast_slice::<Block, T>(&self.blocks)[..self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut bytemuck::cast_slice_mut::<Block, T>(&mut self.blocks)[..self.len]
    }
}

impl<T: Pod> std::ops::Deref for AlignedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Pod> std::ops::DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.as_mut_slice()
    }
}

impl<T: Pod + std::fmt::Debug> std::fmt::Debug for AlignedVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.as_slice().iter().take(16))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_zeroed_and_sized() {
        for len in [0usize, 1, 31, 32, 33, 1000] {
            let b = AlignedVec::<f32>::zeroed(len);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_ptr() as usize % crate::ALIGNMENT, 0);
            assert!(b.iter().all(|&v| v == 0.0));
        }
    }
}
