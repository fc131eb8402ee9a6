"""`python -m keras_kd`: the keras-kd command line."""

import sys

from keras_kd_cli import main

sys.exit(main())
