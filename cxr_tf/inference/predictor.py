"""The one predictor: a trained run, loaded once, that reads films and triages them.
``Predictor(run).predict(films) -> [FilmResult]`` is the entry point of every front end
(``predict``, ``explain``, the web service, the DICOM node).

For each film (PNG, JPEG or DICOM, recognised by content; ``cxr_tf.inference.readers``,
read once into a ``Film``), the input gate first (``cxr_tf.inference.gate``: a film that is not
a frontal chest film is "not processed", with the reason), then: the probabilities (Monte-Carlo dropout mean,
``cxr_tf.inference.uncertainty``), their uncertainty (MC standard deviation), the findings
at or above the run's validation-chosen thresholds, and a triage level with a recommended
action (``cxr_tf.inference.triage``); ``cxr_tf.inference.results.FilmResult`` holds them,
or the error naming a film that could not be read. ``worklist`` sorts results most urgent
first; output formats (``cxr_tf.inference.outputs``) turn results into files and messages.

One probability per film: ``predict`` is the only code path from films to numbers. The
Monte-Carlo draws are seeded from the film's pixels and the run's ``model.keras`` digest
(``cxr_tf.inference.uncertainty.film_seed``), so the same film on the same run gives the same
numbers every time, in any batch. The mean is thresholded; the spread is the uncertainty.
``caveats`` carry what the run has not shown (``cxr_tf.inference.evidence``; an unvalidated
run never says urgent).

The run folder is a ``cxr_tf.training.trainer`` run: ``model.keras``, ``config.json``
(``arch``, ``image_size``), ``labels.json``, ``thresholds.json`` (when absent, 0.5 for every
finding, and the output says so); ``runs.resolve_run_dir`` finds it (default: the run that
``saved_models/latest`` names).

Multimodal models get their metadata input from the DICOM tags PatientAge, PatientSex and
ViewPosition; PNG/JPEG films and missing tags use the defaults of
``cxr_tf.data.pipeline.meta_vector``: the training-split mean age, and zeros in the sex and
view one-hots (no information), standardised with the run's training statistics.
"""

import base64
import hashlib
from pathlib import Path

import numpy as np

from cxr_tf import runs
from cxr_tf.data import manifest
from cxr_tf.models import model_input_spec
from cxr_tf.inference.readers import Film, Limits, read_film
from cxr_tf.inference.results import FilmResult, NotProcessed, error_text, unique_stems, unreadable
from cxr_tf.inference.evidence import DEFAULT_AUC_FLOOR, run_evidence
from cxr_tf.inference.triage import (DEFAULT_BORDERLINE_K, DEFAULT_CRITICAL, DEFAULT_UNCERTAINTY_THRESHOLD, triage,
                                     urgency_key, validate_critical)
from cxr_tf.inference.uncertainty import DEFAULT_SAMPLES, film_seed


