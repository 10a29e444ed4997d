"""What ``mlipx_serve_hook.pth`` imports at every Python start-up (``install``): the hook
itself is ``mlipx_glue.hook``. Imports nothing more: every process of the environment
pays for it."""

from mlipx_serve.mlipx_glue.hook import install  # noqa: F401
