"""`python -m keras_kd`: the keras-kd command line."""

import sys

from keras_kd.cli import main

sys.exit(main())
