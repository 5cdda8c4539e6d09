"""Triage of incoming films: ``python -m cxr_tf.predict --model RUN_DIR film.png other.dcm ...``

For each film (PNG, JPEG or DICOM, recognised by content; ``cxr_tf.inference.readers``):
the 14 probabilities (Monte-Carlo dropout mean, ``cxr_tf.inference.uncertainty``), their
uncertainty (MC standard deviation), the findings at or above the run's
validation-chosen thresholds, and a triage level with a recommended action
(``cxr_tf.inference.triage``). Films are listed most urgent first (a worklist). ``--json``
prints, in that order, one object per film::

    {"file", "probabilities": {finding: p}, "uncertainty": {finding: std},
     "findings": [...], "borderline": [...], "triage": {"level", "action"}, "message",
     "caveats": [...]}

One probability per film: ``Predictor.film_results`` is the only code path from
prepared films to numbers (``predict`` table and JSON, the web service and
``explain`` all call it). The Monte-Carlo draws are seeded from the film's pixels
and the run's ``model.keras`` digest (``cxr_tf.inference.uncertainty.film_seed``), so
the same film on the same run gives the same numbers every time, in any batch.
The mean is thresholded; the spread is the uncertainty. ``caveats`` carry what
the run has not shown (``cxr_tf.inference.evidence``; an unvalidated run never says
urgent).

or ``{"file", "error"}`` for a film that could not be read; the exit code is 1
when any film failed, 2 for a usage error (bad run folder, unknown finding).
``--gradcam DIR`` writes a Grad-CAM overlay per positive finding,
``DIR/<film stem>_<finding>.png``.

The run folder is a ``cxr_tf.training.trainer`` run: ``model.keras``, ``config.json``
(``arch``, ``image_size``), ``labels.json``, ``thresholds.json`` (when absent,
0.5 for every finding, and the output says so). Without ``--model`` the run
named in ``saved_models/latest`` is used.

Multimodal models get their metadata input from the DICOM tags PatientAge,
PatientSex and ViewPosition; PNG/JPEG films and missing tags use the defaults of
``cxr_tf.data.pipeline.meta_vector``: the training-split mean age, and zeros in the sex and
view one-hots (no information), standardised with the run's records manifest.
"""

import base64
import hashlib
import logging
from pathlib import Path

import numpy as np

from cxr_tf import runs
from cxr_tf.data.manifest import MANIFEST, read_manifest
from cxr_tf.inference.readers import FilmError, Limits, read_film
from cxr_tf.inference.evidence import DEFAULT_AUC_FLOOR, run_evidence
from cxr_tf.inference.triage import (DEFAULT_BORDERLINE_K, DEFAULT_CRITICAL, DEFAULT_UNCERTAINTY_THRESHOLD, triage,
                                     validate_critical, worklist)
from cxr_tf.inference.uncertainty import DEFAULT_SAMPLES, film_seed

log = logging.getLogger(__name__)

DISPLAY_SIDE = 512
"""Longest side (px) of the film and overlay images ``predict_bytes(images=True)`` returns."""


def film_error_text(name, err):
    """The per-film error message of ``err``: a FilmError's own text (it names the file),
    else the file, the exception type and its first line (an unforeseen failure while
    preparing one film is that film's error, not the batch's)."""
    if isinstance(err, FilmError):
        return str(err)
    log.warning("unexpected error preparing %s", name, exc_info=err)
    first = (str(err).strip().splitlines() or [""])[0][:200]
    return f"{name}: could not be prepared ({type(err).__name__}: {first})"


