import logging
import os
import sys

from .cli import main

rc = main()
if "ray" in sys.modules:
    # only ``archive --ray`` imports Ray, and by now every shard (and the CSV) is closed and Ray is shut down
    # (bmcore.archive.run): what is left is the interpreter's teardown of the ~2,000 modules Ray Data brings (Ray,
    # pyarrow, pandas), measured at 0.5 s of a 2,000-crop job (docs/scaling.md). The process ends here instead.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc or 0)
raise SystemExit(rc)
