"""``python -m cxr_tf.import_weights FILE``: published PyTorch weights (torchxrayvision's DenseNet121
sets and ResNet50-res512, the CheXNet reproductions) -> an ordinary run folder under
``saved_models/``, with the network's parity against PyTorch measured and written in its
``import.json`` (library: ``cxr_tf.inference.torch_weights.import_checkpoint``). Needs
``pip install 'cxr_tf[import]'``; the run it writes needs cxr_tf alone. See ``docs/importing.md``."""

import cxr_tf.quiet  # noqa: F401  (first: before TensorFlow loads)
import sys

from cxr_tf import cli
from cxr_tf.models.published import LAYOUTS, WEIGHT_SETS
from cxr_tf.runs import DEFAULT_RUNS_DIR
from cxr_tf.training.importer import DEFAULT_FILMS


def build_parser():
    parser = cli.parser("import_weights", "Import a published PyTorch chest X-ray checkpoint as a cxr_tf run "
                                          "(model.keras, labels, the source's thresholds, provenance, parity).")
    parser.add_argument("file", help="the checkpoint: an xrv .pt file (pickled module or state dict), arnoweng's "
                                     "model.pth.tar, jrzech's checkpoint")
    parser.add_argument("--weights-set", choices=list(WEIGHT_SETS), metavar="NAME",
                        help="which published weights these are (labels, thresholds, provenance; default: "
                             f"recognised by the published file name): {', '.join(WEIGHT_SETS)}")
    parser.add_argument("--layout", choices=list(LAYOUTS), help="the checkpoint's layout when it cannot be told "
                                                                 "from the file")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow a file that needs full unpickling (runs code from the file: only for files "
                             "from a source you trust; check the SHA-256 the import prints)")
    parser.add_argument("--out", default=str(DEFAULT_RUNS_DIR), help="folder that receives the run folder")
    parser.add_argument("--run-name", help="run folder name (default imported-<weights set>-<date>-<time>)")
    parser.add_argument("--image-size", type=int, help="input side in px (default: the weights' own, 224 or 512)")
    parser.add_argument("--films", nargs="+", metavar="PATH",
                        help="PNG/JPEG films or folders to measure parity on (default: the embedded sample)")
    parser.add_argument("--num-films", type=int, default=DEFAULT_FILMS, help="films parity is measured on")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    from cxr_tf.inference.torch_weights import import_checkpoint

    try:
        import_checkpoint(args.file, out=args.out, weights_set=args.weights_set, layout=args.layout,
                          trust_pickle=args.trust_pickle, image_size=args.image_size, films=args.films,
                          num_films=args.num_films, run_name=args.run_name)
    except cli.USAGE_ERRORS as err:  # a bad file or value (CheckpointMismatch included), a missing extra
        cli.fail(parser, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
