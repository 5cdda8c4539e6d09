"""Throughput and latency of the DICOM node, side by side with ``predict`` on the same films.

    python tools/bench_dicom_node.py --model RUN_DIR --films 20 [--samples 25] [--heatmaps] [--no-dicomweb]
        [--spool-dir DIR]

Wraps ``--films`` real NIH films (``cxr_tf/sample/images``) as DX DICOM, starts the node
(``cxr_tf.inference.dicom_node``) and a pynetdicom Storage SCP as its destination, both in
this process on free loopback ports, warms the node up with 2 films, then pushes the
films over one C-STORE association with a pynetdicom SCU. Film-to-SR latency: from the
start of a film's C-STORE to the arrival of its SR at the destination. Baseline: the
same films through ``Predictor.predict`` (what ``predict --json`` runs), warm, once
as one batch of all films and once one film per call; and through ``predict --format
dicom-sr`` (the same SRs as the node, written to a temporary folder). Last line:
Also the film-to-SR latency of films sent one at a time (each after the previous SR:
a modality's pace). The node runs twice: with a spool (the durable inbox and outbox, in a
temporary folder under ``--spool-dir``, default the system's temporary folder: put it on the
disk a site would use) and with ``--no-spool`` (in memory: each film acknowledged only once its
report exists); the ratio of the two is printed. And the DICOMweb path (``cxr_tf.inference.dicomweb``) against a real Orthanc
with its DICOMweb plugin (skipped, and said, when not installed): the same films uploaded at once
with STOW-RS, the front end polling QIDO-RS every 0.2 s; film-to-report latency from the end of a
film's upload to the end of its report's STOW-RS. Last lines: ``films_per_s=<node films/s>
p95_ms=<node p95 latency>`` and ``dicomweb_films_per_s=… dicomweb_p95_ms=…``.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SAMPLE = Path(__file__).resolve().parents[1] / "cxr_tf" / "sample" / "images"


def destination_scp(port, arrivals):
    """A Storage SCP on 127.0.0.1:port recording {source SOP Instance UID: arrival time} of SRs."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Comprehensive3DSRStorage, ParametricMapStorage, SecondaryCaptureImageStorage

    def on_store(event):
        arrived = time.perf_counter()
        ds = event.dataset
        if ds.SOPClassUID == Comprehensive3DSRStorage:
            # the film, from the evidence list (cheaper than reading the content tree, and
            # this handler shares the process with the node it measures)
            series = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
            arrivals[series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID] = arrived
        return 0x0000

    ae = AE(ae_title="BENCH_PACS")
    ae.maximum_pdu_size = 0
    for sop_class in (Comprehensive3DSRStorage, ParametricMapStorage, SecondaryCaptureImageStorage):
        ae.add_supported_context(sop_class)
    return ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])


def push(port, datasets, starts):
    """C-STORE ``datasets`` to the node over one association; records each start time."""
    from pynetdicom import AE

    ae = AE(ae_title="BENCH_MOD")
    ae.maximum_pdu_size = 0
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXR_TF")
    if not assoc.is_established:
        raise RuntimeError("the node refused the association")
    try:
        for ds in datasets:
            starts[ds.SOPInstanceUID] = time.perf_counter()
            status = assoc.send_c_store(ds)
            if status.Status != 0:
                raise RuntimeError(f"the node answered 0x{status.Status:04X}")
    finally:
        assoc.release()


