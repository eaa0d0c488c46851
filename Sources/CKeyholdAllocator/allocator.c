#include "keyhold_allocator.h"

#include <stdio.h>
#include <stdlib.h> /* defines __GLIBC__ on glibc systems */
#if defined(__GLIBC__)
#include <malloc.h>
#endif

void keyhold_keep_buffers_on_heap(int bytes) {
#if defined(__GLIBC__)
    mallopt(M_MMAP_THRESHOLD, bytes);
    mallopt(M_TRIM_THRESHOLD, 2 * bytes);
#else
    (void)bytes;
#endif
}

void keyhold_line_buffered_stdout(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
}
