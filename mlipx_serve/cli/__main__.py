"""``python -m mlipx_serve.cli``: how autostarted workers and SLURM jobs are run."""

from mlipx_serve.cli.main import main

main()
