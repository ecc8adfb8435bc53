"""The one way this project spreads work over processes: decoding, rendering and writing images."""
import multiprocessing as mp
import os
import signal
from concurrent.futures import ProcessPoolExecutor


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle, once


def ordered_map(fn, items: list, processes: int, chunksize: int = 32):
    """fn(item) for each item, in order. On `processes` worker processes when there are more than
    one and enough items to pay for them, else in this process. An exception from fn (or a
    Ctrl-C) cancels the work not yet started and waits only for the chunks under way, so nothing
    hangs and no worker prints a traceback."""
    if processes <= 1 or len(items) < 2 * chunksize:
        yield from map(fn, items)
        return
    context = mp.get_context("spawn" if os.name == "nt" else "fork")
    executor = ProcessPoolExecutor(processes, mp_context=context, initializer=_ignore_sigint)
    try:
        yield from executor.map(fn, items, chunksize=chunksize)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
