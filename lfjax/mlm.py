"""`python -m lfjax.mlm {export,evaluate,make_tiny}`: the MLM task's
command, kept under its old name; the task is lfjax.tasks.mlm."""

import sys

from lfjax import cli
from lfjax.tasks.mlm import main

if __name__ == "__main__":
  sys.exit(cli.run(main))
