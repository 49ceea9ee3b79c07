"""Old import path of lfjax.tasks.charlm_defaults, for config files
written against it."""

from lfjax.tasks.charlm_defaults import base_config  # noqa: F401
from lfjax.tasks.charlm_defaults import tiny  # noqa: F401
from lfjax.tasks.charlm_defaults import validate  # noqa: F401
