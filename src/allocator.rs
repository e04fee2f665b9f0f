//! The process's global allocator: mimalloc, reached through its plain entry
//! points for ordinary alignments.
//!
//! The `mimalloc` crate's `GlobalAlloc` sends every request through
//! `mi_malloc_aligned`. In mimalloc v3 that call only stays on the fast path
//! when the size class is a power of two or the page's free list happens to
//! be ready; otherwise (a 24-, 40- or 48-byte `Box`, a `String` of 100
//! bytes) it falls into `mi_theap_malloc_zero_aligned_at_overalloc`, which
//! over-allocates into the next size class. Callgrind counted 8 such calls
//! and about 3 % of a single publish's instructions there.
//!
//! Every mimalloc block is at least 8-byte aligned (block sizes are
//! multiples of the word size and pages start 16-byte aligned), so a
//! request whose alignment is at most 8 and no larger than its size is
//! already satisfied by `mi_malloc`: the same rule `std`'s system allocator
//! uses for `malloc`. Anything else keeps the aligned calls.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// mimalloc with a fast path for word-aligned requests.
pub struct Allocator;

/// The alignment every mimalloc block has, whatever its size.
const WORD_ALIGN: usize = std::mem::align_of::<usize>();

/// Whether a plain (unaligned) mimalloc call satisfies `align` for `size`.
#[inline]
fn plain(size: usize, align: usize) -> bool {
    align <= WORD_ALIGN && align <= size
}

// SAFETY: every call hands mimalloc a size and alignment from a valid
// `Layout` and frees only pointers mimalloc returned: `mi_free` and
// `mi_realloc_aligned` accept blocks from either entry point.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if plain(layout.size(), layout.align()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if plain(layout.size(), layout.align()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: see the impl.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if plain(new_size, layout.align()) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size from 1 to 4 KiB at every alignment from 1 to 4 KiB comes
    /// back aligned, writable, zeroed when asked, and keeps its bytes
    /// across a realloc in both directions.
    #[test]
    fn every_size_and_alignment_comes_back_aligned() {
        let allocator = Allocator;
        for align in (0..=12).map(|shift| 1usize << shift) {
            for size in (1..=4096).step_by(7).chain([align, 8, 16, 24, 48]) {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; every pointer is checked, used
                // within its size and freed once.
                unsafe {
                    let p = allocator.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xAB, size);
                    let grown = allocator.realloc(p, layout, size * 3);
                    assert_eq!(grown as usize % align, 0, "realloc up {size}/{align}");
                    assert!((0..size).all(|i| *grown.add(i) == 0xAB));
                    let grown_layout = Layout::from_size_align(size * 3, align).unwrap();
                    let shrunk = allocator.realloc(grown, grown_layout, size.div_ceil(2));
                    assert_eq!(shrunk as usize % align, 0, "realloc down {size}/{align}");
                    assert!((0..size.div_ceil(2)).all(|i| *shrunk.add(i) == 0xAB));
                    allocator.dealloc(
                        shrunk,
                        Layout::from_size_align(size.div_ceil(2), align).unwrap(),
                    );
                    let z = allocator.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed {size}/{align}");
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    allocator.dealloc(z, layout);
                }
            }
        }
    }
}
