"""``python -m keras_qrobust.cli``: the ``keras-qrobust`` command."""

import sys

from . import main

sys.exit(main())
