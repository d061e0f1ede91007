"""``python -m workers --queues gpu --device cuda``: run a worker (see worker.run_worker)."""

from .worker import main

main()
