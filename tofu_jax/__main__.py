import sys

from tofu_jax.cli import main

sys.exit(main())
