#ifndef KEYHOLD_ALLOCATOR_H
#define KEYHOLD_ALLOCATOR_H

/// Raises glibc's mmap and trim thresholds so that freed buffers of up to `bytes` are reused from
/// the heap instead of being returned to the kernel and faulted in again. No-op off glibc.
void keyhold_keep_buffers_on_heap(int bytes);

#endif
