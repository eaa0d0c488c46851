#ifndef KEYHOLD_ALLOCATOR_H
#define KEYHOLD_ALLOCATOR_H

/// Raises glibc's mmap and trim thresholds so that freed buffers of up to `bytes` are reused from
/// the heap instead of being returned to the kernel and faulted in again. No-op off glibc.
void keyhold_keep_buffers_on_heap(int bytes);

/// Makes standard output line-buffered even when it is a pipe, so narration printed by this process
/// stays in order with what its child processes write to the same terminal or log.
void keyhold_line_buffered_stdout(void);

#endif