def wait_for(arrivals, uids, timeout=600):
    deadline = time.monotonic() + timeout
    while not all(u in arrivals for u in uids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {sum(u in arrivals for u in uids)} of {len(uids)} SRs arrived")
        time.sleep(0.005)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="run folder")
    parser.add_argument("--films", type=int, default=20)
    parser.add_argument("--samples", type=int, default=25, help="MC dropout passes")
    parser.add_argument("--heatmaps", action="store_true", help="node also sends Grad-CAM Parametric Maps")
    parser.add_argument("--no-dicomweb", dest="dicomweb", action="store_false", help="skip the DICOMweb path")
    parser.add_argument("--spool-dir", help="where the spooled node's temporary spool goes (default: the system's "
                                            "temporary folder)")
    args = parser.parse_args(argv)

    from cxr_tf.inference.outputs import write_files
    from cxr_tf.inference.predictor import Predictor
    from cxr_tf.testing import dicom_bytes, dx_dataset

    pngs = sorted(SAMPLE.glob("*.png"))
    films = [dx_dataset(pngs[i % len(pngs)], patient_id=f"BENCH{i}") for i in range(args.films + 2)]
    warm, timed = films[:2], films[2:]

    predictor = Predictor(args.model, samples=args.samples)
    with tempfile.TemporaryDirectory(dir=args.spool_dir) as spool:
        spooled = bench_node(args, predictor, warm, timed, Path(spool) / "spool")
    in_memory = bench_node(args, predictor, warm, timed, None)
    node_s, latency, alone = spooled

    # Baseline: predict on the same films as files (warm: the first call traces the model).
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for ds in [*warm, *timed]:
            path = Path(tmp) / f"{ds.SOPInstanceUID}.dcm"
            path.write_bytes(dicom_bytes(ds))
            paths.append(path)
        predictor.predict(paths[:2])
        predictor.predict(paths[2:3])
        t = time.perf_counter()
        predictor.predict(paths[2:])
        batch_s = time.perf_counter() - t
        t = time.perf_counter()
        for path in paths[2:]:
            predictor.predict([path])
        single_s = time.perf_counter() - t
        # like for like: predict --format dicom-sr (the same SR, built the same way)
        formats = ["dicom-sr", "heatmap-sc"] if args.heatmaps else ["dicom-sr"]
        write_files(predictor, predictor.predict(paths[:1]), formats, Path(tmp) / "sr")
        t = time.perf_counter()
        write_files(predictor, predictor.predict(paths[2:]), formats, Path(tmp) / "sr")
        sr_s = time.perf_counter() - t

    n = len(timed)
    node_rate, batch_rate, single_rate, sr_rate = n / node_s, n / batch_s, n / single_s, n / sr_s
    memory_rate = n / in_memory[0]
    print(f"films: {n} DX (NIH sample, {films[0].Rows}x{films[0].Columns}), model {args.model}, "
          f"MC samples {args.samples}, heatmaps {'on' if args.heatmaps else 'off'}")
    print(f"{'path':<44} {'films/s':>8} {'ms/film':>8} {'vs node':>8}")
    for name, rate in (("node: C-STORE in -> SR C-STORE out, spool", node_rate),
                       ("node, --no-spool (ack after the report)", memory_rate),
                       ("predict, one call for all films", batch_rate),
                       ("predict, one call per film", single_rate),
                       ("predict --format dicom-sr, all films", sr_rate)):
        print(f"{name:<44} {rate:8.2f} {1000 / rate:8.1f} {rate / node_rate:8.2f}x")
    print(f"node film-to-SR latency: p50 {np.percentile(latency, 50):.1f} ms, "
          f"p95 {np.percentile(latency, 95):.1f} ms, max {latency.max():.1f} ms")
    print(f"node film-to-SR latency, one film at a time: median {np.median(alone):.1f} ms over {len(alone)}")
    print(f"node --no-spool film-to-SR latency: p95 {np.percentile(in_memory[1], 95):.1f} ms; one film at a time: "
          f"median {np.median(in_memory[2]):.1f} ms")
    print(f"films_per_s={node_rate:.2f} p95_ms={np.percentile(latency, 95):.1f} "
          f"no_spool_films_per_s={memory_rate:.2f} spool_vs_no_spool={node_rate / memory_rate:.2f}x")
    if args.dicomweb:
        web = bench_dicomweb(args, [*warm, *timed])
        if web is None:
            print("dicomweb: skipped (Orthanc or its DICOMweb plugin, Debian orthanc-dicomweb, not installed)")
        else:
            rate, lat = web
            print(f"{'DICOMweb: STOW in -> QIDO/WADO -> SR STOW out':<44} {rate:8.2f} {1000 / rate:8.1f} "
                  f"{rate / node_rate:8.2f}x")
            print(f"DICOMweb film-to-report latency: p50 {np.percentile(lat, 50):.1f} ms, "
                  f"p95 {np.percentile(lat, 95):.1f} ms, max {lat.max():.1f} ms")
            print(f"dicomweb_films_per_s={rate:.2f} dicomweb_p95_ms={np.percentile(lat, 95):.1f}")
    return 0


