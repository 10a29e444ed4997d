"""A script that maps many structures one a request: ``python map_script.py BROKER MODEL
COUNT IN_FLIGHT``. Ctrl-C (SIGINT) interrupts the map the way it interrupts a notebook
cell: the process lives on, holding the traceback, and says so."""

from __future__ import annotations

import sys
import time

from ase.build import bulk

from mlipx_serve import evaluate

broker, model, count, in_flight = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
structures = [bulk("Cu", cubic=True) for _ in range(count)]
try:
    evaluate(model, structures, broker=broker, max_in_flight=in_flight, chunk_size=1,
             progress=False)
except KeyboardInterrupt:
    held = sys.exc_info()  # as a notebook keeps it: the frames stay alive
    print("interrupted", flush=True)
    while held:
        time.sleep(1)
print("done", flush=True)
