"""`python cli.py run ...` from a checkout works like the installed `batch-infer` command."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from batch_infer.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