def bench_node(args, predictor, warm, timed, spool):
    """(seconds for ``timed``, latencies ms, one-at-a-time latencies ms) of the node (``spool``: its
    folder, None: in memory) on fresh copies of the films (new SOP Instance UIDs)."""
    from pydicom.uid import generate_uid

    from cxr_tf.inference.dicom_node import Destination, DicomNode
    from cxr_tf.testing import free_port

    for ds in [*warm, *timed]:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    arrivals, starts = {}, {}
    pacs_port, node_port = free_port(), free_port()
    pacs = destination_scp(pacs_port, arrivals)
    node = DicomNode(predictor, port=node_port, heatmaps=args.heatmaps, spool=spool,
                     destination=Destination("BENCH_PACS", "127.0.0.1", pacs_port)).start()
    try:
        push(node_port, warm, starts)
        wait_for(arrivals, [d.SOPInstanceUID for d in warm])
        t0 = time.perf_counter()
        push(node_port, timed, starts)
        uids = [d.SOPInstanceUID for d in timed]
        wait_for(arrivals, uids)
        seconds = max(arrivals[u] for u in uids) - t0
        latency = np.array([(arrivals[u] - starts[u]) * 1000 for u in uids])
        # unloaded: films arriving one at a time (each after the previous SR), as from a modality
        alone = []
        for ds in warm + timed[:3]:
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            push(node_port, [ds], starts)
            wait_for(arrivals, [ds.SOPInstanceUID])
            alone.append((arrivals[ds.SOPInstanceUID] - starts[ds.SOPInstanceUID]) * 1000)
    finally:
        node.stop(drain_timeout=5)
        pacs.shutdown()
    return seconds, latency, alone


def bench_dicomweb(args, films):
    """(films/s, latencies ms) of the DICOMweb front end against Orthanc, or None without Orthanc."""
    import threading

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from orthanc_server import DICOMWEB_PLUGIN, ORTHANC, Orthanc
    from pydicom.uid import generate_uid

    from cxr_tf.inference.dicomweb import DicomWebFrontEnd, make_session
    from cxr_tf.inference.predictor import Predictor

    if ORTHANC is None or DICOMWEB_PLUGIN is None:
        return None
    from dicomweb_client.api import DICOMwebClient

    for ds in films:  # fresh instances (the node path sent these UIDs already)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    warm, timed = films[:2], films[2:]
    with tempfile.TemporaryDirectory() as tmp:
        orthanc = Orthanc(Path(tmp) / "orthanc", {}, dicomweb=True).start()
        stop = threading.Event()
        try:
            web = DICOMwebClient(orthanc.dicomweb, session=make_session(), chunk_size=1 << 30)
            front = DicomWebFrontEnd(Predictor(args.model, samples=args.samples), orthanc.dicomweb,
                                     Path(tmp) / "cursor.json", since=films[0].StudyDate, heatmaps=args.heatmaps)
            worker = threading.Thread(target=front.run, args=(stop, 0.2), daemon=True)
            worker.start()
            uploaded = {}
            web.store_instances(warm)
            wait_for(front.stored_at, [d.SOPInstanceUID for d in warm])
            t0 = time.monotonic()
            for ds in timed:  # one STOW per film, as a modality or router sends them
                web.store_instances([ds])
                uploaded[ds.SOPInstanceUID] = time.monotonic()
            uids = list(uploaded)
            wait_for(front.stored_at, uids)
            seconds = max(front.stored_at[u] for u in uids) - t0
            latency = np.array([(front.stored_at[u] - uploaded[u]) * 1000 for u in uids])
        finally:
            stop.set()
            orthanc.stop()
    return len(timed) / seconds, latency


if __name__ == "__main__":
    sys.exit(main())
