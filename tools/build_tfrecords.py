"""Build TFRecord shards and their manifest: ``python -m cxr_tf.build`` for a checkout that is not
installed (same flags; ``--help`` lists them).

    python tools/build_tfrecords.py --data-dir /data/nih --out records --image-size 256
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr_tf.build import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