def _data_uri(png):
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class Predictor:
    """A trained run, loaded once, that triages films.

    run_dir: a ``cxr_tf.training.trainer`` run folder. samples: MC dropout passes (1 = one
    dropout draw; the std is then 0). uncertainty_threshold: MC std at which a
    finding is uncertain. critical: findings that make a film urgent. limits:
    ``cxr_tf.inference.readers.Limits`` for incoming files. seed: an extra integer mixed into
    every film's MC seed (None: none); the draws are fixed by the film and the run either way,
    so two Predictors with one seed give equal results, and another seed gives other draws.
    borderline_k: |p − t| < k·std is borderline. auc_floor: validation AUC the run (macro)
    and each critical finding must reach to raise "urgent" (``cxr_tf.inference.evidence``).
    backend: "keras" (model.keras), "litert" or "onnx" (an export of
    ``cxr_tf.inference.export``: ``export`` names its folder, default
    ``RUN/export/litert-int8`` or ``litert``, ``RUN/export/onnx``); MC dropout samples the
    head on every backend, with the same per-film seeds. Grad-CAM always uses model.keras.
    """

    def __init__(self, run_dir, samples=DEFAULT_SAMPLES, uncertainty_threshold=DEFAULT_UNCERTAINTY_THRESHOLD,
                 critical=DEFAULT_CRITICAL, limits=None, batch_size=16, seed=None,
                 borderline_k=DEFAULT_BORDERLINE_K, auc_floor=DEFAULT_AUC_FLOOR, backend="keras", export=None):
        from cxr_tf.inference.export import BACKENDS

        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r}: expected one of {', '.join(BACKENDS)}")
        self.backend = backend
        if samples < 1:
            raise ValueError(f"samples={samples}: need at least 1 Monte-Carlo pass")
        self.run = runs.Run(run_dir)
        self.run_dir = self.run.path
        self.labels = self.run.labels
        self.samples = int(samples)
        self.uncertainty_threshold = float(uncertainty_threshold)
        if borderline_k < 0:
            raise ValueError(f"borderline_k={borderline_k}: expected a non-negative number of standard deviations")
        self.borderline_k = float(borderline_k)
        self.notes = list(self.run.notes)
        self.critical = self._critical(critical)
        self.limits = limits or Limits()
        self.config = self.run.config
        self.thresholds, self.thresholds_source = self.run.thresholds, self.run.thresholds_source
        # the run's part of every film's MC seed: the same weights give the same draws
        self.run_key = hashlib.sha256((self.run_dir / runs.MODEL).read_bytes()).digest()
        self.arch = self.run.arch
        if backend == "keras":
            from cxr_tf.inference.uncertainty import MCSampler

            self.export_dir = None
            self.image_size = int(self.config.get("image_size") or self.model.inputs[0].shape[1])
            self.multimodal = len(self.model.inputs) > 1
            self.sampler = MCSampler(self.model, batch_size=batch_size, seed=seed)
        else:
            from cxr_tf.inference.export import PortableModel, find_export

            self.export_dir = Path(export) if export is not None else find_export(self.run_dir, backend)
            self.sampler = PortableModel(self.export_dir, seed=seed)  # same interface as MCSampler
            expected = {"litert": ("litert", "litert-int8"), "onnx": ("onnx",)}[backend]
            if self.sampler.format not in expected:
                raise ValueError(f"{self.export_dir} is a {self.sampler.format} export, not {backend}")
            if list(self.sampler.info.get("labels", self.labels)) != list(self.labels):
                raise ValueError(f"{self.export_dir}/export.json labels differ from {self.run_dir}/labels.json: "
                                 "the export is of another run; export this run again")
            self.image_size = self.sampler.image_size
            self.multimodal = self.sampler.multimodal
        self._manifest = self._find_manifest() if self.multimodal else None
        if seed is not None:  # part of every film's seed (film_results reseeds per film)
            self.run_key += int(seed).to_bytes(16, "little", signed=True)
        self.evidence = run_evidence(self.run.metrics or None, self.critical, auc_floor,
                                     self.config.get("split_method"))
        for caveat in self.evidence["caveats"]:
            log.warning(caveat)
        self._gradcam = None
        self.overlay_paths = {}  # {film: {finding: path}} of the last predict_files(gradcam_dir=...)
        for note in self.notes:
            log.warning(note)

    @property
    def model(self):
        """The run's Keras model (``cxr_tf.runs.Run.model``: loaded on first use, so a portable
        backend loads it only for Grad-CAM)."""
        return self.run.model

    # ------------------------------------------------------------------ run folder

    def _critical(self, critical):
        """The critical findings this run can raise. The default ones the run does not predict
        are dropped with a note; a finding the user named that the run lacks is an error."""
        if tuple(critical) == DEFAULT_CRITICAL:
            kept = tuple(c for c in critical if c in self.labels)
            if kept != tuple(critical):
                self.notes.append(f"this run does not predict {', '.join(c for c in critical if c not in kept)}: "
                                  "no finding makes a film urgent unless --critical names one of "
                                  f"{', '.join(self.labels)}")
            return kept
        return validate_critical(critical, self.labels)

    def _find_manifest(self):
        """The records manifest (training age statistics for the meta input), or a note and None.
        A run that records them in its config.json (``metadata``; fit writes it) needs no records."""
        trained = runs.trained_age_stats(self.config)
        if trained is not None:
            return {"metadata": {"age_mean": trained[0], "age_std": trained[1]}}
        for place in [self.run_dir, *runs.records_candidates(self.run_dir, self.config)]:
            if (place / MANIFEST).is_file():
                return read_manifest(place)
        self.notes.append("no records manifest.json found for this multimodal run: the age input is set to the "
                          "training mean (0 after standardisation) for every film")
        return None

    def describe(self):
        """What a client needs to know about the loaded run (JSON-serialisable)."""
        return {
            "run_dir": str(self.run_dir),
            "arch": self.arch,
            "image_size": self.image_size,
            "backend": self.backend,
            "export": None if self.export_dir is None else str(self.export_dir),
            "labels": list(self.labels),
            "thresholds": self.thresholds,
            "thresholds_source": self.thresholds_source,
            "critical": list(self.critical),
            "samples": self.samples,
            "uncertainty_threshold": self.uncertainty_threshold,
            "borderline_k": self.borderline_k,
            "split_method": self.config.get("split_method"),
            "test_metrics": self.run.metrics.get("test"),
            "status": self.evidence["status"],
            "evidence": self.evidence,
            "caveats": list(self.evidence["caveats"]),
            "notes": list(self.notes),
        }

    # ------------------------------------------------------------------ inputs

    def _meta(self, film):
        if not self.multimodal:
            return None
        from cxr_tf.data.pipeline import meta_vector

        if self._manifest is None:
            return meta_vector(None, film.sex, film.view, {"metadata": {"age_mean": 0.0, "age_std": 1.0}})
        return meta_vector(film.age, film.sex, film.view, self._manifest)

    def load(self, source, name=None):
        """Read one film: (Film, model pixels float32 (1, S, S, 1), meta (1, 5) or None).
        Raises FilmError (a ValueError) for an unusable file."""
        from cxr_tf.data.images import to_square

        film = read_film(source, name=name, limits=self.limits)
        x = to_square(film.pixels, self.image_size).astype(np.float32)[None, :, :, None]
        meta = self._meta(film)
        return film, x, (None if meta is None else meta[None, :])

    def probabilities(self, x, meta=None):
        """The film's probabilities (14,) float64: the seeded MC mean as every output
        reports it (``film_results``). x, meta: one prepared film (see ``load``)."""
        [result] = self.film_results([("", None, x, meta)])
        return np.array([result["probabilities"][f] for f in self.labels])

    def seeds(self, x):
        """One MC seed per prepared film in ``x`` (N, S, S, 1): its pixels and the run."""
        return [film_seed(film, self.run_key) for film in np.asarray(x)]

    @property
    def gradcam(self):
        """The run's ``cxr_tf.inference.gradcam.GradCAM`` (built on first use)."""
        if self._gradcam is None:
            from cxr_tf.inference.gradcam import GradCAM

            self._gradcam = GradCAM(self.model, arch=self.arch, labels=self.labels)
        return self._gradcam

    # ------------------------------------------------------------------ prediction

    def film_results(self, loaded):
        """Results for successfully loaded films [(name, film, x, meta)]: the one code path
        from prepared films to probabilities, uncertainty and triage (module docstring)."""
        if not loaded:
            return []
        x = np.concatenate([item[2] for item in loaded])
        meta = np.concatenate([item[3] for item in loaded]) if self.multimodal else None
        mean, std = self.sampler(x, samples=self.samples, meta=meta, seeds=self.seeds(x))
        results = []
        for (name, _, _, _), p, s in zip(loaded, mean, std):
            # rounded first, then thresholded: what is printed is what was decided on
            probs = {f: round(float(v), 4) for f, v in zip(self.labels, p)}
            unc = {f: round(float(v), 4) for f, v in zip(self.labels, s)}
            verdict = triage(probs, unc, self.thresholds, self.critical, self.uncertainty_threshold,
                             self.borderline_k, self.evidence)
            results.append({"file": name, "probabilities": probs, "uncertainty": unc, **verdict})
        return results


    def overlays(self, film, x, meta, findings, probabilities, max_side=None):
        """{finding: (overlay PNG bytes, ``describe_map`` dict)} of Grad-CAM maps on the
        original film, captioned with ``probabilities`` ({finding: p}, the film's result)
        and, for an empty, flat or too coarse map, the note saying so."""
        from cxr_tf.inference.gradcam import cam_to_film, describe_map, overlay_png

        if not findings:
            return {}
        maps, _ = self.gradcam.cams(x, findings, meta)
        out = {}
        for finding, cam in zip(findings, maps[0]):
            described = describe_map(cam, self.gradcam.layer_name)
            text = f"{finding} p={probabilities[finding]:.2f}" + (f"\n{described['note']}" if described["note"] else "")
            out[finding] = (overlay_png(film.pixels, cam_to_film(cam, film.pixels.shape), text, max_side), described)
        return out

    def predict_sources(self, items):
        """Triage [(name, path or bytes)] in one MC run, in input order: [(result, loaded)]
        where loaded = (film, x, meta) for ``cams`` / ``overlays``, or None with an error result."""
        loaded, out = [], []
        for name, source in items:
            try:
                loaded.append((name, *self.load(source, name=name)))
                out.append(None)
            except Exception as err:  # noqa: BLE001 - one bad film never costs another its result
                out.append(({"file": name, "error": film_error_text(name, err)}, None))
        done = iter(zip(self.film_results(loaded), loaded))
        for i, item in enumerate(out):
            if item is None:  # a readable film: its result, in the order they were loaded
                result, (_, *film_x_meta) = next(done)
                out[i] = (result, tuple(film_x_meta))
        return out

    def triage_loaded(self, loaded):
        """Results for films already read with ``load``: [(name, film, x, meta)] -> [result], one MC run."""
        return self.film_results(loaded)

    def cams(self, film, x, meta, findings):
        """{finding: Grad-CAM map float32 (H, W) 0..1 on the film's own grid}."""
        from cxr_tf.inference.gradcam import cam_to_film

        if not findings:
            return {}
        maps, _ = self.gradcam.cams(x, findings, meta)
        return {f: cam_to_film(cam, film.pixels.shape) for f, cam in zip(findings, maps[0])}

    def predict_files(self, paths, gradcam_dir=None):
        """Triage films given as paths, in input order (``worklist`` sorts them).

        Returns one dict per path: the result object, or {"file", "error"}.
        gradcam_dir: write ``<stem>_<finding>.png`` overlays of positive findings there;
        each result then has ``"gradcam": {finding: {"path", "status", "grid", "layer", "note"}}``.
        """
        loaded, errors = [], {}
        for i, path in enumerate(paths):
            name = str(path)
            try:
                film, x, meta = self.load(path, name=name)
            except Exception as err:  # noqa: BLE001 - one bad film never costs another its result
                errors[i] = {"file": name, "error": film_error_text(name, err)}
                continue
            loaded.append((name, film, x, meta, i))
        results = self.film_results([item[:4] for item in loaded])
        if gradcam_dir is not None:
            self._write_overlays(loaded, results, Path(gradcam_dir))
        by_index = {item[4]: r for item, r in zip(loaded, results)}
        by_index.update(errors)
        return [by_index[i] for i in range(len(paths))]

    def _write_overlays(self, loaded, results, folder):
        folder.mkdir(parents=True, exist_ok=True)
        used = set()
        self.overlay_paths = {}
        for (name, film, x, meta, _), result in zip(loaded, results):
            stem = Path(name).stem
            while stem in used:  # two films with one name in different folders
                stem += "_"
            used.add(stem)
            for finding, (png, described) in self.overlays(film, x, meta, result["findings"],
                                                            result["probabilities"]).items():
                target = folder / f"{stem}_{finding}.png"
                target.write_bytes(png)
                self.overlay_paths.setdefault(name, {})[finding] = str(target)
                result.setdefault("gradcam", {})[finding] = {"path": str(target), **described}

    def predict_bytes(self, name, data, images=False):
        """Triage one film given as bytes (an upload); ``name`` is its file name.

        images=True adds ``"images": {"film": data-URI, "gradcam": {finding: data-URI},
        "gradcam_maps": {finding: describe_map dict}}`` (PNG, longest side ``DISPLAY_SIDE``;
        overlays of the positive findings; an empty/flat/coarse map is named).
        """
        try:
            film, x, meta = self.load(data, name=name)
        except Exception as err:  # noqa: BLE001 - one bad film never costs another its result
            return {"file": name, "error": film_error_text(name, err)}
        [result] = self.film_results([(name, film, x, meta)])
        if images:
            from cxr_tf.inference.gradcam import overlay_png

            blank = np.zeros(film.pixels.shape, np.float32)
            pngs = self.overlays(film, x, meta, result["findings"], result["probabilities"], max_side=DISPLAY_SIDE)
            result["images"] = {"film": _data_uri(overlay_png(film.pixels, blank, max_side=DISPLAY_SIDE)),
                                "gradcam": {f: _data_uri(png) for f, (png, _) in pngs.items()},
                                "gradcam_maps": {f: described for f, (_, described) in pngs.items()}}
        return result

    def worklist(self, results):
        """``results`` most urgent first (``cxr_tf.inference.triage.worklist`` with this run's critical findings)."""
        return worklist(results, self.critical)
