"""Old import path of lfjax.tasks.mlm_defaults, for config files written
against it."""

from lfjax.tasks.mlm_defaults import base_config  # noqa: F401
from lfjax.tasks.mlm_defaults import tiny  # noqa: F401
from lfjax.tasks.mlm_defaults import validate  # noqa: F401