DISPLAY_SIDE = 512
"""Longest side (px) of the film and overlay images of ``add_images`` (the service's ``?images=1``)."""


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
    gate: screen every film with the input gate (``cxr_tf.inference.gate``) before the model;
    False turns it off, and every result then records that it was off.
    """

    def __init__(self, run_dir, samples=DEFAULT_SAMPLES, uncertainty_threshold=DEFAULT_UNCERTAINTY_THRESHOLD,
                 critical=DEFAULT_CRITICAL, limits=None, batch_size=16, seed=None,
                 borderline_k=DEFAULT_BORDERLINE_K, auc_floor=DEFAULT_AUC_FLOOR, backend="keras", export=None,
                 gate=True):
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
        self.model_sha256 = hashlib.sha256((self.run_dir / runs.MODEL).read_bytes()).hexdigest()
        self.run_key = bytes.fromhex(self.model_sha256)
        self.arch = self.run.arch
        from cxr_tf.data.film_resize import DEFAULT_METHOD, RESIZE_METHODS

        self.resize = (self.config.get("input") or {}).get("resize", DEFAULT_METHOD)
        if self.resize not in RESIZE_METHODS:
            raise ValueError(f"{self.run_dir}/config.json input.resize {self.resize!r}: expected one of "
                             f"{', '.join(RESIZE_METHODS)}")
        if backend == "keras":
            from cxr_tf.inference.uncertainty import MCSampler

            self.export_dir = None
            size, self.multimodal = model_input_spec(self.model)
            self.image_size = int(self.config.get("image_size") or size)
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
        self._age_stats = self._find_age_stats() if self.multimodal else None
        if seed is not None:  # part of every film's seed (predict reseeds per film)
            self.run_key += int(seed).to_bytes(16, "little", signed=True)
        self.evidence = run_evidence(self.run.metrics or None, self.critical, auc_floor,
                                     self.config.get("split_method"))
        self._gradcam = None
        if gate:
            from cxr_tf.inference.gate import shipped

            self.gate = shipped()
        else:
            self.gate = None

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

    def _find_age_stats(self):
        """The training films' age (mean, std) for the meta input, or a note and None. A run that
        records them in its config.json (``metadata``; fit writes it) needs no records."""
        trained = runs.trained_age_stats(self.config)
        if trained is not None:
            return trained
        for place in [self.run_dir, *runs.records_candidates(self.run_dir, self.config)]:
            records = manifest.read(place) if manifest.exists(place) else None
            if records is not None and records.age_mean is not None:
                return records.age_stats()
        self.notes.append("no records found for this multimodal run: the age input is set to the "
                          "training mean (0 after standardisation) for every film")
        return None

    def describe(self):
        """What a client needs to know about the loaded run (JSON-serialisable)."""
        return {
            "run_dir": str(self.run_dir),
            "arch": self.arch,
            "model_sha256": self.model_sha256,
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
            "gate": None if self.gate is None else self.gate.describe(),
        }

    # ------------------------------------------------------------------ reading

    def read(self, source, name=None):
        """Read one film (a path, or bytes labelled ``name``) under this predictor's limits:
        a ``readers.Film``. Raises FilmError (a ValueError) naming the file for an unusable one."""
        return read_film(source, name=name, limits=self.limits)

    def _meta(self, film):
        if not self.multimodal:
            return None
        from cxr_tf.data.pipeline import meta_vector

        if self._age_stats is None:
            return meta_vector(None, film.sex, film.view, (0.0, 1.0))
        return meta_vector(film.age, film.sex, film.view, self._age_stats)

    def _prepare(self, item):
        """A FilmResult holding the film and the model's input for it, or the error. The film is
        resized the way the run's training pipeline did (``config.json`` ``input.resize``:
        ``cxr_tf.data.film_resize``; an imported run records its source's own crop and resize)."""
        from cxr_tf.data.film_resize import prepare

        name, source = item if isinstance(item, tuple) else (None, item)
        if name is None:
            name = source.name if isinstance(source, Film) else (
                "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source))
        try:
            film = source if isinstance(source, Film) else self.read(source, name=name)
            x = prepare(film.pixels, self.image_size, self.resize)[None, :, :, None]
            meta = self._meta(film)
        except Exception as err:  # noqa: BLE001 - one bad film never costs another its result
            return unreadable(name, err)
        return FilmResult(name, film=film, x=x, meta=None if meta is None else meta[None, :])

    def screen(self, films):
        """Screen ``films`` (``readers.Film``) with the input gate, once each: [Screening, or None
        with the gate off]; each film keeps its screening (``Film.screening``), so ``predict`` does
        not screen it again. Raises when the gate cannot score them (``predict`` makes that each
        film's error)."""
        if self.gate is None:
            return [None] * len(films)
        todo = [f for f in films if f.screening is None]
        for film, screening in zip(todo, self.gate.screen([f.pixels for f in todo])):
            film.screening = screening
        return [f.screening for f in films]

    def _screen(self, results):
        """Screen prepared ``results``: a refused film becomes "not processed" with the gate's
        reason; every result records the gate (or that it was off). Returns those that passed."""
        from cxr_tf.inference.gate import OFF

        if self.gate is None:
            for result in results:
                result.gate = OFF
            return results
        try:
            screenings = self.screen([r.film for r in results])
        except Exception as err:  # noqa: BLE001 - the gate's own failure is each film's error, never a pass
            for result in results:
                result.not_processed = NotProcessed("gate_failed", error_text(result.file, err))
            return []
        passed = []
        for result, screening in zip(results, screenings):
            result.gate = screening.as_dict()
            if screening.passed:
                passed.append(result)
            else:
                result.not_processed = NotProcessed(screening.reason, f"{result.file}: {screening.message()}")
        return passed

    def seeds(self, x):
        """One MC seed per prepared film in ``x`` (N, S, S, 1): its pixels and the run."""
        return [film_seed(film, self.run_key) for film in np.asarray(x)]

    # ------------------------------------------------------------------ prediction

    def predict(self, films):
        """Triage ``films``: [FilmResult], one per film, in the order given.

        Each film is a path, a ``(name, path or bytes)`` pair, or a ``readers.Film`` already
        read (``read``). Every readable film is screened by the input gate, and those it passes
        go through one MC run (the one code path from films to numbers: module docstring); a
        film that cannot be read or is refused gets a "not processed" result naming it and why,
        and costs no other film its result."""
        results = [self._prepare(item) for item in films]
        ready = self._screen([r for r in results if r.not_processed is None])
        if not ready:
            return results
        x = np.concatenate([r.x for r in ready])
        meta = np.concatenate([r.meta for r in ready]) if self.multimodal else None
        mean, std = self.sampler(x, samples=self.samples, meta=meta, seeds=self.seeds(x))
        for result, p, s in zip(ready, mean, std):
            # rounded first, then thresholded: what is printed is what was decided on
            probs = {f: round(float(v), 4) for f, v in zip(self.labels, p)}
            unc = {f: round(float(v), 4) for f, v in zip(self.labels, s)}
            verdict = triage(probs, unc, self.thresholds, self.critical, self.uncertainty_threshold,
                             self.borderline_k, self.evidence)
            result.verdict = {"probabilities": probs, "uncertainty": unc, **verdict}
        return results

    def worklist(self, results):
        """``results`` (FilmResults) most urgent first (``cxr_tf.inference.triage.urgency_key``
        with this run's critical findings)."""
        return sorted(results, key=lambda r: urgency_key(r.as_dict(), self.critical))

    # ------------------------------------------------------------------ Grad-CAM

    @property
    def gradcam(self):
        """The run's ``cxr_tf.inference.gradcam.GradCAM`` (built on first use)."""
        if self._gradcam is None:
            from cxr_tf.inference.gradcam import GradCAM

            self._gradcam = GradCAM(self.model, arch=self.arch, labels=self.labels)
        return self._gradcam

    def maps(self, result, findings=None):
        """{finding: (map on the film's own grid float32 (H, W) 0..1, ``describe_map`` dict of the
        map on the model's grid)} of a triaged ``result``'s positive findings (or ``findings``):
        one Grad-CAM pass, what ``cams``, ``overlays`` and ``explain`` read."""
        from cxr_tf.inference.gradcam import cam_to_film, describe_map

        findings = result.findings if findings is None else list(findings)
        if not findings:
            return {}
        grid_maps, _ = self.gradcam.cams(result.x, findings, result.meta)
        return {f: (cam_to_film(cam, result.film.pixels.shape), describe_map(cam, self.gradcam.layer_name))
                for f, cam in zip(findings, grid_maps[0])}

    def cams(self, result, findings=None):
        """{finding: Grad-CAM map float32 (H, W) 0..1 on the film's own grid} of a triaged
        ``result`` (default: its positive findings)."""
        return {f: film_map for f, (film_map, _) in self.maps(result, findings).items()}

    @staticmethod
    def overlay(result, finding, film_map, described, max_side=None, boxes=()):
        """PNG of one finding's map over the original film, captioned with the film's probability
        and, for an empty, flat or too coarse map, the note saying so; ``boxes`` outlined."""
        from cxr_tf.inference.gradcam import overlay_png

        text = f"{finding} p={result.probabilities[finding]:.2f}" + (
            f"\n{described['note']}" if described["note"] else "")
        return overlay_png(result.film.pixels, film_map, text, max_side, boxes=boxes)

    def overlays(self, result, findings=None, max_side=None):
        """{finding: (overlay PNG bytes, ``describe_map`` dict)} of ``result``'s positive findings
        (or ``findings``): ``overlay`` of each of ``maps``."""
        return {f: (self.overlay(result, f, film_map, described, max_side), described)
                for f, (film_map, described) in self.maps(result, findings).items()}

    def add_overlays(self, results, folder):
        """Write ``<stem>_<finding>.png`` Grad-CAM overlays of each triaged result's positive
        findings into ``folder``; each such result gets ``extras["gradcam"]``: {finding:
        {"path", "status", "grid", "layer", "note"}}. Stems that repeat get a "_" appended."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stems = unique_stems(results)
        for result in results:
            if not result.ok:
                continue
            for finding, (png, described) in self.overlays(result).items():
                target = folder / f"{stems[id(result)]}_{finding}.png"
                target.write_bytes(png)
                result.extras.setdefault("gradcam", {})[finding] = {"path": str(target), **described}

    def add_images(self, result):
        """Add ``extras["images"]`` to a triaged result: {"film": data-URI, "gradcam": {finding:
        data-URI}, "gradcam_maps": {finding: describe_map dict}} (PNG, longest side
        ``DISPLAY_SIDE``; overlays of the positive findings; an empty/flat/coarse map is named)."""
        from cxr_tf.inference.gradcam import overlay_png

        if not result.ok:
            return result
        blank = np.zeros(result.film.pixels.shape, np.float32)
        pngs = self.overlays(result, max_side=DISPLAY_SIDE)
        result.extras["images"] = {
            "film": _data_uri(overlay_png(result.film.pixels, blank, max_side=DISPLAY_SIDE)),
            "gradcam": {f: _data_uri(png) for f, (png, _) in pngs.items()},
            "gradcam_maps": {f: described for f, (_, described) in pngs.items()}}
        return result

