"""Make the import fixtures of the test suite (``tests/importing/fixtures/*.npz``) with PyTorch.

CI has no torch, so the parity tests read what this script measured with it: for each layout that
``python -m cxr_tf.import_weights`` reads, a *reduced* network of the same family, built with the
source's own code (torchxrayvision's DenseNet, torchvision's ResNet Bottleneck blocks with xrv's
1-channel stem, torchvision's DenseNet with the CheXNet Linear+Sigmoid classifier), its
BatchNorm statistics calibrated on the embedded sample films and its classifier scaled so the
probabilities spread; saved as the layout's state dict (its own key names: ``module.densenet121.``
and ``norm.1`` for arnoweng), together with the source pipeline's tensor of full-size test films
(``tests/fixtures/nih-sample``), the PyTorch logits on it, and the films' names.

    pip install -e ".[import]"        # torch, torchvision, torchxrayvision, scikit-image
    python tools/make_import_fixtures.py

Every file is a few tens of kB; the script is deterministic (torch.manual_seed) up to PyTorch's
kernels.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "importing" / "fixtures"
FILMS = ROOT / "tests" / "fixtures" / "nih-sample" / "images_001" / "images"
SIZE = 64
REDUCED_DENSENET = dict(growth_rate=4, block_config=(2, 2, 2, 2), num_init_features=8, bn_size=2)


def calibrate(module, forward, batches, torch):
    """BatchNorm running statistics = the batches' (cumulative average), then the classifier scaled
    so the logits have a standard deviation of ~1.5 and mean 0 on those batches."""
    for mod in module.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None
    module.train()
    with torch.no_grad():
        for batch in batches:
            forward(batch)
    module.eval()
    return module


def scale_head(linear, logits_of, batch, torch):
    with torch.no_grad():
        logits = logits_of(batch)
        linear.weight.mul_(1.5 / float(logits.std(0).mean()))
        linear.bias.sub_(logits_of(batch).mean(0))


def full_size_checkpoints(out, calibration, seed=0):
    """Write randomly initialised full-size networks as their sources publish them, BatchNorm
    calibrated on ``calibration`` (film paths) and classifier scaled so the probabilities spread:
    ``xrv-densenet121.pt`` (the whole pickled module, as xrv publishes its DenseNets),
    ``xrv-densenet121-state.pt`` (its state dict), ``xrv-resnet50-res512.pt`` (a state dict, as xrv
    publishes its ResNet), ``model.pth.tar`` (arnoweng: {'state_dict'} under ``module.densenet121.``
    with torchvision < 0.3 names) and ``checkpoint`` (jrzech: {'model': the pickled torchvision
    DenseNet121 with Linear+Sigmoid}). Returns {name: path}."""
    import torch
    import torchvision
    import torchxrayvision as xrv

    from cxr_tf.inference.torch_weights import source_pipeline

    torch.manual_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def batches(layout, size):
        x = torch.from_numpy(source_pipeline(layout, calibration, size))
        return [x[i:i + 16] for i in range(0, len(x), 16)]

    written = {}
    net = xrv.models.DenseNet(weights=None)
    calibrate(net, net.features2, batches("xrv-densenet", 224), torch)
    scale_head(net.classifier, lambda x: net.classifier(net.features2(x)), torch.cat(batches("xrv-densenet", 224)), torch)
    torch.save(net, out / "xrv-densenet121.pt")
    torch.save(net.state_dict(), out / "xrv-densenet121-state.pt")
    written.update({"xrv-densenet121": out / "xrv-densenet121.pt", "xrv-densenet121-state": out / "xrv-densenet121-state.pt"})
    res = torchvision.models.resnet50(weights=None, num_classes=18)
    res.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)  # as xrv.models.ResNet
    calibrate(res, res, batches("xrv-resnet", 512), torch)
    scale_head(res.fc, res, torch.cat(batches("xrv-resnet", 512)), torch)
    torch.save(res.state_dict(), out / "xrv-resnet50-res512.pt")
    written["xrv-resnet50-res512"] = out / "xrv-resnet50-res512.pt"
    for layout in ("chexnet-arnoweng", "chexnet-jrzech"):
        dn = torchvision.models.densenet121(weights=None)
        dn.classifier = torch.nn.Sequential(torch.nn.Linear(1024, 14), torch.nn.Sigmoid())

        def logits(x, dn=dn):
            pooled = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(torch.relu(dn.features(x)), 1), 1)
            return dn.classifier[0](pooled)

        calibrate(dn, dn.features, batches(layout, 224), torch)
        scale_head(dn.classifier[0], logits, torch.cat(batches(layout, 224)), torch)
        if layout == "chexnet-arnoweng":
            state = {"module.densenet121." + k.replace("norm1", "norm.1").replace("conv1", "conv.1")
                     .replace("norm2", "norm.2").replace("conv2", "conv.2"): v for k, v in dn.state_dict().items()}
            torch.save({"epoch": 0, "state_dict": state, "best_loss": 0.0}, out / "model.pth.tar")
            written[layout] = out / "model.pth.tar"
        else:
            torch.save({"model": dn, "best_loss": 0.0, "epoch": 0, "LR": 1e-3}, out / "checkpoint")
            written[layout] = out / "checkpoint"
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--full-size", type=Path, metavar="DIR",
                        help="instead: write full-size random checkpoints in every published layout to DIR "
                             "(docs/importing.md: how parity was measured)")
    parser.add_argument("--calibration", type=Path, metavar="DIR",
                        help="with --full-size: films to calibrate BatchNorm on (default: the embedded sample)")
    parser.add_argument("--calibration-count", type=int, default=64, help="with --full-size: how many of them")
    args = parser.parse_args(argv)
    import torch  # before TensorFlow (cxr_tf.inference.torch_weights explains why)

    if args.full_size:
        from cxr_tf.data.datasets.nih import SAMPLE_DIR

        films = sorted((args.calibration or SAMPLE_DIR / "images").glob("*.png"))[:args.calibration_count]
        for name, path in full_size_checkpoints(args.full_size, films).items():
            print(f"{name}: {path}")
        return 0
    import torchvision
    import torchxrayvision as xrv

    from cxr_tf.data.datasets.nih import SAMPLE_DIR
    from cxr_tf.inference.torch_weights import source_pipeline, torch_resnet
    from cxr_tf.models.imported import ResNetConfig
    from cxr_tf.models.published import NIH_ORDER, XRV_ORDER

    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    sample = sorted((SAMPLE_DIR / "images").glob("*.png"))[:64]
    films = sorted(FILMS.glob("*.png"))

    def batches(layout):
        x = torch.from_numpy(source_pipeline(layout, sample, SIZE))
        return [x[i:i + 16] for i in range(0, len(x), 16)]

    cases = {}
    # torchxrayvision DenseNet (reduced), 18 outputs
    net = xrv.models.DenseNet(weights=None, **REDUCED_DENSENET)
    calibrate(net, net.features2, batches("xrv-densenet"), torch)
    scale_head(net.classifier, lambda x: net.classifier(net.features2(x)), torch.cat(batches("xrv-densenet")), torch)
    cases["xrv-densenet"] = (net.state_dict(), lambda x: net.classifier(net.features2(x)), list(XRV_ORDER), films[:3])
    # torchxrayvision ResNet (torchvision Bottleneck blocks, 1-channel stem; reduced widths)
    res = torch_resnet(ResNetConfig((1, 1, 1, 1), 4, 1, 18))
    calibrate(res, res, batches("xrv-resnet"), torch)
    scale_head(res.fc, res, torch.cat(batches("xrv-resnet")), torch)
    cases["xrv-resnet"] = (res.state_dict(), res, list(XRV_ORDER), films[:3])
    # CheXNet layouts: torchvision DenseNet (reduced) + Linear + Sigmoid
    for layout in ("chexnet-arnoweng", "chexnet-jrzech"):
        dn = torchvision.models.DenseNet(num_classes=14, **REDUCED_DENSENET)
        dn.classifier = torch.nn.Sequential(torch.nn.Linear(dn.classifier.in_features, 14), torch.nn.Sigmoid())

        def logits(x, dn=dn):
            pooled = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(torch.relu(dn.features(x)), 1), 1)
            return dn.classifier[0](pooled)

        calibrate(dn, dn.features, batches(layout), torch)
        scale_head(dn.classifier[0], logits, torch.cat(batches(layout)), torch)
        state = dn.state_dict()
        if layout == "chexnet-arnoweng":  # DataParallel around arnoweng's wrapper, torchvision < 0.3 names
            state = {"module.densenet121." + k.replace("norm1", "norm.1").replace("conv1", "conv.1")
                     .replace("norm2", "norm.2").replace("conv2", "conv.2").replace("relu1", "relu.1"): v
                     for k, v in state.items()}
        cases[layout] = (state, logits, list(NIH_ORDER), films[:2])

    for layout, (state, logits_of, labels, used) in cases.items():
        source = source_pipeline(layout, used, SIZE)
        with torch.no_grad():
            expected = logits_of(torch.from_numpy(source)).numpy()
        arrays = {f"state/{k}": v.detach().numpy() for k, v in state.items() if not k.endswith("num_batches_tracked")}
        meta = {"layout": layout, "labels": labels, "image_size": SIZE, "films": [p.name for p in used],
                "torch": torch.__version__, "torchxrayvision": xrv.__version__, "torchvision": torchvision.__version__}
        path = args.out / f"{layout}.npz"
        np.savez_compressed(path, source=source, logits=expected, meta=np.array(json.dumps(meta)), **arrays)
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} kB, logits {expected.min():.2f}..{expected.max():.2f}, "
              f"p std {float(torch.sigmoid(torch.from_numpy(expected)).std(0).mean()):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
