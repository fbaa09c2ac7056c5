//! A global allocator that asks Linux for transparent huge pages on large allocations.
//!
//! Training holds activations of hundreds of megabytes (1.0-224 at batch 32: 1.7 GB), and
//! every 4 KB page of a fresh allocation costs a page fault on first touch. Where Linux hands
//! out 2 MB pages only to memory that asks (`/sys/kernel/mm/transparent_hugepage/enabled` set
//! to `madvise`, Debian's and most distributions' default), the first training step of 1.0-224
//! took 440,000 faults; in a virtual machine each is expensive (measured on a Firecracker VM:
//! ~24 µs, a third of a 20-step run). [`HugePages`] is the system allocator that marks the
//! whole 2 MB pages inside each allocation of at least [`THRESHOLD`] bytes `MADV_HUGEPAGE`
//! before it is touched: one fault per 2 MB, and fewer TLB misses on the large arrays after.
//!
//! The `mobilenet` binary installs it; a program using the library can too (the `mobilenet`
//! crate re-exports it as `mobilenet::HugePages`):
//!
//! ```
//! use mobilenet_kernels::hugepages::HugePages;
//!
//! #[global_allocator]
//! static ALLOC: HugePages = HugePages;
//! ```
//!
//! Elsewhere than Linux it is the system allocator unchanged.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations of at least this many bytes are advised (smaller ones rarely hold a whole
/// aligned 2 MB page).
pub const THRESHOLD: usize = 4 << 20;

/// Size and alignment of a transparent huge page on x86-64 and on aarch64 with 4 KB pages.
const HUGE_PAGE: usize = 2 << 20;

/// The system allocator, with large allocations advised to use transparent huge pages.
#[derive(Clone, Copy, Debug, Default)]
pub struct HugePages;

// Safety: every call is forwarded to the system allocator unchanged; the advice only changes
// how the kernel backs memory the allocation already owns, never its contents or extent.
unsafe impl GlobalAlloc for HugePages {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // Safety: forwarded.
        let p = unsafe { System.alloc(layout) };
        advise(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // Safety: forwarded.
        let p = unsafe { System.alloc_zeroed(layout) };
        advise(p, layout.size());
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Safety: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Safety: forwarded.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        advise(p, new_size);
        p
    }
}

/// Marks the whole huge pages inside `len` bytes at `p` `MADV_HUGEPAGE`, if `len` is at least
/// [`THRESHOLD`] (null or small: nothing). The advice is a hint: where the kernel refuses it
/// (huge pages off, an old kernel), nothing changes.
pub fn advise(p: *mut u8, len: usize) {
    if p.is_null() || len < THRESHOLD {
        return;
    }
    let start = (p as usize).next_multiple_of(HUGE_PAGE);
    let end = (p as usize + len) / HUGE_PAGE * HUGE_PAGE;
    if end <= start {
        return;
    }
    #[cfg(target_os = "linux")]
    // Safety: [start, end) lies inside the allocation at p; madvise with MADV_HUGEPAGE changes
    // no contents and fails harmlessly on memory it cannot advise.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// `AnonHugePages` of the mapping that holds `addr`, in kB, from /proc/self/smaps.
    fn huge_kb_at(addr: usize) -> Option<usize> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = (a..b).contains(&addr);
                    continue;
                }
            }
            if inside {
                if let Some(kb) = line.strip_prefix("AnonHugePages:") {
                    return kb.trim().trim_end_matches("kB").trim().parse().ok();
                }
            }
        }
        None
    }

    /// An advised 64 MB allocation is backed by huge pages once touched, where the kernel
    /// gives them to memory that asks.
    #[test]
    fn large_allocations_get_huge_pages() {
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
        let Ok(mode) = mode else {
            println!("skipped: this kernel has no transparent huge pages");
            return;
        };
        if mode.contains("[never]") {
            println!(
                "skipped: transparent huge pages are off here ({})",
                mode.trim()
            );
            return;
        }
        if std::env::var_os("MOBILENET_UNDER_QEMU").is_some() {
            // scripts/test_aarch64.sh: qemu-user does not pass the advice to the host's pages.
            println!("skipped: under qemu-user, which keeps madvise from the host's pages");
            return;
        }
        let layout = Layout::from_size_align(64 << 20, 64).expect("should succeed");
        // Safety: a non-zero layout; the memory is written then freed with the same layout.
        unsafe {
            let p = HugePages.alloc(layout);
            assert!(!p.is_null());
            std::ptr::write_bytes(p, 1, layout.size());
            let huge = huge_kb_at(p as usize + (32 << 20)).expect("should succeed");
            HugePages.dealloc(p, layout);
            // At least half of it (fragmentation may leave some 4 KB pages).
            assert!(huge >= 32 << 10, "{huge} kB of huge pages in 64 MB");
        }
    }
}
