#!/usr/bin/env python3
"""What a page fault costs on this machine: maps 256 MiB of anonymous memory, touches every
4 KiB page once (each touch a minor fault), then again (no fault: the loop's own cost, taken
off), on small pages and on transparent huge pages (MADV_HUGEPAGE), three rounds each.

    python3 bench/fault-cost.py

A guest's first touch of memory its host has not backed yet costs far more than later ones:
the first huge-page round usually shows it."""
import mmap
import resource
import time

SIZE = 256 << 20
PAGE = 4096


def touch(memory, value):
    started = time.perf_counter()
    for offset in range(0, SIZE, PAGE):
        memory[offset] = value
    return time.perf_counter() - started


def measure(huge):
    memory = mmap.mmap(-1, SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if huge:
        memory.madvise(mmap.MADV_HUGEPAGE)
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    first = touch(memory, 1)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    again = touch(memory, 2)
    memory.close()
    pages = SIZE // PAGE
    print(
        f"{'huge' if huge else 'small'} pages: {faults} faults for {pages} pages of 4 KiB, "
        f"{(first - again) / pages * 1e6:.2f} µs per 4 KiB page"
    )


for _ in range(3):
    measure(False)
    measure(True)
