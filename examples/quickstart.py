"""The quickstart: an autostart broker serves the built-in EMT model to an ASE relaxation.

Runs what a user types by hand (`mlipx serve-broker --autostart`, then a script with
`GenericASECalculator(...).get_calculator()` and `mlipx serve-status`), in a private
temporary directory, and stops everything it started. No model weights are downloaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from ase.build import bulk
from ase.optimize import BFGS

from mlipx_serve import GenericASECalculator, Models, get_broker_status


def wait_for_broker(endpoint: str, process: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not get_broker_status(endpoint, timeout=0.5)["running"]:
        if process.poll() is not None or time.monotonic() > deadline:
            sys.exit("the broker did not come up")


def relax(calc) -> tuple[float, np.ndarray]:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=42)
    atoms.calc = calc
    BFGS(atoms, logfile=None).run(fmax=0.01)
    return atoms.get_potential_energy(), atoms.positions.copy()


def main() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="mlipx-quickstart-") as private:
        endpoint = f"ipc://{private}/broker.ipc"
        env = {**os.environ, "XDG_RUNTIME_DIR": private, "MLIPX_SERVE_BROKER": endpoint}
        broker = subprocess.Popen([sys.executable, "-m", "mlipx_serve.cli", "serve-broker",
                                   "--autostart"], env=env)
        try:
            wait_for_broker(endpoint, broker)
            print(f"broker up at {endpoint}; models it offers: {', '.join(Models(endpoint))}")
            model = GenericASECalculator(module="ase.calculators.emt", class_name="EMT",
                                         name="emt")
            os.environ["MLIPX_SERVE_BROKER"] = endpoint
            start = time.perf_counter()
            served = relax(model.get_calculator(use_serve=True))
            print(f"served relaxation (worker started on demand): {served[0]:.6f} eV "
                  f"in {time.perf_counter() - start:.1f} s")
            local = relax(model.get_calculator(use_serve=False))
            print(f"local relaxation:                             {local[0]:.6f} eV")
            same = abs(served[0] - local[0]) < 1e-9 and np.allclose(served[1], local[1],
                                                                     atol=1e-9)
            subprocess.run([sys.executable, "-m", "mlipx_serve.cli", "serve-status"],
                           env=env, check=True)
            if not same:
                sys.exit("served and local results differ")
            print("served and local relaxations agree")
        finally:
            broker.terminate()
            broker.wait(30)


if __name__ == "__main__":
    main()
